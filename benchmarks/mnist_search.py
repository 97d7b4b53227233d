"""The latency search on real MNIST: QAT of float torch models vs Concrete ML 1.9.

For the float models of ``mnist_models.py`` (``mlp64``: 784 -> 64 -> 10, ``cnn_ref``:
the issue's CNN), trained (``mnist_models.train``, 30 epochs) on the first half of the
4,000-digit training split; the search gets the other half, so the float model's
reference score is measured on digits it never saw (a float model scored on its own
training digits scores 1.0 and makes any budget meaningless):

* latentopt: ``LatencySearch(QuantizedTorchClassifier(float_model))`` on the second
  half with the default torch space (weight / activation / input bits, channel
  pruning, learning rate; rounding and ``p_error`` by the inner search) and a budget of
  ``--drop`` below the float model's validation accuracy.  For every Pareto point: the
  clear (integer) and FHE-simulated accuracy on the 1,000 test digits, PBS, max TLU
  bits, keygen seconds and encrypted seconds per sample (``--n-execute`` samples).
* Concrete ML 1.9 compiling the *same* float model (``concrete_ml_torch_peer.py`` in its
  own virtualenv, ``--cml-venv``) at its documented settings: ``n_bits=6``,
  ``rounding_threshold_bits=6``, ``p_error=0.01``.
* CIFAR-size latency: a CNN for 32x32x3 inputs (``mnist_models.cifar_like`` images,
  labelled by the untrained CNN itself), searched with no accuracy budget
  (``max_accuracy_drop=1``): the fastest circuit the search builds for that input
  size, and its encrypted time per image.  Generated data: its accuracy (agreement
  with the float network) is reported but means little.

    python benchmarks/mnist_search.py [--quick] [--models mlp64 cnn_ref] [--skip-cml]
        [--per-layer-pruning]   # one channel-pruning ratio per layer (0-0.75)
        [--reference R --drop 0]   # aim at accuracy R (a peer's) instead of the float model's
        [--cml-only | --cml-nn-only]   # only the Concrete ML peers (run beside a search)

``--models mlp_distilled``: ``QuantizedMLPClassifier`` searched on all 4,000 training
digits (the NeuralNetClassifier peer's), each trial distilled from the float CNN
``cnn_ref`` trained on the same digits; ``--reference`` (the peer's accuracy) and
``--drop`` set the budget; ``--output-w-bits 2`` adds 2-bit output-layer weights to its
space (``output_w_bits``).

``--quick``: fewer trials, shorter fine-tuning, test accuracy on 300 digits (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mnist_models  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def float_model(name: str, X: np.ndarray, y: np.ndarray):
    """``name`` trained on ``X, y`` (the first half of the training split), cached."""
    import torch

    path = mnist_models.CACHE_DIR / f"mnist_search_{name}_half_{len(X)}.npz"
    torch.manual_seed(0)
    model = mnist_models.MODELS[name]()
    if path.exists():
        return mnist_models.load_state(model, path).eval()
    torch.set_num_threads(1)
    mnist_models.train(model, X, y, epochs=30, seed=0)
    mnist_models.save_state(model, path)
    return model.eval()


def _run_peer(venv: Path, script: str, args: list[str]) -> dict:
    """``script`` (a Concrete ML peer) in its own virtualenv: its last JSON row."""
    out = subprocess.run([str(venv / "bin" / "python"), str(HERE / script), *args],
                         capture_output=True, text=True, timeout=3600, cwd=HERE)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not rows:
        return {"error": out.stderr[-500:]}
    return rows[-1]


def run_cml(venv: Path, name: str, model, X_calib: np.ndarray, X_test: np.ndarray,
            y_test: np.ndarray, n_execute: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        state, data = Path(tmp) / "state.npz", Path(tmp) / "data.npz"
        mnist_models.save_state(model, state)
        np.savez(data, X_calib=X_calib, X_test=X_test, y_test=y_test)
        return _run_peer(venv, "concrete_ml_torch_peer.py", [
            "--model", name, "--state", str(state), "--data", str(data), "--n-bits", "6",
            "--rounding-bits", "6", "--p-error", "0.01", "--n-execute", str(n_execute)])


def run_cml_nn(venv: Path, Xtr: np.ndarray, ytr: np.ndarray, X_test: np.ndarray,
               y_test: np.ndarray, n_execute: int) -> dict:
    """Concrete ML's own NeuralNetClassifier on MNIST: one hidden layer of 64, 3 bits.

    The issue's MLP peer.  It trains on every training digit (``Xtr``: both halves),
    more data than the search sees, i.e. generous to the peer.
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist.npz"
        np.savez(data, Xtr=Xtr, ytr=ytr, Xte=X_test, yte=y_test)
        return _run_peer(venv, "concrete_ml_peer.py", [
            "--npz", str(data), "--n-layers", "2", "--hidden", "64", "--bits", "3",
            "--n-execute", str(n_execute)])


def measure(est, X_test: np.ndarray, y_test: np.ndarray, n_execute: int) -> dict:
    """Clear / simulated accuracy, PBS, keygen and encrypted seconds of a compiled model."""
    row = {"acc_clear": float(np.mean(est.predict(X_test) == y_test)),
           "acc_sim": float(np.mean(est.predict(X_test, fhe="simulate") == y_test)),
           "pbs": int(est.fhe_report_["programmable_bootstrap_count"]),
           "tlu_bits": int(est.fhe_report_["max_tlu_input_bits"])}
    if n_execute:
        row["keygen_s"] = float(est.keygen())
        times = []
        for i in range(n_execute):
            t = time.perf_counter()
            est.predict(X_test[i:i + 1], fhe="execute")
            times.append(time.perf_counter() - t)
        row["execute_s"] = float(np.median(times))
    return row


def run_search(name: str, model, Xtr, ytr, Xte, yte, args) -> tuple[list[dict], dict]:
    from latentopt import QuantizedTorchClassifier
    from latentopt.search import LatencySearch

    float_acc = mnist_models.accuracy(model, Xte, yte)
    est = QuantizedTorchClassifier(model, n_bits=4, max_epochs=args.epochs, lr=1e-3,
                                   batch_size=64, random_state=0, verbose=0)
    space = None
    if args.per_layer_pruning:  # one ratio per prunable layer, up to 3/4 of the channels
        from latentopt.search.space import torch_space

        space = torch_space(per_layer_pruning=True, ratios=(0.0, 0.25, 0.5, 0.75))
    t0 = time.perf_counter()
    search = LatencySearch(est, param_space=space, max_accuracy_drop=args.drop,
                           reference_score=args.reference, n_trials=args.trials,
                           timeout=args.timeout, n_repeats=1, random_state=args.seed,
                           multi_fidelity=False, verbose=1)
    search.fit(Xtr, ytr)
    info = {"model": name, "float_acc": float_acc, "search_s": time.perf_counter() - t0,
            "reference": search.reference_score_, "threshold": search.threshold_,
            "budget_met": search.budget_met_, "n_results": len(search.results_),
            "load_after_search": load(), "summary": search.summary()}
    print(search.summary(), flush=True)
    best_trial = None if search.best_trial_ is None else search.best_trial_["trial"]
    rows = []
    front = sorted(search.pareto_front_, key=lambda r: r["cost"])[:args.max_points]
    for r in front:
        trial = search.study_.trials[r["trial"]]
        params = dict(trial.user_attrs["params"])
        compile_kwargs = dict(trial.user_attrs["compile"])
        fitted = search.trial_estimator(r["trial"])
        row = {"model": name, "trial": r["trial"], "chosen": r["trial"] == best_trial,
               "params": params, "compile": compile_kwargs, "predicted_s": r["cost"],
               "val_score": r["score"]}
        row.update(measure(fitted, Xte, yte, args.n_execute))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, info


def run_mlp_distilled(Xtr, ytr, Xte, yte, args) -> tuple[list[dict], dict]:
    """``QuantizedMLPClassifier`` searched on all training digits (the NeuralNetClassifier
    peer's data), every trial distilled from the float CNN ``cnn_ref`` trained on the
    same digits (``mnist_models.float_model``), with a budget of ``--reference`` (the
    peer's accuracy) minus ``--drop``."""
    import torch

    from latentopt import QuantizedMLPClassifier
    from latentopt.search import LatencySearch

    teacher = mnist_models.float_model("cnn_ref")
    with torch.no_grad():  # the teacher's logits, one row per training digit
        logits = torch.cat([teacher(torch.as_tensor(Xtr[i:i + 500]))
                            for i in range(0, len(Xtr), 500)]).numpy()
    X, X_test = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    est = QuantizedMLPClassifier(max_epochs=args.epochs, distill_alpha=0.9,
                                 distill_temperature=4.0, random_state=0, verbose=0)
    space = {"width": ("log", 16, 64), "n_layers": [1], "n_w_bits": (2, 4),
             "n_a_bits": (2, 4), "n_input_bits": (3, 5), "lr": [1e-3, 3e-3]}
    if args.output_w_bits:  # narrower output-layer weights (latentopt.search.space)
        space["output_w_bits"] = [None, *args.output_w_bits]
    t0 = time.perf_counter()
    search = LatencySearch(est, param_space=space, teacher=logits,
                           max_accuracy_drop=args.drop, reference_score=args.reference,
                           n_trials=args.trials, timeout=args.timeout, n_repeats=1,
                           random_state=args.seed, verbose=1)
    search.fit(X, ytr)
    info = {"model": "mlp_distilled", "teacher_acc": mnist_models.accuracy(teacher, Xte, yte),
            "search_s": time.perf_counter() - t0, "reference": search.reference_score_,
            "threshold": search.threshold_, "budget_met": search.budget_met_,
            "n_results": len(search.results_), "load_after_search": load()}
    print(search.summary(), flush=True)
    best_trial = None if search.best_trial_ is None else search.best_trial_["trial"]
    rows = []
    for r in sorted(search.pareto_front_, key=lambda r: r["cost"])[:args.max_points]:
        attrs = search.study_.trials[r["trial"]].user_attrs
        row = {"model": "mlp_distilled", "trial": r["trial"], "chosen": r["trial"] == best_trial,
               "params": dict(attrs["params"]), "compile": dict(attrs["compile"]),
               "predicted_s": r["cost"], "val_score": r["score"]}
        row.update(measure(search.trial_estimator(r["trial"]), X_test, yte, args.n_execute))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, info


def cifar_row(args) -> dict:
    """The fastest CNN the search builds for 32x32x3 inputs, and its time per image."""
    import torch
    from torch import nn

    from latentopt import QuantizedTorchClassifier
    from latentopt.search import LatencySearch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.AvgPool2d(2), nn.ReLU(),
                          nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(400, 10))
    X = np.concatenate([mnist_models.cifar_like(1000, seed=0),
                        mnist_models.cifar_like(300, seed=1)])
    Xt = torch.as_tensor(X)
    with torch.no_grad():  # labels: the (untrained) float CNN's own, classes balanced
        z = model(Xt)  # standardise each logit over the data (folded into the last layer)
        mean, std = z.mean(0), z.std(0)
        model[-1].weight.div_(std[:, None])
        model[-1].bias.sub_(mean).div_(std)
        y = model(Xt).argmax(1).numpy()
    X, X_test, y, y_test = X[:1000], X[1000:], y[:1000], y[1000:]
    float_acc = mnist_models.accuracy(model, X_test, y_test)
    space = {"n_w_bits": [2, 3, 4], "n_a_bits": [2, 3, 4], "n_input_bits": [3, 4, 5],
             "pruning_ratio": [0.0, 0.5]}
    t0 = time.perf_counter()
    search = LatencySearch(QuantizedTorchClassifier(model, max_epochs=3, verbose=0),
                           param_space=space, max_accuracy_drop=1.0,
                           n_trials=args.cifar_trials,
                           n_repeats=1, random_state=0, multi_fidelity=False, verbose=0,
                           holdout_fraction=0.0).fit(X, y)
    est, trial = search.best_estimator_, search.best_trial_
    if est is None:  # budget missed: the fastest compiled trial
        trial = min((r for r in search.results_ if "rounding_bits" in r),
                    key=lambda r: r["cost"])
        est = search.trial_estimator(trial["trial"])
    attrs = search.study_.trials[trial["trial"]].user_attrs
    row = {"model": "cifar_cnn (32x32x3)", "float_acc": float_acc,
           "search_s": time.perf_counter() - t0,
           "budget_met": search.budget_met_, "reference": search.reference_score_,
           "params": attrs["params"], "compile": attrs["compile"]}
    row.update(measure(est, X_test, y_test, max(1, args.n_execute)))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["mlp64", "cnn_ref"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per search")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--drop", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0, help="the search's random_state")
    ap.add_argument("--reference", type=float, default=None,
                    help="the search's reference_score (default: the float model's "
                         "validation accuracy); with --drop 0, aim at a peer's accuracy")
    ap.add_argument("--n-execute", type=int, default=2)
    ap.add_argument("--output-w-bits", type=int, nargs="*", default=[],
                    help="mlp_distilled: also search these output-layer weight bits")
    ap.add_argument("--max-points", type=int, default=4, help="front points measured")
    ap.add_argument("--cifar-trials", type=int, default=3)
    ap.add_argument("--cml-venv", type=Path, default=Path("/work/wt/cml-venv"))
    ap.add_argument("--skip-cml", action="store_true")
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--per-layer-pruning", action="store_true",
                    help="search one pruning ratio per layer (0, 0.25, 0.5 or 0.75)")
    ap.add_argument("--cml-nn-only", action="store_true",
                    help="only Concrete ML's NeuralNetClassifier (784-64-10, 3 bits)")
    ap.add_argument("--cml-only", action="store_true",
                    help="only Concrete ML's compile of the float --models (no search)")
    ap.add_argument("--out", type=Path, default=HERE / "results_mnist_search.jsonl")
    args = ap.parse_args()
    args.trials = args.trials or (4 if args.quick else 12)
    args.timeout = args.timeout or (600.0 if args.quick else 1500.0)
    args.epochs = args.epochs or (2 if args.quick else 6)
    if args.quick:
        args.n_execute = min(args.n_execute, 1)
        args.max_points = min(args.max_points, 2)
    Xtr, Xte, ytr, yte = mnist_models.load_mnist(0)
    half = len(Xtr) // 2
    Xf, yf, Xtr, ytr = Xtr[:half], ytr[:half], Xtr[half:], ytr[half:]
    if args.quick:
        Xte, yte = Xte[:300], yte[:300]
    print(f"load average at start: {load()}", flush=True)
    out = args.out.open("a")
    out.write(json.dumps({"run": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
                          "load": load()}) + "\n")
    if args.cml_nn_only or ("mlp64" in args.models and not args.skip_cml):
        nn_row = run_cml_nn(args.cml_venv, np.concatenate([Xf, Xtr]), np.concatenate([yf, ytr]),
                            Xte, yte, args.n_execute)
        print("concrete-ml NeuralNetClassifier:", json.dumps(nn_row), flush=True)
        out.write(json.dumps({"concrete_ml_nn": nn_row}) + "\n")
        out.flush()
        if args.cml_nn_only:
            out.close()
            return
    if "mlp_distilled" in args.models:
        rows, info = run_mlp_distilled(np.concatenate([Xf, Xtr]), np.concatenate([yf, ytr]),
                                       Xte, yte, args)
        for r in [info, *rows]:
            out.write(json.dumps(r) + "\n")
        out.flush()
    for name in [m for m in args.models if m != "mlp_distilled"]:
        model = float_model(name, Xf, yf)
        if not args.cml_only:
            rows, info = run_search(name, model, Xtr, ytr, Xte, yte, args)
            info.pop("summary")
            out.write(json.dumps(info) + "\n")
            for r in rows:
                out.write(json.dumps(r) + "\n")
        if not args.skip_cml:
            cml = run_cml(args.cml_venv, name, model, Xf[:500], Xte, yte, args.n_execute)
            cml["model"] = name
            print("concrete-ml:", json.dumps(cml), flush=True)
            out.write(json.dumps({"concrete_ml": cml}) + "\n")
        out.flush()
    if not args.skip_cifar and not args.cml_only:
        row = cifar_row(args)
        print("cifar:", json.dumps(row), flush=True)
        out.write(json.dumps({"cifar": row}) + "\n")
    out.write(json.dumps({"load_at_end": load()}) + "\n")
    out.close()


if __name__ == "__main__":
    main()
