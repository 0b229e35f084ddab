"""ONNX export (dcnv2_mx.onnx through mx.onnx.export_model) checked numerically in onnxruntime's
CPU DeformConv and in onnx's reference evaluator: each convolution over the parameter grid, the
Gluon DCNv2 block, a GluonCV ResNet-18 v1b with DCNv2 in layer2-4, the export-onnx command, and
the clear errors for what cannot be exported."""
import mxnet as mx
import numpy as np
import pytest

import dcnv2_mx.onnx as dcn_onnx
from helpers import CASES

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (requirements-test.txt)")
ort = pytest.importorskip("onnxruntime",
                          reason="ONNX export tests need onnxruntime (requirements-test.txt)")
try:
    dcn_onnx.check_onnx_version()
except dcn_onnx.OnnxExportError as err:
    pytest.skip(str(err), allow_module_level=True)
if tuple(int(p) for p in ort.__version__.split(".")[:2]) < (1, 25):
    pytest.skip(f"onnxruntime {ort.__version__} has no CPU DeformConv (1.25 or later needed)",
                allow_module_level=True)

from onnx.reference import ReferenceEvaluator  # noqa: E402

from dcnv2_mx.tools import cli  # noqa: E402
from dcnv2_mx.gluon import DeformableConvolutionV2  # noqa: E402
from dcnv2_mx.tools import onnx_export  # noqa: E402

#: float32 tolerance of onnxruntime's and MXNet's kernels against each other (both float32; the
#: sums run in different orders).
RTOL, ATOL = 1e-4, 1e-5


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ops_of(path):
    return [node.op_type for node in onnx.load(path).graph.node]


# ---------------------------------------------------------------------------------------------
# The operators over the parameter grid

GRID = dict(CASES, **{"v1-b2-k3x3-s21-d21-g2-nobias": dict(
    batch=2, channels=4, height=6, width=5, num_filter=2, kernel=(3, 3), stride=(2, 1),
    dilate=(2, 1), num_group=2, no_bias=True, modulated=False)})


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in GRID.items()])
def test_operator_matches_onnxruntime_and_reference_evaluator(make_problem, case, tmp_path):
    """data, offset (and mask) are graph inputs, weight and bias initializers; offsets put samples
    inside, in the (-1, 0) and (H-1, H) border bands and outside the map."""
    problem = make_problem(**case)
    sym = problem.symbol()
    arrays = {k: v.astype(np.float32) for k, v in problem.symbol_location().items()}
    params = {k: mx.nd.array(v) for k, v in arrays.items() if k.startswith("dcn_")}
    feeds = {k: v for k, v in arrays.items() if k not in params}
    assert list(feeds) == [n for n in sym.list_inputs() if n not in params]
    path = dcn_onnx.export_model(sym, params, [v.shape for v in feeds.values()],
                                 str(tmp_path / "op.onnx"))
    assert ops_of(path).count("DeformConv") == 1
    expected = problem.run_nd("float32")
    got = session(path).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    reference = ReferenceEvaluator(path).run(None, feeds)[0]
    np.testing.assert_allclose(reference, expected, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Gluon block, GluonCV ResNet and the command line


def export_deformed(net, rng, shape, offset_scale, prefix):
    """Initialises and hybridizes `net` with random non-zero offset branches (they start at
    zero), exports it to `prefix`; returns a random input of `shape` and MXNet's output on it."""
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    net(mx.nd.array(x))  # parameter shapes
    for param in net.collect_params(".*offset_(weight|bias)").values():
        param.set_data(mx.nd.array(rng.normal(0, offset_scale, param.shape)))
    expected = net(mx.nd.array(x)).asnumpy()
    net.export(prefix)
    return x, expected


def test_gluon_block_export_matches_onnxruntime_and_reference_evaluator(rng, tmp_path):
    """Conv2D + our block (groups, deformable groups, stride 2), small: onnx's reference
    DeformConv loops in Python."""
    net = mx.gluon.nn.HybridSequential()
    with net.name_scope():
        net.add(mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu"),
                DeformableConvolutionV2(4, kernel_size=3, strides=2, padding=1, groups=2,
                                        num_deformable_group=2, activation="relu"))
    prefix = str(tmp_path / "block")
    x, expected = export_deformed(net, rng, (2, 3, 7, 6), 0.3, prefix)
    path = onnx_export.export_saved_model(prefix, [x.shape], prefix + ".onnx")
    assert {"Conv", "DeformConv", "Sigmoid"} <= set(ops_of(path))
    np.testing.assert_allclose(session(path).run(None, {"data": x})[0], expected,
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ReferenceEvaluator(path).run(None, {"data": x})[0], expected,
                               rtol=RTOL, atol=ATOL)


def test_gluoncv_resnet18_with_dcnv2_exports_and_cli_verifies(rng, tmp_path, capsys):
    """ResNet-18 v1b with DCNv2 in layer2-4 (6 layers) at 64x64, exported from its saved files by
    `python -m dcnv2_mx export-onnx`, which runs onnxruntime and reports the difference."""
    from gluoncv.model_zoo.resnetv1b import resnet18_v1b

    import dcnv2_mx.gluoncv as dcn_cv

    net = resnet18_v1b(pretrained=False)
    assert dcn_cv.convert_resnet(net) == 6
    prefix = str(tmp_path / "resnet18_dcnv2")
    x, expected = export_deformed(net, rng, (1, 3, 64, 64), 0.02, prefix)
    assert cli.main(["export-onnx", prefix, "--shape", "1,3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "6 DeformConv" in out and "max |difference|" in out, out
    got = session(prefix + ".onnx").run(None, {"data": x})[0]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL * np.abs(expected).max())


@pytest.fixture
def small_model(tmp_path):
    """The prefix of a saved hybridized DCNv2 block with input (1, 2, 5, 5)."""
    net = DeformableConvolutionV2(4, kernel_size=3, padding=1, in_channels=2)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 2, 5, 5)))
    prefix = str(tmp_path / "dcn")
    net.export(prefix)
    return prefix


def test_cli_fails_when_onnxruntime_disagrees(small_model, monkeypatch, capsys):
    """The command's exit status says whether the outputs agree: a perturbed comparison fails."""
    assert cli.main(["export-onnx", small_model, "--shape", "1,2,5,5"]) == 0
    compare = onnx_export.compare_with_onnxruntime
    monkeypatch.setattr(onnx_export, "compare_with_onnxruntime", lambda *a, **k: [
        (name, diff + 1e-2 * scale, scale) for name, diff, scale in compare(*a, **k)])
    assert cli.main(["export-onnx", small_model, "--shape", "1,2,5,5"]) == 1
    assert "EXCEEDS" in capsys.readouterr().out


def test_cli_bad_arguments(small_model, tmp_path, capsys):
    assert cli.main(["export-onnx", small_model, "--shape", "1,2,x,5"]) == 2
    assert "expected positive integers" in capsys.readouterr().err
    assert cli.main(["export-onnx", small_model, "--shape", "1,2,5,5", "--shape", "1,2"]) == 2
    assert "1 data input(s) ['data'], 2 shape(s)" in capsys.readouterr().err
    assert cli.main(["export-onnx", str(tmp_path / "missing"), "--shape", "1,2,5,5"]) == 2
    assert "missing-symbol.json not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# What cannot be exported


@pytest.mark.skipif(not hasattr(mx.sym.contrib, "ModulatedDeformablePSROIPooling"),
                    reason="this build of the library has no PS-RoI pooling")
def test_psroi_pooling_export_names_the_operator(tmp_path):
    feat, rois = mx.sym.var("feat"), mx.sym.var("rois")
    out = mx.sym.contrib.ModulatedDeformablePSROIPooling(
        data=feat, rois=rois, no_trans=True, spatial_scale=1.0, output_dim=2, group_size=1,
        pooled_size=2, name="dpool")
    path = tmp_path / "pool.onnx"
    with pytest.raises(dcn_onnx.OnnxExportError,
                       match="ModulatedDeformablePSROIPooling 'dpool'.*no deformable"):
        dcn_onnx.export_model(out, {}, [(1, 2, 4, 4), (1, 5)], str(path))
    assert not path.exists()


def test_opset_before_deform_conv_is_refused():
    node = {"op": "_contrib_DeformableConvolutionV2", "name": "dcn", "inputs": [],
            "attrs": {"kernel": "(3, 3)", "num_filter": "2"}}
    with pytest.raises(dcn_onnx.OnnxExportError, match="opset 19 or later.*opset 18"):
        dcn_onnx._convert_deformable_convolution(node, opset_version=18, outputs_lookup=[])


def test_unsupported_onnx_version_is_named(monkeypatch):
    monkeypatch.setattr(onnx, "__version__", "1.19.0")
    with pytest.raises(dcn_onnx.OnnxExportError, match="onnx 1.19.0 .*onnx.mapping"):
        dcn_onnx.check_onnx_version()
    monkeypatch.setattr(onnx, "__version__", "1.13.1")
    with pytest.raises(dcn_onnx.OnnxExportError, match="no DeformConv"):
        dcn_onnx.check_onnx_version()
