"""One typed lowering plan of a circuit: what every backend renders.

:func:`schedule` turns a :class:`~latentopt.ir.Circuit` into a :class:`Schedule`: one
typed step per node, in order, each with the name of its layer, plus the facts every
backend needs and that used to be worked out again in each of them:

* the **lookup domain** of every table lookup (:class:`TableDomain`, one policy below),
  its **step** (``2**lsbs`` when a :class:`~latentopt.ir.nodes.Round` feeds it) and its
  **proven affine shortcut** (:meth:`LookupStep.affine`);
* the integer **carrier dtype** (:attr:`Schedule.carrier`, from
  :func:`~latentopt.ir.carrier.carrier_dtype`);
* the **table-size limit** (:data:`MAX_TABLE_ENTRIES`);
* the **input-range check** (:meth:`Schedule.check_quantized`, over
  :func:`~latentopt.ir.inputs.check_quantized`).

Backends are renderers of the steps: ``backends.integer`` maps each step type to a numpy
kernel, ``backends.onnx_render`` to ONNX operators, ``backends.fhe_lowering`` to the
traced concrete function (adding only what is FHE-specific: centring, bit-width hints).
A new node type (a convolution, say) is one step type here, registered in
:data:`STEP_TYPES`, plus one rendering per backend; ``tests/test_architecture.py``
checks that every renderer covers every step type.

Table-domain policy
-------------------
A lookup's table covers, for each *table channel*, every value its input can take on
the given ranges, from ``lo`` to ``hi`` in steps of ``2**lsbs``: a per-channel function
(``fn.n_channels`` set) has one table channel per value channel, with that channel's
range; a function shared by all channels has one table channel covering the union of
the channel ranges.  Renderers that must be exact for every input (integer, ONNX)
schedule on the worst-case ranges (the default); the FHE lowering schedules on the
ranges it compiles for and maps each domain onto its centred ciphertext.

>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Round, TableLookup, Dequantize
>>> from latentopt.ir import QuantActivation
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3),
...              Gemm("fc", ("q",), [[1, 2], [3, -1]]),
...              Round("fc.round", ("fc",), lsbs=2),
...              TableLookup("act", ("fc.round",), QuantActivation("relu", 0.5, 1.0, n_bits=3)),
...              Dequantize("out", ("act",), 1.0, 0)], n_features=2)
>>> s = schedule(c)
>>> [type(step).__name__ for step in s.steps]
['QuantizeStep', 'GemmStep', 'RoundStep', 'LookupStep', 'DequantizeStep']
>>> [step.layer for step in s.steps]
['q', 'fc', 'fc', 'fc', 'out']
>>> lookup = s["act"]
>>> lookup.lsbs, lookup.domain.lo.tolist(), lookup.domain.hi.tolist(), lookup.domain.entries
(2, [-16], [12], 8)
>>> s.carrier.__name__, lookup.affine(s.carrier) is not None
('float32', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

import numpy as np

from .carrier import CARRIERS, carrier_dtype, exact_below
from .circuit import Circuit
from .conv_nodes import Conv, MaxPool, SumPool
from .functions import QuantActivation
from .inputs import InputTypeError, check_features, check_quantized
from .layers import Layer
from .nodes import Add, Concat, Dequantize, Gemm, Node, QuantizeInput, Round, TableLookup
from .ranges import Interval

__all__ = [
    "CARRIERS",
    "MAX_TABLE_ENTRIES",
    "SERVER_STEPS",
    "STEP_TYPES",
    "AddStep",
    "AffineShortcut",
    "ConcatStep",
    "ConvStep",
    "DequantizeStep",
    "GemmStep",
    "InputTypeError",
    "LookupStep",
    "MaxPoolStep",
    "QuantizeStep",
    "RoundStep",
    "Schedule",
    "Step",
    "SumPoolStep",
    "TableDomain",
    "carrier_dtype",
    "check_features",
    "check_quantized",
    "exact_below",
    "schedule",
]

#: Largest table, in entries summed over its channels, that a backend materialises for
#: one lookup.  2**22 entries are 32 MiB as int64 (16 MiB in a float32 carrier) and take
#: about a second to evaluate: enough for any lookup TFHE can run (at most 16 input bits
#: per channel, i.e. 64 channels of 16 bits), and every larger domain is a signal to
#: round (``Circuit.with_rounding``).  Beyond it the integer backend and the FHE tracing
#: evaluate the function elementwise instead, and the ONNX export refuses
#: (:meth:`LookupStep.check_table_size`).
MAX_TABLE_ENTRIES = 1 << 22

# ------------------------------------------------------------------------- steps
N = TypeVar("N", bound=Node)


@dataclass(frozen=True, eq=False)
class Step(Generic[N]):
    """One operation of the schedule: an IR node and the name of its layer."""

    node: N
    layer: str

    @property
    def name(self) -> str:
        """Name of the value the step computes (its node's name)."""
        return self.node.name

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.node.inputs


@dataclass(frozen=True, eq=False)
class QuantizeStep(Step[QuantizeInput]):
    """Float features to integers (the client, in the clear)."""

    @property
    def qrange(self) -> tuple[int, int]:
        return self.node.qrange


@dataclass(frozen=True, eq=False)
class GemmStep(Step[Gemm]):
    """``(x - input_zero_point) @ weight.T + bias``."""


@dataclass(frozen=True, eq=False)
class RoundStep(Step[Round]):
    """Remove ``lsbs`` least significant bits with rounding."""

    @property
    def lsbs(self) -> int:
        return self.node.lsbs


@dataclass(frozen=True, eq=False)
class AddStep(Step[Add]):
    """Elementwise sum of two values."""


@dataclass(frozen=True, eq=False)
class ConcatStep(Step[Concat]):
    """Concatenation of two values along the feature axis."""


@dataclass(frozen=True, eq=False)
class ConvStep(Step[Conv]):
    """Integer convolution of ``x - input_zero_point`` (zero padded) plus bias."""


@dataclass(frozen=True, eq=False)
class SumPoolStep(Step[SumPool]):
    """Window sums of ``x - input_zero_point`` (zero padded)."""


@dataclass(frozen=True, eq=False)
class MaxPoolStep(Step[MaxPool]):
    """Window maxima, padding ignored; ``window`` PBS per output under FHE."""

    @property
    def pbs_count(self) -> int:
        return self.node.pbs_count


@dataclass(frozen=True, eq=False)
class DequantizeStep(Step[Dequantize]):
    """Integers to floats: ``(x - zero_point) * scale + offset`` (the client)."""


@dataclass(frozen=True, eq=False)
class TableDomain:
    """The inputs a lookup's table covers: per table channel ``c``, the values
    ``lo[c], lo[c] + step, ..., hi[c]`` (see the module's table-domain policy)."""

    lo: np.ndarray
    hi: np.ndarray
    step: int

    @property
    def channels(self) -> int:
        return int(self.lo.size)

    @property
    def sizes(self) -> np.ndarray:
        """Entries per table channel."""
        return (self.hi - self.lo) // self.step + 1

    @property
    def entries(self) -> int:
        """Entries summed over channels (Python int: exact however wide the domain)."""
        return sum((int(h) - int(lo)) // self.step + 1 for lo, h in zip(self.lo, self.hi))

    @property
    def starts(self) -> np.ndarray:
        """Index of each channel's first entry in the flat table (:meth:`LookupStep.table`)."""
        sizes = self.sizes
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def grid(self) -> np.ndarray:
        """``(max(sizes), channels)`` int64 array: row ``k`` holds ``lo + k * step``,
        clipped to ``hi`` (integer arithmetic: ``np.arange`` sizes itself in float64,
        wrong beyond 2**53)."""
        k = np.arange(int(self.sizes.max()), dtype=np.int64)[:, None]
        return np.minimum(self.lo[None, :] + self.step * k, self.hi[None, :])


@dataclass(frozen=True, eq=False)
class AffineShortcut:
    """``fn(x) == clip(rint(x * ratio) + zero_point, qmin, qmax)`` computed in a carrier,
    proven on the whole lookup domain (see :meth:`LookupStep.affine`)."""

    ratio: np.ndarray
    zero_point: int
    qmin: int
    qmax: int


@dataclass(frozen=True, eq=False)
class LookupStep(Step[TableLookup]):
    """A table lookup with its domain; ``domain.step == 2**lsbs`` when a Round feeds it."""

    domain: TableDomain
    _affine: dict[Any, AffineShortcut | None] = field(
        default_factory=dict, init=False, repr=False)

    @property
    def lsbs(self) -> int:
        """LSBs removed by the Round that feeds the lookup (0 without one)."""
        return self.domain.step.bit_length() - 1

    @property
    def fits(self) -> bool:
        """Whether the table fits :data:`MAX_TABLE_ENTRIES`."""
        return self.domain.entries <= MAX_TABLE_ENTRIES

    def check_table_size(self, limit: int = MAX_TABLE_ENTRIES,
                         remedy: str = "round its input (Circuit.with_rounding) to shrink "
                                       "the domain") -> None:
        """Raise a ``ValueError`` with ``remedy`` if the table exceeds ``limit`` (callers
        facing users name the estimators' option instead of the IR's)."""
        if self.domain.entries > limit:
            raise ValueError(
                f"table lookup {self.name!r} (layer {self.layer!r}) would need a table of "
                f"{self.domain.entries} entries (limit {limit}); {remedy}"
            )

    def values(self) -> np.ndarray:
        """The function on :meth:`TableDomain.grid`: ``(max(sizes), channels)`` int64.

        Computed on each call (not kept: a backend keeps its own copy, in its carrier).
        """
        self.check_table_size()
        return self.node.fn(self.domain.grid())

    def table(self) -> np.ndarray:
        """The flat table: channel ``c``'s entries from ``domain.starts[c]`` on."""
        values, sizes = self.values(), self.domain.sizes
        if values.shape[1] == 1:
            return values[:, 0]
        return np.concatenate([values[: sizes[c], c] for c in range(sizes.size)])

    def affine(self, carrier: Any) -> AffineShortcut | None:
        """The affine form of the lookup in ``carrier`` when it provably equals the table.

        ReLU and identity requantizations are affine before clipping; evaluated in the
        float carrier, ``clip(rint(x * r) + zp)`` is used only if it reproduces the
        function on the whole domain (never in an int64 carrier, nor for a table over
        :data:`MAX_TABLE_ENTRIES`).  Backends that take it stay exact by construction.
        """
        key = np.dtype(carrier).type
        if key not in self._affine:
            self._affine[key] = self._prove_affine(key)
        return self._affine[key]

    def _prove_affine(self, dtype: Any) -> AffineShortcut | None:
        fn = self.node.fn
        if dtype is np.int64 or not isinstance(fn, QuantActivation) or not self.fits:
            return None
        if fn.activation not in ("relu", "identity"):
            return None
        ratio = (fn.input_scale / fn.output_scale).astype(dtype)
        qlo, qhi = fn.qrange
        y = np.rint(self.domain.grid().astype(dtype) * ratio) + dtype(fn.output_zero_point)
        y = np.minimum(np.maximum(y, dtype(qlo)), dtype(qhi))
        if not np.array_equal(y, self.values()):
            return None
        return AffineShortcut(ratio, int(fn.output_zero_point), qlo, qhi)


#: The step type of each node type: a new node type adds its step type here.
STEP_TYPES: dict[type[Node], type[Step[Any]]] = {
    QuantizeInput: QuantizeStep,
    Gemm: GemmStep,
    Round: RoundStep,
    TableLookup: LookupStep,
    Add: AddStep,
    Concat: ConcatStep,
    Conv: ConvStep,
    SumPool: SumPoolStep,
    MaxPool: MaxPoolStep,
    Dequantize: DequantizeStep,
}
#: Step types evaluated by the server under FHE (between quantizer and dequantizer).
SERVER_STEPS: tuple[type[Step[Any]], ...] = (GemmStep, RoundStep, LookupStep, AddStep,
                                             ConcatStep, ConvStep, SumPoolStep, MaxPoolStep)


# ---------------------------------------------------------------------- schedule
@dataclass(frozen=True, eq=False)
class Schedule:
    """The lowering plan of a circuit; build with :func:`schedule`.

    Attributes
    ----------
    circuit : Circuit
    steps : tuple of Step
        One per node, in the circuit's order: a :class:`QuantizeStep` first, a
        :class:`DequantizeStep` last.
    ranges : dict of str to Interval
        The value ranges the lookup domains cover.
    layers : tuple of Layer
    """

    circuit: Circuit
    steps: tuple[Step[Any], ...]
    ranges: Mapping[str, Interval]
    layers: tuple[Layer, ...]

    def __getitem__(self, name: str) -> Step[Any]:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Step[Any]]:
        return {s.name: s for s in self.steps}

    @property
    def quantize(self) -> QuantizeStep:
        step = self.steps[0]
        assert isinstance(step, QuantizeStep)
        return step

    @property
    def dequantize(self) -> DequantizeStep:
        step = self.steps[-1]
        assert isinstance(step, DequantizeStep)
        return step

    @property
    def server_steps(self) -> tuple[Step[Any], ...]:
        """The steps between the quantizer and the dequantizer."""
        return self.steps[1:-1]

    @property
    def lookups(self) -> list[LookupStep]:
        return [s for s in self.steps if isinstance(s, LookupStep)]

    def live_steps(self) -> list[Step[Any]]:
        """Server steps the output depends on, in order."""
        needed = {self.dequantize.inputs[0]}
        for step in reversed(self.server_steps):
            if step.name in needed:
                needed.update(step.inputs)
        return [s for s in self.server_steps if s.name in needed]

    @cached_property
    def carrier(self) -> Any:
        """The integer carrier dtype of the circuit, see
        :func:`~latentopt.ir.carrier.carrier_dtype`."""
        return carrier_dtype(self.circuit)

    def check_quantized(self, q: Any, name: str = "q") -> np.ndarray:
        """:func:`check_quantized` against the circuit's input quantizer."""
        return check_quantized(q, self.circuit.n_features, self.quantize.qrange, name=name)


def schedule(circuit: Circuit, ranges: Mapping[str, Interval] | None = None) -> Schedule:
    """The lowering plan of ``circuit``; lookup domains cover ``ranges`` (default: the
    worst case, ``circuit.worst_case_ranges()``)."""
    if ranges is None:
        ranges = circuit.worst_case_ranges()
    layers = tuple(circuit.layers())
    layer_of = {node.name: layer.name for layer in layers for node in layer.members}
    steps: list[Step[Any]] = []
    for node in circuit.nodes:
        step_type = _step_type(node)
        layer = layer_of.get(node.name, node.name)
        if step_type is LookupStep:
            assert isinstance(node, TableLookup)
            steps.append(LookupStep(node, layer, _domain(circuit, node, ranges)))
        else:
            steps.append(step_type(node, layer))
    return Schedule(circuit, tuple(steps), ranges, layers)


def _step_type(node: Node) -> type[Step[Any]]:
    for node_type in type(node).__mro__:
        if node_type in STEP_TYPES:
            return STEP_TYPES[node_type]  # type: ignore[index]
    raise TypeError(f"no schedule step for node type {type(node).__name__}")


def _domain(circuit: Circuit, node: TableLookup, ranges: Mapping[str, Interval]) -> TableDomain:
    src = circuit[node.inputs[0]]
    step = 1 << src.lsbs if isinstance(src, Round) else 1
    rng = ranges[src.name]
    channels = node.fn.n_channels
    if channels is None:  # one table shared by all channels: the union of their ranges
        lo, hi = np.array([rng.min], np.int64), np.array([rng.max], np.int64)
    else:
        lo = np.broadcast_to(rng.lo, channels).astype(np.int64)
        hi = np.broadcast_to(rng.hi, channels).astype(np.int64)
    lo.setflags(write=False)
    hi.setflags(write=False)
    return TableDomain(lo, hi, step)
