"""The quantized-circuit IR: the centre of latentopt.

Typed immutable nodes (:mod:`.nodes`; convolution and pooling in :mod:`.conv_nodes`),
univariate functions for table lookups (:mod:`.functions`), range and bit-width
analysis (:mod:`.ranges`), the circuit graph (:mod:`.circuit`) with its layers and
report (:mod:`.layers`), a portable file format (:mod:`.serialize` over :mod:`.archive`)
and the lowering schedule every backend renders (:mod:`.schedule`).  This package
depends on numpy and the standard library only, and imports nothing of latentopt
outside it.
"""

from .circuit import INPUT, Circuit
from .conv_nodes import Conv, MaxPool, SumPool
from .functions import ACTIVATIONS, ExplicitTable, QuantActivation, UnivariateFunction, int_range
from .layers import CircuitReport, Layer
from .nodes import Add, Concat, Dequantize, Gemm, Node, QuantizeInput, Round, TableLookup
from .ranges import Interval, bit_width
from .serialize import CircuitFormatError, load, save

__all__ = [
    "ACTIVATIONS",
    "INPUT",
    "Add",
    "Circuit",
    "CircuitFormatError",
    "Conv",
    "CircuitReport",
    "Concat",
    "Dequantize",
    "ExplicitTable",
    "Gemm",
    "Interval",
    "Layer",
    "MaxPool",
    "Node",
    "QuantActivation",
    "QuantizeInput",
    "Round",
    "SumPool",
    "TableLookup",
    "UnivariateFunction",
    "bit_width",
    "int_range",
    "load",
    "save",
]
