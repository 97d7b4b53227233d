"""Training loop for quantization-aware modules.

Adam on mini-batches (optionally with one extra target row per sample, for knowledge
distillation), optional validation set with early stopping (the best weights are
restored), a tqdm progress bar over epochs that ``verbose=0`` silences, and seeding that
leaves the caller's global torch RNG state untouched.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["TrainingHistory", "first_argmax", "seeded", "torch_threads", "train_module"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SoftLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def first_argmax(out: torch.Tensor) -> torch.Tensor:
    """Each row's argmax as the circuit's ``np.argmax`` picks it: ties go to the first.

    The circuit's logits are exact integers; the float module computes them with rounding
    errors of about 1e-7, which broke exact ties at random, so the validation score that
    early stopping selects on was not the fitted model's (0.64 reported, 0.60 measured).
    Values within 1e-6 of the row's maximum (relative, at least 1e-6) count as ties.
    """
    top = out.max(1, keepdim=True).values
    return (out >= top - 1e-6 * top.abs().clamp_min(1.0)).to(torch.uint8).argmax(1)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block with torch's RNG seeded, restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count.

    Small tabular networks train several times faster on one thread: their tensors are
    too small for parallelism to pay for its synchronisation.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class TrainingHistory:
    """Per-epoch losses, the epoch whose weights were kept and why training stopped."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    @property
    def n_epochs(self) -> int:
        return len(self.train_loss)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def train_module(
    module: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    loss_fn: LossFn,
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    score_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    max_epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    patience: int = 20,
    seed: int | None = None,
    verbose: int = 0,
    description: str = "training",
    soft_targets: np.ndarray | None = None,
    soft_loss_fn: SoftLossFn | None = None,
) -> TrainingHistory:
    """Train ``module`` in place.

    Parameters
    ----------
    module : torch.nn.Module
        Maps float inputs to the tensor ``loss_fn`` expects.
    X, y : arrays
        Training data (``y`` int64 class indices or float targets).
    loss_fn : callable
        ``loss_fn(output, target) -> scalar tensor``.
    X_val, y_val : arrays, optional
        Validation data; when given, training stops after ``patience`` epochs without
        improvement and the best weights are restored.
    score_fn : callable, optional
        ``score_fn(output, target) -> float`` (higher is better) on validation data; when
        given it is what early stopping monitors (validation loss breaks ties),
        otherwise the validation loss is monitored.
    max_epochs, lr, weight_decay, batch_size
        Adam with cosine learning-rate decay over ``max_epochs``.
    seed : int, optional
        Seeds batch shuffling.
    verbose : int
        0 silences the progress bar.
    soft_targets : array of shape (n_samples, ...), optional
        One extra row per training sample (e.g. a teacher's outputs for knowledge
        distillation, :mod:`latentopt.nn.distill`), batched together with ``X`` and ``y``.
    soft_loss_fn : callable, optional
        ``soft_loss_fn(output, target, soft_target) -> scalar tensor``: the training loss
        when ``soft_targets`` is given (required then).  Validation loss, score and early
        stopping still use ``loss_fn`` on the hard validation labels.
    """
    from tqdm.auto import tqdm

    if max_epochs < 1:
        raise ValueError("max_epochs must be >= 1")
    Xt = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y))
    st = None
    if soft_targets is not None:
        if soft_loss_fn is None:
            raise ValueError("soft_targets need a soft_loss_fn")
        st = torch.as_tensor(np.asarray(soft_targets), dtype=torch.float32)
        if len(st) != len(Xt):
            raise ValueError(f"soft_targets has {len(st)} rows, X has {len(Xt)}")
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if has_val:
        Xv = torch.as_tensor(np.asarray(X_val), dtype=torch.float32)
        yv = torch.as_tensor(np.asarray(y_val))
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else
                                        int(torch.randint(0, 2**31 - 1, (1,)).item()))
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(e, max_epochs) / max_epochs))
    )
    hist = TrainingHistory()
    best_key: tuple[float, ...] | None = None
    best_state, since_best = None, 0
    bar = tqdm(range(max_epochs), desc=description, disable=verbose <= 0, leave=False,
               unit="epoch")
    for epoch in bar:
        module.train()
        total, count = 0.0, 0
        for idx in _batches(len(Xt), batch_size, gen):
            if len(idx) < 2 and len(Xt) >= 2:
                continue  # a 1-sample batch adds noise (and breaks batch statistics)
            opt.zero_grad()
            if st is None:
                loss = loss_fn(module(Xt[idx]), yt[idx])
            else:
                assert soft_loss_fn is not None
                loss = soft_loss_fn(module(Xt[idx]), yt[idx], st[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss={loss.item()}); lower lr"
                )
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(idx)
            count += len(idx)
        sched.step()
        hist.train_loss.append(total / max(count, 1))
        postfix = {"loss": f"{hist.train_loss[-1]:.4f}"}
        if has_val:
            module.eval()
            with torch.no_grad():
                out = module(Xv)
                vloss = float(loss_fn(out, yv).item())
                hist.val_loss.append(vloss)
                if score_fn is not None:
                    hist.val_score.append(float(score_fn(out, yv)))
                    postfix["val_score"] = f"{hist.val_score[-1]:.4f}"
            postfix["val_loss"] = f"{vloss:.4f}"
            # Monitor the score when there is one (loss breaks ties), else the loss.
            key = (-hist.val_score[-1], vloss) if score_fn is not None else (vloss,)
            if best_key is None or key < best_key:
                best_key, since_best, hist.best_epoch = key, 0, epoch
                best_state = copy.deepcopy(module.state_dict())
            else:
                since_best += 1
                if since_best >= patience:
                    hist.stopped_early = True
                    break
        else:
            hist.best_epoch = epoch
        bar.set_postfix(postfix)
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return hist
