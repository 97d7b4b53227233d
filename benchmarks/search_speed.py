"""Trials per minute of LatencySearch, before/after, on data no test knows.

The issue's problem: ``make_classification`` with 1,500 rows, 24 features, 3 classes
(seed 0), 25% test split, StandardScaler.  Runs ``LatencySearch`` for ``--timeout``
seconds (``max_accuracy_drop=0.02``, ``random_state=0``) and prints one JSON line:
completed trials, all trials (including ones rejected by the cost bound or pruned after
short training), trials per minute of each, the best point and its test accuracy.

    python benchmarks/search_speed.py --timeout 300 --label after &
    PYTHONPATH=/path/to/old/checkout python benchmarks/search_speed.py --timeout 300 \
        --label before &      # side by side: both runs share the machine equally
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

warnings.filterwarnings("ignore")


def main() -> None:
    import latentopt
    from latentopt import QuantizedMLPClassifier
    from latentopt.search import LatencySearch

    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    X, y = make_classification(1500, 24, n_informative=12, n_classes=3, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
    t0, c0 = time.perf_counter(), time.process_time()
    search = LatencySearch(QuantizedMLPClassifier(random_state=0, verbose=0),
                           max_accuracy_drop=0.02, n_trials=10_000, timeout=args.timeout,
                           random_state=0, verbose=0).fit(Xtr, ytr)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    states: dict[str, int] = {}
    for t in search.study_.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    # the trials' own span (the study timestamps): excludes the reference, the final
    # check and the refit, which both versions do once
    ended = [t.datetime_complete for t in search.study_.trials if t.datetime_complete]
    span = (max(ended) - min(t.datetime_start for t in search.study_.trials
                             if t.datetime_start)).total_seconds()
    best = getattr(search, "best_trial_", None)
    est = getattr(search, "best_estimator_", None)
    print(json.dumps({
        "label": args.label, "code": latentopt.__file__, "seconds": round(seconds, 1),
        "timeout": args.timeout, "states": states,
        "trials_seconds": round(span, 1), "cpu_seconds_all": round(cpu, 1),
        "trials_per_cpu_min": round(60 * len(ended) / cpu, 2),
        "completed_per_min": round(60 * states.get("COMPLETE", 0) / span, 2),
        "all_per_min": round(60 * len(ended) / span, 2),
        "load_average": os.getloadavg()[0],
        "best": {k: best.get(k) for k in ("hidden_layer_sizes", "n_w_bits", "n_a_bits",
                                         "latency", "score", "rounding_bits", "p_error")}
        if best else None,
        "test_accuracy_simulated": None if est is None
        else float(np.mean(est.predict(Xte, fhe="simulate") == yte)),
    }, default=str), flush=True)


if __name__ == "__main__":
    main()
