"""What the torch importers support, and the error naming what they do not."""

from __future__ import annotations

__all__ = ["SUPPORTED", "UnsupportedOpError"]

#: Human-readable list of what the importers support (used in error messages).
SUPPORTED = (
    "nn.Linear, nn.Conv1d, nn.Conv2d (zero padding; native integer convolutions), "
    "nn.BatchNorm1d/2d (folded into the layer before it, else a per-channel affine), "
    "activations (nn.ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, ELU, SELU, CELU, "
    "Softplus, Hardtanh, Hardswish, Hardsigmoid, Mish, Softsign, LogSigmoid, Tanhshrink, "
    "Softshrink, Hardshrink, Threshold, their torch.nn.functional forms, and torch.relu/"
    "sigmoid/tanh/exp and those tensor methods: one table lookup each), "
    "nn.AvgPool1d/2d, nn.AdaptiveAvgPool1d/2d, torch.mean / Tensor.mean over non-batch "
    "dims, "
    "nn.MaxPool1d/2d and F.max_pool1d/2d (window PBS per output), "
    "multiplication and division by a constant number, permute/transpose (free when "
    "the flat order is unchanged, else a permutation gemm), "
    "nn.Flatten, nn.Unflatten, torch.flatten, Tensor.view/reshape/flatten/unflatten, "
    "nn.Dropout, nn.Identity, "
    "residual `a + b` / torch.add of two tensors of one shape, torch.cat along the "
    "channels; "
    "brevitas QuantIdentity, QuantLinear, "
    "QuantConv1d/2d, QuantReLU, QuantSigmoid, QuantTanh, QuantHardTanh"
)


class UnsupportedOpError(TypeError):
    """A model uses an operation the importers cannot lower."""

    def __init__(self, what: str, node: str) -> None:
        super().__init__(
            f"unsupported operation {what} (graph node {node!r}). Supported: {SUPPORTED}."
        )
