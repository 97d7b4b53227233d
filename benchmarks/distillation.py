"""Knowledge distillation: does a narrow 2-/3-bit student learn more from a teacher?

For digits and breast_cancer, over several seeds (25% stratified test split per seed,
StandardScaler fitted on the training part): fit two float teachers --
``MLPClassifier(hidden_layer_sizes=(256, 256))`` and ``HistGradientBoostingClassifier``
-- then train the same narrow quantized student (hidden (16,) on digits, (8,) on
breast_cancer; 2-bit and 3-bit weights/activations) on the labels only and distilled from
each teacher at a few (temperature, alpha) settings.  A third teacher, "MLP-oof", gives
the MLP's *out-of-fold* probabilities on the training set (``cross_val_predict``, 5
folds, passed as an array teacher): a teacher that fits its training set perfectly gives
soft targets close to the labels there, out-of-fold outputs do not.

Prints, per data set and bit-width, mean +- std test accuracy over seeds of the teachers,
of the labels-only student and of every distilled student, with the paired difference
(distilled - labels-only, same seed and split) and how many seeds improved / tied /
got worse.  The table is also written to ``benchmarks/results_distillation.txt``.

    python benchmarks/distillation.py [--seeds 5] [--out benchmarks/results_distillation.txt]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn import datasets
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import cross_val_predict, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier

warnings.filterwarnings("ignore")

HIDDEN = {"digits": (16,), "breast_cancer": (8,)}
BITS = (2, 3)
#: (teacher, temperature, alpha); alpha is the weight of the teacher's soft loss
SETTINGS = [
    ("MLP", 2.0, 0.5), ("MLP", 4.0, 0.5), ("MLP", 4.0, 0.9),
    ("HGB", 2.0, 0.5), ("HGB", 4.0, 0.5), ("HGB", 4.0, 0.9),
    ("MLP-oof", 2.0, 0.5), ("MLP-oof", 4.0, 0.9),
]


def _teachers(Xtr: np.ndarray, ytr: np.ndarray, seed: int) -> dict:
    mlp = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=500, random_state=seed)
    oof = cross_val_predict(mlp, Xtr, ytr, cv=5, method="predict_proba")
    return {
        "MLP": mlp.fit(Xtr, ytr),
        "HGB": HistGradientBoostingClassifier(random_state=seed).fit(Xtr, ytr),
        "MLP-oof": oof,  # an array teacher: one row of probabilities per training sample
    }


def run(seeds: int) -> dict:
    results: dict = {}
    for name in ("digits", "breast_cancer"):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        res = results.setdefault(name, {"teachers": {}, "students": {}})
        for seed in range(seeds):
            t0 = time.time()
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y,
                                                  random_state=seed)
            sc = StandardScaler().fit(Xtr)
            Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
            teachers = _teachers(Xtr, ytr, seed)
            for t in ("MLP", "HGB"):
                res["teachers"].setdefault(t, []).append(teachers[t].score(Xte, yte))
            for bits in BITS:
                common = dict(hidden_layer_sizes=HIDDEN[name], n_w_bits=bits, n_a_bits=bits,
                              random_state=seed, verbose=0)
                stud = res["students"].setdefault(bits, {})
                base = QuantizedMLPClassifier(**common).fit(Xtr, ytr)
                stud.setdefault("labels only", []).append(base.score(Xte, yte))
                for teacher, temp, alpha in SETTINGS:
                    est = QuantizedMLPClassifier(**common, teacher=teachers[teacher],
                                                 distill_temperature=temp, distill_alpha=alpha)
                    est.fit(Xtr, ytr)
                    stud.setdefault(f"{teacher} T={temp:g} a={alpha:g}", []).append(
                        est.score(Xte, yte))
            print(f"[{name} seed {seed}: {time.time() - t0:.0f} s]", flush=True)
    return results


def table(results: dict, seeds: int) -> str:
    lines = [f"Knowledge distillation, {seeds} seeds (25% stratified test split per seed); "
             "test accuracy mean +- std;",
             "diff = distilled - labels-only on the same seed (mean +- std); "
             "+/=/- = seeds improved / tied / worse.", ""]
    for name, res in results.items():
        teach = ", ".join(f"{t} {np.mean(v):.4f} +- {np.std(v):.4f}"
                          for t, v in res["teachers"].items())
        lines.append(f"{name}: student hidden {HIDDEN[name]}; teachers (float): {teach}")
        for bits, stud in res["students"].items():
            lines.append(f"  {bits}-bit weights/activations")
            lines.append(f"    {'student':24s} {'accuracy':>17s} {'diff (points)':>17s} "
                         f"{'+/=/-':>7s}")
            base = np.array(stud["labels only"])
            for label, accs in stud.items():
                a = np.array(accs)
                acc = f"{a.mean():.4f} +- {a.std():.4f}"
                if label == "labels only":
                    lines.append(f"    {label:24s} {acc:>17s}")
                    continue
                d = (a - base) * 100
                wins = f"{(d > 1e-9).sum()}/{(np.abs(d) <= 1e-9).sum()}/{(d < -1e-9).sum()}"
                lines.append(f"    {label:24s} {acc:>17s} {d.mean():+8.2f} +- {d.std():5.2f} "
                             f"{wins:>7s}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_name(
        "results_distillation.txt")))
    args = parser.parse_args()
    t0 = time.time()
    text = table(run(args.seeds), args.seeds)
    text += f"\ntotal time {time.time() - t0:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
