"""Lowering convolutions, poolings and other fixed linear maps of quantized values.

A mixin of the graph builder (:mod:`.graph_lowering`): convolutions become
:class:`~latentopt.ir.Conv`, average poolings and spatial means
:class:`~latentopt.ir.SumPool` (the divisors fold into the output scale), max poolings
:class:`~latentopt.ir.MaxPool` (the value keeps its quantizer), multiplications by a
positive constant only change the scale, permutations of the flat order a gemm of
the permutation matrix (nothing when only axes of size 1 move), and a per-channel
affine map (a batch norm
that could not be folded, a negative factor) a depthwise 1x1 convolution of signs.
Other linear maps whose rows have one magnitude become a dense gemm of ``+-1`` weights,
of at most :data:`MAX_DENSE_ENTRIES` entries.  The torch geometry is read by
:mod:`.window_lowering`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..ir import Conv, Gemm, MaxPool, SumPool
from .fx_import import Op, UnsupportedOpError
from .quant_values import Pending, QValue
from .window_lowering import (
    average_factors,
    avg_pool_geometry,
    conv_geometry,
    max_pool_geometry,
)

__all__ = ["MAX_DENSE_ENTRIES", "SpatialOps"]

#: Largest dense matrix (entries) of a linear map that is no convolution nor pooling.
MAX_DENSE_ENTRIES = 1 << 26


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


class SpatialOps:
    """Builder methods for spatial and fixed linear operations (see module docstring).

    Relies on the builder's ``shapes``, ``env``, ``policy``, ``_unique``, ``_emit``,
    ``_qvalue`` and ``_materialise``.
    """

    shapes: dict[str, tuple[int, ...]]
    env: dict[str, Any]
    policy: Any
    _unique: Callable[[str], str]
    _emit: Callable[[Any], None]
    _qvalue: Callable[[Op, str], QValue]
    _materialise: Callable[..., QValue]
    _reshape: Callable[[Op], None]

    def _conv(self, op: Op, x: QValue, w_int: np.ndarray, w_scale: np.ndarray,
              bias: np.ndarray | None) -> None:
        """A convolution: one :class:`Conv`, per-output-channel accumulator scales."""
        in_shape, out_shape = self.shapes[op.inputs[0]], self.shapes[op.name]
        assert op.module is not None
        channel = np.repeat(np.arange(w_int.shape[0]), _numel(out_shape[1:]))
        b = None if bias is None else self.policy.bias_int(op, bias, x.scale[0] * w_scale)
        node = Conv(self._unique(op.name), (x.name,), weight=w_int, input_shape=in_shape,
                    bias=b, input_zero_point=x.zero_point,
                    **conv_geometry(op.module, in_shape))
        self._check_shape(node.output_shape, out_shape, op.name)
        self._emit(node)
        self.env[op.name] = QValue(node.name, out_shape, x.scale[0] * w_scale[channel], 0)

    def _sum_like(self, op: Op, mat: np.ndarray, bias: np.ndarray | None) -> None:
        """A fixed linear map whose rows have one magnitude (pooling, mean, diagonal)."""
        x = self._qvalue(op, "pooling")
        eff = np.abs(mat) * x.scale[None, :]
        row_mag = eff.max(axis=1)
        ok = np.all((eff == 0) | np.isclose(eff, row_mag[:, None], rtol=1e-9, atol=0))
        if not ok and not x.uniform:
            x = self._materialise(x, self.policy.requant_params(op.inputs[0]),
                                  f"{op.inputs[0]}_requant")
            eff = np.abs(mat) * x.scale[None, :]
            row_mag = eff.max(axis=1)
            ok = np.all((eff == 0) | np.isclose(eff, row_mag[:, None], rtol=1e-9, atol=0))
        if not ok or np.any(row_mag == 0):
            raise UnsupportedOpError("a weighted pooling (rows of different magnitudes)",
                                     op.name)
        weight = np.sign(mat).astype(np.int64)
        b = None if bias is None else np.rint(bias / row_mag).astype(np.int64)
        gname = self._unique(op.name)
        self._emit(Gemm(gname, (x.name,), weight=weight, bias=b, input_zero_point=x.zero_point))
        self.env[op.name] = QValue(gname, self.shapes[op.name], row_mag, 0)

    def _pool(self, op: Op) -> None:
        assert op.fn is not None
        fn = op.fn
        in_shape, out_shape = self.shapes[op.inputs[0]], self.shapes[op.name]
        geo = avg_pool_geometry(op, in_shape, out_shape)
        factors = None
        if geo is not None:
            probe = SumPool("_", ("_",), input_shape=in_shape, **geo)
            if probe.out_features == _numel(out_shape):
                factors = average_factors(probe, fn, op.name)
        if geo is None or factors is None:  # no strided window sum: a dense map
            mat = _probe(lambda e: fn(e), in_shape, out_shape, op.name)
            self._sum_like(op, mat, None)
            return
        x = self._per_channel_scale(op, in_shape)
        node = SumPool(self._unique(op.name), (x.name,), input_shape=in_shape,
                       input_zero_point=x.zero_point, **geo)
        self._emit(node)
        channel_scale = x.scale.reshape(in_shape[0], -1)[:, 0]
        scale = np.repeat(channel_scale, _numel(node.output_shape[1:])) * factors
        self.env[op.name] = QValue(node.name, out_shape, scale, 0)

    def _reorder(self, op: Op) -> None:
        """``permute`` / ``transpose``: free when the flat order is unchanged (moving
        axes of size 1), else a gemm of the permutation matrix (exact, leveled)."""
        assert op.fn is not None
        in_shape, out_shape = self.shapes[op.inputs[0]], self.shapes[op.name]
        n = _numel(in_shape)
        with torch.no_grad():
            moved = op.fn(torch.arange(n, dtype=torch.float64).reshape(1, *in_shape))
        if tuple(moved.shape) != (1, *out_shape):
            raise UnsupportedOpError("a permutation that moves the batch axis", op.name)
        src = moved.reshape(-1).numpy().astype(np.int64)
        if np.array_equal(src, np.arange(n)):
            self._reshape(op)
            return
        if n * n > MAX_DENSE_ENTRIES:
            raise ValueError(f"{op.name!r}: a permutation of {n} features would be a "
                             f"{n} x {n} gemm (over {MAX_DENSE_ENTRIES} entries)")
        mat = np.zeros((n, n))
        mat[np.arange(n), src] = 1.0
        self._sum_like(op, mat, None)

    def _maxpool(self, op: Op) -> None:
        """Max pooling of quantized integers: ``max`` commutes with the (increasing)
        dequantization when each channel has one scale; the value keeps its quantizer."""
        in_shape, out_shape = self.shapes[op.inputs[0]], self.shapes[op.name]
        geo = max_pool_geometry(op, in_shape, out_shape)
        if geo is None:
            raise UnsupportedOpError("max pooling with return_indices or on a 3-D+ input",
                                     op.name)
        x = self._per_channel_scale(op, in_shape)
        node = MaxPool(self._unique(op.name), (x.name,), input_shape=in_shape, **geo)
        self._check_shape(node.output_shape, out_shape, op.name)
        self._emit(node)
        channel_scale = x.scale.reshape(in_shape[0], -1)[:, 0]
        self.env[op.name] = QValue(node.name, out_shape, np.repeat(
            channel_scale, _numel(node.output_shape[1:])), x.zero_point, x.params)

    def _scale(self, op: Op) -> None:
        """Multiplication by a constant: a positive factor only changes the scale."""
        factor = float(op.meta["factor"])
        v = self.env[op.inputs[0]]
        if factor > 0 and isinstance(v, QValue):
            self.env[op.name] = QValue(v.name, self.shapes[op.name], v.scale * factor,
                                       v.zero_point)
            return
        if factor > 0 and isinstance(v, Pending):  # scale the float result
            fns = v.fns + [(lambda t, f=factor: t * f, None)]
            self.env[op.name] = Pending(v.src, fns, self.shapes[op.name])
            return
        shape = self.shapes[op.name]  # a negative factor: negate the integers
        self._channel_affine(op, np.full(shape[0], factor), np.zeros(shape[0]))

    def _per_channel_scale(self, op: Op, in_shape: tuple[int, ...]) -> QValue:
        """The input of a spatial op, requantized unless each channel has one scale."""
        x = self._qvalue(op, "pooling")
        per = x.scale.reshape(in_shape[0], -1)
        if not np.allclose(per, per[:, :1], rtol=1e-9, atol=0):
            x = self._materialise(x, self.policy.requant_params(op.inputs[0]),
                                  f"{op.inputs[0]}_requant")
        return x

    @staticmethod
    def _check_shape(got: tuple[int, ...], expected: tuple[int, ...], name: str) -> None:
        if _numel(got) != _numel(expected):  # pragma: no cover - geometry from the module
            raise UnsupportedOpError(f"a window geometry giving {got}, not {expected}", name)

    def _affine(self, op: Op) -> None:  # batch norm that could not be folded
        bn = op.module
        assert bn is not None
        a = (bn.weight if bn.affine else torch.ones_like(bn.running_var)).double() / torch.sqrt(
            bn.running_var.double() + bn.eps)
        c = (bn.bias.double() if bn.affine else 0.0) - bn.running_mean.double() * a
        a_np = a.detach().numpy()
        self._channel_affine(op, a_np, np.broadcast_to(np.asarray(c.detach().numpy()),
                                                       a.shape))

    def _channel_affine(self, op: Op, a_np: np.ndarray, c_np: np.ndarray) -> None:
        """``y = a[channel] * x + c[channel]``: signs in the integers, ``|a|`` in the
        scale, exactly; the shift ``c`` is rounded to a whole number of the output's
        steps ``|a| * scale(x)`` (off by at most half a step of the input's grid: a batch
        norm folded into the layer before it has no such error)."""
        shape = self.shapes[op.name]
        if len(shape) == 1:  # (C,): a diagonal gemm
            self._sum_like(op, np.diag(a_np), c_np)
            return
        # (C, *spatial): a depthwise 1x1 convolution of signs, |a| folds into the scale
        x = self._per_channel_scale(op, shape)
        channels = shape[0]
        row_mag = np.abs(a_np) * x.scale.reshape(channels, -1)[:, 0]
        if np.any(row_mag == 0):
            raise UnsupportedOpError("a batch norm with a zero scale", op.name)
        weight = np.sign(a_np).astype(np.int64).reshape(channels, 1, *(1,) * (len(shape) - 1))
        node = Conv(self._unique(op.name), (x.name,), weight=weight, input_shape=shape,
                    bias=np.rint(c_np / row_mag).astype(np.int64),
                    input_zero_point=x.zero_point, groups=channels)
        self._emit(node)
        self.env[op.name] = QValue(node.name, shape, np.repeat(row_mag, _numel(shape[1:])), 0)


def _probe(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...],
           out_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Matrix ``M`` (out, in) of a linear map, from its values on the identity basis."""
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    if n_in * n_out > MAX_DENSE_ENTRIES:
        raise ValueError(
            f"{name!r} would lower to a {n_out} x {n_in} integer matrix (over "
            f"{MAX_DENSE_ENTRIES} entries): inputs this large are not supported for this "
            f"operation (convolutions and strided poolings are not limited)")
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
        out = fn(basis).reshape(n_in, -1)
    if out.shape[1] != n_out:  # pragma: no cover - shapes come from the same graph
        raise ValueError(f"{name!r}: unexpected output size {out.shape[1]} != {n_out}")
    return out.T.numpy().copy()
