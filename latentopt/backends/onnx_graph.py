"""ONNX graph plumbing of the export: tensor names, a graph builder, graph surgery.

Knows ONNX, not circuits: :mod:`.onnx_render` builds a model with :class:`GraphBuilder`,
:mod:`.onnx_runner` cuts it after its quantizer with :func:`integer_entry`.  ``onnx``
is imported lazily (importing this module stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["INPUT", "INPUT_INTEGERS", "META", "OUTPUT", "OUTPUT_INTEGERS", "GraphBuilder",
           "integer_entry"]

INPUT, INPUT_INTEGERS = "input", "input_integers"
OUTPUT, OUTPUT_INTEGERS = "output", "output_integers"
#: Prefix of the model's metadata properties (carrier, quantized tensor, input range).
META = "latentopt."


class GraphBuilder:
    """Accumulates ONNX nodes and initializers under unique tensor names.

    ``carrier`` is the numpy type integers are carried in; ``affine`` whether lookups
    may use their proven affine form.
    """

    def __init__(self, carrier: Any, affine: bool = True) -> None:
        from onnx import helper

        self.helper = helper
        self.carrier = carrier
        self.affine = affine
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used = {INPUT, INPUT_INTEGERS, OUTPUT, OUTPUT_INTEGERS}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}:{k}", k + 1
        self.used.add(name)
        return name

    def const(self, base: str, value: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], base: str, out: str | None = None,
           **attrs: Any) -> str:
        out = out or self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def cast(self, x: str, dtype: Any, base: str, out: str | None = None) -> str:
        to = self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return self.op("Cast", [x], base, out, to=to)


def integer_entry(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model cut after its quantizer: reads ``input_integers`` (int64) instead."""
    import onnx
    from onnx import helper

    graph = model.graph
    if any(i.name == INPUT_INTEGERS for i in graph.input):
        return model
    meta = {p.key: p.value for p in model.metadata_props}
    if META + "quantized" not in meta:
        raise ValueError("not a latentopt model: cannot find its quantized input")
    q, carrier = meta[META + "quantized"], np.dtype(meta[META + "carrier"])
    all_nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(all_nodes) for out in node.output}
    keep: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:  # nodes the outputs need once `q` is given
        i = producer.get(stack.pop())
        if i is not None and i not in keep and q not in all_nodes[i].output:
            keep.add(i)
            stack.extend(all_nodes[i].input)
    nodes = [node for i, node in enumerate(all_nodes) if i in keep]
    used = {i for n in nodes for i in n.input}
    cast = helper.make_node("Cast", [INPUT_INTEGERS], [q], name=q,
                            to=helper.np_dtype_to_tensor_dtype(carrier))
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    new_graph = helper.make_graph(
        [cast, *nodes], graph.name,
        [helper.make_tensor_value_info(INPUT_INTEGERS, onnx.TensorProto.INT64, dims)],
        list(graph.output), initializer=[t for t in graph.initializer if t.name in used],
    )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(new_graph)
    return out
