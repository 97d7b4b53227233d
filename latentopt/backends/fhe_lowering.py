"""Lowering plan of an IR circuit to a concrete-python function (numpy only).

The plan decides, for every value the FHE server computes, the integer it holds in
the ciphertext.  Each value is *centred*: the ciphertext holds ``v - offset`` where
``offset`` is a per-channel integer (the channel's lower bound), so every encrypted
value is non-negative and its bit-width is the widest channel *span*, never more than
the IR's signed bit-width and often one or more bits less.  Offsets cost nothing:
they fold into the next gemm's bias or into the table of the next lookup, and the
output's offset is added back by the client after decryption.  Offsets of values that
are rounded are multiples of ``2**lsbs``, so ``round(v - o) == round(v) - o``.

Centring is also what makes the ``"worst_case"`` range mode sound: concrete derives
signedness from the inputset, so a value that is negative only in the worst case would
be mis-encoded; a centred value is provably non-negative, and a bit-width hint then
reserves its worst-case width.  The encrypted input stays as the client quantized it,
unless a rounding or a lookup reads it directly: then a clear addition centres it first
(concrete's rounding overflow protection is wrong on signed values).

This module never imports concrete: :func:`build_function` receives the ``fhe`` module.

>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3, signed=False),
...              Gemm("g", ("q",), [[1, -1]], bias=[-20]), Dequantize("o", ("g",), 1.0, 0)],
...             n_features=2)
>>> plan = plan_lowering(c, c.worst_case_ranges(), hints=True)
>>> plan.values["g"].offset.tolist(), plan.values["g"].bits   # [-27, -13] -> [0, 14]
([-27], 4)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import Add, Circuit, Gemm, Round, TableLookup, bit_width
from ..ir.ranges import Interval
from .fhe_diagnostics import FHECompilationError, check_widths
from .integer import IntegerBackend

__all__ = [
    "LoweringPlan",
    "as_quantized",
    "lower",
    "Step",
    "ValuePlan",
    "build_function",
    "extreme_rows",
    "pad_batch",
    "plan_calls",
    "plan_lowering",
]

#: Largest table (entries over all channels) materialised for a lookup at compile time.
MAX_TABLE_ENTRIES = 1 << 22
#: A remainder of ``r`` samples runs as one padded batch when ``r >= PAD_FRACTION * B``:
#: on 2 cores a batch of B costs about as much as 0.75 * B single-sample runs.
PAD_FRACTION = 0.75


@dataclass
class ValuePlan:
    """How one IR value is held in a ciphertext: ``value - offset`` on ``bits`` bits."""

    name: str
    offset: np.ndarray  # int64 (channels,) or (1,)
    lo: np.ndarray  # centred per-channel bounds
    hi: np.ndarray
    bits: int
    hint: int | None = None  # bit-width hint given to concrete


@dataclass
class Step:
    """One server-side operation of the lowered function."""

    kind: str  # "shift" | "gemm" | "round" | "tlu" | "add"
    name: str
    src: str
    layer: str
    src2: str | None = None  # add: second operand
    weight_t: np.ndarray | None = None  # gemm: (in, out)
    bias: np.ndarray | None = None  # shift, gemm: added constant (gemm: None if all zero)
    lsbs: int = 0  # round
    method: str = "exact"  # round
    table: Callable[[np.ndarray], np.ndarray] | None = None  # tlu
    tlu_bits: int = 0  # tlu: input precision seen by the PBS


@dataclass
class LoweringPlan:
    """Everything needed to trace the circuit and to interpret its result."""

    input_name: str
    output_name: str
    values: dict[str, ValuePlan]
    steps: list[Step]
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_offset(self) -> np.ndarray:
        """Add to decrypted results to get the IR's output integers."""
        return self.values[self.output_name].offset

    @property
    def max_tlu_bits(self) -> int:
        return max((s.tlu_bits for s in self.steps if s.kind == "tlu"), default=0)


def _live_nodes(circuit: Circuit) -> list[str]:
    """Names of server-side nodes the output depends on, in topological order."""
    needed = {circuit.output.inputs[0]}
    for node in reversed(circuit.nodes[1:-1]):
        if node.name in needed:
            needed.update(node.inputs)
    return [n.name for n in circuit.nodes[1:-1] if n.name in needed]


def _layer_names(circuit: Circuit) -> dict[str, str]:
    out: dict[str, str] = {}
    for layer in circuit.layers():
        for node in layer.members:
            out[node.name] = layer.name
    return out


def _per_channel(a: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return np.full(width, a[0], np.int64) if a.size == 1 and width != 1 else a


def plan_lowering(circuit: Circuit, ranges: dict[str, Interval], hints: bool) -> LoweringPlan:
    """Choose offsets, bit-widths and folded constants for every live value.

    Parameters
    ----------
    circuit : Circuit
    ranges : dict of str to Interval
        Range of every value: calibrated (observed on the compilation inputset) or worst
        case (``circuit.worst_case_ranges()``).
    hints : bool
        Attach bit-width hints (worst-case mode) so concrete reserves every value's
        full range, not only what the inputset reached.
    """
    qnode = circuit.input_quantizer
    live = _live_nodes(circuit)
    if not live:
        raise ValueError("the circuit has no server-side operation (no gemm, round or lookup)")
    layer_of = _layer_names(circuit)
    # Offsets of rounded values must be multiples of 2**lsbs.
    align: dict[str, int] = {}
    for name in live:
        node = circuit[name]
        if isinstance(node, Round):
            src = node.inputs[0]
            align[src] = max(align.get(src, 1), 1 << node.lsbs)

    rng = ranges[qnode.name]
    values = {qnode.name: ValuePlan(qnode.name, np.zeros(1, np.int64), rng.lo, rng.hi,
                                    bit_width(rng.min, rng.max))}
    steps: list[Step] = []
    reads = {qnode.name: qnode.name}  # IR value -> plan value its consumers read
    if any(isinstance(circuit[n], (Round, TableLookup)) and circuit[n].inputs[0] == qnode.name
           for n in live):
        # PBS on the raw input: centre it too (a clear addition; concrete mishandles
        # rounding overflow on signed values)
        width = circuit.n_features
        lo, hi = _per_channel(rng.lo, width), _per_channel(rng.hi, width)
        a = align.get(qnode.name, 1)
        offset = (lo // a) * a
        if np.any(offset):
            name = f"{qnode.name}:centred"
            values[name] = ValuePlan(name, offset, lo - offset, hi - offset,
                                     bit_width(0, int((hi - offset).max())))
            steps.append(Step("shift", name, qnode.name, qnode.name, bias=-offset))
            reads[qnode.name] = name
    for name in live:
        node = circuit[name]
        src = values[reads.get(node.inputs[0], node.inputs[0])]
        width = circuit.width(name)
        r = ranges[name]
        lo, hi = _per_channel(r.lo, width), _per_channel(r.hi, width)
        if isinstance(node, Round):
            offset = src.offset  # a multiple of 2**lsbs by construction
        else:
            a = align.get(name, 1)
            offset = (lo // a) * a
        clo, chi = lo - offset, hi - offset
        vp = ValuePlan(name, offset, clo, chi, bit_width(0, max(int(chi.max()), 0)))
        step = Step(kind="", name=name, src=src.name, layer=layer_of.get(name, name))
        if isinstance(node, Gemm):
            wt = np.ascontiguousarray(node.weight.T.astype(np.int64))
            in_off = _per_channel(src.offset, node.in_features) - node.input_zero_point
            bias = in_off @ wt - offset
            if node.bias is not None:
                bias = bias + node.bias
            step.kind, step.weight_t = "gemm", wt
            step.bias = bias.astype(np.int64) if np.any(bias) else None
        elif isinstance(node, Round):
            step.kind, step.lsbs, step.method = "round", node.lsbs, node.method
            if src.bits <= node.lsbs:  # concrete keeps ``bits - lsbs`` MSBs: keep one
                src.bits = node.lsbs + 1
                src.hint = max(src.hint or 0, src.bits)
                vp.bits = max(vp.bits, src.bits)
                vp.hint = vp.bits  # else concrete sees a narrower output: an "overflow"
        elif isinstance(node, Add):
            other = values[reads.get(node.inputs[1], node.inputs[1])]
            # (a - oa) + (b - ob) + bias == (a + b) - offset
            bias = (_per_channel(src.offset, width) + _per_channel(other.offset, width)
                    - offset)
            step.kind, step.src2 = "add", other.name
            step.bias = bias.astype(np.int64) if np.any(bias) else None
        elif isinstance(node, TableLookup):
            step.kind = "tlu"
            ir_src = circuit[node.inputs[0]]
            lsbs = ir_src.lsbs if isinstance(ir_src, Round) else 0
            step.tlu_bits = max(src.bits - lsbs, 1)
            step.table = _table_function(node, src, offset, lsbs, width)
        else:  # pragma: no cover - circuits only hold these node types
            raise TypeError(f"cannot lower node type {type(node).__name__}")
        values[name] = vp
        steps.append(step)
    if hints:  # every encrypted value but the input (its range is in the inputset)
        for vp in values.values():
            if vp.name != qnode.name:
                vp.hint = max(vp.hint or 0, vp.bits)
    plan = LoweringPlan(qnode.name, circuit.output.inputs[0], values, steps)
    plan.layers = _layer_rows(circuit, plan)
    return plan


def _table_function(
    node: TableLookup, src: ValuePlan, out_offset: np.ndarray, lsbs: int, width: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> fn(v + in_offset) - out_offset`` on centred (rounded) inputs."""
    fn = node.fn
    in_off = _per_channel(src.offset, width)
    step = 1 << lsbs
    n = max((1 << src.bits) // step, 1)  # the whole unsigned domain concrete enumerates
    if n * width <= MAX_TABLE_ENTRIES:
        grid = np.arange(n, dtype=np.int64)[:, None] * step + in_off[None, :]
        table = (fn(grid) - out_offset[None, :]).T  # (width, n)
        flat = np.ascontiguousarray(table).reshape(-1)
        chan = np.arange(width, dtype=np.int64) * n

        def lookup(v: np.ndarray) -> np.ndarray:
            idx = np.clip(np.asarray(v, np.int64) >> lsbs, 0, n - 1)
            return np.take(flat, idx + chan)

        return lookup

    def direct(v: np.ndarray) -> np.ndarray:  # pragma: no cover - huge tables only
        return fn(np.asarray(v, np.int64) + in_off) - out_offset

    return direct


def _layer_rows(circuit: Circuit, plan: LoweringPlan) -> list[dict[str, Any]]:
    rows = []
    for i, group in enumerate(circuit.layers()):
        acc = group["gemm"] if "gemm" in group else group["source"]
        name = group.name
        if name not in plan.values or acc.name not in plan.values:
            continue
        rnd, tlu = group.get("round"), group.get("tlu")
        tlu_step = next((s for s in plan.steps if tlu is not None and s.name == tlu.name), None)
        rows.append({
            "layer": i,
            "name": name,
            "accumulator_bits": plan.values[acc.name].bits,
            "rounding_lsbs": rnd.lsbs if isinstance(rnd, Round) else 0,
            "rounding_method": rnd.method if isinstance(rnd, Round) else None,
            "tlu": tlu.name if tlu_step is not None else None,
            "tlu_input_bits": tlu_step.tlu_bits if tlu_step is not None else None,
            "tlu_count": circuit.width(tlu.name) if tlu_step is not None else 0,
        })
    return rows


def build_function(plan: LoweringPlan, fhe: Any, name: str) -> Callable[[Any], Any]:
    """The function concrete traces: encrypted centred integers in and out."""
    exactness = {"exact": fhe.Exactness.EXACT, "approximate": fhe.Exactness.APPROXIMATE}
    univariate = {s.name: fhe.univariate(s.table) for s in plan.steps if s.kind == "tlu"}

    def function(x: Any) -> Any:
        vals = {plan.input_name: x}
        for s in plan.steps:
            v = vals[s.src]
            src_hint = plan.values[s.src].hint
            if src_hint and s.src != plan.input_name:
                v = fhe.hint(v, bit_width=src_hint)
            with fhe.tag(s.layer):
                if s.kind == "shift":
                    r = v + s.bias
                elif s.kind == "gemm":
                    r = v @ s.weight_t
                    if s.bias is not None:
                        r = r + s.bias
                elif s.kind == "add":
                    w = vals[s.src2]
                    w_hint = plan.values[s.src2].hint
                    if w_hint and s.src2 != plan.input_name:
                        w = fhe.hint(w, bit_width=w_hint)
                    r = v + w
                    if s.bias is not None:
                        r = r + s.bias
                elif s.kind == "round":
                    r = fhe.round_bit_pattern(v, lsbs_to_remove=s.lsbs, overflow_protection=True,
                                              exactness=exactness[s.method])
                else:
                    r = univariate[s.name](v)
            hint = plan.values[s.name].hint
            vals[s.name] = fhe.hint(r, bit_width=hint) if hint else r
        return vals[plan.output_name]

    function.__name__ = name
    return function


def extreme_rows(values: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Samples reaching the min or max of some channel of some value.

    Concrete only keeps the min and max of every traced value over the inputset; every
    traced value is a per-channel shift of an IR value (centring, bias), whose extremes
    are reached at these samples.  So they give concrete the same bounds as the whole
    calibration set, at a fraction of the tracing cost.
    """
    rows: set[int] = set()
    for name in names:
        v = values[name].reshape(values[name].shape[0], -1)
        rows.update(v.argmin(axis=0).tolist())
        rows.update(v.argmax(axis=0).tolist())
    return np.array(sorted(rows), dtype=np.int64)


def plan_calls(
    n: int, batch_size: int, pad_from: float | None = None
) -> list[tuple[int, int, str]]:
    """``(start, stop, function)`` calls covering ``n`` samples.

    Full batches use ``"batch"``; a remainder of at least ``pad_from`` samples (default
    ``PAD_FRACTION * batch_size``) becomes one padded batch, a smaller one single calls.

    >>> plan_calls(11, 4)
    [(0, 4, 'batch'), (4, 8, 'batch'), (8, 11, 'batch')]
    >>> plan_calls(6, 4)
    [(0, 4, 'batch'), (4, 5, 'single'), (5, 6, 'single')]
    """
    b = batch_size
    full = n - n % b if b > 1 else 0
    calls = [(start, start + b, "batch") for start in range(0, full, b)]
    threshold = PAD_FRACTION * b if pad_from is None else pad_from
    if b > 1 and n - full >= max(2, threshold):
        return [*calls, (full, n, "batch")]
    return calls + [(i, i + 1, "single") for i in range(full, n)]


def pad_batch(x: np.ndarray, name: str, batch_size: int) -> np.ndarray:
    """Pad a short ``"batch"`` call with copies of its first row."""
    if name == "batch" and len(x) < batch_size:
        return np.concatenate([x, np.repeat(x[:1], batch_size - len(x), axis=0)])
    return x


def as_quantized(q: np.ndarray, n_features: int) -> np.ndarray:
    """Validate a batch of quantized inputs; return it as int64."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise TypeError(f"expected quantized integer inputs, got dtype {q.dtype}")
    if q.ndim != 2 or q.shape[1] != n_features:
        raise ValueError(f"expected shape (n_samples, {n_features}), got {q.shape}")
    return q.astype(np.int64)


def widen_ranges(
    circuit: Circuit, ranges: dict[str, Interval], margin: float
) -> dict[str, Interval]:
    """Calibrated ranges widened by ``margin`` x their span on each side (never past the
    worst case); rounded and table-lookup ranges follow from their widened inputs.

    A margin lets unseen inputs slightly beyond the calibration data through without
    overflowing an accumulator, at the price of (often) one more bit.
    """
    worst = circuit.worst_case_ranges()
    out: dict[str, Interval] = {}
    for node in circuit.nodes:
        if node.name not in ranges:
            continue
        src = out.get(node.inputs[0])
        if isinstance(node, Round) and src is not None:
            out[node.name] = Interval(node.apply(src.lo), node.apply(src.hi))
        elif isinstance(node, TableLookup) and src is not None:
            lo, hi = node.fn.output_bounds(src.lo, src.hi)
            out[node.name] = Interval(lo, hi)
        else:
            r, w = ranges[node.name], worst[node.name]
            pad = np.ceil(margin * (r.hi - r.lo)).astype(np.int64)
            out[node.name] = Interval(np.maximum(r.lo - pad, w.lo), np.minimum(r.hi + pad, w.hi))
    return out


def lower(circuit: Circuit, inputset_q: np.ndarray, range_mode: str,
          range_margin: float = 0.0) -> tuple[LoweringPlan, np.ndarray]:
    """Check the calibration set, plan the lowering from its ranges (calibrated, widened by
    ``range_margin``) or the worst case, and return the plan with the few inputset rows
    concrete needs."""
    q = as_quantized(inputset_q, circuit.n_features)
    if q.shape[0] == 0:
        raise ValueError("inputset_q is empty")
    qlo, qhi = circuit.input_quantizer.qrange
    if q.min() < qlo or q.max() > qhi:
        raise ValueError(f"inputset_q must lie in the input quantizer's range [{qlo}, {qhi}]")
    if range_mode == "worst_case":  # the encrypted input must span the quantizer's range
        q = np.concatenate([q, np.full((1, q.shape[1]), qlo), np.full((1, q.shape[1]), qhi)])
    _, values = IntegerBackend(circuit).run_integers(q, return_all=True)
    if range_mode == "worst_case":
        ranges = circuit.worst_case_ranges()
    else:
        ranges = {k: Interval.from_values(v) for k, v in values.items()}
        if range_margin > 0:
            ranges = widen_ranges(circuit, ranges, range_margin)
    try:
        plan = plan_lowering(circuit, ranges,
                             hints=range_mode == "worst_case" or range_margin > 0)
    except ValueError as exc:
        raise FHECompilationError(str(exc)) from exc
    check_widths(plan)
    # Bounds are min/max over elements: the samples reaching them give the same bounds.
    return plan, q[extreme_rows(values, [k for k in plan.values if k in values])]
