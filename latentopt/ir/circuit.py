"""The quantized circuit: an ordered, validated graph of IR nodes.

A :class:`Circuit` reads one float tensor ``"input"`` of shape ``(batch, n_features)``,
quantizes it (:class:`~latentopt.ir.nodes.QuantizeInput`), runs integer nodes and ends in
a :class:`~latentopt.ir.nodes.Dequantize`.  Everything between the quantizer and the
dequantizer is what an FHE server evaluates on ciphertexts.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, TableLookup, Dequantize
>>> from latentopt.ir.functions import QuantActivation
>>> c = Circuit([
...     QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3),
...     Gemm("fc1", ("q",), weight=[[1, -2], [3, 0]], bias=[1, 0]),
...     TableLookup("act1", ("fc1",), fn=QuantActivation("relu", 0.25, 0.5, n_bits=2)),
...     Gemm("fc2", ("act1",), weight=[[1, 1]]),
...     Dequantize("out", ("fc2",), scale=0.5, zero_point=0),
... ], n_features=2)
>>> [row["accumulator_bits"] for row in c.report().layers]
[5, 3]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .archive import PathOrFile, decode, encode, read_bytes, write_bytes
from .conv_nodes import WindowNode
from .layers import CircuitReport, Layer, group_layers, report_rows
from .nodes import Add, Concat, Dequantize, Gemm, Node, QuantizeInput, Round, TableLookup
from .ranges import Interval, centred_bits, worst_case_ranges

__all__ = ["INPUT", "Circuit"]

#: Name of the circuit's float input value.
INPUT = "input"


class Circuit:
    """Immutable quantized circuit.

    Parameters
    ----------
    nodes : sequence of Node
        In topological order; the first reads ``"input"``, the last is the output.
    n_features : int
        Number of input features.
    calibration : dict of str to Interval, optional
        Observed (data-driven) range of each integer value, see
        :meth:`with_calibration`.
    metadata : dict, optional
        JSON-able free-form information (e.g. how the circuit was produced).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        n_features: int,
        calibration: dict[str, Interval] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._nodes: tuple[Node, ...] = tuple(nodes)
        self._n_features = int(n_features)
        self._by_name = {n.name: n for n in self._nodes}
        self._calibration = dict(calibration) if calibration else None
        self._metadata = dict(metadata or {})
        self._widths: dict[str, int] = {}
        self._worst: dict[str, Interval] | None = None
        self._validate()

    # ----------------------------------------------------------------- structure
    @property
    def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    @property
    def n_features(self) -> int:
        return self._n_features

    @property
    def n_outputs(self) -> int:
        return self._widths[self.output.name]

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @property
    def calibration(self) -> dict[str, Interval] | None:
        return None if self._calibration is None else dict(self._calibration)

    @property
    def input_quantizer(self) -> QuantizeInput:
        node = self._nodes[0]
        assert isinstance(node, QuantizeInput)
        return node

    @property
    def output(self) -> Dequantize:
        node = self._nodes[-1]
        assert isinstance(node, Dequantize)
        return node

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        ops = ", ".join(f"{n.op}:{n.name}" for n in self._nodes)
        return f"Circuit(n_features={self._n_features}, nodes=[{ops}])"

    def width(self, name: str) -> int:
        """Number of channels (last-axis size) of a value."""
        return self._widths[name]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self._nodes if name in n.inputs]

    def _validate(self) -> None:
        if self._n_features < 1:
            raise ValueError("n_features must be >= 1")
        if len(self._nodes) < 2:
            raise ValueError("a circuit needs at least a QuantizeInput and a Dequantize node")
        first, last = self._nodes[0], self._nodes[-1]
        if not isinstance(first, QuantizeInput) or first.inputs != (INPUT,):
            raise ValueError("the first node must be a QuantizeInput reading 'input'")
        if not isinstance(last, Dequantize):
            raise ValueError("the last node must be a Dequantize")
        if len(self._by_name) != len(self._nodes) or INPUT in self._by_name:
            raise ValueError("node names must be unique and differ from 'input'")
        widths: dict[str, int] = {INPUT: self._n_features}
        for node in self._nodes:
            for src in node.inputs:
                if src not in widths:
                    raise ValueError(f"node {node.name!r} reads {src!r} before it is defined")
            if isinstance(node, QuantizeInput) and node is not first:
                raise ValueError("only the first node may be a QuantizeInput")
            if isinstance(node, Dequantize) and node is not last:
                raise ValueError("only the last node may be a Dequantize")
            w_in = widths[node.inputs[0]]
            if isinstance(node, Add) and widths[node.inputs[1]] != w_in:
                raise ValueError(
                    f"add {node.name!r} reads values of widths {w_in} and "
                    f"{widths[node.inputs[1]]}"
                )
            if isinstance(node, Concat):
                w_out = w_in + widths[node.inputs[1]]
            elif isinstance(node, (Gemm, WindowNode)):
                if node.in_features != w_in:
                    raise ValueError(
                        f"{node.op} {node.name!r} expects {node.in_features} inputs, "
                        f"gets {w_in}"
                    )
                w_out = node.out_features
            else:
                w_out = w_in
            for arr_name in ("scale", "zero_point", "offset"):
                arr = getattr(node, arr_name, None)
                if isinstance(arr, np.ndarray) and arr.ndim == 1 and arr.size != w_out:
                    raise ValueError(
                        f"{node.name!r}.{arr_name} has {arr.size} entries, not {w_out}"
                    )
            if isinstance(node, TableLookup):
                c = node.fn.n_channels
                if c is not None and c != w_out:
                    raise ValueError(f"{node.name!r} has {c} channel functions, not {w_out}")
            widths[node.name] = w_out
        self._widths = widths

    # --------------------------------------------------------------- transforms
    def replace(
        self,
        nodes: Sequence[Node] | None = None,
        calibration: dict[str, Interval] | None | str = "keep",
        metadata: dict[str, Any] | None = None,
    ) -> Circuit:
        """A new circuit with some attributes replaced (calibration kept by default)."""
        cal = self._calibration if calibration == "keep" else calibration
        return Circuit(
            self._nodes if nodes is None else nodes,
            self._n_features,
            calibration=cal,  # type: ignore[arg-type]
            metadata=self._metadata if metadata is None else metadata,
        )

    def with_calibration(self, values: dict[str, np.ndarray]) -> Circuit:
        """Attach calibrated ranges computed from intermediate integer ``values``.

        ``values`` maps node names to the integer arrays a backend produced on
        calibration data (see ``latentopt.backends.integer.IntegerBackend.calibrate``).
        """
        cal = {
            n.name: Interval.from_values(values[n.name])
            for n in self._nodes
            if n.name in values and not isinstance(n, Dequantize)
        }
        return self.replace(calibration=cal)

    def with_rounding(
        self, lsbs: int | Sequence[int] | dict[str, int], method: str = "exact"
    ) -> Circuit:
        """Round every table-lookup input: remove ``lsbs`` LSBs before each TLU.

        ``lsbs`` is one int for all TLUs, a sequence with one entry per TLU (in order),
        or a dict from TLU name to LSBs.  Existing :class:`Round` nodes are replaced;
        0 removes rounding.  Calibrated ranges of the rounded values are recomputed
        from the accumulators' calibrated ranges when available.
        """
        tlus = [n for n in self._nodes if isinstance(n, TableLookup)]
        if isinstance(lsbs, dict):
            unknown = set(lsbs) - {t.name for t in tlus}
            if unknown:
                raise ValueError(f"unknown table lookups: {sorted(unknown)}")
            per = {t.name: int(lsbs.get(t.name, 0)) for t in tlus}
        elif isinstance(lsbs, (int, np.integer)):
            per = {t.name: int(lsbs) for t in tlus}
        else:
            seq = list(lsbs)
            if len(seq) != len(tlus):
                raise ValueError(f"expected {len(tlus)} rounding entries, got {len(seq)}")
            per = {t.name: int(v) for t, v in zip(tlus, seq)}
        if any(v < 0 for v in per.values()):
            raise ValueError("lsbs must be >= 0")
        new_nodes: list[Node] = []
        rename: dict[str, str] = {}
        cal = dict(self._calibration) if self._calibration else None
        for node in self._nodes:
            if isinstance(node, Round):  # dropped; its consumer re-reads the source
                rename[node.name] = rename.get(node.inputs[0], node.inputs[0])
                if cal is not None:
                    cal.pop(node.name, None)
                continue
            src = tuple(rename.get(i, i) for i in node.inputs)
            if isinstance(node, TableLookup) and per[node.name] > 0:
                rname = f"{node.name}.round"
                rnode = Round(rname, src, lsbs=per[node.name], method=method)
                new_nodes.append(rnode)
                if cal is not None and src[0] in cal:
                    acc = cal[src[0]]
                    cal[rname] = Interval(rnode.apply(acc.lo), rnode.apply(acc.hi))
                src = (rname,)
            new_nodes.append(type(node).from_dict(*_with_inputs(node, src)))
        return self.replace(nodes=new_nodes, calibration=cal)

    def rounding_lsbs(
        self, bits: int | Sequence[int], ranges: str = "calibrated"
    ) -> dict[str, int]:
        """LSBs to remove so that every TLU input has ``bits`` bits under FHE.

        ``bits`` is one int or one per TLU (in order).  Bit-widths are those of the FHE
        lowering, which centres every value per channel (:func:`~latentopt.ir.ranges.
        centred_bits`): each TLU gets the fewest LSBs removed that bring its input to at
        most ``bits`` bits, which is then exactly ``bits`` (fewer only when the unrounded
        input is already narrower).  The IR's own report measures signed widths
        (``x >> lsbs``), which may be a bit wider.  Ranges come from the
        calibration (``ranges="calibrated"``, the default, falling back to the
        worst case where a value has no calibration) or from the worst case.
        """
        if ranges not in ("calibrated", "worst_case"):
            raise ValueError(f"ranges must be 'calibrated' or 'worst_case', got {ranges!r}")
        tlus = [n for n in self._nodes if isinstance(n, TableLookup)]
        if isinstance(bits, (int, np.integer)):
            targets = [int(bits)] * len(tlus)
        else:
            targets = [int(b) for b in bits]
            if len(targets) != len(tlus):
                raise ValueError(f"expected {len(tlus)} rounding bit-widths, got {len(targets)}")
        if any(b < 1 for b in targets):
            raise ValueError(f"rounding bits must be >= 1, got {targets}")
        out: dict[str, int] = {}
        for tlu, target in zip(tlus, targets):
            rng = self.lookup_input_range(tlu.name, ranges)
            lsbs = 0
            while centred_bits(rng.lo, rng.hi, lsbs) > target:  # ends: 1 bit at most
                lsbs += 1
            out[tlu.name] = lsbs
        return out

    def lookup_input_range(self, tlu_name: str, ranges: str = "calibrated") -> Interval:
        """Interval of the value a lookup rounds (its input before any :class:`Round`):
        calibrated (``ranges="calibrated"``, falling back to the worst case where the
        value has no calibration) or worst case.  What :meth:`rounding_lsbs` measures."""
        src = self._by_name[tlu_name].inputs[0]
        if isinstance(self._by_name[src], Round):  # measure the unrounded value
            src = self._by_name[src].inputs[0]
        cal = self._calibration or {}
        return (cal.get(src) if ranges == "calibrated" else None) or self.worst_case_ranges()[src]

    # ----------------------------------------------------------------- analysis
    def worst_case_ranges(self) -> dict[str, Interval]:
        """Worst-case interval of every value (cached)."""
        if self._worst is None:
            self._worst = worst_case_ranges(self)
        return dict(self._worst)

    def layers(self) -> list[Layer]:
        """Group nodes by layer: each :class:`Gemm` with its Round and TableLookup.

        A :class:`Conv` or :class:`SumPool` heads a layer as a gemm does (``gemm``), a
        :class:`MaxPool` forms a layer of its own (``pool``).  A table lookup that does
        not follow a gemm (e.g. an activation after a residual
        :class:`Add`) forms a layer of its own, with ``source`` the value it reads (see
        :class:`~latentopt.ir.layers.Layer`, which also reads as a mapping keyed
        ``"gemm"``, ``"round"``, ``"tlu"`` and ``"source"``).
        """
        return group_layers(self._nodes)

    def report(self) -> CircuitReport:
        """Per-layer accumulator bits, TLU input bits and TLU count."""
        worst = self.worst_case_ranges()
        rows = report_rows(self.layers(), self._widths, worst, self._calibration or {})
        return CircuitReport(rows, n_features=self._n_features,
                             input_bits=worst[self.input_quantizer.name].bits)

    # ------------------------------------------------------------ serialisation
    def save(self, path: PathOrFile) -> None:
        """Write to a portable file (see :mod:`latentopt.ir.serialize`)."""
        write_bytes(self._encode(), path)

    @staticmethod
    def load(path: PathOrFile) -> Circuit:
        """Read a file written by :meth:`save` (see :mod:`latentopt.ir.serialize`)."""
        return decode(read_bytes(path), Circuit)

    def _encode(self) -> bytes:
        return encode(self._nodes, self._n_features, self._calibration, self._metadata)

    def same_as(self, other: Circuit) -> bool:
        """Structural equality (nodes, features); calibration and metadata ignored."""
        return (
            isinstance(other, Circuit)
            and self._n_features == other._n_features
            and len(self._nodes) == len(other._nodes)
            and all(a.same_as(b) for a, b in zip(self._nodes, other._nodes))
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"blob": self._encode()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = decode(state["blob"], Circuit)
        self.__dict__.update(other.__dict__)


def _with_inputs(node: Node, inputs: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    meta, arrays = node.to_dict()
    meta = dict(meta, inputs=list(inputs))
    return meta, arrays
