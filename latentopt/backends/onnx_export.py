"""Export of IR circuits to standard ONNX graphs that onnxruntime runs exactly.

:func:`circuit_to_onnx` writes the quantized integer network of a
:class:`~latentopt.ir.Circuit` as plain ONNX operators, and :class:`OnnxRunner` runs
such a model in onnxruntime (CPU).  The outputs are *identical* to the reference
:class:`~latentopt.backends.integer.IntegerBackend`, integers and floats alike.

Graph interface
---------------
``input``
    ``float32`` of shape ``(N, n_features)``: the float features.  float32 is the
    precision the quantizer divides in (``QuantizeInput.apply_float32``), so callers
    cast float64 data with ``X.astype(np.float32)`` (round to nearest, exactly what the
    integer backend does first).  With ``integer_input=True`` the model instead reads
    ``input_integers`` (``int64``, already quantized, inside the quantizer's range).
``output``
    ``float64`` ``(N, n_outputs)``: ``(q - zero_point) * scale`` as ``Dequantize.apply``.
``output_integers``
    ``int64`` ``(N, n_outputs)``: the integers before dequantization.

Lowering, node by node
----------------------
* QuantizeInput: ``Div`` (float32, by the float32 scale) -> ``Round`` (half to even,
  like ``np.rint``) -> ``Add`` zero point -> ``Clip`` -> ``Cast`` to the carrier: the
  float32 operations of the integer backend, one for one, hence the same integers.
* Gemm: ``Sub`` input zero point -> ``MatMul`` -> ``Add`` bias, in the *carrier* type.
* Round: carrier float: ``Add`` half -> ``Mul`` 2**-lsbs -> ``Floor`` -> ``Mul`` 2**lsbs
  (exact: power-of-two scaling); carrier int64: ``y = x + half; y - Mod(y, 2**lsbs)``
  (``Mod`` with ``fmod=0`` takes the divisor's sign, i.e. floor semantics, also for
  negative ``y``).  The approximate method is computed exactly, like the integer backend.
* TableLookup: a gather from a 1-D table.  :class:`~latentopt.ir.ExplicitTable` keeps
  its own table (index ``clip(x - offset, 0, size - 1)``); other functions are
  materialised over the worst-case input domain of each channel, at the rounding step
  when a :class:`~latentopt.ir.Round` feeds the lookup.  Per-channel functions become
  one flat table; channel ``c`` owns the slice ``[start_c, end_c]``, the index is
  ``clip(x + start_c * step - lo_c, start_c * step, end_c * step) / step``, computed in
  the float carrier when exact there (else in int64), then ``Cast`` to int64.  The
  gather is a ``GatherElements`` on the ``(1, size)`` table with the indices reshaped to
  ``(1, -1)``: the values of a ``Gather``, about 4x faster in onnxruntime 1.31.  With
  ``lookup="auto"`` (default), ReLU/identity requantizations that provably equal their
  table on the whole domain become ``Clip(Round(x * ratio) + zp)`` instead, as in the
  integer backend.
* Add: ``Add`` in the carrier type.  Dequantize: ``Cast`` -> ``Sub`` -> ``Mul`` in float64.

Why this carrier
----------------
onnxruntime 1.31 registers CPU ``MatMul`` kernels for float, double, int32, int64 (and
unsigned); ``Gemm`` only for floating types; ``MatMulInteger`` only for 8-bit inputs with
int32 output, too narrow for general accumulators.  Like the integer backend
(``_choose_dtype``), integers are carried in float32 when every worst-case value and
every partial sum of every product is below 2**24, in float64 below 2**53 (floating
point sums of integers are then exact whatever the summation order, so MLAS' fast
float kernels are exact), and in int64 otherwise.  ``carrier=`` forces a wider type.
(Session options that trade precision for speed, such as onnxruntime's ARM
``mlas.enable_gemm_fastmath_arm64_bfloat16``, would break this; they are off by default.)

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
...              Dequantize("out", ("g",), 0.5, 0)], n_features=2)
>>> runner = OnnxRunner(circuit_to_onnx(c))
>>> runner.predict(np.array([[1.0, 0.5]])).tolist()
[[1.5]]
>>> runner.run_integers(np.array([[2, 1]])).tolist()
[[3]]
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ir import (
    Add,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)
from ..ir.ranges import Interval
from .integer import _choose_dtype, affine_ratio

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["OnnxRunner", "circuit_to_onnx", "save_onnx"]

INPUT, INPUT_INTEGERS = "input", "input_integers"
OUTPUT, OUTPUT_INTEGERS = "output", "output_integers"
#: Default ONNX opset (every operator used is available since opset 13).
DEFAULT_OPSET = 17
MIN_OPSET = 13
#: Largest materialised table (entries over all channels) of one lookup.
MAX_TABLE_ENTRIES = 1 << 24
#: Rows per onnxruntime call in :class:`OnnxRunner` (bounds the intermediate buffers).
CHUNK_ROWS = 1 << 16
_CARRIERS: dict[str, Any] = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
_META = "latentopt."


class _Graph:
    """Accumulates ONNX nodes and initializers under unique tensor names."""

    def __init__(self, carrier: Any) -> None:
        from onnx import helper

        self.helper = helper
        self.carrier = carrier
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


def _quantize(g: _Graph, node: QuantizeInput) -> str:
    """The float32 arithmetic of ``QuantizeInput.apply_float32``, then a cast."""
    n = node.name
    x = g.op("Div", [INPUT, g.const(f"{n}/scale", node.scale, np.float32)], f"{n}/div")
    x = g.op("Round", [x], f"{n}/round")
    if np.any(node.zero_point):
        x = g.op("Add", [x, g.const(f"{n}/zero_point", node.zero_point, np.float32)],
                 f"{n}/add")
    lo, hi = node.qrange
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if int(lo32) < lo:  # same inner bounds as apply_float32 beyond 24 bits
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if int(hi32) > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    bounds = [g.const(f"{n}/min", lo32, np.float32), g.const(f"{n}/max", hi32, np.float32)]
    if g.carrier is np.float32:
        return g.op("Clip", [x, *bounds], n)
    return g.cast(g.op("Clip", [x, *bounds], f"{n}/clip"), g.carrier, n)


def _gemm(g: _Graph, node: Gemm, x: str) -> str:
    n, dt = node.name, g.carrier
    if node.input_zero_point:
        x = g.op("Sub", [x, g.const(f"{n}/zero_point", node.input_zero_point, dt)], f"{n}/sub")
    w = g.const(f"{n}/weight_t", np.ascontiguousarray(node.weight.T), dt)
    if node.bias is None:
        return g.op("MatMul", [x, w], n)
    y = g.op("MatMul", [x, w], f"{n}/matmul")
    return g.op("Add", [y, g.const(f"{n}/bias", node.bias, dt)], n)


def _round(g: _Graph, node: Round, x: str) -> str:
    n, dt, k = node.name, g.carrier, node.lsbs
    if k == 0:
        return x
    y = g.op("Add", [x, g.const(f"{n}/half", 1 << (k - 1), dt)], f"{n}/add")
    if dt is np.int64:
        m = g.op("Mod", [y, g.const(f"{n}/step", 1 << k, dt)], f"{n}/mod", fmod=0)
        return g.op("Sub", [y, m], n)
    y = g.op("Mul", [y, g.const(f"{n}/inv_step", 2.0**-k, dt)], f"{n}/scale")
    y = g.op("Floor", [y], f"{n}/floor")
    return g.op("Mul", [y, g.const(f"{n}/step", 1 << k, dt)], n)


def _domain(node: TableLookup, x_range: Interval, step: int) -> tuple[np.ndarray, ...]:
    """``(lo, sizes, grid, values)``: the lookup's input domain per channel (one channel
    for a shared function) on a grid whose row ``k`` holds ``lo_c + k * step`` (clipped to
    ``hi_c``), and the function's values there.  Integer arithmetic only: ``np.arange``
    sizes itself in float64, wrong beyond 2**53."""
    channels = node.fn.n_channels
    if channels is None:
        lo, hi = np.array([x_range.min]), np.array([x_range.max])
    else:
        lo, hi = np.broadcast_to(x_range.lo, channels), np.broadcast_to(x_range.hi, channels)
    sizes = (hi - lo) // step + 1
    if int(sizes.max()) * sizes.size > MAX_TABLE_ENTRIES:
        raise ValueError(
            f"table lookup {node.name!r} would need a table of {int(sizes.max()) * sizes.size}"
            f" entries (limit {MAX_TABLE_ENTRIES}); round its input (Circuit.with_rounding) "
            "to shrink the domain"
        )
    grid = np.minimum(lo[None, :] + step * np.arange(sizes.max())[:, None], hi[None, :])
    return lo, sizes, grid, node.fn(grid)


def _exact(values: Any, dt: Any) -> bool:
    return all(int(dt(v)) == int(v) for v in np.ravel(values))


def _lookup(g: _Graph, node: TableLookup, x: str, x_range: Interval, step: int,
            affine: bool) -> str:
    fn, n, dt = node.fn, node.name, g.carrier
    if isinstance(fn, ExplicitTable):
        size = fn.table.shape[-1]
        start = np.arange(fn.n_channels or 1, dtype=np.int64) * size
        table, offset, end, step = fn.table.reshape(-1), start - fn.offset, start + size - 1, 1
    else:
        lo, sizes, grid, values = _domain(node, x_range, step)
        ratio = affine_ratio(fn, grid, values, dt) if affine else None
        if ratio is not None:
            return _affine_lookup(g, fn, n, x, ratio)
        table = np.concatenate([values[: sizes[c], c] for c in range(sizes.size)])
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        offset, end = start * step - lo, start + sizes - 1
    if fn.n_channels is None:
        offset, start, end = offset[0], start[0], end[0]
    # index = clip(x + offset, start * step, end * step) / step.  In the float carrier
    # when exact: in-domain sums are m * step with m <= end, and a sum outside the table
    # (explicit tables) stays outside after rounding, so the clip gives the same index.
    limit = 2**24 if dt is np.float32 else 2**53
    in_float = dt is not np.int64 and int(np.max(end)) < limit and _exact(offset, dt)
    it = dt if in_float else np.int64
    idx = x if it is dt else g.cast(x, np.int64, f"{n}/index")
    if np.any(offset):
        idx = g.op("Add", [idx, g.const(f"{n}/offset", offset, it)], f"{n}/shift")
    lo_b, hi_b = g.const(f"{n}/start", start * step, it), g.const(f"{n}/end", end * step, it)
    if np.ndim(start) == 0:
        idx = g.op("Clip", [idx, lo_b, hi_b], f"{n}/clip")
    else:
        idx = g.op("Min", [g.op("Max", [idx, lo_b], f"{n}/max"), hi_b], f"{n}/min")
    if step > 1 and in_float:
        idx = g.op("Mul", [idx, g.const(f"{n}/inv_step", 1.0 / step, dt)], f"{n}/scale")
    elif step > 1:
        idx = g.op("Div", [idx, g.const(f"{n}/step", step, np.int64)], f"{n}/div")
    if in_float:
        idx = g.cast(idx, np.int64, f"{n}/index")
    # GatherElements on a (1, size) table and (1, N * width) indices: same values as a
    # Gather, several times faster in onnxruntime
    shape = g.op("Shape", [idx], f"{n}/shape")
    flat = g.op("Reshape", [idx, g.const(f"{n}/flat_shape", [1, -1], np.int64)], f"{n}/flat")
    table_2d = g.const(f"{n}/table", table[None, :], dt)
    y = g.op("GatherElements", [table_2d, flat], f"{n}/gather", axis=1)
    return g.op("Reshape", [y, shape], n)


def _affine_lookup(g: _Graph, fn: QuantActivation, n: str, x: str, ratio: Any) -> str:
    dt = g.carrier
    y = g.op("Round", [g.op("Mul", [x, g.const(f"{n}/ratio", ratio, dt)], f"{n}/mul")],
             f"{n}/round")
    if fn.output_zero_point:
        y = g.op("Add", [y, g.const(f"{n}/zero_point", fn.output_zero_point, dt)], f"{n}/add")
    qlo, qhi = fn.qrange
    return g.op("Clip", [y, g.const(f"{n}/min", qlo, dt), g.const(f"{n}/max", qhi, dt)], n)


def circuit_to_onnx(
    circuit: Circuit,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | str = "dynamic",
    integer_input: bool = False,
    carrier: str | None = None,
    lookup: str = "auto",
) -> onnx.ModelProto:
    """Lower ``circuit`` to an ONNX model (see the module docstring for the graph).

    Parameters
    ----------
    circuit : Circuit
    opset : int
        ONNX opset of the default domain, >= 13 (onnxruntime 1.31 runs 13 to 26).
    batch : "dynamic" or int
        Batch dimension: symbolic ``"N"`` or a fixed size.
    integer_input : bool
        Read already quantized ``int64`` ``input_integers`` instead of float features.
    carrier : {"float32", "float64", "int64"}, optional
        Type carrying the integers; by default the narrowest exact one.  A type
        narrower than that is refused.
    lookup : {"auto", "gather"}
        ``"gather"`` lowers every table lookup to a gather; ``"auto"`` writes ReLU and
        identity requantizations as ``Clip(Round(x * ratio) + zp)`` in the carrier where
        that provably equals the table on the whole input domain (as the integer
        backend does), which runs faster.

    Raises
    ------
    ValueError
        Unsupported opset or carrier, or a lookup whose table would be too large.
    TypeError
        A node type this exporter does not know.
    """
    import onnx
    from onnx import helper

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be in [{MIN_OPSET}, {onnx.defs.onnx_opset_version()}]")
    if lookup not in ("auto", "gather"):
        raise ValueError(f"lookup must be 'auto' or 'gather', got {lookup!r}")
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be 'dynamic' or a positive int, got {batch!r}")
    worst = circuit.worst_case_ranges()
    dtype = _choose_dtype(circuit, worst)
    if carrier is not None:
        order = list(_CARRIERS)
        if carrier not in _CARRIERS:
            raise ValueError(f"carrier must be one of {order}, got {carrier!r}")
        needed = np.dtype(dtype).name
        if order.index(carrier) < order.index(needed):
            raise ValueError(f"carrier {carrier} is not exact for this circuit; needs {needed}")
        dtype = _CARRIERS[carrier]
    g = _Graph(dtype)
    values: dict[str, str] = {}
    for node in circuit.nodes:
        if isinstance(node, QuantizeInput):
            out = _quantize(g, node)
        elif isinstance(node, Gemm):
            out = _gemm(g, node, values[node.inputs[0]])
        elif isinstance(node, Round):
            out = _round(g, node, values[node.inputs[0]])
        elif isinstance(node, TableLookup):
            src = circuit[node.inputs[0]]
            step = 1 << src.lsbs if isinstance(src, Round) else 1
            out = _lookup(g, node, values[node.inputs[0]], worst[src.name], step,
                          affine=lookup == "auto")
        elif isinstance(node, Add):
            out = g.op("Add", [values[i] for i in node.inputs], node.name)
        elif isinstance(node, Dequantize):
            out = _dequantize(g, node, values[node.inputs[0]])
        else:
            raise TypeError(f"cannot export node {node.name!r} of type {type(node).__name__}")
        values[node.name] = out
    n = "N" if batch == "dynamic" else batch
    graph = helper.make_graph(
        g.nodes, "latentopt_circuit",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [n, circuit.n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.DOUBLE, [n, circuit.n_outputs]),
         helper.make_tensor_value_info(OUTPUT_INTEGERS, onnx.TensorProto.INT64,
                                       [n, circuit.n_outputs])],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="latentopt",
                              ir_version=helper.find_min_ir_version_for(opsets))
    model.doc_string = repr(circuit)
    lo, hi = circuit.input_quantizer.qrange
    helper.set_model_props(model, {
        _META + "carrier": np.dtype(dtype).name,
        _META + "quantized": values[circuit.input_quantizer.name],
        _META + "input_range": f"{lo},{hi}",
    })
    return _integer_entry(model) if integer_input else model


def _dequantize(g: _Graph, node: Dequantize, x: str) -> str:
    n = node.name
    ints = g.cast(x, np.int64, n, out=OUTPUT_INTEGERS)
    y = g.cast(ints, np.float64, f"{n}/float")
    if np.any(node.zero_point):
        y = g.op("Sub", [y, g.const(f"{n}/zero_point", node.zero_point, np.float64)], f"{n}/sub")
    if not np.any(node.offset):
        return g.op("Mul", [y, g.const(f"{n}/scale", node.scale, np.float64)], n, out=OUTPUT)
    y = g.op("Mul", [y, g.const(f"{n}/scale", node.scale, np.float64)], f"{n}/mul")
    return g.op("Add", [y, g.const(f"{n}/offset", node.offset, np.float64)], n, out=OUTPUT)


def _integer_entry(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model cut after its quantizer: reads ``input_integers`` (int64) instead."""
    import onnx
    from onnx import helper

    graph = model.graph
    if any(i.name == INPUT_INTEGERS for i in graph.input):
        return model
    meta = {p.key: p.value for p in model.metadata_props}
    if _META + "quantized" not in meta:
        raise ValueError("not a latentopt model: cannot find its quantized input")
    q, carrier = meta[_META + "quantized"], np.dtype(meta[_META + "carrier"])
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


def save_onnx(circuit: Circuit, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """Write :func:`circuit_to_onnx` of ``circuit`` to ``path``; returns the path."""
    import onnx

    path = os.fspath(path)
    onnx.save_model(circuit_to_onnx(circuit, **kwargs), path)
    return path


class OnnxRunner:
    """Runs an exported circuit with onnxruntime's CPU provider.

    Parameters
    ----------
    model : ModelProto, bytes, path or Circuit
        An exported model (a :class:`~latentopt.ir.Circuit` is exported first).
    intra_op_num_threads : int, optional
        onnxruntime's intra-op thread count (its default when ``None``).
    """

    def __init__(self, model: Any, *, intra_op_num_threads: int | None = None) -> None:
        import onnx

        if isinstance(model, Circuit):
            model = circuit_to_onnx(model)
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
        elif isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        self.model: onnx.ModelProto = model
        self.intra_op_num_threads = intra_op_num_threads
        self._meta = {p.key: p.value for p in model.metadata_props}
        self._sessions: dict[bool, Any] = {}
        dims = model.graph.input[0].type.tensor_type.shape.dim
        self.n_features = int(dims[1].dim_value)

    def _session(self, integer: bool) -> Any:
        if integer not in self._sessions:
            import onnxruntime as ort

            names = {i.name for i in self.model.graph.input}
            if not integer and INPUT not in names:
                raise ValueError("this model reads integers (exported with integer_input=True)")
            model = _integer_entry(self.model) if integer else self.model
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.intra_op_num_threads is not None:
                options.intra_op_num_threads = int(self.intra_op_num_threads)
            self._sessions[integer] = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[integer]

    def _check(self, X: np.ndarray, name: str) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"{name} must have shape (n_samples, {self.n_features}), "
                             f"got {X.shape}")

    def _run(self, feed: str, X: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
        session = self._session(integer)
        if len(X) == 0:
            n_out = int(self.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
            return np.empty((0, n_out)), np.empty((0, n_out), np.int64)
        parts = [session.run([OUTPUT, OUTPUT_INTEGERS], {feed: X[i : i + CHUNK_ROWS]})
                 for i in range(0, len(X), CHUNK_ROWS)]
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def run(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float features -> ``(output, output_integers)``."""
        X = np.asarray(X)
        self._check(X, "X")
        X = X.astype(np.float32)
        if np.isnan(X).any():
            raise ValueError("cannot quantize NaN inputs")
        return self._run(INPUT, X, integer=False)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Float features -> dequantized float64 outputs."""
        return self.run(X)[0]

    def run_integers(self, q: np.ndarray) -> np.ndarray:
        """Quantized int inputs (inside the input quantizer's range) -> output integers."""
        q = np.asarray(q)
        if q.dtype.kind not in "iu":
            raise TypeError(f"run_integers expects integer inputs, got dtype {q.dtype}")
        self._check(q, "q")
        bounds = self._meta.get(_META + "input_range")
        if bounds is None:
            raise ValueError("not a latentopt model: its quantizer range is unknown")
        lo, hi = (int(v) for v in bounds.split(","))
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(f"quantized inputs must lie in [{lo}, {hi}]")
        return self._run(INPUT_INTEGERS, q.astype(np.int64), integer=True)[1]
