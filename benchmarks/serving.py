"""Serving encrypted inference over HTTP: throughput and latency, and the HTTP overhead.

Trains and compiles a 16-PBS model (breast_cancer, 16 hidden units, 3-bit weights and
activations, approximate rounding to 5 bits, p_error 0.01), writes its deployment, then

1. **overhead at batch 1**: median latency of one sample through ``latentopt serve``
   (client encrypt -> HTTP -> worker process -> HTTP -> decrypt, with the real
   :class:`latentopt.deploy.Client`) against in-process ``FHECircuit.execute`` (encrypt,
   run, decrypt in one process) of the same circuit; the target is at most 10 %;
2. **throughput and latency** against the number of worker processes and of concurrent
   clients (each client its own keys; every client sends ``--requests`` single-sample
   requests back to back): requests/s, p50 and p99.

Servers run on 127.0.0.1 in subprocesses; keys are real (no key cache).

    python benchmarks/serving.py [--workers 1 2] [--clients 1 2 4] [--requests 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from timing import median_time

from latentopt import QuantizedMLPClassifier
from latentopt.deploy import Client

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]


def start_server(model_dir: Path, store: Path, workers: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentopt", "serve", str(model_dir), "--port", str(port),
         "--key-store", str(store), "--workers", str(workers), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def load(url: str, key_dirs: list[Path], X: np.ndarray, n_requests: int
         ) -> tuple[float, np.ndarray]:
    clients = [Client(url, "model", key_dir=d) for d in key_dirs]
    for c in clients:
        c.register()
    latencies: list[float] = []
    lock = threading.Lock()

    def work(c: Client, i: int) -> None:
        for j in range(n_requests):
            k = (i * n_requests + j) % len(X)
            t0 = time.perf_counter()
            c.predict(X[k : k + 1])
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return len(latencies) / wall, np.asarray(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(16,), n_w_bits=3, n_a_bits=3,
                                 random_state=0, verbose=0).fit(X, y)
    clf.compile(rounding_bits=5, p_error=0.01)
    rep = clf.fhe_report_
    print(f"model: {rep['programmable_bootstrap_count']} PBS/sample, max TLU "
          f"{rep['max_tlu_input_bits']} bits, evaluation keys "
          f"{rep['size_of_evaluation_keys'] / 2**20:.0f} MiB, {os.cpu_count()} cores")
    tmp = Path(tempfile.mkdtemp(prefix="latentopt-serving-"))
    clf.save_deployment(tmp / "model")

    fc = clf.fhe_circuit_
    q = fc.circuit.input_quantizer.apply(X[:1])
    fc.keygen()
    t_local = median_time(lambda: fc.execute(q), args.repeats)

    proc, url = start_server(tmp / "model", tmp / "store-overhead", 1)
    try:
        with Client(url, "model", key_dir=tmp / "keys-overhead") as c:
            c.register()
            t_http = median_time(lambda: c.predict(X[:1]), args.repeats)
    finally:
        stop(proc)
    print(f"\nbatch 1, median of {args.repeats}: in-process execute {t_local * 1e3:.1f} ms, "
          f"over HTTP {t_http * 1e3:.1f} ms: overhead {(t_http / t_local - 1) * 100:+.1f} %")

    print(f"\n{'workers':>7s} {'clients':>7s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for w in args.workers:
        proc, url = start_server(tmp / "model", tmp / f"store-{w}", w)
        try:
            for n in args.clients:
                dirs = [tmp / f"keys-{i}" for i in range(n)]
                rate, lat = load(url, dirs, X, args.requests)
                p50, p99 = np.percentile(lat, [50, 99]) * 1e3
                print(f"{w:7d} {n:7d} {rate:7.2f} {p50:7.0f} {p99:7.0f}", flush=True)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
