"""Shared fixtures of the torch QAT tests: digits as 8x8 images and float models trained
on them once per session (small, so that every test stays fast)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


@functools.cache
def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as (n, 1, 8, 8) float32 images in [0, 1], and their labels."""
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32), y


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 10))


def train_float(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int = 80,
                lr: float = 1e-2) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    loss_fn = nn.functional.cross_entropy if yt.dtype == torch.int64 else nn.functional.mse_loss
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss_fn(model(Xt), yt).backward()
        opt.step()
    return model.eval()


@functools.cache
def _trained_cnn() -> nn.Module:
    X, y = digits_images()
    torch.manual_seed(0)
    return train_float(small_cnn(), X[:1200], y[:1200])


def trained_cnn() -> nn.Module:
    """A float CNN trained on the first 1200 digits (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_trained_cnn())


def float_accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.as_tensor(X)).argmax(1).numpy() == y).mean())


@functools.cache
def _trained_tiny_cnn() -> nn.Module:
    X, y = digits_images()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(36, 10))
    return train_float(model, X[:1200], y[:1200], epochs=150)


def trained_tiny_cnn() -> nn.Module:
    """A very small float CNN (36 lookups) for search tests (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_trained_tiny_cnn())
