"""ONNX export of the operators through MXNet's exporter (``mx.onnx.export_model``).

:func:`register` (called by ``import dcnv2_mx``) adds converters to MXNet 1.9.1's exporter:

* ``DeformableConvolutionV2`` becomes the standard ONNX ``DeformConv`` (opset 19) with its mask
  input, ``DeformableConvolutionV1`` the same operator without a mask. Both follow the DCNv2
  border rule and the interleaved (dy, dx) offset layout of ``DeformConv``, so the exported graph
  computes what MXNet computes; the rest of a network (the offset/mask branch: convolutions,
  slices, sigmoid) exports with MXNet's own converters.
* ``ModulatedDeformablePSROIPooling`` has no ONNX counterpart: exporting a graph that contains it
  raises :class:`OnnxExportError` naming the operator, instead of writing a broken file.

Registering needs no ``onnx`` package (MXNet's registry skips converters when ``onnx`` is missing,
and exporting then fails anyway); exporting needs ``onnx`` 1.14 to 1.18: 1.14 is the first whose
default opset (19) has ``DeformConv``, and MXNet 1.9.1's exporter imports ``onnx.mapping``, which
onnx 1.19 removed (newer versions fail inside MXNet with a misleading "Onnx and protobuf need to be
installed"). :func:`export_model` checks the version first and says so.

Input order: ours is (data, offset, mask, weight, bias), ONNX's is (X, W, offset, B, mask);
``pad`` (ph, pw) becomes ``pads`` [ph, pw, ph, pw]; ``num_group`` becomes ``group`` and
``num_deformable_group`` becomes ``offset_group``.
"""
import numpy as np

__all__ = ["register", "export_model", "check_onnx_version", "OnnxExportError",
           "ONNX_OPSET", "SUPPORTED_ONNX"]

#: ONNX opset that introduced DeformConv.
ONNX_OPSET = 19
#: onnx package versions that MXNet 1.9.1's exporter works with and whose opset has DeformConv.
SUPPORTED_ONNX = ((1, 14), (1, 18))

_CONV_OPS = {"_contrib_DeformableConvolutionV2": True, "_contrib_DeformableConvolutionV1": False}
_POOLING_OP = "_contrib_ModulatedDeformablePSROIPooling"


class OnnxExportError(ValueError):
    """A graph or an onnx installation that the ONNX export of dcnv2_mx operators cannot handle."""


def _ints(text, default):
    """Parses an MXNet tuple attribute such as '(3, 3)'; `default` when absent or empty."""
    if text is None:
        return list(default)
    values = [int(v) for v in text.strip("()[] ").replace(" ", "").split(",") if v]
    return values or list(default)


def _flag(text):
    return str(text).strip().lower() in ("true", "1")


def _convert_deformable_convolution(node, **kwargs):
    """MXNet converter: one DeformableConvolutionV2/V1 node -> one ONNX DeformConv node."""
    from mxnet.onnx.mx2onnx._op_translations._op_translations_opset13 import get_inputs
    from onnx import helper

    op = node["op"].replace("_contrib_", "")
    name, inputs, attrs = get_inputs(node, kwargs)
    opset = kwargs.get("opset_version", ONNX_OPSET)
    if opset < ONNX_OPSET:
        raise OnnxExportError(
            f"{op} '{name}': ONNX DeformConv needs opset {ONNX_OPSET} or later, but the export "
            f"uses opset {opset}; install onnx {'.'.join(map(str, SUPPORTED_ONNX[0]))} to "
            f"{'.'.join(map(str, SUPPORTED_ONNX[1]))}")
    layout = attrs.get("layout", "NCHW")
    if layout not in ("NCHW", "None"):
        raise OnnxExportError(f"{op} '{name}': layout {layout} cannot be exported "
                              "(ONNX DeformConv is NCHW only)")
    modulated = _CONV_OPS[node["op"]]
    no_bias = _flag(attrs.get("no_bias", "False"))
    expected = 2 + modulated + 1 + (not no_bias)
    if len(inputs) != expected:
        raise OnnxExportError(f"{op} '{name}': expected {expected} inputs "
                              f"(no_bias={no_bias}), the graph gives {len(inputs)}")
    data, offset = inputs[:2]
    mask = inputs[2] if modulated else None
    weight = inputs[2 + modulated]
    bias = None if no_bias else inputs[3 + modulated]
    # Trailing optional inputs are left out; an optional input before a given one is "".
    onnx_inputs = [data, weight, offset, bias or ""] + ([mask] if modulated else [])
    while onnx_inputs[-1] == "":
        onnx_inputs.pop()
    kernel = _ints(attrs.get("kernel"), ())
    pad = _ints(attrs.get("pad"), (0, 0))
    return [helper.make_node(
        "DeformConv", onnx_inputs, [name], name=name, kernel_shape=kernel,
        strides=_ints(attrs.get("stride"), (1, 1)), dilations=_ints(attrs.get("dilate"), (1, 1)),
        pads=pad + pad, group=int(attrs.get("num_group", 1)),
        offset_group=int(attrs.get("num_deformable_group", 1)))]


def _refuse_pooling(node, **kwargs):
    """MXNet converter for ModulatedDeformablePSROIPooling: always refuses, saying why."""
    raise OnnxExportError(
        f"ModulatedDeformablePSROIPooling '{node['name']}' cannot be exported to ONNX: ONNX has "
        "no deformable position-sensitive RoI pooling operator (nor a modulated one), and "
        "composing it from standard operators is not supported; export the network without its "
        "RoI head, or run that part in MXNet")


_registered = False


def register():
    """Registers the converters with MXNet's ONNX exporter (idempotent).

    Without the ``onnx`` package MXNet's registry ignores converters; nothing can be exported
    then, and :func:`export_model` says what to install.
    """
    global _registered
    if _registered:
        return
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    # Registered at MXNet's lowest opset (12) so that every export opset finds the converter,
    # which then refuses opsets before 19 with a clear error.
    for op in _CONV_OPS:
        MXNetGraph.register(op, opset_version=12)(_convert_deformable_convolution)
    MXNetGraph.register(_POOLING_OP, opset_version=12)(_refuse_pooling)
    _registered = True


def check_onnx_version():
    """Raises :class:`OnnxExportError` unless an onnx version that can export our ops is installed.

    Returns the installed version string.
    """
    try:
        import onnx
    except ImportError as err:
        raise OnnxExportError(
            "exporting to ONNX needs the onnx package: pip install 'onnx>=1.14,<1.19'") from err
    version = tuple(int(p) for p in onnx.__version__.split(".")[:2])
    low, high = SUPPORTED_ONNX
    if not low <= version <= high:
        why = ("its default opset has no DeformConv" if version < low else
               "MXNet 1.9.1's exporter imports onnx.mapping, which onnx 1.19 removed")
        raise OnnxExportError(
            f"onnx {onnx.__version__} cannot export with MXNet {_mxnet_version()}: {why}; "
            "pip install 'onnx>=1.14,<1.19'")
    return onnx.__version__


def _mxnet_version():
    import mxnet as mx
    return mx.__version__


def export_model(sym, params, in_shapes, onnx_file_path, in_types=np.float32, dynamic=False,
                 dynamic_input_shapes=None):
    """Exports an MXNet model with dcnv2_mx operators to ONNX and checks the file.

    ``mx.onnx.export_model`` after checking the onnx version (:func:`check_onnx_version`) and
    registering the converters; the parameters become initializers only (MXNet also lists them
    as graph inputs), and ``onnx.checker.check_model`` (with shape inference) checks the file.

    Parameters
    ----------
    sym : Symbol or str
        The network, or the path of its ``-symbol.json`` (e.g. from ``HybridBlock.export``).
    params : dict of str to NDArray, or str
        Its parameters (``arg:``/``aux:`` prefixes allowed), or the path of a ``.params`` file.
    in_shapes : list of tuple
        Shape of each data input, in the order of ``sym.list_inputs()`` without the parameters,
        e.g. ``[(1, 3, 224, 224)]``.
    onnx_file_path : str
        Where to write the ONNX model.
    in_types : numpy dtype or list of them
        Data input types (default float32).
    dynamic, dynamic_input_shapes
        As in ``mx.onnx.export_model`` (symbolic batch size and the like).

    Returns
    -------
    str
        ``onnx_file_path``.
    """
    check_onnx_version()
    import mxnet as mx
    import onnx

    register()
    if isinstance(params, dict):  # the exporter matches names without the file's prefixes
        params = {k.split(":", 1)[-1]: v for k, v in params.items()}
    path = mx.onnx.export_model(sym, params, in_shapes=in_shapes, in_types=in_types,
                                onnx_file_path=onnx_file_path, dynamic=dynamic,
                                dynamic_input_shapes=dynamic_input_shapes)
    model = onnx.load(path)
    # MXNet lists the parameters as graph inputs too, which makes them overridable inputs for
    # runtimes (onnxruntime warns and does not fold them as constants); they are only weights.
    weights = {tensor.name for tensor in model.graph.initializer}
    data_inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(data_inputs)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
