"""FHE rendering of the schedule: the concrete-python function (numpy only).

The circuit's :class:`~latentopt.ir.schedule.Schedule` gives the steps, their layers
and the lookups' steps; this module adds only what is FHE-specific: centring, bit-width
hints and the traced function.  The plan decides, for every value the FHE server
computes, the integer it holds in the ciphertext.  Each value is *centred*: the
ciphertext holds ``v - offset`` where ``offset`` is a per-channel integer (the
channel's lower bound), so every encrypted value is non-negative and its bit-width is
the widest channel *span*, never more than the IR's signed bit-width and often one or
more bits less.  Offsets cost nothing:
they fold into the next gemm's bias or into the table of the next lookup, and the
output's offset is added back by the client after decryption.  Offsets of values that
are rounded are multiples of ``2**lsbs``, so ``round(v - o) == round(v) - o``.

Centring is also what makes the ``"worst_case"`` range mode sound: concrete derives
signedness from the inputset, so a value that is negative only in the worst case would
be mis-encoded; a centred value is provably non-negative, and a bit-width hint then
reserves its worst-case width.  The encrypted input stays as the client quantized it,
unless a rounding or a lookup reads it directly: then a clear addition centres it first
(concrete's rounding overflow protection is wrong on signed values).

Each server step type has one lowering (:data:`LOWERINGS`) to a typed operation
(:class:`CentreOp` for the input's centring, :class:`GemmOp`, :class:`RoundOp`,
:class:`AddOp`, :class:`ConcatOp`, :class:`LookupOp`, and :class:`WindowOp` and
:class:`MaxPoolOp` whose tracing lives in :mod:`.fhe_window`), which
:func:`build_function` traces.  This module never imports concrete:
:func:`build_function` receives the ``fhe`` module.

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

from ..ir import Circuit, bit_width
from ..ir.ranges import Interval, widen_ranges
from ..ir.schedule import (
    MAX_TABLE_ENTRIES,
    AddStep,
    ConcatStep,
    ConvStep,
    GemmStep,
    LookupStep,
    MaxPoolStep,
    RoundStep,
    Schedule,
    Step,
    SumPoolStep,
    check_quantized,
    schedule,
)
from .batching import pad_batch, plan_calls
from .fhe_diagnostics import FHECompilationError, check_lookup_width
from .fhe_ops import (
    AddOp,
    CentreOp,
    ConcatOp,
    GemmOp,
    LookupOp,
    MaxPoolOp,
    Op,
    RoundOp,
    ValuePlan,
    WindowOp,
)
from .fhe_window import max_pool_plan, trace_max_pool, trace_window
from .fhe_window import window_plan as _window_plan
from .integer import IntegerBackend

__all__ = [
    "LOWERINGS",
    "AddOp",
    "CentreOp",
    "ConcatOp",
    "GemmOp",
    "LookupOp",
    "LoweringPlan",
    "MaxPoolOp",
    "Op",
    "RoundOp",
    "ValuePlan",
    "WindowOp",
    "build_function",
    "extreme_rows",
    "lower",
    "plan_lowering",
    # compatibility: their homes are .batching and latentopt.ir.ranges
    "pad_batch",
    "plan_calls",
    "widen_ranges",
]


@dataclass
class LoweringPlan:
    """Everything needed to trace the circuit and to interpret its result."""

    input_name: str
    output_name: str
    values: dict[str, ValuePlan]
    steps: list[Op]
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output_offset(self) -> np.ndarray:
        """Add to decrypted results to get the IR's output integers."""
        return self.values[self.output_name].offset

    @property
    def max_tlu_bits(self) -> int:
        return max((s.tlu_bits for s in self.steps if isinstance(s, (LookupOp, MaxPoolOp))),
                   default=0)


def _per_channel(a: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return np.full(width, a[0], np.int64) if a.size == 1 and width != 1 else a


class _Lowering:
    """State of :func:`plan_lowering`: the plans of the values lowered so far."""

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.values: dict[str, ValuePlan] = {}
        self.reads: dict[str, str] = {}  # IR value -> plan value its consumers read

    def source(self, name: str) -> ValuePlan:
        return self.values[self.reads.get(name, name)]

    def gemm(self, step: GemmStep, src: ValuePlan, vp: ValuePlan) -> Op:
        node = step.node
        wt = np.ascontiguousarray(node.weight.T.astype(np.int64))
        in_off = _per_channel(src.offset, node.in_features) - node.input_zero_point
        bias = in_off @ wt - vp.offset
        if node.bias is not None:
            bias = bias + node.bias
        return GemmOp(step.name, src.name, step.layer, wt,
                      bias.astype(np.int64) if np.any(bias) else None)

    def round(self, step: RoundStep, src: ValuePlan, vp: ValuePlan) -> Op:
        if src.bits <= step.lsbs:  # concrete keeps ``bits - lsbs`` MSBs: keep one
            src.bits = step.lsbs + 1
            src.hint = max(src.hint or 0, src.bits)
            vp.bits = max(vp.bits, src.bits)
            vp.hint = vp.bits  # else concrete sees a narrower output: an "overflow"
        return RoundOp(step.name, src.name, step.layer, step.lsbs, step.node.method)

    def add(self, step: AddStep, src: ValuePlan, vp: ValuePlan) -> Op:
        other = self.source(step.inputs[1])
        width = self.circuit.width(step.name)
        # (a - oa) + (b - ob) + bias == (a + b) - offset
        bias = _per_channel(src.offset, width) + _per_channel(other.offset, width) - vp.offset
        return AddOp(step.name, src.name, step.layer, other.name,
                     bias.astype(np.int64) if np.any(bias) else None)

    def concat(self, step: ConcatStep, src: ValuePlan, vp: ValuePlan) -> Op:
        other = self.source(step.inputs[1])
        widths = [self.circuit.width(i) for i in step.inputs]
        offsets = np.concatenate([_per_channel(src.offset, widths[0]),
                                  _per_channel(other.offset, widths[1])])
        bias = offsets - _per_channel(vp.offset, sum(widths))
        return ConcatOp(step.name, src.name, step.layer, other.name,
                        bias.astype(np.int64) if np.any(bias) else None)

    def lookup(self, step: LookupStep, src: ValuePlan, vp: ValuePlan) -> Op:
        width = self.circuit.width(step.name)
        table = _table_function(step, src, vp.offset, width)
        return LookupOp(step.name, src.name, step.layer, table, max(src.bits - step.lsbs, 1))


    def window(self, step: ConvStep | SumPoolStep, src: ValuePlan, vp: ValuePlan) -> Op:
        in_off = _per_channel(src.offset, step.node.in_features)
        return WindowOp(step.name, src.name, step.layer,
                        _window_plan(step.node, in_off, vp.offset))

    def max_pool(self, step: MaxPoolStep, src: ValuePlan, vp: ValuePlan) -> Op:
        width = step.node.in_features
        plan = max_pool_plan(step.node, _per_channel(src.offset, width),
                             _per_channel(src.lo, width), _per_channel(src.hi, width),
                             _per_channel(vp.offset, step.node.out_features))
        return MaxPoolOp(step.name, src.name, step.layer, plan)


#: The FHE lowering of each server step type (a method of the lowering state).
LOWERINGS: dict[type[Step[Any]], Callable[[_Lowering, Any, ValuePlan, ValuePlan], Op]] = {
    GemmStep: _Lowering.gemm,
    RoundStep: _Lowering.round,
    AddStep: _Lowering.add,
    ConcatStep: _Lowering.concat,
    LookupStep: _Lowering.lookup,
    ConvStep: _Lowering.window,
    SumPoolStep: _Lowering.window,
    MaxPoolStep: _Lowering.max_pool,
}


def _headroom(offset: np.ndarray, hi: np.ndarray, a: int,
              rounded_hi: np.ndarray | None) -> np.ndarray:
    """Offsets one step (``a``) lower on the channels where that widens nothing.

    A value read by a lookup (or rounded, then read) is encrypted as ``v - offset``, and
    ``offset`` is its lowest value: a channel whose values sit on that bound (ReLU
    outputs summed by a pooling: 44% of them 0) reads table entry 0, and a lookup error
    one step below it wraps around to the far end of the table, not to a neighbour
    (measured: a Conv1d -> ReLU -> AvgPool regressor simulated at R^2 0.954 at
    ``p_error=0.01`` against 0.987 on the integer backend, worst error 15 steps).  One
    step of room below keeps such an error a neighbour's; it is taken only on channels
    whose top still fits the value's bit-width (and its rounded width: ``rounded_hi``).
    """
    lower = offset - a
    ok = (hi - lower) <= (1 << bit_width(0, int((hi - offset).max()))) - 1
    if rounded_hi is not None:
        ok &= (rounded_hi - lower) <= (1 << bit_width(0, int((rounded_hi - offset).max()))) - 1
    return np.where(ok, lower, offset)


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
    plan = schedule(circuit, ranges)
    qname = plan.quantize.name
    live = plan.live_steps()
    if not live:
        raise ValueError("the circuit has no server-side operation (no gemm, round or lookup)")
    # Offsets of rounded values must be multiples of 2**lsbs.
    align: dict[str, int] = {}
    for step in live:
        if isinstance(step, RoundStep):
            align[step.inputs[0]] = max(align.get(step.inputs[0], 1), 1 << step.lsbs)
    lookup_inputs = {s.inputs[0] for s in live if isinstance(s, LookupStep)}
    round_of = {s.inputs[0]: s for s in live if isinstance(s, RoundStep)}
    state = _Lowering(circuit)
    rng = ranges[qname]
    state.values[qname] = ValuePlan(qname, np.zeros(1, np.int64), rng.lo, rng.hi,
                                    bit_width(rng.min, rng.max))
    ops: list[Op] = []
    if any(isinstance(s, (RoundStep, LookupStep)) and s.inputs[0] == qname for s in live):
        # PBS on the raw input: centre it too (a clear addition; concrete mishandles
        # rounding overflow on signed values)
        width = circuit.n_features
        lo, hi = _per_channel(rng.lo, width), _per_channel(rng.hi, width)
        a = align.get(qname, 1)
        offset = (lo // a) * a
        if np.any(offset):
            name = f"{qname}:centred"
            state.values[name] = ValuePlan(name, offset, lo - offset, hi - offset,
                                           bit_width(0, int((hi - offset).max())))
            ops.append(CentreOp(name, qname, qname, -offset))
            state.reads[qname] = name
    for step in live:
        render = LOWERINGS.get(type(step))
        if render is None:  # pragma: no cover - every server step type has a lowering
            raise TypeError(f"cannot lower node type {type(step.node).__name__}")
        src = state.source(step.inputs[0])
        width = circuit.width(step.name)
        r = ranges[step.name]
        lo, hi = _per_channel(r.lo, width), _per_channel(r.hi, width)
        if isinstance(step, RoundStep):
            offset = src.offset  # a multiple of 2**lsbs by construction
        else:
            a = align.get(step.name, 1)
            offset = (lo // a) * a
            if step.name in lookup_inputs or step.name in round_of:
                rounded = round_of.get(step.name)
                offset = _headroom(offset, hi, a, None if rounded is None else
                                   _per_channel(ranges[rounded.name].hi, width))
        clo, chi = lo - offset, hi - offset
        vp = ValuePlan(step.name, offset, clo, chi, bit_width(0, max(int(chi.max()), 0)))
        ops.append(render(state, step, src, vp))
        state.values[step.name] = vp
    if hints:  # every encrypted value but the input (its range is in the inputset)
        for vp in state.values.values():
            if vp.name != qname:
                vp.hint = max(vp.hint or 0, vp.bits)
    lowered = LoweringPlan(qname, plan.dequantize.inputs[0], state.values, ops)
    lowered.layers = _layer_rows(plan, lowered)
    return lowered


def _table_function(
    step: LookupStep, src: ValuePlan, out_offset: np.ndarray, width: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> fn(v + in_offset) - out_offset`` on centred (rounded) inputs.

    The table covers the lookup's domain as concrete enumerates it: the whole unsigned
    range of the centred ciphertext, ``2**bits / 2**lsbs`` entries per channel.
    """
    fn, lsbs = step.node.fn, step.lsbs
    in_off = _per_channel(src.offset, width)
    stride = 1 << lsbs
    n = max((1 << src.bits) // stride, 1)
    if n * width <= MAX_TABLE_ENTRIES:
        grid = np.arange(n, dtype=np.int64)[:, None] * stride + in_off[None, :]
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


def _layer_rows(plan: Schedule, lowered: LoweringPlan) -> list[dict[str, Any]]:
    rows = []
    lookups = {s.name: s for s in lowered.steps if isinstance(s, LookupOp)}
    pools = {s.name: s for s in lowered.steps if isinstance(s, MaxPoolOp)}
    for i, layer in enumerate(plan.layers):
        if layer.name not in lowered.values or layer.accumulator.name not in lowered.values:
            continue
        if layer.pool is not None:
            pool = pools[layer.pool.name]
            rows.append({
                "layer": i, "name": layer.name,
                "accumulator_bits": lowered.values[layer.name].bits,
                "rounding_lsbs": 0, "rounding_method": None, "tlu": layer.name,
                "tlu_input_bits": pool.tlu_bits, "tlu_count": layer.pool.pbs_count,
            })
            continue
        rnd = layer.round
        op = lookups.get(layer.lookup.name) if layer.lookup is not None else None
        rows.append({
            "layer": i,
            "name": layer.name,
            "accumulator_bits": lowered.values[layer.accumulator.name].bits,
            "rounding_lsbs": rnd.lsbs if rnd is not None else 0,
            "rounding_method": rnd.method if rnd is not None else None,
            "tlu": op.name if op is not None else None,
            "tlu_input_bits": op.tlu_bits if op is not None else None,
            "tlu_count": plan.circuit.width(op.name) if op is not None else 0,
        })
    return rows


def build_function(plan: LoweringPlan, fhe: Any, name: str) -> Callable[[Any], Any]:
    """The function concrete traces: encrypted centred integers in and out."""
    exactness = {"exact": fhe.Exactness.EXACT, "approximate": fhe.Exactness.APPROXIMATE}
    univariate = {s.name: fhe.univariate(s.table) for s in plan.steps
                  if isinstance(s, LookupOp)}

    def function(x: Any) -> Any:
        vals = {plan.input_name: x}

        def read(src: str) -> Any:
            hint = plan.values[src].hint
            v = vals[src]
            return fhe.hint(v, bit_width=hint) if hint and src != plan.input_name else v

        for s in plan.steps:
            v = read(s.src)
            with fhe.tag(s.layer):
                if isinstance(s, CentreOp):
                    r = v + s.bias
                elif isinstance(s, GemmOp):
                    r = v @ s.weight_t
                    if s.bias is not None:
                        r = r + s.bias
                elif isinstance(s, ConcatOp):
                    r = np.concatenate((v, read(s.src2)), axis=-1)
                    if s.bias is not None:
                        r = r + s.bias
                elif isinstance(s, AddOp):
                    r = v + read(s.src2)
                    if s.bias is not None:
                        r = r + s.bias
                elif isinstance(s, RoundOp):
                    r = fhe.round_bit_pattern(v, lsbs_to_remove=s.lsbs, overflow_protection=True,
                                              exactness=exactness[s.method])
                elif isinstance(s, LookupOp):
                    r = univariate[s.name](v)
                elif isinstance(s, WindowOp):
                    r = trace_window(fhe, s.plan, v)
                elif isinstance(s, MaxPoolOp):
                    r = trace_max_pool(fhe, s.plan, v, hints=plan.values[s.name].hint is not None)
                else:  # pragma: no cover - plan_lowering only emits these
                    raise TypeError(f"cannot trace {type(s).__name__}")
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


def lower(circuit: Circuit, inputset_q: np.ndarray, range_mode: str,
          range_margin: float = 0.0) -> tuple[LoweringPlan, np.ndarray]:
    """Check the calibration set, plan the lowering from its ranges (calibrated, widened by
    ``range_margin``) or the worst case, and return the plan with the few inputset rows
    concrete needs."""
    qlo, qhi = circuit.input_quantizer.qrange
    q = check_quantized(inputset_q, circuit.n_features, (qlo, qhi), name="inputset_q")
    if q.shape[0] == 0:
        raise ValueError("inputset_q is empty")
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
    for op in plan.steps:
        if isinstance(op, (LookupOp, MaxPoolOp)):
            check_lookup_width(op.layer, op.name, op.tlu_bits)
    # Bounds are min/max over elements: the samples reaching them give the same bounds.
    return plan, q[extreme_rows(values, [k for k in plan.values if k in values])]
