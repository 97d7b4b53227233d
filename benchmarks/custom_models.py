"""Custom torch models: float vs PTQ (4-8 bits) vs brevitas QAT, FHE, onnxruntime.

Two models:

* a small CNN on scikit-learn's digits (8x8 images): conv(1->4, 3x3) + batch norm + ReLU
  + 2x2 average pooling + conv(4->4, 3x3) + ReLU + linear(64->10);
* an MLP on breast_cancer (standardised): 30 -> 32 -> 32 -> 2 with ReLU.

For each: float test accuracy, PTQ accuracy (``compile_torch_model``) at 8/6/5/4/3
bits, QAT accuracy (the same architecture in brevitas, fine-tuned from the float
weights, imported with ``compile_brevitas_qat_model``), FHE-simulated accuracy of the
3-bit QAT and 6-bit PTQ models after rounding (p_error 1e-3), encrypted latency per
sample, and onnxruntime vs integer backend
throughput (same run, batch 4096).

    python benchmarks/custom_models.py [--seeds 3] [--n-execute 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.quant import Int32Bias
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from latentopt import compile_brevitas_qat_model, compile_torch_model
from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_export import OnnxRunner


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 10))


def qat_cnn(bits: int) -> nn.Module:
    return nn.Sequential(
        qnn.QuantIdentity(bit_width=bits + 2, return_quant_tensor=True),
        qnn.QuantConv2d(1, 4, 3, padding=1, weight_bit_width=bits, bias_quant=Int32Bias),
        qnn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        nn.AvgPool2d(2),
        qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True),
        qnn.QuantConv2d(4, 4, 3, padding=1, weight_bit_width=bits, bias_quant=Int32Bias),
        qnn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(64, 10, weight_bit_width=bits, bias=True, bias_quant=Int32Bias))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 2))


def qat_mlp(bits: int) -> nn.Module:
    return nn.Sequential(
        qnn.QuantIdentity(bit_width=bits + 2, return_quant_tensor=True),
        qnn.QuantLinear(30, 32, weight_bit_width=bits, bias=True, bias_quant=Int32Bias),
        qnn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        qnn.QuantLinear(32, 32, weight_bit_width=bits, bias=True, bias_quant=Int32Bias),
        qnn.QuantReLU(bit_width=bits, return_quant_tensor=True),
        qnn.QuantLinear(32, 2, weight_bit_width=bits, bias=True, bias_quant=Int32Bias))


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, seed: int,
          lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def init_from_float(qat: nn.Module, float_model: nn.Module) -> nn.Module:
    """QAT fine-tuning starts from the float weights (batch norms folded)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    layers, mods = [], list(float_model)
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            layers.append(fuse_conv_bn_eval(m, nxt) if isinstance(nxt, nn.BatchNorm2d) else m)
    targets = [m for m in qat if isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear))]
    with torch.no_grad():
        for t, src in zip(targets, layers):
            t.weight.copy_(src.weight)
            t.bias.copy_(src.bias)
    return qat


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y))


def datasets(seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    digits = ((Xtr / 16).astype(np.float32).reshape(-1, 1, 8, 8), ytr,
              (Xte / 16).astype(np.float32).reshape(-1, 1, 8, 8), yte)
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    sc = StandardScaler().fit(Xtr)
    cancer = (sc.transform(Xtr).astype(np.float32), ytr, sc.transform(Xte).astype(np.float32),
              yte)
    return {"digits_cnn": digits, "breast_cancer_mlp": cancer}


FLOAT = {"digits_cnn": (cnn, 30), "breast_cancer_mlp": (mlp, 60)}
QAT = {"digits_cnn": qat_cnn, "breast_cancer_mlp": qat_mlp}
PTQ_BITS = (8, 6, 5, 4, 3)
#: per-lookup error probability under FHE (the CNN has ~400 lookups per sample)
P_ERROR = 1e-3


def one_seed(seed: int, n_execute: int, fhe: bool) -> list[dict]:
    rows = []
    for name, (Xtr, ytr, Xte, yte) in datasets(seed).items():
        make, epochs = FLOAT[name]
        torch.manual_seed(seed)
        model = train(make(), Xtr, ytr, epochs, seed)
        with torch.no_grad():
            row = {"model": name, "seed": seed,
                   "float": accuracy(model(torch.as_tensor(Xte)).argmax(1).numpy(), yte)}
        cal = Xtr[:500]
        for b in PTQ_BITS:
            q = compile_torch_model(model, cal, n_bits=b, task="classification", fhe=False,
                                    verbose=0)
            row[f"ptq{b}"] = accuracy(q.predict(Xte), yte)
        for b in (4, 3):
            torch.manual_seed(seed)
            qat = init_from_float(QAT[name](b), model)
            qat = train(qat, Xtr, ytr, epochs, seed, lr=1e-3)
            qm = compile_brevitas_qat_model(qat, cal, task="classification", fhe=False,
                                            verbose=0)
            row[f"qat{b}"] = accuracy(qm.predict(Xte), yte)
            if b == 3:
                qat3 = qat
        if fhe:
            t = time.perf_counter()
            qm = compile_brevitas_qat_model(qat3, cal, task="classification", rounding_bits=5,
                                            p_error=P_ERROR, verbose=0)
            row["compile_s"] = time.perf_counter() - t
            row["qat3_r5_int"] = accuracy(qm.predict(Xte), yte)
            row["qat3_r5_sim"] = accuracy(qm.predict(Xte, fhe="simulate"), yte)
            row["pbs"] = qm.fhe_report_["programmable_bootstrap_count"]
            row["tlu_bits"] = qm.fhe_report_["max_tlu_input_bits"]
            p6 = compile_torch_model(model, cal, n_bits=6, task="classification",
                                     rounding_bits=6, p_error=P_ERROR, verbose=0)
            row["ptq6_r6_sim"] = accuracy(p6.predict(Xte, fhe="simulate"), yte)
            if n_execute and seed == 0:
                row["keygen_s"] = qm.keygen()
                t = time.perf_counter()
                enc = qm.predict(Xte[:n_execute], fhe="execute")
                row["s_per_sample"] = (time.perf_counter() - t) / n_execute
                row["exec_eq_sim"] = float(np.mean(enc == qm.predict(Xte[:n_execute],
                                                                      fhe="simulate")))
        if seed == 0:
            row.update(throughput(model, cal, Xte))
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    return rows


def throughput(model: nn.Module, cal: np.ndarray, Xte: np.ndarray) -> dict[str, float]:
    """Samples/s of the 6-bit PTQ circuit: integer backend vs onnxruntime, batch 4096."""
    q = compile_torch_model(model, cal, n_bits=6, task="classification", fhe=False, verbose=0)
    X = np.resize(Xte.reshape(len(Xte), -1), (4096, Xte[0].size)).astype(np.float64)
    backend = IntegerBackend(q.circuit_)
    with tempfile.TemporaryDirectory() as d:
        runner = OnnxRunner(q.to_onnx(Path(d) / "m.onnx"))
        assert np.array_equal(runner.predict(X), backend.predict(X))
        out = {}
        for key, fn in (("int_per_s", backend.predict), ("onnx_per_s", runner.predict)):
            fn(X)
            t = time.perf_counter()
            for _ in range(5):
                fn(X)
            out[key] = 5 * len(X) / (time.perf_counter() - t)
        with torch.no_grad():
            Xt = torch.as_tensor(X.reshape(-1, *Xte.shape[1:]), dtype=torch.float32)
            model(Xt)
            t = time.perf_counter()
            for _ in range(5):
                model(Xt)
            out["torch_float_per_s"] = 5 * len(X) / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-execute", type=int, default=3)
    ap.add_argument("--no-fhe", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [r for s in range(args.seeds) for r in one_seed(s, args.n_execute, not args.no_fhe)]
    keys = ["float"] + [f"ptq{b}" for b in PTQ_BITS] + ["qat4", "qat3", "qat3_r5_int",
                                                        "qat3_r5_sim", "ptq6_r6_sim"]
    print(f"\n| model | {' | '.join(keys)} |")
    print("|---" * (len(keys) + 1) + "|")
    for name in FLOAT:
        sub = [r for r in rows if r["model"] == name]
        cells = []
        for k in keys:
            vals = [r[k] for r in sub if k in r]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-")
        print(f"| {name} | {' | '.join(cells)} |")
    print("\nseed 0 details:")
    for r in rows:
        if r["seed"] == 0:
            extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()
                     if k not in keys and k not in ("model", "seed")}
            print(r["model"], extra)


if __name__ == "__main__":
    main()
