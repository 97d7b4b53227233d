"""Reading a torch model as a graph of supported operations, through ``torch.fx``.

Why ``torch.fx`` and not ``torch.onnx`` export: fx keeps every ``nn.Module`` with its
parameters and configuration (a convolution's stride and groups, a batch norm's running
statistics, brevitas quantizers with their learned scales), needs no exporter
dependency, and lets the calibration pass run the very same graph on data to record
every intermediate tensor.  An ONNX export would flatten brevitas quantizers into
opaque custom ops and lose the module boundaries we need to read bit-widths.

:func:`read_graph` traces the model (brevitas layers stay leaves), folds batch norms
into the convolution or linear layer before them, and classifies every node as one
:class:`Op`.  Unsupported operations raise :class:`UnsupportedOpError`, which names the
operation and lists what is supported.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .trace_checks import check_in_place, check_trace
from .unsupported import SUPPORTED, UnsupportedOpError

__all__ = ["SUPPORTED", "Op", "UnsupportedOpError", "maxpool_to_avgpool", "read_graph"]

#: torch activation modules -> IR activation name (parametric table) or None (explicit
#: table evaluated with the module itself).
_ACT_MODULES: dict[type, str | None] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Identity: None, nn.LeakyReLU: None, nn.ELU: None,
    nn.SELU: None, nn.CELU: None, nn.Softplus: None, nn.Hardtanh: None, nn.Hardswish: None,
    nn.Hardsigmoid: None, nn.Mish: None, nn.Softsign: None, nn.LogSigmoid: None,
    nn.Tanhshrink: None, nn.Softshrink: None, nn.Hardshrink: None, nn.Threshold: None,
}
_ACT_FUNCTIONS: dict[Any, str | None] = {
    torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu", F.silu: "silu", F.relu6: "relu6",
    F.leaky_relu: None, F.elu: None, F.selu: None, F.celu: None, F.softplus: None,
    F.hardtanh: None, F.hardswish: None, F.hardsigmoid: None, F.mish: None,
    F.softsign: None, F.logsigmoid: None, F.tanhshrink: None, torch.exp: None,
}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "exp": None}
#: Names of the IR activations that equal the torch ones exactly (default arguments).
_PLAIN = {"relu", "relu6", "sigmoid", "tanh", "gelu", "silu"}

_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   torch.mean}
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d)
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unflatten}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous"}
_REORDER_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.t}
_REORDER_METHODS = {"permute", "transpose", "swapaxes", "t"}
_SCALE_FUNCTIONS = {operator.mul: False, torch.mul: False, operator.truediv: True,
                    torch.div: True}
_SCALE_METHODS = {"mul": False, "div": True}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)


@dataclass
class Op:
    """One node of the imported graph.

    ``kind`` is one of ``"input"``, ``"linear"``, ``"conv"``, ``"affine"`` (batch norm
    not folded), ``"act"``, ``"pool"``, ``"maxpool"``, ``"scale"`` (multiplication by the
    constant ``meta["factor"]``), ``"reshape"``, ``"reorder"`` (permute / transpose),
    ``"add"``, ``"cat"`` (along ``meta["dim"]``), ``"quant"`` (a brevitas
    quantizer, possibly with an activation), ``"output"``.
    """

    name: str
    kind: str
    inputs: list[str]
    target: str = ""  # module path for module ops (bit-width overrides, messages)
    # the torch or brevitas module of module ops; typed Any as its attributes
    # (weight, act_quant, ...) are read dynamically, which nn.Module's typing cannot see
    module: Any = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # act / pool: float function
    act_name: str | None = None  # act: IR activation name when one matches exactly
    shape: tuple[int, ...] = ()  # output shape without the batch axis
    meta: dict[str, Any] = field(default_factory=dict)


def _is_brevitas(m: nn.Module) -> bool:
    return type(m).__module__.startswith("brevitas")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:  # noqa: D102
        return _is_brevitas(m) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds of errors on dynamic control flow
        hint = ("NumPy numbers in forward are not traced: write Python floats or ints. "
                if "numpy" in str(exc) else "")
        raise TypeError(
            f"torch.fx could not trace the model ({type(exc).__name__}: {exc}). {hint}"
            f"Models with data-dependent control flow are not supported; supported "
            f"operations: {SUPPORTED}."
        ) from exc
    return fx.GraphModule(model, graph)


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, leaf, module)


def _fold_batch_norms(gm: fx.GraphModule, example: torch.Tensor | None = None) -> list[str]:
    """Fold every batch norm that directly follows a conv / linear used once (one call
    of the layer, whose output only the norm reads).

    A ``BatchNorm1d`` acts on axis 1 and a ``Linear`` on the last axis: the two are the
    same axis only on 2-D tensors, so that pair is folded only where ``example`` (a
    batch of model inputs) shows the linear's output is 2-D.  Without an example (callers
    that read only the graph's structure) it is folded as on 2-D tensors.
    """
    from torch.fx.passes.shape_prop import ShapeProp
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    if example is not None:
        try:  # ShapeProp prints the traceback of a failing node to stderr: kept quiet
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                ShapeProp(gm).propagate(example)
        except Exception:  # noqa: BLE001 - the caller's own run reports a bad input clearly
            pass
    # a layer called at several places: folding one call's norm would change them all
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")

    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        bn = gm.get_submodule(str(node.target))
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or not bn.track_running_stats:
            continue
        prev = node.args[0]
        if (not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1
                or calls[str(prev.target)] != 1):
            continue
        layer = gm.get_submodule(str(prev.target))
        if _is_brevitas(layer):
            continue
        if type(layer) in (nn.Conv1d, nn.Conv2d):
            fused: nn.Module = fuse_conv_bn_eval(cast("nn.Conv1d | nn.Conv2d", layer), bn)
        elif type(layer) is nn.Linear and isinstance(bn, nn.BatchNorm1d):
            meta = prev.meta.get("tensor_meta")
            if meta is not None and len(meta.shape) != 2:
                continue  # a per-channel affine on axis 1, computed unfolded
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            continue
        _set_module(gm, str(prev.target), fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append(str(node.target))
    gm.graph.lint()
    gm.recompile()
    return folded


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node)]


def _check_single_tensor_input(node: fx.Node, what: str) -> None:
    extra = [a for a in node.args[1:] if isinstance(a, fx.Node)]
    if extra or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
        raise UnsupportedOpError(f"{what} with more than one tensor operand", node.name)


def _default_call(node: fx.Node) -> bool:
    """An activation call on one tensor with its default arguments.  ``inplace`` changes
    nothing computed, and torch.fx records ``F.relu(x)`` as ``relu(x, inplace=False)``."""
    if len(node.args) != 1:
        return False
    return all(k == "inplace" or (k == "approximate" and v == "none")
               for k, v in node.kwargs.items())


def _is_shape(arg: Any) -> bool:
    """``arg`` is the shape of a tensor or a part of it (``x.size()``, ``x.shape[1:]``)."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method":
        return str(arg.target) in ("size", "dim")
    if arg.op == "call_function" and arg.target is getattr:
        return len(arg.args) == 2 and arg.args[1] == "shape"
    if arg.op == "call_function" and arg.target is operator.getitem:
        return _is_shape(arg.args[0])
    return False


class _Call:
    """``x -> fn(x, *args, **kwargs)`` (or the method ``x.<fn>(...)``), named as written
    in the model, so that errors about its table read ``gelu(x, approximate='tanh')``."""

    def __init__(self, fn: Callable[..., Any] | str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self, x: torch.Tensor) -> Any:
        fn = getattr(x, self.fn) if isinstance(self.fn, str) else self.fn
        return fn(*([] if isinstance(self.fn, str) else [x]), *self.args, **self.kwargs)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if isinstance(self.fn, str):
            return f"x.{self.fn}({', '.join(parts)})"
        return f"{getattr(self.fn, '__name__', self.fn)}({', '.join(['x', *parts])})"


def _function_op(node: fx.Node, fn: Callable[..., Any]) -> Callable[[torch.Tensor], Any]:
    return _Call(fn, tuple(node.args[1:]), dict(node.kwargs))


def _method_op(node: fx.Node) -> Callable[[torch.Tensor], Any]:
    return _Call(str(node.target), tuple(node.args[1:]), dict(node.kwargs))


def _classify(gm: fx.GraphModule, node: fx.Node) -> Op:  # noqa: C901 - one switch
    name, ins = node.name, [a.name for a in _tensor_args(node)]
    if node.op == "placeholder":
        return Op(name, "input", [])
    if node.op == "output":
        out = node.args[0]
        if not isinstance(out, fx.Node):
            raise UnsupportedOpError("a model output that is not a single tensor", name)
        return Op(name, "output", [out.name])
    if node.op == "get_attr":
        raise UnsupportedOpError(f"parameter access {node.target!r} inside forward", name)
    if node.op == "call_module":
        target = str(node.target)
        m = gm.get_submodule(target)
        _check_single_tensor_input(node, type(m).__name__)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is None:
            raise UnsupportedOpError(
                f"{type(m).__name__} without running statistics ({target!r}: "
                f"track_running_stats=False normalises every batch by its own statistics, "
                f"even in eval mode; it is not a fixed per-channel map)", name)
        kind = _module_kind(m)
        if kind is None:
            mode = getattr(m, "padding_mode", "zeros")
            extra = f" with padding_mode={mode!r} (zero padding only)" if mode != "zeros" else ""
            raise UnsupportedOpError(f"module {type(m).__name__}{extra} ({target!r})", name)
        op = Op(name, kind, ins, target=target, module=m)
        if kind == "act":
            op.act_name = _ACT_MODULES[type(m)]
            if isinstance(m, nn.GELU) and m.approximate != "none":
                op.act_name = None  # the tanh approximation: a table of the module itself
            if isinstance(m, nn.Identity):
                op.kind = "reshape"
            op.fn = m
        elif kind in ("pool", "maxpool"):
            op.fn = m
        return op
    if node.op == "call_function":
        fn = cast("Callable[..., Any]", node.target)  # a function for call_function nodes
        if fn in (torch.cat, torch.concat, torch.concatenate):
            return _cat_op(node, name)
        if fn in (operator.add, torch.add):
            if len(ins) != 2 or node.kwargs or len(node.args) != 2:
                raise UnsupportedOpError("addition of a constant (only tensor + tensor)", name)
            return Op(name, "add", ins)
        if _is_shape(node):  # x.shape, x.shape[0], x.size()[0]
            return Op(name, "shape_query", ins[:1])
        if fn in _ACT_FUNCTIONS:
            _check_single_tensor_input(node, getattr(fn, "__name__", str(fn)))
            simple = _default_call(node)
            return Op(name, "act", ins[:1], fn=_function_op(node, fn),
                      act_name=_ACT_FUNCTIONS[fn] if simple else None)
        if fn in _POOL_FUNCTIONS:
            _check_single_tensor_input(node, getattr(fn, "__name__", str(fn)))
            return Op(name, "pool", ins[:1], fn=_function_op(node, fn),
                      meta={"function": fn, "args": node.args[1:], "kwargs": dict(node.kwargs)})
        if fn in _MAX_POOL_FUNCTIONS:
            _check_single_tensor_input(node, getattr(fn, "__name__", str(fn)))
            return Op(name, "maxpool", ins[:1], fn=_function_op(node, fn),
                      meta={"function": fn, "args": node.args[1:], "kwargs": dict(node.kwargs)})
        if fn in _SCALE_FUNCTIONS:
            return _scale_op(node, name, ins, _SCALE_FUNCTIONS[fn])
        if fn in _REORDER_FUNCTIONS:
            return Op(name, "reorder", ins[:1], fn=_function_op(node, fn))
        if fn in _RESHAPE_FUNCTIONS:
            return Op(name, "reshape", ins[:1])
        if fn in (F.dropout, F.dropout1d, F.dropout2d):
            return Op(name, "reshape", ins[:1])
        raise UnsupportedOpError(f"function {getattr(fn, '__name__', fn)!r}", name)
    if node.op == "call_method":
        meth = str(node.target)
        if meth == "size" or meth == "dim":
            return Op(name, "shape_query", ins[:1])
        if meth in _RESHAPE_METHODS:
            return Op(name, "reshape", ins[:1])
        if meth in _SCALE_METHODS:
            return _scale_op(node, name, ins, _SCALE_METHODS[meth])
        if meth in _REORDER_METHODS:
            return Op(name, "reorder", ins[:1], fn=_method_op(node))
        if meth in _ACT_METHODS:
            _check_single_tensor_input(node, f"Tensor.{meth}")
            simple = _default_call(node)
            return Op(name, "act", ins[:1], fn=_method_op(node),
                      act_name=_ACT_METHODS[meth] if simple else None)
        if meth == "mean":
            return Op(name, "pool", ins[:1], fn=_method_op(node),
                      meta={"function": torch.mean, "args": node.args[1:],
                            "kwargs": dict(node.kwargs)})
        raise UnsupportedOpError(f"tensor method .{meth}()", name)
    raise UnsupportedOpError(f"graph node kind {node.op!r}", name)  # pragma: no cover


def _cat_op(node: fx.Node, name: str) -> Op:
    """``torch.cat(tensors, dim)``: the tensors and the axis (batch axis included)."""
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get(
        "dim", node.kwargs.get("axis", 0))  # torch takes ``axis`` as an alias
    if (not isinstance(tensors, (list, tuple)) or len(tensors) < 2
            or not all(isinstance(t, fx.Node) for t in tensors) or not isinstance(dim, int)):
        raise UnsupportedOpError("concatenation other than of two or more tensors", name)
    return Op(name, "cat", [t.name for t in tensors if isinstance(t, fx.Node)],
              meta={"dim": dim})


def _scale_op(node: fx.Node, name: str, ins: list[str], divide: bool) -> Op:
    """``x * c`` / ``c * x`` / ``x / c`` for a constant number ``c``."""
    consts = [a for a in node.args if not isinstance(a, fx.Node)]
    what = "division" if divide else "multiplication"
    if (len(ins) != 1 or len(consts) != 1 or node.kwargs
            or not isinstance(consts[0], (int, float)) or isinstance(consts[0], bool)):
        raise UnsupportedOpError(f"{what} other than by a constant number", name)
    if divide and node.args[0] is not _tensor_args(node)[0]:
        raise UnsupportedOpError("division of a constant by a tensor", name)
    c = float(consts[0])
    if c == 0 or not np.isfinite(c):
        raise UnsupportedOpError(f"{what} by {c}", name)
    return Op(name, "scale", ins, meta={"factor": 1.0 / c if divide else c})


def _module_kind(m: nn.Module) -> str | None:
    t = type(m)
    if _is_brevitas(m):
        import brevitas.nn as qnn

        if isinstance(m, qnn.QuantLinear):
            return "linear"
        if isinstance(m, (qnn.QuantConv1d, qnn.QuantConv2d)):
            # reflect / circular padding was imported as zeros (every output wrong)
            return "conv" if m.padding_mode == "zeros" else None
        if isinstance(m, (qnn.QuantIdentity, qnn.QuantReLU, qnn.QuantSigmoid, qnn.QuantTanh,
                          qnn.QuantHardTanh)):
            return "quant"
        return None
    if t is nn.Linear:
        return "linear"
    if t in (nn.Conv1d, nn.Conv2d):
        if m.padding_mode != "zeros":
            return None
        return "conv"
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        return "affine"
    if t in _ACT_MODULES:
        return "act"
    if isinstance(m, _POOL_MODULES):
        return "pool"
    if isinstance(m, _MAX_POOL_MODULES):
        return "maxpool"
    if isinstance(m, (nn.Flatten, nn.Unflatten)) or isinstance(m, _DROPOUT):
        return "reshape"
    return None


def _avg_like(kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool,
              nd: int, name: str) -> nn.Module:
    if any(d != 1 for d in (dilation if isinstance(dilation, (list, tuple)) else [dilation])):
        raise UnsupportedOpError("rewriting a dilated max pooling as an average pooling", name)
    cls = nn.AvgPool1d if nd == 1 else nn.AvgPool2d
    # padded positions are -inf for max pooling: leave them out of the average
    return cls(kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
               count_include_pad=False)


def maxpool_to_avgpool(gm: fx.GraphModule) -> list[str]:
    """Replace every max pooling of ``gm`` by the average pooling of the same windows.

    Under FHE a max pooling costs ``window - 1`` comparisons and a cast (PBS) per output value; an
    average pooling is a sum (free) whose divisor folds into a scale.  The model
    computes something else, so its accuracy must be re-measured: this is an opt-in
    (``compile_torch_model(..., maxpool="avg")``).  Returns the rewritten node names.
    """
    done = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if not isinstance(m, _MAX_POOL_MODULES):
                continue
            if m.return_indices:
                raise UnsupportedOpError("max pooling with return_indices", node.name)
            nd = 1 if isinstance(m, nn.MaxPool1d) else 2
            _set_module(gm, str(node.target), _avg_like(
                m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, nd, node.name))
            done.append(node.name)
        elif node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                     "return_indices")
            kw = dict(zip(names, node.args[1:]))
            kw.update(node.kwargs)
            if kw.get("return_indices"):
                raise UnsupportedOpError("max pooling with return_indices", node.name)
            nd = 1 if node.target is F.max_pool1d else 2
            pool = _avg_like(kw["kernel_size"], kw.get("stride") or None, kw.get("padding", 0),
                             kw.get("dilation", 1), bool(kw.get("ceil_mode", False)), nd,
                             node.name)
            target = f"_avg_from_{node.name}"
            gm.add_submodule(target, pool)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(target, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            done.append(node.name)
    gm.graph.lint()
    gm.recompile()
    return done


def read_graph(model: nn.Module, maxpool: str = "exact", example: Any = None,
               ) -> tuple[fx.GraphModule, list[Op], list[str]]:
    """Trace ``model`` (a copy, in eval mode), fold batch norms, classify every node.

    ``maxpool="avg"`` rewrites max poolings as average poolings first
    (:func:`maxpool_to_avgpool`).  ``example``: model inputs (an array of samples) that
    show the tensors' ranks, needed to fold a ``BatchNorm1d`` after a ``Linear`` right
    (:func:`_fold_batch_norms`); callers that compute with the graph pass it.  Returns
    the traced (folded) graph module, the operations in topological order and the names
    of the folded batch norms.
    """
    if maxpool not in ("exact", "avg"):
        raise ValueError(f"maxpool must be 'exact' or 'avg', got {maxpool!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval().to(dtype=torch.float32)
    if _Tracer().is_leaf_module(model, ""):  # a bare layer: trace it as a one-layer model
        model = nn.Sequential(model)
    gm = _trace(model)
    check_in_place(gm)
    if example is not None:
        # a copy: an in-place operation on the input would write into the caller's array
        example = torch.tensor(np.asarray(example[:16], dtype=np.float32))
        check_trace(model, gm, example)
    folded = _fold_batch_norms(gm, example)
    if maxpool == "avg":
        maxpool_to_avgpool(gm)
    ops = [_classify(gm, node) for node in gm.graph.nodes]
    inputs = [op for op in ops if op.kind == "input"]
    if len(inputs) != 1:
        raise UnsupportedOpError(f"a model with {len(inputs)} inputs (exactly one)", "forward")
    return gm, ops, folded
