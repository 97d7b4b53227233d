"""The main job, end to end: ``python -m latentopt [--dataset breast_cancer|wine|digits]``.

(``python -m latentopt serve DIR...`` -- or the ``latentopt serve`` command -- runs the
HTTP server of :mod:`latentopt.deploy` instead.)

1. trains a float scikit-learn MLP (the accuracy reference);
2. runs a small, bounded search (:class:`latentopt.search.LatencySearch`) for the fewest
   encrypted seconds per sample (predicted by the cost model, calibrated once per
   machine in about 30 s): bit-widths, depth/width, pruning, learning rate, then per
   model the rounding bits and ``p_error`` judged with FHE simulation -- and prints the
   Pareto front (seconds against accuracy) and the chosen point;
3. compiles the fastest configuration within the accuracy budget, generates keys, runs
   real encrypted inference on a few test samples and prints clear / simulated /
   encrypted accuracy and the measured seconds per sample.
"""

from __future__ import annotations

import argparse
import time
import warnings

from latentopt.deploy.cli import number_arg


def entry(argv: list[str] | None = None) -> int:
    """``latentopt serve ...`` runs the server; anything else the main job."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["serve"]:
        from latentopt.deploy.cli import main as serve

        return serve(args[1:])
    return main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="breast_cancer",
                        choices=["breast_cancer", "wine", "digits"])
    parser.add_argument("--n-trials", type=number_arg(int, 1), default=10, help="search trials")
    parser.add_argument("--timeout", type=number_arg(float, 0, inclusive=False), default=240.0,
                        help="seconds after which the search starts no new trial")
    parser.add_argument("--max-accuracy-drop", type=number_arg(float, 0), default=0.02)
    parser.add_argument("--n-encrypted", type=number_arg(int, 1), default=8,
                        help="test samples to run under real encryption")
    parser.add_argument("--seed", type=number_arg(int, 0), default=0)
    args = parser.parse_args(argv)

    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from latentopt import QuantizedMLPClassifier
    from latentopt.search import LatencySearch

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    X, y = getattr(datasets, f"load_{args.dataset}")(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed
    )
    scaler = StandardScaler().fit(X_tr)  # inputs are quantized with one scale
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te)
    print(f"data set: {args.dataset}  train {X_tr.shape}  test {X_te.shape}")

    t0 = time.perf_counter()
    ref = MLPClassifier(max_iter=1000, random_state=args.seed).fit(X_tr, y_tr)
    print(f"float scikit-learn MLP       test accuracy {ref.score(X_te, y_te):.4f}"
          f"  ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    search = LatencySearch(
        QuantizedMLPClassifier(random_state=args.seed, verbose=0),
        max_accuracy_drop=args.max_accuracy_drop, n_trials=args.n_trials,
        timeout=args.timeout, random_state=args.seed, verbose=1,
    ).fit(X_tr, y_tr)
    unit = ("predicted seconds per sample" if search.latency_unit_ == "seconds"
            else "concrete's complexity (unitless: no cost model)")
    print(f"\nsearch ranked by {unit}: {len(search.results_)} trials in "
          f"{time.perf_counter() - t0:.0f} s (validation reference "
          f"{search.reference_score_:.4f}, budget -{args.max_accuracy_drop})")
    print(search.summary())
    if search.best_trial_ is None:
        print("no configuration met the accuracy budget; raise --n-trials or the budget")
        return 1
    clf = search.best_estimator_
    print(f"\nchosen: {search.best_params_} compiled with {search.best_compile_kwargs_}")
    rep = clf.fhe_report_
    print(f"  {rep['programmable_bootstrap_count']} PBS/sample, max TLU input "
          f"{rep['max_tlu_input_bits']} bits, p_error {rep['p_error']:.2e}, evaluation keys "
          f"{rep['size_of_evaluation_keys'] / 2**20:.0f} MiB")
    print(clf.rounded_circuit_.report())

    print(f"integer backend (clear)      test accuracy {clf.score(X_te, y_te):.4f}")
    sim = clf.predict(X_te, fhe="simulate")
    print(f"FHE simulation               test accuracy {np.mean(sim == y_te):.4f}")
    t0 = time.perf_counter()
    clf.keygen()
    print(f"key generation {time.perf_counter() - t0:.1f} s")
    n = min(args.n_encrypted, len(X_te))
    t0 = time.perf_counter()
    enc = clf.predict(X_te[:n], fhe="execute")
    dt = time.perf_counter() - t0
    print(f"encrypted inference on {n} test samples: accuracy {np.mean(enc == y_te[:n]):.4f}, "
          f"{dt / n:.3f} s/sample, equal to simulation on {np.mean(enc == sim[:n]) * 100:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(entry())
