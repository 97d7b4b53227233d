"""Per-channel integer gains before a rounded table lookup (lookup equalization).

A rounded lookup removes the same ``lsbs`` from every channel of its input, chosen for
the *widest* channel (:meth:`Circuit.rounding_lsbs <latentopt.ir.Circuit.rounding_lsbs>`).
A channel whose accumulators span a tenth of the widest one's then reads only a tenth
of its table: measured on real MNIST at 6-bit lookups, the median channel of a CNN or
MLP uses 4.1-4.9 of the 6 bits.

:func:`equalize_lookup` multiplies each output channel of the layer that feeds the
lookup (a :class:`~latentopt.ir.Gemm` or :class:`~latentopt.ir.Conv`, possibly through
a :class:`~latentopt.ir.SumPool`) by the largest integer gain ``g >= 1`` that keeps its
rounded input within the same ``bits``; the lookup's function reads ``v / g``
(:class:`~latentopt.ir.QuantActivation`'s ``input_scale`` divided by ``g``).  The circuit
stays exact integer arithmetic, the lookup keeps its width, and a gained channel spans
at most what the rounding already had to cover for the widest one (its values, as the
FHE lowering centres them, get no wider); each narrow channel's rounding error shrinks
by ``g``.  Under FHE the gain is part of the plaintext weights: no operation is added.

A gain also multiplies the channel's weight vector, whose L2 norm enters the noise the
dot product adds under TFHE, and its offset, so a value's *uncentred* signed width (the
IR report's) may grow.  Measured on real MNIST: for MLPs 784-32/64-10 at 4-6-bit
lookups (gains up to 4) concrete reported the same complexity with and without gains;
for a pruned QAT CNN at 5-bit lookups it rose from 2.6e10 to 3.0e10 (6-bit lookups
without gains: 4.4e10), and a PTQ CNN at 6 bits ran faster with them (18.9 s against
23.3 s per image, other per-norm partitions).  The latency search costs every compiled
candidate, so it sees what gains cost.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, Gemm, QuantizeInput, TableLookup, QuantActivation
>>> from latentopt.ir import Dequantize, Interval
>>> relu = QuantActivation("relu", input_scale=1.0, output_scale=8.0, n_bits=4)
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 4),
...              Gemm("g", ("q",), [[8, 8], [1, 1]]), TableLookup("a", ("g",), relu),
...              Dequantize("o", ("a",), 1.0, 0)], n_features=2)
>>> span = Interval(np.array([0, 0]), np.array([240, 30]))  # of "g", the lookup's input
>>> gains = lookup_gains(c, "a", lsbs=4, bits=4, interval=span)
>>> gains.tolist()      # channel 1 spans 30 of the 240 the 16-level table covers
[1, 8]
>>> e = equalize_lookup(c, "a", gains)
>>> e["g"].weight.tolist(), e["a"].fn.input_scale.tolist()
([[8, 8], [8, 8]], [1.0, 0.125])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .circuit import Circuit
from .conv_nodes import Conv, SumPool
from .functions import QuantActivation
from .nodes import Concat, Gemm, Node, Round, TableLookup
from .ranges import Interval, centred_bits

__all__ = ["MAX_GAIN", "equalize_lookup", "gain_chain", "lookup_gains"]

#: Largest gain given to one channel (a dead channel would otherwise take any).
MAX_GAIN = 64


def gain_chain(circuit: Circuit, tlu_name: str) -> tuple[Node, SumPool | None, str] | None:
    """``(producer, pool, value)``: the layer a gain can be folded into, the sum pool
    between it and the lookup (or None) and the name of the value the lookup rounds;
    None where no gain applies (another function or producer, a value with more than
    one reader, or a lookup whose output is concatenated)."""
    tlu = circuit[tlu_name]
    if not isinstance(tlu, TableLookup) or not isinstance(tlu.fn, QuantActivation):
        return None
    if any(isinstance(n, Concat) for n in circuit.consumers(tlu_name)):
        # concrete 2.11's optimizer panics (the process aborts) on per-norm partitions
        # ("precision_and_norm2", tried by compile's "auto") of a concatenation whose
        # operands were gained: tests/sklearn/test_torch_qat_cat.py
        return None
    value = tlu.inputs[0]
    reader: Node = tlu
    if isinstance(circuit[value], Round):
        reader, value = circuit[value], circuit[value].inputs[0]
    node, pool = circuit[value], None
    if [n.name for n in circuit.consumers(value)] != [reader.name]:
        return None
    if isinstance(node, SumPool):
        if node.input_zero_point != 0:
            return None
        pool, src = node, node.inputs[0]
        if [n.name for n in circuit.consumers(src)] != [pool.name]:
            return None
        node = circuit[src]
    if not isinstance(node, (Gemm, Conv)):
        return None
    return node, pool, value


def _channels(node: Node) -> int:
    return int(node.weight.shape[0])  # type: ignore[attr-defined]


def _per_element(gains: np.ndarray, size: int) -> np.ndarray:
    """Channel gains spread over a channel-major flat value of ``size`` elements."""
    if size % gains.size:
        raise ValueError(f"{size} elements do not split into {gains.size} channels")
    return np.repeat(gains, size // gains.size)


def lookup_gains(circuit: Circuit, tlu_name: str, lsbs: int, bits: int,
                 interval: Interval, max_gain: int = MAX_GAIN) -> np.ndarray | None:
    """Largest integer gain per output channel of the layer feeding ``tlu_name`` that
    keeps the lookup's input within ``bits`` bits once ``lsbs`` LSBs are removed.

    ``interval`` is that of the rounded value, the one the lookup's LSBs were measured
    on (:meth:`Circuit.lookup_input_range <latentopt.ir.Circuit.lookup_input_range>`:
    calibrated, widened by the margin, or worst case).  Returns None where no gain
    applies (see :func:`gain_chain`) or ``lsbs`` is 0 (nothing is rounded).
    """
    chain = gain_chain(circuit, tlu_name)
    if chain is None or lsbs <= 0:
        return None
    producer = chain[0]
    lo = np.asarray(interval.lo, np.int64).ravel()
    hi = np.asarray(interval.hi, np.int64).ravel()
    n_ch = _channels(producer)
    if lo.size % n_ch:
        return None
    per = lo.size // n_ch
    lo, hi = lo.reshape(n_ch, per), hi.reshape(n_ch, per)
    limit = int(max_gain)
    step, top = 1 << int(lsbs), (1 << int(bits)) - 1
    span = np.maximum((hi - lo).max(axis=1), 0)
    gains = np.ones(n_ch, np.int64)
    for c in range(n_ch):
        if span[c] == 0:  # a constant channel: rounding loses nothing there
            continue
        g = int(min(limit, (top + 1) * step // span[c] + 1))
        while g > 1 and centred_bits(g * lo[c], g * hi[c], lsbs) > bits:
            g -= 1
        gains[c] = g
    return gains


def equalize_lookup(circuit: Circuit, tlu_name: str, gains: np.ndarray | None) -> Circuit:
    """``circuit`` with each channel of the layer feeding ``tlu_name`` multiplied by its
    gain (weights and bias) and the lookup reading ``v / gain``; calibrated ranges of
    the scaled values are scaled alike.  ``gains`` of all ones (or None): unchanged."""
    if gains is None or np.all(gains == 1):
        return circuit
    chain = gain_chain(circuit, tlu_name)
    if chain is None:
        raise ValueError(f"no gain applies before lookup {tlu_name!r}")
    producer, pool, value = chain
    gains = np.asarray(gains, np.int64)
    if gains.shape != (_channels(producer),) or np.any(gains < 1):
        raise ValueError(f"expected {_channels(producer)} gains >= 1, got {gains.tolist()}")
    tlu = circuit[tlu_name]
    fn = getattr(tlu, "fn", None)
    assert isinstance(tlu, TableLookup) and isinstance(fn, QuantActivation)  # gain_chain
    cal = dict(circuit.calibration) if circuit.calibration else None
    scaled = {producer.name, value} | ({pool.name} if pool is not None else set())
    wshape = (-1,) + (1,) * (producer.weight.ndim - 1)  # type: ignore[attr-defined]
    new_nodes: list[Node] = []
    for node in circuit.nodes:
        if node.name == producer.name:
            bias = None if producer.bias is None else producer.bias * gains  # type: ignore
            node = replace(node, weight=producer.weight * gains.reshape(wshape),  # type: ignore
                           bias=bias)
        elif node.name == tlu_name:
            n_el = circuit.width(value)
            ins = np.broadcast_to(fn.input_scale, (n_el,)) / _per_element(gains, n_el)
            node = replace(tlu, fn=replace(fn, input_scale=ins))
        new_nodes.append(node)
    if cal is not None:
        for name in scaled & set(cal):
            r = cal[name]
            g = _per_element(gains, np.asarray(r.lo).size)
            cal[name] = Interval(np.asarray(r.lo) * g, np.asarray(r.hi) * g)
        for name in list(cal):  # derived from the scaled values: measured again later
            node = circuit[name]
            if isinstance(node, Round) and node.inputs[0] in scaled:
                del cal[name]
    return circuit.replace(nodes=new_nodes, calibration=cal)
