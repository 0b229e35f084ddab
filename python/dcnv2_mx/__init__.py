"""dcnv2-mx: Deformable ConvNets v2 operators for Apache MXNet 1.9.

Importing the package loads the compiled operators into MXNet and installs keyword APIs:

* ``mx.sym.contrib.DeformableConvolutionV2`` / ``mx.nd.contrib.DeformableConvolutionV2``
  (modulated deformable convolution, DCNv2) and ``...DeformableConvolutionV1`` (offsets only);
* ``mx.sym.contrib.ModulatedDeformablePSROIPooling`` and its ``mx.nd.contrib`` twin (modulated
  deformable PS-RoI pooling; without a mask, MXNet's DeformablePSROIPooling).

``dcnv2_mx.gluon`` (the Gluon blocks) comes with it; ``dcnv2_mx.gluoncv`` needs GluonCV and is
imported explicitly. The command line and the NumPy references live in ``dcnv2_mx.tools``.
The operators' exact semantics: docs/semantics.md.
It also puts the operators on the lists of MXNet's mixed precision (``mx.contrib.amp``, see
:mod:`dcnv2_mx.amp`) and registers ONNX converters with ``mx.onnx.export_model`` (see
:mod:`dcnv2_mx.onnx`).
"""
from . import library as _library

__version__ = "0.1.0"

_library.load()

from . import ops  # noqa: E402  (needs the loaded library)
from .ops import (  # noqa: E402,F401
    DeformableConvolutionV1, DeformableConvolutionV2, ModulatedDeformablePSROIPooling)

ops.install()

from . import gluon  # noqa: E402,F401  (uses the installed keyword operators)
# MXNet's AMP lists and ONNX exporter learn our operators (neither needs the onnx package).
from . import amp as _amp, onnx as _onnx  # noqa: E402
_amp.register()
_onnx.register()
