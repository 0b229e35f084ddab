"""Float64 NumPy references of the operators, forward and backward, written from their semantics
(docs/semantics.md) and never calling the operators: :mod:`.conv` (the deformable convolutions)
and :mod:`.psroi` (the modulated deformable PS-RoI pooling).

The self-check (``python -m dcnv2_mx check``) and the tests compare the operators with them. They
need only NumPy: importing :mod:`dcnv2_mx` (which loads the operators into MXNet) is a side effect
of their package location, not a dependency.
"""
from . import conv, psroi  # noqa: F401

__all__ = ["conv", "psroi"]
