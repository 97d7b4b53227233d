"""Layers of a circuit and its per-layer bit-width report.

A *layer* is a linear node -- a :class:`~latentopt.ir.nodes.Gemm`, or a
:class:`~latentopt.ir.conv_nodes.Conv` or :class:`~latentopt.ir.conv_nodes.SumPool` --
with the :class:`~latentopt.ir.nodes.Round` and :class:`~latentopt.ir.nodes.TableLookup`
that follow it; a :class:`~latentopt.ir.conv_nodes.MaxPool` is a layer of its own
(``pool``: its PBS are lookups of differences); a lookup that does not follow a linear
node (e.g. an activation after a residual :class:`~latentopt.ir.nodes.Add`) forms a
layer of its own, which reads ``source``.
Layers name the FHE program's tags, the rows of :class:`CircuitReport` and the steps of
the lowering schedule (:mod:`.schedule`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .conv_nodes import Conv, MaxPool, SumPool
from .nodes import Gemm, Node, Round, TableLookup
from .ranges import Interval, bit_width

__all__ = ["CircuitReport", "Layer", "group_layers", "report_rows"]

#: Keys of the mapping view of a :class:`Layer`, in order.
_PARTS = (("gemm", "gemm"), ("maxpool", "pool"), ("round", "round"), ("tlu", "lookup"),
          ("source", "source"))
#: Node types that head a layer as its linear part (``Layer.gemm``).
LINEAR = (Gemm, Conv, SumPool)


@dataclass(frozen=True, eq=False)
class Layer(Mapping[str, Node]):
    """One layer: its linear node (``gemm``: a Gemm, Conv or SumPool), rounding and
    lookup (each optional), or a max pooling (``pool``), or the value it reads.

    Also reads as a mapping of its present parts, keyed ``"gemm"``, ``"maxpool"``,
    ``"round"``, ``"tlu"`` and ``"source"``.
    """

    gemm: Gemm | Conv | SumPool | None = None
    pool: MaxPool | None = None
    round: Round | None = None
    lookup: TableLookup | None = None
    #: The value a layer without a gemm reads (``None`` when there is a gemm).
    source: Node | None = None

    @property
    def name(self) -> str:
        """The layer's name: its gemm's (or pool's), else its lookup's or rounding's."""
        node = self.gemm or self.pool or self.lookup or self.round
        assert node is not None, "a layer holds a gemm, a rounding or a lookup"
        return node.name

    @property
    def accumulator(self) -> Node:
        """The value the layer's rounding or lookup reads first: the gemm, or ``source``
        (a max pooling's output)."""
        node = self.gemm or self.pool or self.source
        assert node is not None
        return node

    @property
    def members(self) -> tuple[Node, ...]:
        """The layer's own nodes (gemm or pool, round, lookup), ``source`` excluded."""
        return tuple(n for n in (self.gemm, self.pool, self.round, self.lookup)
                     if n is not None)

    def __getitem__(self, key: str) -> Node:
        attr = dict(_PARTS).get(key)
        value = getattr(self, attr) if attr else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (key for key, attr in _PARTS if getattr(self, attr) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def group_layers(nodes: Sequence[Node]) -> list[Layer]:
    """Group ``nodes`` (in topological order) into layers, see :class:`Layer`."""
    by_name = {n.name: n for n in nodes}
    groups: list[dict[str, Node]] = []
    owner: dict[str, dict[str, Node]] = {}
    for node in nodes:
        if isinstance(node, MaxPool):
            groups.append({"pool": node})
        elif isinstance(node, LINEAR):
            g: dict[str, Node] = {"gemm": node}
            groups.append(g)
            owner[node.name] = g
        elif isinstance(node, (Round, TableLookup)) and node.inputs[0] in owner:
            g = owner[node.inputs[0]]
            key = "round" if isinstance(node, Round) else "lookup"
            if key not in g:
                g[key] = node
                owner[node.name] = g
            elif isinstance(node, TableLookup):  # a second lookup of the same value
                groups.append({"source": by_name[node.inputs[0]], "lookup": node})
        elif isinstance(node, Round):
            g = {"source": by_name[node.inputs[0]], "round": node}
            groups.append(g)
            owner[node.name] = g
        elif isinstance(node, TableLookup):
            groups.append({"source": by_name[node.inputs[0]], "lookup": node})
    return [Layer(**g) for g in groups]  # type: ignore[arg-type]


def report_rows(
    layers: Sequence[Layer],
    widths: Mapping[str, int],
    worst: Mapping[str, Interval],
    calibrated: Mapping[str, Interval],
) -> list[dict[str, Any]]:
    """Rows of :class:`CircuitReport`: bit-widths per layer (worst case and calibrated)."""
    rows: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        if layer.pool is not None:
            rows.append(_pool_row(i, layer.pool, worst, calibrated))
            continue
        lsbs = layer.round.lsbs if layer.round is not None else 0
        acc = layer.accumulator.name
        if layer.gemm is not None:
            n_in, n_out = layer.gemm.in_features, layer.gemm.out_features
            weight = getattr(layer.gemm, "weight", None)  # a SumPool has none
            nonzero = 0 if weight is None else int(np.count_nonzero(weight))
        else:  # a lookup of a value that no gemm produced (e.g. after an Add)
            n_in = n_out = widths[acc]
            nonzero = 0
        row: dict[str, Any] = {
            "layer": i,
            "name": layer.name,
            "in_features": n_in,
            "out_features": n_out,
            "nonzero_weights": nonzero,
            "accumulator_bits": worst[acc].bits,
            "accumulator_bits_calibrated": calibrated[acc].bits if acc in calibrated else None,
            "rounding_lsbs": lsbs,
            "tlu_input_bits": None,
            "tlu_input_bits_calibrated": None,
            "tlu_count": 0,
            "output_bits": None,
        }
        if layer.lookup is not None:
            src = layer.lookup.inputs[0]
            row["tlu_input_bits"] = max(1, worst[src].bits - lsbs)
            if src in calibrated:
                row["tlu_input_bits_calibrated"] = max(1, calibrated[src].bits - lsbs)
            row["tlu_count"] = widths[layer.lookup.name]
            row["output_bits"] = worst[layer.lookup.name].bits
        rows.append(row)
    return rows


def _pool_row(i: int, pool: MaxPool, worst: Mapping[str, Interval],
              calibrated: Mapping[str, Interval]) -> dict[str, Any]:
    """Report row of a max pooling: its PBS are lookups of differences ``a - b``."""

    def diff_bits(rng: Interval) -> int:
        return bit_width(rng.min - rng.max, rng.max - rng.min)

    src, pbs = pool.inputs[0], pool.pbs_count
    return {
        "layer": i,
        "name": pool.name,
        "in_features": pool.in_features,
        "out_features": pool.out_features,
        "nonzero_weights": 0,
        "accumulator_bits": worst[pool.name].bits,
        "accumulator_bits_calibrated": (calibrated[pool.name].bits
                                        if pool.name in calibrated else None),
        "rounding_lsbs": 0,
        "tlu_input_bits": diff_bits(worst[src]) if pbs else None,
        "tlu_input_bits_calibrated": (diff_bits(calibrated[src])
                                      if pbs and src in calibrated else None),
        "tlu_count": pbs,
        "output_bits": worst[pool.name].bits,
    }


@dataclass
class CircuitReport:
    """Per-layer bit-width summary of a circuit; ``str()`` gives a table."""

    layers: list[dict[str, Any]]
    n_features: int = 0
    input_bits: int = 0
    columns: tuple[str, ...] = field(
        default=(
            "layer", "name", "in_features", "out_features", "accumulator_bits",
            "accumulator_bits_calibrated", "rounding_lsbs", "tlu_input_bits",
            "tlu_input_bits_calibrated", "tlu_count",
        ),
        repr=False,
    )

    @property
    def max_tlu_input_bits(self) -> int:
        return max((r["tlu_input_bits"] or 0 for r in self.layers), default=0)

    @property
    def max_accumulator_bits(self) -> int:
        return max((r["accumulator_bits"] for r in self.layers), default=0)

    @property
    def tlu_count(self) -> int:
        """Table lookups (PBS) per sample, rounding excluded."""
        return sum(r["tlu_count"] for r in self.layers)

    def __str__(self) -> str:
        head = ["layer", "name", "in", "out", "acc_bits", "acc_bits_cal", "round",
                "tlu_bits", "tlu_bits_cal", "tlus"]
        body = [
            ["-" if r[c] is None else str(r[c]) for c in self.columns] for r in self.layers
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
        lines.append(
            f"input: {self.n_features} features x {self.input_bits} bits; "
            f"max TLU input bits {self.max_tlu_input_bits}; TLUs/sample {self.tlu_count}"
        )
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # pragma: no cover - notebook display
        return "<pre>" + str(self) + "</pre>"
