"""Tests of DeformableConvolutionV2 (DCNv2) and DeformableConvolutionV1: the NumPy reference
(forward and backward), numerical gradients, parity with MXNet's built-in operators, borders and
non-finite offsets, the symbol and Gluon APIs, gradient requests, determinism, tiling under a
small workspace and bad input."""
import json
import os
import pickle
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

from helpers import CASES, cases


def assert_covers_borders(problem):
    """The problem samples each border band of each axis, the inside and the outside."""
    height, width = problem.shape[2:]
    py, px = problem.positions
    for pos, extent in ((py, height), (px, width)):
        assert ((pos > -1) & (pos < 0)).any()
        assert ((pos > extent - 1) & (pos < extent)).any()
    inside = (py > -1) & (py < height) & (px > -1) & (px < width)
    assert inside.any() and not inside.all()


# ------------------------------------------------------------------------------------------
# Forward and backward against the NumPy reference


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-12, 1e-12), ("float32", 1e-5, 1e-5)])
@pytest.mark.parametrize("case", cases())
def test_forward_matches_reference(make_problem, case, dtype, rtol, atol):
    problem = make_problem(**case)
    out = problem.run_nd(dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, problem.reference(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-12, 1e-12), ("float32", 1e-5, 1e-5)])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (1, 1)])
def test_forward_weight_layout_with_many_filters_and_taps(make_problem, kernel, dtype, rtol,
                                                          atol):
    """The forward lays its weight out tap-major with filters last, 8 filters by 8 taps in
    registers: 10 filters per group (a block of 8 and 2 more) and 9 or 25 taps (blocks of 8 and
    the rest), two groups, against the reference."""
    problem = make_problem(batch=2, channels=18, height=7, width=6, num_filter=20, kernel=kernel,
                           pad=(kernel[0] // 2, kernel[1] // 2), num_group=2,
                           num_deformable_group=3)
    np.testing.assert_allclose(problem.run_nd(dtype), problem.reference(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-11, 1e-12), ("float32", 1e-4, 1e-4)])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 5)], ids=["3x3", "1x5"])
@pytest.mark.parametrize("height, width", [(2, 3), (7, 9)], ids=["channel-major", "tap-major"])
def test_both_column_orders_match_reference(make_problem, rng, height, width, kernel, dtype, rtol,
                                            atol):
    """A CPU call with at least two filters per output pixel (here 2*2*3 = 12 pixels, 42
    filters) orders each pixel's columns as the weight does, (C/G, K), its GEMMs read the
    weight as given and the forward's threads split the filters (21 per group: 10 and 11);
    with fewer (2*7*9 = 126 pixels) the columns are (K, C/G) and the weight is rearranged.
    Forward and every gradient in both, with 16 channels per group (the 8x8 register
    transposes) and two deformable groups, against the reference."""
    problem = make_problem(batch=2, channels=32, height=height, width=width, num_filter=42,
                           kernel=kernel, pad=(kernel[0] // 2, kernel[1] // 2), num_group=2,
                           num_deformable_group=2)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(dtype, out_grad=out_grad)
    np.testing.assert_allclose(out, problem.reference(), rtol=rtol, atol=atol)
    expected = problem.reference_grads(out_grad)
    assert sorted(grads) == sorted(expected)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, expected[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-11, 1e-12), ("float32", 1e-4, 1e-4)])
@pytest.mark.parametrize("groups, dgroups", [(2, 1), (1, 2)], ids=["g2-dg1", "g1-dg2"])
def test_channel_sums_of_several_vectors_and_a_remainder(make_problem, rng, groups, dgroups,
                                                         dtype, rtol, atol):
    """37 channels in each channel run: the CPU's offset and mask gradients sum them in vector
    lanes (two or four full vectors, then 5 channels), reduce the lanes of the cell's four terms
    at once, and scatter the data gradient in the same pass. One deformable group over two groups
    has two runs to add up; two deformable groups over one group, one each. Every gradient
    against the reference, with samples on and off the map."""
    problem = make_problem(batch=2, channels=74, height=6, width=7, num_filter=6,
                           num_group=groups, num_deformable_group=dgroups)
    assert_covers_borders(problem)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    _, grads = problem.run_nd(dtype, out_grad=out_grad)
    expected = problem.reference_grads(out_grad)
    assert sorted(grads) == sorted(expected)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, expected[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("height, workspace", [(6, None), (48, 1)], ids=["copies", "direct"])
def test_float32_position_gradients_of_a_smooth_image_far_from_zero(make_problem, rng, height,
                                                                      workspace):
    """Float32 offset and mask gradients where neighbouring pixels differ by 1e-4 of their value
    (100 +- 0.01, 64 channels, every sample inside the map): the slopes' corner differences are
    taken channel by channel, so they keep float32's precision (sums of each corner over the
    channels, blended afterwards, lost 1e-3 of it in cancellation). All inputs are rounded to
    float32 first, so that the float64 reference measures the computation alone. With image
    copies, and direct: a 64*48*47*4-byte image fits workspace=1 (MiB) for the forward but not
    with backward's gradient copies."""
    problem = make_problem(batch=1, channels=64, height=height, width=height - 1, num_filter=4,
                           offsets="clustered")
    problem.arrays["data"] = 100 + 0.01 * rng.uniform(-1, 1, problem.shape)
    for name, value in problem.arrays.items():
        problem.arrays[name] = value.astype(np.float32).astype(np.float64)
    out_grad = rng.uniform(-1, 1, problem.out_shape).astype(np.float32).astype(np.float64)
    overrides = dict(workspace=workspace) if workspace else {}
    _, grads = problem.run_nd("float32", out_grad=out_grad, **overrides)
    expected = problem.reference_grads(out_grad)
    for name in ("offset", "mask"):
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(grads[name], expected[name], rtol=0, atol=1e-5 * scale,
                                   err_msg=name)


@pytest.mark.parametrize("height", [5, 12], ids=["copies", "direct"])
def test_channel_major_calls_in_several_team_tiles(make_problem, rng, height):
    """Channel-major calls whose float64 columns, 1024*9*8 bytes a pixel, fit workspace=1 (MiB)
    for a few pixels per thread only: the threads sample and multiply the pixels in many team
    tiles. 2*5*5 pixels for 128 filters cross from one image to the next; one 12 x 12 image
    (1.1 MiB) for 288 filters does not fit at all, so backward scatters the data gradient
    directly, and its 21 MiB weight gradient is written by columns, with no per-thread part."""
    batch, filters = (2, 128) if height == 5 else (1, 288)
    problem = make_problem(batch=batch, channels=1024, height=height, width=height,
                           num_filter=filters, num_deformable_group=2)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(out_grad=out_grad, workspace=1)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-11, atol=1e-11)
    for name, expected in problem.reference_grads(out_grad).items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-11, 1e-12), ("float32", 1e-4, 1e-4)])
@pytest.mark.parametrize("case", cases())
def test_backward_matches_reference(make_problem, rng, case, dtype, rtol, atol):
    problem = make_problem(**case)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    _, grads = problem.run_nd(dtype, out_grad=out_grad)
    expected = problem.reference_grads(out_grad)
    assert sorted(grads) == sorted(expected)
    for name, grad in grads.items():
        assert np.abs(expected[name]).max() > 0.1, name  # a gradient that can be wrong
        np.testing.assert_allclose(grad, expected[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("case", cases())
def test_numerical_gradient_of_every_input(make_problem, case):
    problem = make_problem(**case)
    assert_covers_borders(problem)
    sym = problem.symbol()
    location = problem.symbol_location()
    assert sorted(sym.list_arguments()) == sorted(location)
    # Offsets stay >= 0.1 away from cell edges, so eps = 1e-4 never crosses one and the
    # central difference of the piecewise bilinear function is exact up to rounding.
    mx.test_utils.check_numeric_gradient(sym, location, numeric_eps=1e-4, rtol=1e-6, atol=1e-8,
                                         dtype=np.float64)


def test_larger_batch_than_im2col_step_and_not_divisible(make_problem, rng):
    problem = make_problem(batch=5, channels=4, height=6, width=5, num_filter=3,
                           num_deformable_group=2, im2col_step=2)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(out_grad=out_grad)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-12, atol=1e-12)
    for name, expected in problem.reference_grads(out_grad).items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-11, atol=1e-12, err_msg=name)


def test_dcnv1_equals_dcnv2_with_unit_mask(make_problem):
    v2 = make_problem(**CASES["b2-k3x2-s21-p10-d21-g2-dg2"])
    arrays = v2.nd_arrays()
    arrays["mask"] = mx.nd.ones_like(arrays["mask"])
    out_v2 = mx.nd.contrib.DeformableConvolutionV2(**arrays, **v2.params).asnumpy()
    del arrays["mask"]
    out_v1 = mx.nd.contrib.DeformableConvolutionV1(**arrays, **v2.params).asnumpy()
    np.testing.assert_allclose(out_v1, out_v2, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------------------
# Parity with MXNet's own operators


def builtin_allows(case):
    """Whether MXNet's ModulatedDeformableConvolution accepts the case: it requires
    num_filter % num_deformable_group == 0 and a batch <= or divisible by im2col_step."""
    step, batch = case.get("im2col_step", 2), case["batch"]
    return (case["num_filter"] % case.get("num_deformable_group", 1) == 0
            and (batch <= step or batch % step == 0))


#: The grid cases the built-in accepts, and more within its restrictions.
BUILTIN_CASES = [c for c in cases() if c.values[0].get("modulated", True)
                 and builtin_allows(c.values[0])] + [
    pytest.param(dict(batch=4, channels=6, height=5, width=6, num_filter=6, kernel=(3, 3),
                      stride=(2, 1), pad=(1, 0), dilate=(2, 1), num_group=2,
                      num_deformable_group=3, no_bias=True), id="b4-s21-p10-d21-g2-dg3-nobias"),
    pytest.param(dict(batch=3, channels=3, height=4, width=5, num_filter=3, kernel=(1, 1),
                      pad=(0, 0), num_deformable_group=3, im2col_step=3), id="b3-k1x1-dg3-step3"),
    pytest.param(dict(batch=2, channels=4, height=7, width=7, num_filter=2, kernel=(5, 5),
                      pad=(2, 2), dilate=(1, 2), num_deformable_group=2, im2col_step=1),
                 id="b2-k5x5-d12-dg2-step1"),
]


def test_builtin_grid_covers_the_parameters():
    params = [c.values[0] for c in BUILTIN_CASES]
    assert {p["batch"] for p in params} >= {1, 2, 3, 4}
    assert {p["kernel"] for p in params} >= {(3, 3), (3, 2), (1, 1), (5, 5)}
    assert {p.get("num_deformable_group", 1) for p in params} == {1, 2, 3}
    assert {p.get("num_group", 1) for p in params} == {1, 2}


@pytest.mark.parametrize("dtype, rtol, atol", [("float64", 1e-12, 1e-12), ("float32", 1e-5, 1e-5)])
@pytest.mark.parametrize("case", BUILTIN_CASES)
def test_forward_matches_mxnet_builtin(make_problem, case, dtype, rtol, atol):
    problem = make_problem(**case)
    builtin = mx.nd.contrib.ModulatedDeformableConvolution(**problem.nd_arrays(dtype),
                                                           **problem.params)
    np.testing.assert_allclose(problem.run_nd(dtype), builtin.asnumpy(), rtol=rtol, atol=atol)


def test_dcnv1_matches_mxnet_deformable_convolution_inside_the_map(make_problem, rng):
    """MXNet's DeformableConvolution follows an older border rule (docs/semantics.md), so it
    agrees with DeformableConvolutionV1 where every sample lies inside [0, H-1] x [0, W-1] — and
    disagrees once samples reach the (-1, 0) and (H-1, H) bands."""
    problem = make_problem(batch=2, channels=4, height=6, width=5, num_filter=4,
                           kernel=(3, 2), stride=(2, 1), pad=(1, 0), dilate=(1, 2),
                           num_group=2, num_deformable_group=2, modulated=False,
                           offsets="zero")
    height, width = problem.shape[2:]
    base_y, base_x = problem.positions
    py = rng.uniform(0.05, height - 1.05, base_y.shape)
    px = rng.uniform(0.05, width - 1.05, base_x.shape)
    offset = problem.arrays["offset"]
    offset[:] = np.stack([py - base_y, px - base_x], axis=4).reshape(offset.shape)
    params = {k: v for k, v in problem.params.items() if k != "im2col_step"}  # not a parameter
    builtin = mx.nd.contrib.DeformableConvolution(**problem.nd_arrays(), **params)
    np.testing.assert_allclose(problem.run_nd(), builtin.asnumpy(), rtol=1e-12, atol=1e-12)

    offset -= 1.0  # now some samples lie in (-1, 0)
    builtin = mx.nd.contrib.DeformableConvolution(**problem.nd_arrays(), **params)
    assert not np.allclose(problem.run_nd(), builtin.asnumpy())
    np.testing.assert_allclose(problem.run_nd(), problem.reference(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("geometry", [
    dict(kernel=(3, 3), pad=(1, 1)),
    dict(kernel=(3, 2), stride=(2, 1), pad=(1, 0), dilate=(2, 1), num_group=2),
    dict(kernel=(1, 1), pad=(0, 0), stride=(2, 2), num_deformable_group=2),
    dict(kernel=(5, 5), pad=(2, 2), dilate=(1, 2), num_group=2, num_deformable_group=2),
], ids=["k3", "k3x2-s21-d21-g2", "k1-s2-dg2", "k5-d12-g2-dg2"])
def test_zero_offsets_and_unit_mask_equal_convolution(make_problem, modulated, geometry):
    problem = make_problem(batch=2, channels=4, height=7, width=6, num_filter=4,
                           modulated=modulated, offsets="zero", **geometry)
    arrays = problem.nd_arrays()
    if modulated:
        arrays["mask"] = mx.nd.ones_like(arrays["mask"])
    out = getattr(mx.nd.contrib, problem.op)(**arrays, **problem.params).asnumpy()
    p = problem.params
    conv = mx.nd.Convolution(arrays["data"], arrays["weight"], arrays["bias"],
                             kernel=p["kernel"], stride=p["stride"], pad=p["pad"],
                             dilate=p["dilate"], num_filter=p["num_filter"],
                             num_group=p["num_group"])
    np.testing.assert_allclose(out, conv.asnumpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fill", [1e7, -1e7, 2.5e4, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
def test_samples_off_the_map_give_bias_only(make_problem, rng, fill, modulated):
    problem = make_problem(batch=2, channels=4, height=5, width=6, num_filter=3,
                           num_deformable_group=2, modulated=modulated)
    problem.arrays["offset"][:] = fill
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(out_grad=out_grad)
    bias = problem.arrays["bias"][None, :, None, None]
    np.testing.assert_array_equal(out, np.broadcast_to(bias, out.shape))
    for name in ("data", "offset", "weight") + (("mask",) if modulated else ()):
        np.testing.assert_array_equal(grads[name], 0, err_msg=name)
    np.testing.assert_allclose(grads["bias"], out_grad.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_samples_just_inside_the_border_bands_are_used(make_problem):
    """A sample at -0.5 or H-0.5 reads half of the edge pixel (not 0 as the older DCNv1 rule)."""
    problem = make_problem(batch=1, channels=1, height=3, width=3, num_filter=1, kernel=(1, 1),
                           pad=(0, 0), no_bias=True, offsets="zero")
    problem.arrays["data"][:] = 2.0
    problem.arrays["weight"][:] = 1.0
    problem.arrays["mask"][:] = 1.0
    offset = problem.arrays["offset"]
    offset[0, 0] = [[-0.5, 0, 0], [0, 0, 0], [0, 0, 0.5]]  # dy: row 0 up, row 2 down
    out = problem.run_nd()
    expected = np.full((3, 3), 2.0)
    expected[0, 0] = expected[2, 2] = 1.0
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-15)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Symbol API and Gluon


def test_symbol_keyword_inputs_auto_weights_and_infer_shape():
    data, offset, mask = (mx.sym.var(n) for n in ("data", "offset", "mask"))
    out = mx.sym.contrib.DeformableConvolutionV2(data=data, offset=offset, mask=mask,
                                                 kernel=(3, 3), pad=(1, 1), stride=(2, 2),
                                                 num_filter=8, num_deformable_group=2, name="dcn")
    assert out.list_arguments() == ["data", "offset", "mask", "dcn_weight", "dcn_bias"]
    arg_shapes, out_shapes, _ = out.infer_shape(data=(2, 4, 9, 7))
    assert dict(zip(out.list_arguments(), arg_shapes)) == {
        "data": (2, 4, 9, 7), "offset": (2, 36, 5, 4), "mask": (2, 18, 5, 4),
        "dcn_weight": (8, 4, 3, 3), "dcn_bias": (8,)}
    assert out_shapes == [(2, 8, 5, 4)]

    v1 = mx.sym.contrib.DeformableConvolutionV1(data=data, offset=offset, kernel=(3, 3),
                                                num_filter=8, num_group=2, no_bias=True,
                                                name="v1")
    assert v1.list_arguments() == ["data", "offset", "v1_weight"]
    arg_shapes, out_shapes, _ = v1.infer_shape(data=(1, 4, 5, 5))
    assert arg_shapes == [(1, 4, 5, 5), (1, 18, 3, 3), (8, 2, 3, 3)]
    assert out_shapes == [(1, 8, 3, 3)]


def test_symbol_given_weight_and_bias_are_used():
    weight, bias = mx.sym.var("w"), mx.sym.var("b")
    out = mx.sym.contrib.DeformableConvolutionV2(
        data=mx.sym.var("data"), offset=mx.sym.var("offset"), mask=mx.sym.var("mask"),
        weight=weight, bias=bias, kernel=(1, 1), num_filter=2)
    assert out.list_arguments() == ["data", "offset", "mask", "w", "b"]


def test_docstrings_describe_shapes():
    for fn in (mx.sym.contrib.DeformableConvolutionV2, mx.nd.contrib.DeformableConvolutionV1):
        assert "offset : (N, 2*num_deformable_group*kh*kw, Ho, Wo)" in fn.__doc__
        assert "num_filter" in fn.__doc__


def _executor_outputs(sym, location, out_grad):
    args = {k: mx.nd.array(v, dtype="float64") for k, v in location.items()}
    grads = {k: mx.nd.zeros_like(v) for k, v in args.items()}
    exe = sym.bind(mx.cpu(), args=args, args_grad=grads)
    exe.forward(is_train=True)
    exe.backward(mx.nd.array(out_grad, dtype="float64"))
    return exe.outputs[0].asnumpy(), {k: g.asnumpy() for k, g in grads.items()}


def test_json_round_trip_gives_identical_outputs(make_problem, rng, tmp_path):
    problem = make_problem(**CASES["b2-k3x3-s21-p10-d21-g2-dg3-nobias"])
    sym = problem.symbol()
    loaded = mx.sym.load_json(sym.tojson())
    assert loaded.list_arguments() == sym.list_arguments()
    attrs = [n.get("attrs", {}) for n in json.loads(sym.tojson())["nodes"]
             if n["op"] == "_contrib_DeformableConvolutionV2"]
    assert len(attrs) == 1 and attrs[0]["num_deformable_group"] == "3"
    sym.save(str(tmp_path / "dcn.json"))
    from_file = mx.sym.load(str(tmp_path / "dcn.json"))

    location = problem.symbol_location()
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    expected_out, expected_grads = _executor_outputs(sym, location, out_grad)
    np.testing.assert_allclose(expected_out, problem.reference(), rtol=1e-12, atol=1e-12)
    for other in (loaded, from_file):
        out, grads = _executor_outputs(other, location, out_grad)
        np.testing.assert_array_equal(out, expected_out)
        for name in expected_grads:
            np.testing.assert_array_equal(grads[name], expected_grads[name], err_msg=name)


def test_simple_bind_forward_and_backward(make_problem, rng):
    problem = make_problem(**CASES["b3-k1x1-dg3-f2"])
    sym = problem.symbol()
    location = problem.symbol_location()
    exe = sym.simple_bind(mx.cpu(), data=problem.shape, type_dict={"data": "float64"})
    for name, value in location.items():
        assert exe.arg_dict[name].shape == value.shape, name
        exe.arg_dict[name][:] = value
    exe.forward(is_train=True)
    np.testing.assert_allclose(exe.outputs[0].asnumpy(), problem.reference(), rtol=1e-12,
                               atol=1e-12)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    exe.backward(mx.nd.array(out_grad, dtype="float64"))
    expected = problem.reference_grads(out_grad)
    for key, name in (("data", "data"), ("offset", "offset"), ("mask", "mask"),
                      ("weight", "dcn_weight"), ("bias", "dcn_bias")):
        np.testing.assert_allclose(exe.grad_dict[name].asnumpy(), expected[key], rtol=1e-11,
                                   atol=1e-12, err_msg=name)


class _OffsetDCN(mx.gluon.HybridBlock):
    """A block in the paper's layout: a convolution predicts offsets and masks (2*sigmoid)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.offset_conv = mx.gluon.nn.Conv2D(27, 3, padding=1, in_channels=channels,
                                                  weight_initializer=mx.init.Normal(0.3))
            self.weight = self.params.get("weight", shape=(5, channels, 3, 3))
            self.bias = self.params.get("bias", shape=(5,))

    def hybrid_forward(self, F, x, weight, bias):
        off_mask = self.offset_conv(x)
        offset = F.slice_axis(off_mask, axis=1, begin=0, end=18)
        mask = 2 * F.sigmoid(F.slice_axis(off_mask, axis=1, begin=18, end=27))
        return F.contrib.DeformableConvolutionV2(data=x, offset=offset, mask=mask, weight=weight,
                                                 bias=bias, kernel=(3, 3), pad=(1, 1),
                                                 num_filter=5)


@pytest.mark.parametrize("hybridize", [dict(), dict(static_alloc=True),
                                       dict(static_alloc=True, static_shape=True)],
                         ids=["plain", "static_alloc", "static_shape"])
def test_gluon_hybridized_equals_imperative(rng, hybridize):
    x = mx.nd.array(rng.uniform(-1, 1, (3, 4, 6, 5)))
    net = _OffsetDCN(4, prefix="dcn_")
    net.initialize()
    params = net.collect_params()
    for param in params.values():
        param.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, param.shape)))
    results = []
    for hybrid in (False, True):
        if hybrid:
            net.hybridize(**hybridize)
        for _ in range(2):  # a hybridized block runs its cached graph from the second call
            with mx.autograd.record():
                out = net(x)
            out.backward()
            results.append((out.asnumpy(), {n: p.grad().asnumpy() for n, p in params.items()}))
    out0, grads0 = results[0]
    offset_weight = [n for n in grads0 if "conv" in n and n.endswith("weight")]
    assert len(offset_weight) == 1 and np.abs(grads0[offset_weight[0]]).max() > 0
    for out, grads in results[1:]:
        np.testing.assert_allclose(out, out0, rtol=1e-5, atol=1e-6)
        for name in grads0:
            np.testing.assert_allclose(grads[name], grads0[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)


# ------------------------------------------------------------------------------------------
# Gradient requests and determinism


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
def test_grad_req_imperative(make_problem, rng, modulated):
    problem = make_problem(**dict(CASES["b2-k3x2-s21-p10-d21-g2-dg2"], modulated=modulated))
    out_grad = mx.nd.array(rng.uniform(-1, 1, problem.out_shape), dtype="float64")
    expected = problem.reference_grads(out_grad.asnumpy())
    op = getattr(mx.nd.contrib, problem.op)
    reqs = {"data": "add", "weight": "add", "offset": "write", "bias": "null"}
    if modulated:
        reqs["mask"] = "add"
    arrays = problem.nd_arrays()
    for name, req in reqs.items():
        arrays[name].attach_grad(grad_req=req)
    for _ in range(2):
        with mx.autograd.record():
            out = op(**arrays, **problem.params)
        out.backward(out_grad)
    for name, req in reqs.items():
        grad = arrays[name].grad
        if req == "null":
            assert grad is None or not grad.asnumpy().any(), name
        else:
            factor = 2 if req == "add" else 1
            np.testing.assert_allclose(grad.asnumpy(), factor * expected[name], rtol=1e-11,
                                       atol=1e-12, err_msg=f"{name} ({req})")


def test_grad_req_add_accumulates_across_ops(make_problem, rng):
    """Two operators reading the same data under grad_req='add' and 'write' sum both paths."""
    problem = make_problem(**CASES["b1-k3x3"])
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    single = problem.reference_grads(out_grad)["data"]
    for req in ("write", "add"):
        arrays = problem.nd_arrays()
        arrays["data"].attach_grad(grad_req=req)
        with mx.autograd.record():
            out = (mx.nd.contrib.DeformableConvolutionV2(**arrays, **problem.params)
                   + 3 * mx.nd.contrib.DeformableConvolutionV2(**arrays, **problem.params))
        out.backward(mx.nd.array(out_grad, dtype="float64"))
        np.testing.assert_allclose(arrays["data"].grad.asnumpy(), 4 * single, rtol=1e-11,
                                   atol=1e-12, err_msg=req)


def test_grad_req_guard_of_an_ndarray_is_a_view():
    """The guard of an NDArray with an attached gradient is an operator that autograd records
    (whose backward honours the request), and its output shares the array's memory: no copy
    forward."""
    from dcnv2_mx import ops

    data = mx.nd.zeros((1, 2, 3, 3))
    data.attach_grad()
    with mx.autograd.record():
        guarded = ops._guard("nd", data, "data_guard", 4)
        nodes = json.loads(mx.autograd.get_symbol(guarded).tojson())["nodes"]
        (2 * guarded).backward()
    assert nodes[-1]["op"] != "null", "the guard is the array itself, not a recorded operator"
    data[:] = 5
    np.testing.assert_array_equal(guarded.asnumpy(), np.full((1, 2, 3, 3), 5.0))
    np.testing.assert_array_equal(data.grad.asnumpy(), np.full((1, 2, 3, 3), 2.0))


def test_input_changed_between_forward_and_backward_is_read_at_backward(make_problem):
    """As for MXNet's own operators, backward reads an input with an attached gradient as it is
    then: data zeroed after the forward gives a zero weight gradient, like Convolution's."""
    problem = make_problem(**CASES["b1-k3x3"])
    arrays = problem.nd_arrays()
    for array in arrays.values():
        array.attach_grad()
    with mx.autograd.record():
        out = mx.nd.contrib.DeformableConvolutionV2(**arrays, **problem.params)
        conv = mx.nd.Convolution(data=arrays["data"], weight=arrays["weight"],
                                 bias=arrays["bias"], **{k: problem.params[k] for k in
                                                         ("kernel", "stride", "pad", "dilate",
                                                          "num_filter")})
    arrays["data"][:] = 0
    mx.autograd.backward([out, conv])
    assert not arrays["weight"].grad.asnumpy().any()


def test_sparse_input_with_a_gradient_is_an_mxnet_error(make_problem):
    """A row-sparse input with an attached gradient is left to MXNet's check for dense inputs
    (sparse arrays have no view to guard them with)."""
    problem = make_problem(**CASES["b1-k3x3"])
    arrays = problem.nd_arrays()
    arrays["data"] = arrays["data"].tostype("row_sparse")
    arrays["data"].attach_grad()
    with pytest.raises(MXNetError, match="not dense"):
        with mx.autograd.record():
            mx.nd.contrib.DeformableConvolutionV2(**arrays, **problem.params).wait_to_read()


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
def test_grad_req_symbol_executor(make_problem, rng, modulated):
    problem = make_problem(**dict(CASES["b3-k1x1-dg3-f2"], modulated=modulated))
    sym = problem.symbol()
    location = problem.symbol_location()
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    expected = {("dcn_" + k if k in ("weight", "bias") else k): v
                for k, v in problem.reference_grads(out_grad).items()}
    reqs = {"data": "add", "dcn_weight": "add", "offset": "null", "dcn_bias": "write"}
    if modulated:
        reqs["mask"] = "write"
    initial = {k: rng.uniform(-1, 1, v.shape) for k, v in location.items()}
    args = {k: mx.nd.array(v, dtype="float64") for k, v in location.items()}
    grads = {k: mx.nd.array(v, dtype="float64") for k, v in initial.items()}
    exe = sym.bind(mx.cpu(), args=args, args_grad=grads, grad_req=reqs)
    for _ in range(2):
        exe.forward(is_train=True)
        exe.backward(mx.nd.array(out_grad, dtype="float64"))
    for name, req in reqs.items():
        want = {"add": initial[name] + 2 * expected[name], "write": expected[name],
                "null": initial[name]}[req]
        np.testing.assert_allclose(grads[name].asnumpy(), want, rtol=1e-11, atol=1e-12,
                                   err_msg=f"{name} ({req})")


def test_numerical_gradient_with_grad_req_add(make_problem):
    problem = make_problem(**CASES["b2-k3x2-s21-p10-d21-g2-dg2"])
    reqs = {"data": "add", "offset": "add", "mask": "write", "dcn_weight": "add",
            "dcn_bias": "null"}
    mx.test_utils.check_numeric_gradient(problem.symbol(), problem.symbol_location(),
                                         grad_nodes=reqs, numeric_eps=1e-4, rtol=1e-6,
                                         atol=1e-8, dtype=np.float64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_is_bit_identical_across_runs(make_problem, rng, dtype):
    problem = make_problem(batch=3, channels=16, height=12, width=11, num_filter=8,
                           num_group=2, num_deformable_group=4)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    first_out, first = problem.run_nd(dtype, out_grad=out_grad)
    for _ in range(2):
        out, grads = problem.run_nd(dtype, out_grad=out_grad)
        np.testing.assert_array_equal(out, first_out)
        for name in first:
            np.testing.assert_array_equal(grads[name], first[name], err_msg=name)


@pytest.mark.parametrize("threads, direct", [(1, False), (3, False), (3, True)])
def test_other_thread_counts_match_the_reference(make_problem, rng, threads, direct):
    """Each thread takes a share of a block's pixels and the threads' gradient parts are summed
    at the end: with one thread, and with three (shares that end inside rows and images, more
    threads than this machine's cores), float64 results still match the reference. Direct: an
    image of 40*43*44*8 bytes > workspace=1 (MiB) is read in place, and three threads own
    channel ranges of the data gradient that cut through deformable groups. The thread
    count is read when the library loads, hence a fresh process."""
    size = dict(channels=40, height=43, width=44) if direct else dict(channels=8, height=7,
                                                                       width=9)
    problem = make_problem(batch=3, num_filter=4, num_group=2, num_deformable_group=2, **size)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    params = dict(workspace=1) if direct else {}
    script = ("import pickle, sys\n"
              f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
              "import conftest\n"
              "problem, out_grad, params = pickle.load(sys.stdin.buffer)\n"
              "pickle.dump(problem.run_nd(out_grad=out_grad, **params), sys.stdout.buffer)\n")
    proc = subprocess.run([sys.executable, "-c", script],
                          input=pickle.dumps((problem, out_grad, params)),
                          capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out, grads = pickle.loads(proc.stdout)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-11, atol=1e-12)
    for name, expected in problem.reference_grads(out_grad).items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-10, atol=1e-11, err_msg=name)


# ------------------------------------------------------------------------------------------
# Tiling under a small workspace


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("width", [23, 17])
def test_tiny_workspace_tiles_and_stays_exact(make_problem, rng, width, modulated):
    """One image's float64 column matrix, C*K*Ho*Wo*8 bytes = 64*9*22*width*8 > 1.5 MiB, does
    not fit workspace=1 (MiB), so forward and backward must work in several tiles of pixels;
    with a prime output width (Wo = width here) the tile boundaries fall inside rows."""
    problem = make_problem(batch=2, channels=64, height=22, width=width, num_filter=4,
                           num_deformable_group=2, num_group=2, modulated=modulated)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    expected = problem.reference_grads(out_grad)
    expected_out = problem.reference()
    for workspace in (1, 1024):
        out, grads = problem.run_nd(out_grad=out_grad, workspace=workspace)
        np.testing.assert_allclose(out, expected_out, rtol=1e-11, atol=1e-11,
                                   err_msg=f"workspace {workspace}")
        for name, grad in grads.items():
            np.testing.assert_allclose(grad, expected[name], rtol=1e-10, atol=1e-11,
                                       err_msg=f"{name}, workspace {workspace}")


def test_workspace_too_small_for_every_threads_gradient_copy_still_works(make_problem, rng):
    """Backward gives each thread its own copy of the image gradient: a float64 image of
    64*28*28*8 = 392 KiB fits workspace=1 (MiB) once or twice but not with two threads' copies,
    so the planner has to fall back to fewer threads (or fail) rather than overrun."""
    problem = make_problem(batch=1, channels=64, height=28, width=28, num_filter=4,
                           num_deformable_group=2)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(out_grad=out_grad, workspace=1)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-11, atol=1e-11)
    for name, expected in problem.reference_grads(out_grad).items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-10, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("height, backward_only", [(48, False), (34, True)],
                         ids=["image", "gradient-copies"])
def test_images_larger_than_the_workspace_run_direct(make_problem, rng, height, backward_only,
                                                     modulated):
    """A float64 image of 64*48*48*8 bytes = 1.125 MiB does not fit workspace=1 (MiB) even once
    (this was an error), one of 64*34*34*8 = 578 KiB fits once for forward but not with
    backward's gradient copy (an error too): the call then reads the NCHW input directly and
    scatters the data gradient in rounds, each thread owning a range of channels. Two images
    whose output pixels the threads share, groups and deformable groups of uneven channel
    ranges."""
    problem = make_problem(batch=2, channels=64, height=height, width=height - 1, num_filter=4,
                           num_group=2, num_deformable_group=2, modulated=modulated)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd(out_grad=out_grad, workspace=1)
    np.testing.assert_allclose(out, problem.reference(), rtol=1e-11, atol=1e-11)
    for name, expected in problem.reference_grads(out_grad).items():
        np.testing.assert_allclose(grads[name], expected, rtol=1e-10, atol=1e-11, err_msg=name)


def test_workspace_too_small_for_one_tile_names_what_it_needs(make_problem):
    """The permuted float64 weight alone, 32*1024*9*8 bytes = 2.25 MiB, does not fit
    workspace=1 (64 output pixels for 32 filters: the forward rearranges its weight): the
    message names the workspace needed, and that workspace works."""
    problem = make_problem(batch=1, channels=1024, height=8, width=8, num_filter=32)
    with pytest.raises(MXNetError) as error:
        problem.run_nd(workspace=1)
    match = re.search(r"parameter 'workspace' \(1 MiB\) is too small: this input needs \d+ "
                      r"bytes \((\d+) MiB\) of scratch memory at least; raise 'workspace'",
                      str(error.value))
    assert match, str(error.value)
    np.testing.assert_allclose(problem.run_nd(workspace=int(match.group(1))),
                               problem.reference(), rtol=1e-11, atol=1e-11)


# ------------------------------------------------------------------------------------------
# Bad input


def _nd(*shape, dtype="float32"):
    return mx.nd.ones(shape, dtype=dtype)


def _call(op="DeformableConvolutionV2", data=(1, 4, 5, 5), offset=(1, 18, 5, 5),
          mask=(1, 9, 5, 5), weight=(4, 4, 3, 3), bias=(4,), dtypes=None, **params):
    """Calls the operator on arrays of ones of the given shapes and waits for the result."""
    dtypes = dtypes or {}
    shapes = dict(data=data, offset=offset, mask=mask, weight=weight, bias=bias)
    if op == "DeformableConvolutionV1":
        del shapes["mask"]
    if params.get("no_bias"):
        del shapes["bias"]
    arrays = {k: _nd(*v, dtype=dtypes.get(k, "float32")) for k, v in shapes.items()}
    kwargs = dict(kernel=(3, 3), pad=(1, 1), num_filter=4)
    kwargs.update(params)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return getattr(mx.nd.contrib, op)(**arrays, **kwargs).asnumpy()


def test_bad_input_baseline_works():
    """The defaults of _call are valid, so each bad-input test changes exactly one thing."""
    assert _call().shape == (1, 4, 5, 5)
    assert _call("DeformableConvolutionV1").shape == (1, 4, 5, 5)


@pytest.mark.parametrize("missing", ["kernel", "num_filter"])
def test_missing_required_parameter(missing):
    with pytest.raises(TypeError, match=missing):
        _call(**{missing: None})


@pytest.mark.parametrize("missing", ["kernel", "num_filter"])
def test_missing_required_parameter_in_loaded_json(missing):
    sym = mx.sym.contrib.DeformableConvolutionV2(
        data=mx.sym.var("data"), offset=mx.sym.var("offset"), mask=mx.sym.var("mask"),
        kernel=(3, 3), num_filter=4, name="dcn")
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == "_contrib_DeformableConvolutionV2":
            del node["attrs"][missing]
    with pytest.raises(MXNetError, match=f"parameter '{missing}' is required"):
        mx.sym.load_json(json.dumps(graph)).infer_shape(data=(1, 4, 5, 5))


@pytest.mark.parametrize("workspace", [1024, 1], ids=["image-copies", "direct"])
@pytest.mark.parametrize("aliased", ["data", "offset"])
def test_out_sharing_memory_with_an_input_is_a_clear_error(aliased, workspace):
    """An out= array over an input's memory (here a view of it with the output's shape) is
    refused: the kernels read inputs while they write the output. workspace=1 (MiB) runs the
    64 x 80 x 80 call without image copies, which read the data while the output is written."""
    arrays = {"data": _nd(1, 64, 80, 80), "offset": _nd(1, 18, 80, 80), "mask": _nd(1, 9, 80, 80),
              "weight": _nd(8, 64, 3, 3)}
    out = arrays[aliased].reshape((-1,))[:8 * 80 * 80].reshape((1, 8, 80, 80))
    with pytest.raises(MXNetError, match=f"the output shares memory with input '{aliased}'"):
        mx.nd.contrib.DeformableConvolutionV2(**arrays, kernel=(3, 3), pad=(1, 1), num_filter=8,
                                              no_bias=True, workspace=workspace,
                                              out=out).wait_to_read()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_filters=4), "unknown parameter 'num_filters'"),
    (dict(layout="NHWC"), "'layout'"),
    (dict(stride=(0, 1)), "'stride'"),
    (dict(stride=(1, -2)), "'stride'"),
    (dict(dilate=(0, 1)), "'dilate'"),
    (dict(pad=(-1, 0)), "'pad'"),
    (dict(kernel=(0, 3)), "'kernel'"),
    (dict(kernel=(3, 3, 3)), "'kernel'"),
    (dict(num_group=0), "'num_group'"),
    (dict(num_filter=0), "'num_filter'"),
    (dict(num_filter=3, num_group=2, weight=(3, 2, 3, 3), bias=(3,)),
     r"'num_filter' \(3\) must be divisible by 'num_group' \(2\)"),
    (dict(num_group=3, weight=(4, 1, 3, 3)), r"divisible by 'num_group' \(3\)"),
    (dict(num_deformable_group=3, offset=(1, 54, 5, 5), mask=(1, 27, 5, 5)),
     r"divisible by 'num_deformable_group' \(3\)"),
    (dict(workspace=0), "'workspace'"),
    (dict(im2col_step=0), "'im2col_step'"),
    (dict(no_bias="maybe"), "'no_bias'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_parameter_is_a_clear_error(kwargs, message):
    with pytest.raises(MXNetError, match=message):
        _call(**kwargs)


@pytest.mark.parametrize("pad", ["(1, 1)", "[1, 1]", " ( 1 ,1 ) ", "(1,)", "1", "(1, 1,)", "1L",
                                 "(1.0, 1)"])
def test_parameter_spellings_that_mean_the_same_tuple(pad):
    """Attributes reach the operator as text (a JSON graph holds whatever was written): the
    spellings Python and MXNet produce for a tuple of integers all read as one."""
    np.testing.assert_array_equal(_call(pad=pad), _call(pad=(1, 1)))


@pytest.mark.parametrize("pad, message", [
    ("", "expected a tuple of 2 integers"),
    ("()", "expected a tuple of 2 integers"),
    ("(1, 1, 1)", "expected a tuple of 2 integers"),
    ("(1; 1)", "expected a tuple of 2 integers"),
    ("1x", "expected a tuple of 2 integers"),
    ("L", "expected a tuple of 2 integers"),
    ("(.0, 1)", "expected a tuple of 2 integers"),
    ("(1.5, 1)", "expected a tuple of 2 integers"),
    ("(1, -1)", "must be >= 0, got -1"),
    ("(1, 99999999999999999999999)", "must be <= 2147483647, got 99999999999999999999999"),
])
def test_parameter_text_that_is_no_tuple_of_integers_is_refused(pad, message):
    with pytest.raises(MXNetError, match=re.escape("parameter 'pad'") + ".*" + re.escape(message)):
        _call(pad=pad)


WRONG_SHAPES = [
    (dict(offset=(1, 16, 5, 5)), r"input 'offset' has shape \(1, 16, 5, 5\)"),
    (dict(offset=(1, 18, 4, 5)), "input 'offset'"),
    (dict(offset=(2, 18, 5, 5)), "input 'offset'"),
    (dict(mask=(1, 18, 5, 5)), r"input 'mask' has shape \(1, 18, 5, 5\)"),
    (dict(weight=(4, 4, 3, 2)), r"input 'weight' has shape \(4, 4, 3, 2\)"),
    (dict(weight=(5, 4, 3, 3)), "input 'weight'"),
    (dict(bias=(3,)), r"input 'bias' has shape \(3,\)"),
    (dict(kernel=(7, 7), pad=(0, 0)), "output would be empty"),
]


@pytest.mark.parametrize("op, kwargs, message", [
    pytest.param(op, kwargs, message, id=f"{op[-2:]}-{message}")
    for op in ("DeformableConvolutionV2", "DeformableConvolutionV1")
    for kwargs, message in WRONG_SHAPES
    if not (op == "DeformableConvolutionV1" and "mask" in kwargs)])
def test_wrong_shape_is_a_clear_error(op, kwargs, message):
    with pytest.raises(MXNetError, match=message):
        _call(op, **kwargs)


@pytest.mark.parametrize("case", cases("b2-k3x2-s21-p10-d21-g2-dg2", "v1-b2-k3x2-p10-g2-dg2"))
def test_float16_on_cpu_matches_the_reference(make_problem, rng, case):
    """The CPU computes float16 calls in float32: the output and every gradient are the float64
    reference's on the same (float16) inputs, rounded to float16."""
    problem = make_problem(**case)
    problem.arrays = {k: v.astype(np.float16).astype(np.float64) for k, v in problem.arrays.items()}
    out_grad = rng.uniform(-1, 1, problem.out_shape).astype(np.float16).astype(np.float64)
    out, grads = problem.run_nd("float16", out_grad=out_grad)
    expected = dict(problem.reference_grads(out_grad), out=problem.reference())
    for name, value in dict(grads, out=out).items():
        assert value.dtype == np.float16, name
        scale = np.abs(expected[name]).max()
        assert scale > 0.1, name
        # float16 keeps 11 significant bits: a relative rounding error of at most 2^-11.
        np.testing.assert_allclose(value.astype(np.float64), expected[name], rtol=2e-3,
                                   atol=1e-3 * scale, err_msg=name)


@pytest.mark.parametrize("bias", [0.0, 2.0 ** -11, -2.0 ** -11, 3 * 2.0 ** -12, 2.0 ** -24,
                                  65504.0])
def test_float16_on_cpu_converts_exactly(bias):
    """Every finite float16 through a 1x1 convolution of weight 1 at zero offsets plus `bias`:
    exactly NumPy's float16(float32(x) + float32(bias)), so both conversions round to nearest
    even (the biases make ties, subnormals and overflow to inf)."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    values = values[np.isfinite(values)].reshape(1, 1, 248, 256)
    out = mx.nd.contrib.DeformableConvolutionV1(
        data=mx.nd.array(values, dtype="float16"),
        offset=mx.nd.zeros((1, 2, 248, 256), dtype="float16"),
        weight=mx.nd.ones((1, 1, 1, 1), dtype="float16"),
        bias=mx.nd.array([bias], dtype="float16"), kernel=(1, 1), num_filter=1).asnumpy()
    with np.errstate(over="ignore"):
        expected = (values.astype(np.float32) + np.float32(bias)).astype(np.float16)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, expected)


def test_float16_copies_on_cpu_count_toward_workspace():
    """float16 on the CPU takes float32 copies of its tensors from `workspace` too: 1 MiB holds
    the float32 call's tiles but not the float16 call's copies besides."""
    shapes = dict(data=(1, 4, 128, 128), offset=(1, 18, 128, 128), mask=(1, 9, 128, 128),
                  weight=(4, 4, 3, 3), bias=(4,))

    def call(dtype, workspace):
        arrays = {k: mx.nd.ones(v, dtype=dtype) for k, v in shapes.items()}
        return mx.nd.contrib.DeformableConvolutionV2(**arrays, kernel=(3, 3), pad=(1, 1),
                                                     num_filter=4, workspace=workspace).asnumpy()

    assert call("float32", 1).shape == (1, 4, 128, 128)
    with pytest.raises(MXNetError, match=r"'workspace' \(1 MiB\) is too small"):
        call("float16", 1)
    np.testing.assert_array_equal(call("float16", 16), call("float32", 1).astype(np.float16))


@pytest.mark.parametrize("odd_one", ["offset", "mask", "weight", "bias"])
def test_mismatched_dtypes_are_refused(odd_one):
    with pytest.raises(MXNetError, match=f"input '{odd_one}' is float64"):
        _call(dtypes={odd_one: "float64"})


def test_integer_inputs_are_refused():
    dtypes = dict.fromkeys(("data", "offset", "mask", "weight", "bias"), "int32")
    with pytest.raises(MXNetError, match="int32"):
        _call(dtypes=dtypes)


def test_mask_given_to_dcnv1_is_refused():
    with pytest.raises(TypeError, match="no mask"):
        mx.nd.contrib.DeformableConvolutionV1(data=_nd(1, 4, 5, 5), offset=_nd(1, 18, 5, 5),
                                              mask=_nd(1, 9, 5, 5), weight=_nd(4, 4, 3, 3),
                                              kernel=(3, 3), pad=(1, 1), num_filter=4,
                                              no_bias=True)


def test_dcnv1_takes_the_positional_order_of_mxnet_deformable_convolution(make_problem):
    """(data, offset, weight, bias): a call written for MXNet's DeformableConvolution works."""
    problem = make_problem(**CASES["v1-b2-k3x2-p10-g2-dg2"])
    names = ["data", "offset", "weight", "bias"]
    arrays = problem.nd_arrays()
    out = mx.nd.contrib.DeformableConvolutionV1(*(arrays[n] for n in names), **problem.params)
    np.testing.assert_allclose(out.asnumpy(), problem.reference(), rtol=1e-12, atol=1e-12)
    sym = mx.sym.contrib.DeformableConvolutionV1(*(mx.sym.var(n) for n in names),
                                                 **problem.params)
    assert sym.list_arguments() == names


def test_symbol_needs_the_data_shape_to_infer_shapes():
    out = mx.sym.contrib.DeformableConvolutionV2(
        data=mx.sym.var("data"), offset=mx.sym.var("offset"), mask=mx.sym.var("mask"),
        kernel=(3, 3), num_filter=4)
    with pytest.raises(MXNetError, match="shape of input 'data' must be known"):
        out.infer_shape(offset=(1, 18, 5, 5))


def test_operator_still_works_after_errors():
    """Errors are reported, not latched: a failing call leaves later calls (and their messages)
    unaffected."""
    with pytest.raises(MXNetError, match="'layout'"):
        _call(layout="NHWC")
    with pytest.raises(MXNetError) as second:
        _call(stride=(0, 0))
    assert "'layout'" not in str(second.value)
    assert _call().shape == (1, 4, 5, 5)


def test_bias_with_no_bias_is_refused():
    with pytest.raises(TypeError, match="no_bias=True"):
        mx.sym.contrib.DeformableConvolutionV2(
            data=mx.sym.var("data"), offset=mx.sym.var("offset"), mask=mx.sym.var("mask"),
            bias=mx.sym.var("b"), kernel=(3, 3), num_filter=4, no_bias=True)
