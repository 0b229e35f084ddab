"""Tests of the command line (python -m dcnv2_mx): every subcommand with small settings, the
self-check's ability to fail, and the pieces the demo's figure relies on."""
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import dcnv2_mx
from dcnv2_mx.tools import bench_peers, cli, demo, selfcheck
from dcnv2_mx.tools.reference.conv import deform_conv2d_forward
from dcnv2_mx.tools.reference.psroi import psroi_pooling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as image:
        assert image.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    assert os.path.getsize(path) > 1000


def table_row(out, case):
    """{column title: cell} of `case`'s row in the text table of `out` that has it."""
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(case + " "))
    header = next(lines[i] for i in range(row, -1, -1) if lines[i].startswith("case "))
    return dict(zip(re.split(r"\s{2,}", header), re.split(r"\s{2,}", lines[row])))


def run_module(*args):
    """python -m dcnv2_mx ARGS in a fresh process: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "dcnv2_mx", *args], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_info_runs_as_module_and_names_library_and_operators():
    status, out, err = run_module("info")
    assert status == 0, err
    assert dcnv2_mx.library.loaded_path() in out
    assert f"MXNet      {mx.__version__}" in out
    for op in ("DeformableConvolutionV2", "DeformableConvolutionV1"):
        assert any(line.startswith(op) and "float32" in line and "float64" in line
                   for line in out.splitlines()), out


def test_check_passes_on_cpu(capsys):
    assert cli.main(["check", "--ctx", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("cpu(0)")]
    assert rows and all(" PASS " in row for row in rows), out
    checks = {(row.split()[1], row.split()[2]) for row in rows}
    for op in ("DeformableConvolutionV2", "DeformableConvolutionV1",
               "ModulatedDeformablePSROIPooling"):
        assert {(op, "forward"), (op, "gradient")} <= checks


def test_check_fails_when_the_conv_reference_is_wrong(monkeypatch, capsys):
    reference = selfcheck.deform_conv2d_forward
    monkeypatch.setattr(selfcheck, "deform_conv2d_forward",
                        lambda *args, **kwargs: reference(*args, **kwargs) * (1 + 1e-3))
    assert cli.main(["check", "--ctx", "cpu"]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if " FAIL " in line]
    assert {line.split()[1] for line in failed} == {"DeformableConvolutionV2",
                                                    "DeformableConvolutionV1"}
    assert all(line.split()[2] == "forward" for line in failed)


def test_check_fails_when_the_pooling_reference_is_wrong(monkeypatch, capsys):
    reference = selfcheck.psroi_pooling
    monkeypatch.setattr(selfcheck, "psroi_pooling",
                        lambda *args, **kwargs: reference(*args, **kwargs) + 1e-3)
    assert cli.main(["check", "--ctx", "cpu"]) == 1
    failed = [line.split()[1:4] for line in capsys.readouterr().out.splitlines()
              if " FAIL " in line]
    assert failed == [["ModulatedDeformablePSROIPooling", "forward", dtype]
                      for dtype in ("float64", "float32")]


@pytest.mark.skipif(mx.context.num_gpus() > 0 if mx.runtime.Features().is_enabled("CUDA")
                    else False, reason="a GPU is present")
def test_check_on_gpu_without_one_is_an_error(capsys):
    assert cli.main(["check", "--ctx", "gpu"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_conv_reference_is_a_convolution_for_zero_offsets_and_unit_mask():
    rng = np.random.default_rng(0)
    data, weight, bias = rng.normal(size=(2, 4, 6, 7)), rng.normal(size=(6, 2, 3, 3)), \
        rng.normal(size=6)
    params = dict(kernel=(3, 3), stride=(2, 1), pad=(1, 0), dilate=(1, 2), num_group=2)
    expected = mx.nd.Convolution(mx.nd.array(data, dtype="float64"),
                                 mx.nd.array(weight, dtype="float64"),
                                 mx.nd.array(bias, dtype="float64"), num_filter=6,
                                 **params).asnumpy()
    ho, wo = expected.shape[2:]
    got = deform_conv2d_forward(data, np.zeros((2, 36, ho, wo)), np.ones((2, 18, ho, wo)),
                                weight, bias, params["stride"], params["pad"], params["dilate"],
                                groups=2, deformable_groups=2)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_psroi_reference_matches_mxnet_builtin_without_mask():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 2 * 4, 9, 10))
    rois = np.array([[0, 2.2, 3.1, 14.7, 12.4], [1, -4.0, 1.0, 9.6, 21.3],
                     [1, 6.4, 5.3, 6.9, 7.2]])
    trans = rng.normal(size=(3, 4, 3, 3))
    params = dict(spatial_scale=0.5, output_dim=2, group_size=2, pooled_size=3, part_size=3,
                  sample_per_part=2, trans_std=0.1)
    expected = mx.nd.contrib.DeformablePSROIPooling(
        *(mx.nd.array(a, dtype="float64") for a in (data, rois, trans)), **params).asnumpy()
    got = psroi_pooling(data, rois, trans, None, **params)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_bench_quick_prints_ratio_tables_and_draws_the_plot(tmp_path):
    plot = tmp_path / "bench.png"
    status, out, err = run_module("bench", "--quick", "--repeat", "2", "--plot", str(plot))
    assert status == 0, err
    assert "fwd vs conv" in out and "builtin vs ours" in out
    for case in ("tiny", "tiny_dg2_s2"):
        assert any(line.startswith(case + " ") and line.count("x ") >= 3
                   for line in out.splitlines()), out
    assert "psroi_tiny" in out and "fwd vs builtin" in out
    assert "bench" in err  # the progress bar
    assert_png(plot)
    # Each peer engine: timed where its package is installed, else n/a with the reason.
    runnable, skipped = bench_peers.available(mx.cpu())
    for peer in bench_peers.PEERS:
        cells = [table_row(out, case)[f"ours / {peer.label}"] for case in ("tiny", "tiny_dg2_s2")]
        if peer in runnable:
            assert all(re.fullmatch(r"\d+\.\d\dx", cell) for cell in cells), out
            assert f"{peer.label} {bench_peers.versions([peer])[peer.label]}" in out
        else:
            assert cells == ["n/a"] * 2, out
            assert f"{peer.label} n/a ({skipped[peer.label]})" in out


def test_bench_without_the_peer_packages_reads_n_a_and_says_why(monkeypatch, capsys):
    for module in ("openvino", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    assert cli.main(["bench", "--quick", "--cases", "tiny", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    row = table_row(out, "tiny")
    for peer in ("OpenVINO", "onnxruntime"):
        assert row[f"ours / {peer}"] == row[f"{peer} fwd ms"] == "n/a", out
        assert f"{peer} n/a (skipped: package missing" in out
    assert row["fwd vs conv"].endswith("x")


def test_bench_stops_when_a_peer_disagrees_with_ours(monkeypatch, capsys):
    def zeros(inputs, stride, pad, dg):  # right shape, wrong values
        shape = inputs["data"].shape[:1] + inputs["weight"].shape[:1] + inputs["offset"].shape[2:]
        return lambda: np.zeros(shape, np.float32)

    monkeypatch.setattr(bench_peers, "PEERS",
                        (bench_peers.Peer("Zeros", "zeros fwd", ("numpy",), None, zeros),))
    assert cli.main(["bench", "--quick", "--cases", "tiny", "--repeat", "1"]) == 1
    captured = capsys.readouterr()
    assert "error: Zeros differs from DeformableConvolutionV2 on case tiny" in captured.err
    assert "tiny " not in captured.out  # no table


def test_bench_model_quick_prints_its_table_and_draws_the_plot(tmp_path, capsys):
    plot = tmp_path / "model.png"
    assert cli.main(["bench", "--model", "--quick", "--repeat", "1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    infer, train = table_row(out, "infer_tiny"), table_row(out, "train_tiny")
    assert infer["input"] == "infer 1x3x64x64" and train["input"] == "train 1x3x64x64"
    for row in (infer, train):
        for column in ("ours / plain", "offset branch / plain", "plain again / plain"):
            assert re.fullmatch(r"\d+\.\d\dx", row[column]), out
        assert all(float(row[f"{name} ms"]) > 0
                   for name in ("plain", "offset_branch", "ours", "plain_again"))
    assert re.fullmatch(r"\d+\.\d\dx", infer["builtin / plain"]), out
    assert train["builtin / plain"] == train["builtin ms"] == "-"  # no CPU backward
    assert_png(plot)


def test_bench_rejects_unknown_cases(capsys):
    assert cli.main(["bench", "--quick", "--cases", "tiny,huge"]) == 2
    assert "huge" in capsys.readouterr().err


def test_demo_then_viz_write_table_model_and_figures(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert cli.main(["demo", "--epochs", "1", "--train-size", "128", "--test-size", "64",
                     "--out", str(out_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for variant in demo.VARIANTS:
        assert any(line.startswith(variant + " ") for line in out.splitlines()), out
    assert "test acc" in out and "s/epoch" in out
    assert_png(out_dir / "demo.png")
    prefix = out_dir / demo.MODEL_PREFIX
    assert cli.main(["viz", "--model", str(prefix), "--units", "2",
                     "--out", str(tmp_path / "viz.png")]) == 0
    assert "2 unit(s)" in capsys.readouterr().out
    assert_png(tmp_path / "viz.png")


def test_viz_without_a_model_says_how_to_make_one(tmp_path, capsys):
    assert cli.main(["viz", "--model", str(tmp_path / "missing")]) == 2
    assert "demo" in capsys.readouterr().err


def test_demo_variants_start_as_the_same_function():
    """Zero-initialised offsets (and masks 2*sigmoid(0) = 1): only training can tell them apart."""
    images = np.random.default_rng(0).normal(size=(4, 1, 32, 32))
    outputs = []
    for variant in demo.VARIANTS:
        mx.random.seed(3)
        net = demo.build_net(variant)
        net.initialize(mx.init.Xavier())
        outputs.append(net(mx.nd.array(images)).asnumpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[2], outputs[0], rtol=1e-5, atol=1e-6)


def test_sampling_probe_of_an_untrained_net_is_the_regular_5x5_grid(tmp_path):
    """Untrained: zero offsets and unit masks, so the 81 points of the two 3x3 layers fall on the
    5x5 grid of their input map (4 image pixels apart), centred on the unit."""
    mx.random.seed(0)
    net = demo.build_net("dcnv2")
    net.initialize(mx.init.Xavier())
    net.hybridize()
    images = np.random.default_rng(0).normal(size=(2, 1, 32, 32)).astype(np.float32)
    net(mx.nd.array(images))
    net.export(str(tmp_path / "m"))
    probe = demo.SamplingProbe(str(tmp_path / "m-symbol.json"), str(tmp_path / "m-0000.params"))
    assert probe.channels == 1 and len(probe.layers) == 2
    for sampling in [s[0] for s in probe.locate(images)]:
        assert sampling.points.shape == (81, 2)
        np.testing.assert_allclose(sampling.masks, 1.0, rtol=1e-6)
        steps = (sampling.points - sampling.unit) / 4
        np.testing.assert_allclose(steps, np.rint(steps), atol=1e-5)
        assert {tuple(s) for s in np.rint(steps).astype(int)} == {
            (i, j) for i in range(-2, 3) for j in range(-2, 3)}


def test_dataset_is_reproducible_and_seed_dependent():
    first, again, other = (demo.make_dataset(16, 8, seed) for seed in (5, 5, 6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (16, 1, 32, 32) and first[0].dtype == np.float32
    assert set(np.unique(first[1])) <= set(range(10))
