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
reserves its worst-case width.

This module never imports concrete: :func:`build_function` receives the ``fhe`` module.

>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3, signed=False),
...              Gemm("g", ("q",), [[1, -1]], bias=[-20]), Dequantize("o", ("g",), 1.0, 0)],
...             n_features=2)
>>> plan = plan_lowering(c, c.worst_case_ranges(), hints=True)
>>> plan.values["g"].offset.tolist(), plan.values["g"].bits   # [-27, -13] -> [0, 14]
([-27], 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ir import Circuit, Gemm, Round, TableLookup, bit_width
from ..ir.ranges import Interval

__all__ = ["MAX_TLU_BITS", "LoweringPlan", "Step", "ValuePlan", "build_function", "plan_lowering"]

#: Widest table-lookup input concrete-python supports.
MAX_TLU_BITS = 16
#: Largest table (entries over all channels) materialised for a lookup at compile time.
MAX_TABLE_ENTRIES = 1 << 22


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

    kind: str  # "gemm" | "round" | "tlu"
    name: str
    src: str
    layer: str
    weight_t: np.ndarray | None = None  # gemm: (in, out)
    bias: np.ndarray | None = None  # gemm: folded bias, None if all zero
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
            needed.add(node.inputs[0])
    return [n.name for n in circuit.nodes[1:-1] if n.name in needed]


def _layer_names(circuit: Circuit) -> dict[str, str]:
    out: dict[str, str] = {}
    for group in circuit.layers():
        for node in group.values():
            out[node.name] = group["gemm"].name
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
    for name in live:
        node = circuit[name]
        src = values[node.inputs[0]]
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
            # concrete keeps ``bits - lsbs`` MSBs: keep at least one.
            if src.bits <= node.lsbs:
                src.bits = node.lsbs + 1
                src.hint = max(src.hint or 0, src.bits)
                vp.bits = max(vp.bits, src.bits)
        elif isinstance(node, TableLookup):
            step.kind = "tlu"
            lsbs = circuit[src.name].lsbs if isinstance(circuit[src.name], Round) else 0
            pre = values[circuit[src.name].inputs[0]] if lsbs else src
            step.tlu_bits = (max(src.bits, pre.bits) - lsbs) if lsbs else src.bits
            step.table = _table_function(node, src, offset, lsbs, width)
        else:  # pragma: no cover - circuits only hold these node types
            raise TypeError(f"cannot lower node type {type(node).__name__}")
        if hints:
            vp.hint = max(vp.hint or 0, vp.bits)
        values[name] = vp
        steps.append(step)
    # hints set on a source after its step was created are read at trace time
    plan = LoweringPlan(qnode.name, circuit.output.inputs[0], values, steps)
    plan.layers = _layer_rows(circuit, plan)
    return plan


def _table_function(
    node: TableLookup, src: ValuePlan, out_offset: np.ndarray, lsbs: int, width: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``v -> fn(v + in_offset) - out_offset`` on centred (rounded) inputs."""
    fn = node.fn
    in_off = _per_channel(src.offset, width)
    if int(src.lo.min()) >= 0:
        dom_lo, size = 0, 1 << max(src.bits, 1)
    else:  # raw signed input (a lookup straight on the quantized input)
        dom_lo, size = -(1 << (src.bits - 1)), 1 << src.bits
    step = 1 << lsbs
    n = max(size // step, 1)
    if n * width <= MAX_TABLE_ENTRIES:
        grid = dom_lo + np.arange(n, dtype=np.int64)[:, None] * step + in_off[None, :]
        table = (fn(grid) - out_offset[None, :]).T  # (width, n)
        flat = np.ascontiguousarray(table).reshape(-1)
        chan = np.arange(width, dtype=np.int64) * n

        def lookup(v: np.ndarray) -> np.ndarray:
            idx = np.clip((np.asarray(v, np.int64) - dom_lo) >> lsbs, 0, n - 1)
            return np.take(flat, idx + chan)

        return lookup

    def direct(v: np.ndarray) -> np.ndarray:  # pragma: no cover - huge tables only
        return fn(np.asarray(v, np.int64) + in_off) - out_offset

    return direct


def _layer_rows(circuit: Circuit, plan: LoweringPlan) -> list[dict[str, Any]]:
    rows = []
    for i, group in enumerate(circuit.layers()):
        gemm = group["gemm"]
        if gemm.name not in plan.values:
            continue
        rnd, tlu = group.get("round"), group.get("tlu")
        tlu_step = next((s for s in plan.steps if tlu is not None and s.name == tlu.name), None)
        rows.append({
            "layer": i,
            "name": gemm.name,
            "accumulator_bits": plan.values[gemm.name].bits,
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
                if s.kind == "gemm":
                    r = v @ s.weight_t
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
