"""The main job, end to end: ``python -m latentopt [--dataset breast_cancer|wine|digits]``.

Trains a float scikit-learn MLP and a 3-bit quantization-aware ``QuantizedMLPClassifier``
on a data set bundled with scikit-learn, compiles the quantized circuit to TFHE with
rounded table lookups, runs real encrypted inference on a few test samples and prints
clear / simulated / encrypted accuracy and latency.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentopt", description=__doc__)
    parser.add_argument("--dataset", default="breast_cancer",
                        choices=["breast_cancer", "wine", "digits"])
    parser.add_argument("--n-encrypted", type=int, default=8,
                        help="test samples to run under real encryption")
    parser.add_argument("--no-fhe", action="store_true", help="skip FHE compile/execute")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from latentopt import QuantizedMLPClassifier

    warnings.filterwarnings("ignore", category=UserWarning)
    X, y = getattr(datasets, f"load_{args.dataset}")(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed
    )
    print(f"data set: {args.dataset}  train {X_tr.shape}  test {X_te.shape}")

    t0 = time.perf_counter()
    float_mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=1000,
                                                              random_state=args.seed))
    float_mlp.fit(X_tr, y_tr)
    print(f"float scikit-learn MLP     test accuracy {float_mlp.score(X_te, y_te):.4f}"
          f"  ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    model = make_pipeline(
        StandardScaler(),
        QuantizedMLPClassifier(hidden_layer_sizes=(64,), n_w_bits=3, n_a_bits=3,
                               random_state=args.seed, verbose=1),
    )
    model.fit(X_tr, y_tr)
    clf = model[-1]
    print(f"3-bit QAT MLP (integer)    test accuracy {model.score(X_te, y_te):.4f}"
          f"  ({time.perf_counter() - t0:.1f} s, {clf.n_iter_} epochs)")
    print(clf.report())

    if args.no_fhe:
        return 0
    scaler = model[0]
    Xs_te = scaler.transform(X_te)
    if not hasattr(clf, "compile"):
        print("FHE backend not available in this build")
        return 0
    t0 = time.perf_counter()
    clf.compile(rounding_bits=5, p_error=0.01, verbose=1)
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {clf.compiled_report_}")
    sim = clf.predict(Xs_te, fhe="simulate")
    print(f"FHE simulation             test accuracy {np.mean(sim == y_te):.4f}")
    n = min(args.n_encrypted, len(Xs_te))
    t0 = time.perf_counter()
    clf.keygen()
    print(f"key generation {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    enc = clf.predict(Xs_te[:n], fhe="execute")
    dt = time.perf_counter() - t0
    print(f"encrypted inference on {n} samples: accuracy {np.mean(enc == y_te[:n]):.4f}, "
          f"{dt / n:.3f} s/sample, agrees with simulation on "
          f"{np.mean(enc == sim[:n]) * 100:.0f}% of samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
