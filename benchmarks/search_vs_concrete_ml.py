"""latentopt's latency search vs Concrete ML's NeuralNetClassifier.

For breast_cancer, wine and digits (StandardScaler, 25% stratified test split, seed 0):

* latentopt: ``LatencySearch`` on the training split with the accuracy budget set to the
  float scikit-learn MLP's validation score minus 1 point; the chosen model's test
  accuracy (FHE simulation), encrypted latency per sample (median, real keys), keygen
  time, PBS count and max TLU bit-width, and the search time;
* Concrete ML 1.9 (3 layers, 3-bit, width = n_features), run in its own virtualenv
  (created on first use in ``--peer-venv``; it pins torch 2.3.1 / brevitas 0.10.2 /
  scikit-learn 1.5.0), or read from ``--peer-json`` if already measured.

    python benchmarks/search_vs_concrete_ml.py [--n-trials 30] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier
from latentopt.search import LatencySearch

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent


def run_peer(venv: Path, n_execute: int, names: list[str]) -> dict[str, dict]:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "concrete-ml==1.9.0"], check=True)
    out = subprocess.run([str(py), str(HERE / "concrete_ml_peer.py"), "--n-execute",
                          str(n_execute), "--datasets", *names], check=True,
                         capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["dataset"]: r for r in rows}


def run_latentopt(name: str, n_trials: int, timeout: float, n_execute: int) -> dict:
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
    float_acc = MLPClassifier(max_iter=1000, random_state=0).fit(Xtr, ytr).score(Xte, yte)
    t0 = time.perf_counter()
    search = LatencySearch(QuantizedMLPClassifier(random_state=0, verbose=0),
                           max_accuracy_drop=0.01, n_trials=n_trials, timeout=timeout,
                           random_state=0, verbose=1).fit(Xtr, ytr)
    search_s = time.perf_counter() - t0
    clf = search.best_estimator_
    sim = clf.predict(Xte, fhe="simulate")
    keygen = clf.keygen()
    times = []
    for i in range(min(n_execute, len(Xte))):
        t = time.perf_counter()
        clf.predict(Xte[i : i + 1], fhe="execute")
        times.append(time.perf_counter() - t)
    rep = clf.fhe_report_
    return {"dataset": name, "float_accuracy": float_acc, "accuracy": float(np.mean(sim == yte)),
            "latency_s": float(np.median(times)), "keygen_s": keygen,
            "pbs": rep["programmable_bootstrap_count"], "max_bit_width": rep["max_tlu_input_bits"],
            "search_s": search_s, "params": search.best_params_,
            "compile": search.best_compile_kwargs_}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine", "digits"])
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--n-execute", type=int, default=5)
    parser.add_argument("--peer-venv", type=Path, default=Path(".venv-concrete-ml"))
    parser.add_argument("--peer-json", type=Path, default=None,
                        help="JSON lines of a previous concrete_ml_peer.py run")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    peer: dict[str, dict] = {}
    if args.peer_json is not None:
        peer = {r["dataset"]: r for r in map(json.loads, args.peer_json.read_text().splitlines())
                if r}
    elif not args.skip_peer:
        peer = run_peer(args.peer_venv, args.n_execute, args.datasets)
    print(f"{'dataset':13s} {'who':10s} {'acc':>6s} {'s/sample':>9s} {'keygen s':>8s} "
          f"{'PBS':>5s} {'bits':>4s} {'speed-up':>8s}")
    for name in args.datasets:
        ours = run_latentopt(name, args.n_trials, args.timeout, args.n_execute)
        print(f"{name:13s} {'latentopt':10s} {ours['accuracy']:6.4f} {ours['latency_s']:9.3f} "
              f"{ours['keygen_s']:8.2f} {ours['pbs']:5d} {ours['max_bit_width']:4d} "
              f"{'':>8s}   float MLP {ours['float_accuracy']:.4f}, search "
              f"{ours['search_s']:.0f} s, {ours['params']} {ours['compile']}", flush=True)
        if name in peer:
            p = peer[name]
            print(f"{name:13s} {'ConcreteML':10s} {p['accuracy']:6.4f} {p['latency_s']:9.3f} "
                  f"{p['keygen_s']:8.2f} {p['pbs']:5d} {p['max_bit_width']:4d} "
                  f"{p['latency_s'] / ours['latency_s']:7.1f}x", flush=True)


if __name__ == "__main__":
    main()
