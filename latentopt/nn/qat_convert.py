"""Conversion of a float torch model to a brevitas QAT network, by layer swapping.

The float model is read as a ``torch.fx`` graph (:func:`~latentopt.nn.fx_import.read_graph`:
batch norms that follow a convolution or linear layer are folded first), and rewritten
into exactly the pattern :mod:`latentopt.nn.brevitas_import` imports:

* the input goes through a ``QuantIdentity`` (``bits.inputs``; unsigned when the
  training inputs are never negative);
* every ``Linear`` / ``Conv1d`` / ``Conv2d`` becomes a ``QuantLinear`` / ``QuantConv1d`` /
  ``QuantConv2d`` with per-output-channel weight scales (``bits`` weights of that layer),
  an ``Int32Bias`` and the float model's trained weights;
* every ReLU becomes a ``QuantReLU``; any other activation stays a float activation
  followed by a ``QuantIdentity`` (fused into one table lookup by the importer);
* a layer whose input is not already quantized (two layers in a row, a layer after
  average pooling) gets a ``QuantIdentity`` in front; both operands of an addition or
  concatenation go through one shared ``QuantIdentity`` (one scale: an exact integer
  addition; a concatenation whose result stays quantized, with no lookup before the
  next layer).  A float activation feeding only the addition / concatenation is
  quantized by the shared quantizer directly (one lookup, not two); the shared
  quantizer is unsigned when every operand is;
* every unflatten (``nn.Unflatten``, ``torch.unflatten``, ``x.unflatten``) becomes a
  reshape, which keeps a brevitas quantized tensor quantized.

Activation quantizers use brevitas' statistics-initialised scales; :func:`calibrate_qat`
initialises them from data before fine-tuning (a post-training calibration pass).

Examples
--------
>>> import torch
>>> from torch import nn
>>> from latentopt.nn.ptq import parse_bits
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> qat, info = convert_to_qat(model, parse_bits(3, []), input_signed=True)
>>> sorted(info["weights"].items())
[('0', 3), ('2', 3)]
>>> qat(torch.zeros(2, 4)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .fx_import import Op, read_graph
from .ptq import BitSpec

__all__ = ["calibrate_qat", "convert_to_qat", "rebuild"]

#: Graph operations a quantized value passes through unchanged (still quantized after).
_PASS_THROUGH = ("reshape", "maxpool", "reorder", "shape_query")
#: Activations whose output is never negative: quantized unsigned.
_UNSIGNED = (nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)


def _act_quant(n_bits: int, unsigned: bool) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    quant = Uint8ActPerTensorFloat if unsigned else Int8ActPerTensorFloat
    return qnn.QuantIdentity(act_quant=quant, bit_width=int(n_bits), return_quant_tensor=True)


def _quant_relu(n_bits: int) -> nn.Module:
    import brevitas.nn as qnn
    from brevitas.quant import Uint8ActPerTensorFloat

    return qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=int(n_bits),
                         return_quant_tensor=True)


def _quant_layer(m: nn.Module, n_bits: int) -> nn.Module:
    """The brevitas twin of a float linear / convolution, with its trained weights."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias

    common: dict[str, Any] = dict(bias=m.bias is not None, weight_quant=Int8WeightPerChannelFloat,
                                  weight_bit_width=int(n_bits), bias_quant=Int32Bias,
                                  return_quant_tensor=False)
    q: nn.Module
    if isinstance(m, nn.Linear):
        q = qnn.QuantLinear(m.in_features, m.out_features, **common)
    else:
        assert isinstance(m, (nn.Conv1d, nn.Conv2d))
        cls = qnn.QuantConv1d if isinstance(m, nn.Conv1d) else qnn.QuantConv2d
        q = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                padding=m.padding, dilation=m.dilation, groups=m.groups, **common)
    src: Any = m
    dst: Any = q
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
    return q


class _Rewriter:
    """Rewrites one traced graph in place (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, ops: list[Op], bits: BitSpec) -> None:
        self.gm, self.bits = gm, bits
        self.ops = {op.name: op for op in ops}
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.quantized: set[str] = set()  # nodes whose output is a quantized tensor
        self.unsigned: set[str] = set()  # nodes whose output is quantized unsigned
        self.own_out: set[str] = set()  # inserted output quantizers of float activations
        self.info: dict[str, Any] = {"weights": {}, "activations": {}, "inserted": []}

    def _new_quant(self, module: nn.Module, hint: str) -> str:
        name, k = f"qat_{hint}".replace(".", "_"), 1
        while hasattr(self.gm, name):
            k += 1
            name = f"qat_{hint}_{k}".replace(".", "_")
        self.gm.add_submodule(name, module)
        self.info["inserted"].append(name)
        return name

    def _after(self, node: fx.Node, target: str) -> fx.Node:
        """Call module ``target`` on ``node``'s output for every user of ``node``."""
        with self.gm.graph.inserting_after(node):
            q = self.gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(q)
        q.args = (node,)
        self.quantized.add(q.name)
        return q

    def _before(self, user: fx.Node, producer: fx.Node, target: str) -> fx.Node:
        with self.gm.graph.inserting_before(user):
            q = self.gm.graph.call_module(target, (producer,))
        user.replace_input_with(producer, q)
        self.quantized.add(q.name)
        return q

    def _is_quantized(self, node: fx.Node) -> bool:
        while node.name not in self.quantized:
            op = self.ops.get(node.name)
            if op is None or op.kind not in _PASS_THROUGH or not node.args:
                return False
            first = node.args[0]
            if not isinstance(first, fx.Node):
                return False
            node = first
        return True

    def _act_bits(self, op: Op) -> int:
        """Activation bits after ``op``: its own entry, else the entry of the layer that
        feeds it (``{"conv1": 3}`` sets conv1's weights and its activation)."""
        for key in (op.target, op.name):
            if key and key in self.bits.layers and "activations" in self.bits.layers[key]:
                return self.bits.layers[key]["activations"]
        src = self.ops.get(op.inputs[0]) if op.inputs else None
        while src is not None and src.kind in ("pool", "maxpool", "reshape"):
            src = self.ops.get(src.inputs[0]) if src.inputs else None
        if src is not None and src.kind in ("linear", "conv"):
            return self.bits.for_op(src, "activations")
        return self.bits.activations

    def _swap(self, target: str, module: nn.Module) -> None:
        parent, _, leaf = target.rpartition(".")
        setattr(self.gm.get_submodule(parent) if parent else self.gm, leaf, module)

    def run(self, input_signed: bool) -> dict[str, Any]:
        order = list(self.gm.graph.nodes)
        for node in order:
            op = self.ops.get(node.name)
            if op is None:
                continue
            if op.kind == "input":
                q = self._new_quant(_act_quant(self.bits.inputs, not input_signed), "input")
                self._after(node, q)
                self.info["activations"][q] = self.bits.inputs
            elif op.kind in ("linear", "conv"):
                b = self.bits.for_op(op, "weights")
                self._swap(op.target, _quant_layer(op.module, b))
                self.info["weights"][op.target] = b
                src = node.args[0]
                assert isinstance(src, fx.Node)
                if not self._is_quantized(src):
                    ab = self._act_bits(self.ops[src.name]) if src.name in self.ops else (
                        self.bits.activations)
                    q = self._new_quant(_act_quant(ab, False), f"{op.name}_in")
                    self._before(node, src, q)
                    self.info["activations"][q] = ab
            elif op.kind == "act":
                self._activation(node, op)
            elif op.kind in ("add", "cat"):
                self._shared(node, op)
        self.gm.graph.lint()
        self.gm.recompile()
        return self.info

    def _activation(self, node: fx.Node, op: Op) -> None:
        b = self._act_bits(op)
        if op.act_name == "relu" and node.op == "call_module":
            self._swap(op.target, _quant_relu(b))
            self.quantized.add(node.name)
            self.unsigned.add(node.name)
            self.info["activations"][op.target] = b
            return
        unsigned = op.act_name in ("relu", "relu6", "sigmoid") or isinstance(op.module, _UNSIGNED)
        q = self._new_quant(_act_quant(b, unsigned), f"{op.name}_out")
        qnode = self._after(node, q)
        self.info["activations"][q] = b
        self.own_out.add(q)
        if unsigned:
            self.unsigned.add(qnode.name)

    def _shared(self, node: fx.Node, op: Op) -> None:
        """All operands through one quantizer (one scale: an exact integer addition, a
        concatenation that stays quantized).  An operand that is an activation's own
        output quantizer (same bits, read only here) is replaced by the shared one: one
        table lookup per value instead of two."""
        args: Any = node.args[0] if op.kind == "cat" else node.args
        operands = list(dict.fromkeys(a for a in args if isinstance(a, fx.Node)))
        b = self.bits.activations
        unsigned = all(a.name in self.unsigned for a in operands)
        q = self._new_quant(_act_quant(b, unsigned), f"{op.name}_operands")
        for a in operands:
            old = a.target if a.op == "call_module" else None
            if (isinstance(old, str) and old in self.own_out and len(a.users) == 1
                    and self.info["activations"].get(old) == b):
                a.target = q  # the activation's lookup quantizes straight to the shared grid
                self.gm.delete_submodule(old)
                self.info["activations"].pop(old)
                self.info["inserted"].remove(old)
                self.own_out.discard(old)
            else:
                self._before(node, a, q)
        self.info["activations"][q] = b
        if op.kind == "cat":  # same scale on every operand: the joined tensor is quantized
            self.quantized.add(node.name)
        else:
            self.quantized.discard(node.name)


def convert_to_qat(model: nn.Module, bits: BitSpec, *, input_signed: bool = True,
                   example: Any = None) -> tuple[fx.GraphModule, dict[str, Any]]:
    """A brevitas QAT copy of the float ``model`` (left untouched) and what was done.

    Parameters
    ----------
    model : torch.nn.Module
        A float model of supported operations (:data:`~latentopt.nn.fx_import.SUPPORTED`).
    bits : latentopt.nn.ptq.BitSpec
        Input, weight and activation bits, globally and per layer
        (:func:`~latentopt.nn.ptq.parse_bits`).
    input_signed : bool
        Quantize the input signed (``False``: unsigned, for inputs that are never
        negative: one more bit of resolution).

    Returns
    -------
    qat : torch.fx.GraphModule
        The QAT network, in eval mode.
    info : dict
        ``"weights"`` (layer -> bits), ``"activations"`` (quantizer -> bits),
        ``"inserted"`` (quantizers added), ``"folded_batch_norms"``.
    """
    gm, ops, folded = read_graph(model, example=example)
    if any(op.kind == "quant" or (op.kind in ("linear", "conv")
                                  and type(op.module).__module__.startswith("brevitas"))
           for op in ops):
        raise ValueError("the model already holds brevitas layers: import it with "
                         "compile_brevitas_qat_model, or pass its float version")
    unflattened = _unflatten_shapes(gm, example)  # of the float graph, before the swaps
    info = _Rewriter(gm, ops, bits).run(input_signed)
    info["folded_batch_norms"] = folded
    _spell_out_avg_pools(gm)
    _unflattens_as_reshapes(gm, unflattened)
    _methods_as_functions(gm)
    gm.eval()
    return gm, info


#: Parameters of the functional average poolings, after the input, in order.
_AVG_POOL_PARAMS = {
    F.avg_pool1d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    F.avg_pool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
}
_AVG_POOL_DEFAULTS = {"stride": None, "padding": 0, "ceil_mode": False,
                      "count_include_pad": True, "divisor_override": None}


def _spell_out_avg_pools(gm: fx.GraphModule) -> None:
    """Give every functional average pooling all its arguments by keyword: brevitas'
    quantized-tensor handler of ``F.avg_pool2d`` requires them all, and ``F.avg_pool2d(x,
    2)`` in a model's forward failed in training with "avg_pool2d_handler() missing 5
    required positional arguments"."""
    changed = False
    for node in gm.graph.nodes:
        names = _AVG_POOL_PARAMS.get(node.target) if node.op == "call_function" else None
        if names is None:
            continue
        kwargs = {n: _AVG_POOL_DEFAULTS.get(n) for n in names}
        kwargs.update(zip(names, node.args[1:]))
        kwargs.update(node.kwargs)
        node.args, node.kwargs = node.args[:1], kwargs
        changed = True
    if changed:
        gm.recompile()


#: Tensor methods brevitas' quantized tensors lack, and the torch functions that they
#: dispatch (``x.mean(dim=2)`` failed in training: "'IntQuantTensor' object has no
#: attribute 'mean'").
_METHOD_FUNCTIONS: dict[str, Any] = {
    "mean": torch.mean, "mul": torch.mul, "div": torch.div, "relu": torch.relu,
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
    "swapaxes": torch.swapaxes, "t": torch.t,
}


def _unflatten(x: Any, dim: int, sizes: Any) -> Any:
    """``torch.unflatten(x, dim, sizes)``, as a reshape on a brevitas quantized tensor
    (the fallback of :func:`_unflattens_as_reshapes` where no example showed the shape).

    Brevitas' quantized tensors have no ``unflatten``, and ``torch.unflatten`` on one
    returns a float tensor; the reshape keeps it quantized.  Its shape is taken from the
    tensor itself, by torch's rules (any batch size, negative ``dim``, a ``-1`` size)."""
    from brevitas.quant_tensor import QuantTensor

    if not isinstance(x, QuantTensor):
        return torch.unflatten(x, dim, sizes)
    return x.reshape(torch.empty(tuple(x.shape), device="meta").unflatten(dim, sizes).shape)


def _unflatten_call(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, int, Any] | None:
    """``(input, dim, sizes)`` of an unflatten node (an ``nn.Unflatten`` module,
    ``torch.unflatten`` or the tensor method), else None."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if type(m) is not nn.Unflatten or len(node.args) != 1 or node.kwargs:
            return None
        if not isinstance(m.dim, int):  # named tensors (dim a name): left as they are
            return None
        return node.args[0], m.dim, tuple(m.unflattened_size)
    if not ((node.op == "call_method" and node.target == "unflatten")
            or (node.op == "call_function" and node.target is torch.unflatten)):
        return None
    names = ("input" if node.op == "call_function" else "self", "dim", "sizes")
    if len(node.args) > len(names) or any(k not in names for k in node.kwargs):
        return None
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    if any(k not in bound for k in names) or not isinstance(bound["dim"], int):
        return None
    return bound[names[0]], bound["dim"], bound["sizes"]


def _unflatten_shapes(gm: fx.GraphModule, example: Any) -> dict[str, tuple[int, ...]]:
    """The output shape of every unflatten of the float graph that keeps the batch axis
    first, on a batch of ``example`` (none without an example)."""
    nodes = {n.name: call for n in gm.graph.nodes
             if (call := _unflatten_call(gm, n)) is not None}
    if example is None or not nodes:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in nodes:
                rank = len(out.shape) - len(tuple(nodes[n.name][2])) + 1  # input's rank
                dim = nodes[n.name][1]
                if (dim % rank if -rank <= dim < rank else 0) != 0:  # not the batch axis
                    shapes[n.name] = tuple(int(d) for d in out.shape)
            return out

    batch = torch.tensor(np.asarray(example[:2], dtype=np.float32))
    with torch.no_grad():
        _Record(gm).run(batch)
    return shapes


def _unflattens_as_reshapes(gm: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> None:
    """Rewrite every unflatten (``nn.Unflatten``, ``torch.unflatten``, ``x.unflatten``)
    as a reshape, which brevitas' quantized tensors support: ``nn.Unflatten`` failed in
    training ("'IntQuantTensor' object has no attribute 'unflatten'") and
    ``torch.unflatten`` returned a float tensor ("Input scale required" in the next layer).

    Where ``shapes`` holds the node's output shape, it becomes ``x.reshape(x.shape[0],
    *shape[1:])``: any batch size, and read back by the graph importer as a reshape.
    Otherwise (no example, or the batch axis unflattened) it calls :func:`_unflatten`."""
    changed = False
    for node in list(gm.graph.nodes):
        call = _unflatten_call(gm, node)
        if call is None:
            continue
        x, dim, sizes = call
        module = str(node.target) if node.op == "call_module" else None
        shape = shapes.get(node.name)
        if shape is not None:
            with gm.graph.inserting_before(node):
                size = gm.graph.call_function(getattr, (x, "shape"))
                batch = gm.graph.call_function(operator.getitem, (size, 0))
            node.op, node.target = "call_method", "reshape"
            node.args, node.kwargs = (x, batch, *shape[1:]), {}
        else:
            node.op, node.target = "call_function", _unflatten
            node.args, node.kwargs = (x, dim, sizes), {}
        if module is not None and not any(
                n.op == "call_module" and n.target == module for n in gm.graph.nodes):
            gm.delete_submodule(module)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def _methods_as_functions(gm: fx.GraphModule) -> None:
    """Call the torch function for the tensor methods of :data:`_METHOD_FUNCTIONS`."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target in _METHOD_FUNCTIONS:
            node.op, node.target = "call_function", _METHOD_FUNCTIONS[str(node.target)]
            changed = True
    if changed:
        gm.recompile()


@torch.no_grad()
def calibrate_qat(qat: nn.Module, X: np.ndarray, batch_size: int = 256) -> None:
    """Initialise every activation scale from data (brevitas' calibration mode)."""
    from brevitas.graph.calibrate import calibration_mode

    qat.eval()
    Xt = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    with calibration_mode(qat):
        for i in range(0, len(Xt), batch_size):
            qat(Xt[i:i + batch_size])
    qat.eval()


def rebuild(float_model: nn.Module, bits: BitSpec, input_signed: bool,
            state: dict[str, Any], input_shape: tuple[int, ...] | None = None
            ) -> fx.GraphModule:
    """The QAT network of a pickled estimator: converted again, then its weights and
    scales loaded (brevitas modules do not pickle; their state dicts do).  ``input_shape``
    (one sample's) folds batch norms as the fit did."""
    example = None if input_shape is None else np.zeros((2, *input_shape), np.float32)
    qat, _ = convert_to_qat(copy.deepcopy(float_model), bits, input_signed=input_signed,
                            example=example)
    qat.load_state_dict(state)
    qat.eval()
    return qat

