"""Tests of ModulatedDeformablePSROIPooling: parity with MXNet's DeformablePSROIPooling, the
modulated semantics against a NumPy reference and the composed recipe, numerical gradients,
bad input, robustness, determinism and the symbol API."""
import itertools
import json
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import dcnv2_mx
from dcnv2_mx.tools.reference.psroi import (
    bin_sample_positions, part_index, psroi_pooling, size_pair)
from helpers import make_inputs, ours

OP = "ModulatedDeformablePSROIPooling"


def mxnet_builtin(data, rois, trans, out_grad, dtype="float64", **params):
    """MXNet's DeformablePSROIPooling: out, d data and d trans (None without trans)."""
    arrays = [mx.nd.array(v, dtype=dtype) for v in (data, rois, trans) if v is not None]
    for a in arrays:
        a.attach_grad()
    with mx.autograd.record():
        out = mx.nd.contrib.DeformablePSROIPooling(*arrays, **params)
    out.backward(mx.nd.array(out_grad, dtype=dtype))
    return out.asnumpy(), arrays[0].grad.asnumpy(), (
        arrays[2].grad.asnumpy() if trans is not None else None)


# ----------------------------------------------------------------------------------------------
# Parity with MXNet's built-in operator (mask absent, and mask of ones)

# (num_classes, trans_std, no_trans) per case: offsets off, offsets with zero scale, offsets on.
TRANS_MODES = [(1, 0.0, True), (2, 0.0, False), (1, 0.1, False), (2, 0.1, False)]


def parity_cases():
    cases = []
    grid = itertools.product([1, 3, 7], [3, 7], ["default", "explicit"], [1, 2, 4])
    for i, (group, pooled, part_mode, samples) in enumerate(grid):
        # Every trans mode meets every (group, pooled, part) pair across the sample counts.
        for mode in (TRANS_MODES[i % 4], TRANS_MODES[(i + 1) % 4]):
            cases.append((group, pooled, part_mode, samples) + mode)
    return cases


@pytest.mark.parametrize("group,pooled,part_mode,samples,num_classes,trans_std,no_trans",
                         parity_cases())
def test_parity_with_mxnet_float64(group, pooled, part_mode, samples, num_classes, trans_std,
                                   no_trans):
    rng = np.random.RandomState(group * 100 + pooled * 10 + samples)
    part = pooled if part_mode == "default" else {3: 2, 7: 4}[pooled]
    data, rois, trans, _ = make_inputs(rng, group_size=group, output_dim=2 * num_classes,
                                       num_classes=num_classes, part=part,
                                       spatial_scale=0.5 if group < 7 else 0.25)
    params = dict(spatial_scale=0.5 if group < 7 else 0.25, output_dim=2 * num_classes,
                  group_size=group, pooled_size=pooled, sample_per_part=samples,
                  trans_std=trans_std, no_trans=no_trans)
    if part_mode == "explicit":
        params["part_size"] = part
    if no_trans:
        trans = None
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 2 * num_classes, pooled, pooled))
    want_out, want_data, want_trans = mxnet_builtin(data, rois, trans, out_grad, **params)
    assert np.abs(want_out).max() > 0  # the case pools something
    ones = np.ones((rois.shape[0], num_classes, part, part))
    for mask in (None, ones):
        out, grads = ours(data, rois, trans, mask, out_grad, **params)
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grads["data"], want_data, rtol=1e-12, atol=1e-13)
        if trans is not None:
            np.testing.assert_allclose(grads["trans"], want_trans, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(grads["rois"], 0)


@pytest.mark.parametrize("group,pooled,samples", [(3, 7, 2), (7, 7, 1), (1, 3, 4)])
def test_parity_with_mxnet_float32(group, pooled, samples):
    rng = np.random.RandomState(7)
    data, rois, trans, _ = make_inputs(rng, group_size=group, part=pooled)
    params = dict(spatial_scale=0.5, output_dim=4, group_size=group, pooled_size=pooled,
                  sample_per_part=samples, trans_std=0.1)
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 4, pooled, pooled))
    want_out, want_data, want_trans = mxnet_builtin(data, rois, trans, out_grad, "float32",
                                                    **params)
    out, grads = ours(data, rois, trans, None, out_grad, "float32", **params)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["data"], want_data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["trans"], want_trans, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Modulation: the NumPy reference and the release's recipe

@pytest.mark.parametrize("part,no_trans", [(3, False), (2, False), (3, True)])
def test_matches_reference_with_mask(part, no_trans):
    rng = np.random.RandomState(part)
    data, rois, trans, mask = make_inputs(rng, part=part)
    params = dict(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3, part_size=part,
                  sample_per_part=2, trans_std=0.1)
    if no_trans:
        trans = None
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 4, 3, 3))
    want, want_grads = psroi_pooling(data, rois, trans, mask, out_grad=out_grad, **params)
    out, grads = ours(data, rois, trans, mask, out_grad, no_trans=no_trans, **params)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)
    for name in ("data", "mask") + (() if no_trans else ("trans",)):
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("pooled,part,group,num_classes,no_trans,with_mask", [
    ((3, 5), 0, 1, 2, False, True),
    ((4, 2), (2, 1), (2, 1), 1, False, True),
    ((2, 3), (3, 2), (1, 3), 2, False, False),
    (3, (1, 3), (3, 1), 2, False, True),
    ((5, 3), 0, (5, 3), 1, True, True),
    ((1, 7), (1, 2), 1, 1, True, False),
])
def test_non_square_sizes_match_reference(pooled, part, group, num_classes, no_trans, with_mask):
    """pooled_size, part_size and group_size as (h, w) pairs (Paddle's and mmcv's
    non-square pooling): forward and every gradient against the float64 reference."""
    (Ph, Pw), (Gh, Gw) = size_pair(pooled), size_pair(group)
    part_hw = tuple(p or q for p, q in zip(size_pair(part), (Ph, Pw)))
    rng = np.random.RandomState(Ph * 10 + Pw)
    data, rois, trans, mask = make_inputs(rng, output_dim=2 * num_classes, group_size=group,
                                          num_classes=num_classes, part=part_hw)
    params = dict(spatial_scale=0.5, output_dim=2 * num_classes, group_size=group,
                  pooled_size=pooled, part_size=part, sample_per_part=2, trans_std=0.1)
    trans = None if no_trans else trans
    mask = mask if with_mask else None
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 2 * num_classes, Ph, Pw))
    want, want_grads = psroi_pooling(data, rois, trans, mask, out_grad=out_grad, **params)
    out, grads = ours(data, rois, trans, mask, out_grad, no_trans=no_trans, **params)
    assert out.shape == (rois.shape[0], 2 * num_classes, Ph, Pw)
    assert data.shape[1] == 2 * num_classes * Gh * Gw
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)
    for name in ("data",) + (() if no_trans else ("trans",)) + (("mask",) if with_mask else ()):
        assert grads[name].shape == want_grads[name].shape, name
        np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_square_pair_equals_int():
    inputs = _inputs()
    out_grad = np.random.RandomState(2).uniform(-1, 1, (4, 4, 3, 3))
    want = ours(**inputs, out_grad=out_grad, **BASE)
    got = ours(**inputs, out_grad=out_grad, **dict(BASE, pooled_size=(3, 3), group_size=[3, 3],
                                                   part_size=(3, 3)))
    np.testing.assert_array_equal(got[0], want[0])
    for k in ("data", "trans", "mask"):
        np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)


def test_modulated_forward_equals_pooling_then_broadcast_mask():
    """The release's recipe: pool with offsets, then multiply each class's channels by its
    mask (part_size = pooled_size, so the mask is one value per bin)."""
    rng = np.random.RandomState(3)
    data, rois, trans, mask = make_inputs(rng, num_classes=2, part=3)
    params = dict(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3,
                  sample_per_part=2, trans_std=0.1)
    pooled = mx.nd.contrib.DeformablePSROIPooling(
        mx.nd.array(data), mx.nd.array(rois), mx.nd.array(trans), **params)
    per_class = mx.nd.array(mask).repeat(repeats=2, axis=1)  # (R, output_dim, P, P)
    recipe = mx.nd.broadcast_mul(pooled, per_class).asnumpy()
    np.testing.assert_allclose(ours(data, rois, trans, mask, dtype="float32", **params), recipe,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(recipe, pooled.asnumpy())


def test_part_index_is_exact_where_float_rounding_is_not():
    """floor(float32(13) / 22 * 22) is 12: the operator uses cell 13, like exact arithmetic."""
    assert part_index(13, 22, 22) == 13
    rng = np.random.RandomState(5)
    data, rois, trans, mask = make_inputs(rng, output_dim=1, group_size=1, height=12, width=12,
                                          num_rois=1, num_classes=1, part=22, spatial_scale=1.0)
    params = dict(spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=22,
                  sample_per_part=1, trans_std=0.1)
    want = psroi_pooling(data, rois, trans, mask, **params)
    np.testing.assert_allclose(ours(data, rois, trans, mask, dtype="float32", **params), want,
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Numerical gradients

MARGIN = 0.02  # distance of every sample from grid lines and from the -0.5 / W-0.5 edges


def _safe(coord, size):
    return (abs(coord - round(coord)) > MARGIN and abs(coord + 0.5) > MARGIN
            and abs(coord - (size - 0.5)) > MARGIN)


def smooth_trans(rng, rois, params, num_classes, height, width):
    """Offsets under which no sample sits near a grid line or an edge, so that the pooling is
    differentiable there: each part cell's (x, y) is redrawn until all its bins' samples are."""
    (Ph, Pw), (part_h, part_w) = size_pair(params["pooled_size"]), size_pair(params["part_size"])
    trans = np.zeros((rois.shape[0], 2 * num_classes, part_h, part_w))
    for r, cls, ch, cw in itertools.product(range(rois.shape[0]), range(num_classes),
                                            range(part_h), range(part_w)):
        bins = [(ph, pw) for ph in range(Ph) for pw in range(Pw)
                if (part_index(ph, Ph, part_h), part_index(pw, Pw, part_w)) == (ch, cw)]
        for _ in range(1000):
            xy = rng.normal(0, 1, 2)
            if all(_safe(y, height) and _safe(x, width)
                   for ph, pw in bins
                   for y, x in bin_sample_positions(rois[r], xy, ph, pw, params)):
                break
        else:
            raise AssertionError("no smooth offset found")
        trans[r, 2 * cls, ch, cw], trans[r, 2 * cls + 1, ch, cw] = xy
    return trans


def numerical_grad(f, x, indices, eps):
    grad = np.zeros(len(indices))
    for k, idx in enumerate(indices):
        saved = x[idx]
        x[idx] = saved + eps
        up = f()
        x[idx] = saved - eps
        down = f()
        x[idx] = saved
        grad[k] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("pooled,part,group", [(3, 3, 2), (3, 2, 2), ((2, 4), (1, 3), (2, 1))])
def test_numerical_gradients(pooled, part, group):
    rng = np.random.RandomState(11 + size_pair(part)[1])
    height, width, num_classes = 7, 8, 2
    data, rois, _, mask = make_inputs(rng, batch=2, output_dim=2, group_size=group,
                                      height=height, width=width, num_rois=2,
                                      num_classes=num_classes, part=part)
    params = dict(spatial_scale=0.5, output_dim=2, group_size=group, pooled_size=pooled,
                  part_size=part, sample_per_part=2, trans_std=0.1)
    trans = smooth_trans(rng, rois, params, num_classes, height, width)
    weights = rng.uniform(-1, 1, (rois.shape[0], 2) + size_pair(pooled))

    def loss():
        return float((ours(data, rois, trans, mask, **params) * weights).sum())

    _, grads = ours(data, rois, trans, mask, weights, **params)
    assert np.abs(grads["trans"]).max() > 0
    flat = [np.unravel_index(i, data.shape) for i in rng.choice(data.size, 40, replace=False)]
    # Include elements that are read, so that a zero gradient cannot pass by luck.
    flat += [tuple(i) for i in np.argwhere(grads["data"] != 0)[:20]]
    for name, array, indices in (
            ("data", data, flat),
            ("trans", trans, list(np.ndindex(trans.shape))),
            ("mask", mask, list(np.ndindex(mask.shape)))):
        want = numerical_grad(loss, array, indices, eps=1e-5)
        got = np.array([grads[name][i] for i in indices])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Bad input, robustness, determinism, dtypes

BASE = dict(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3, sample_per_part=2,
            trans_std=0.1)


def _inputs():
    data, rois, trans, mask = make_inputs(np.random.RandomState(0))
    return dict(data=data, rois=rois, trans=trans, mask=mask)


@pytest.mark.parametrize("batch_index", [-1, -1.5, 2, 2.5, float("nan")])
def test_batch_index_outside_batch_is_an_error(batch_index):
    inputs = _inputs()
    inputs["rois"][1, 0] = batch_index
    with pytest.raises(mx.MXNetError, match=r"rois\[1, 0\] = .* must be in \(-1, 2\)"):
        ours(**inputs, **BASE)


@pytest.mark.parametrize("batch_index,image", [(-0.5, 0), (-1e-6, 0), (0.7, 0), (1.99, 1)])
def test_batch_index_is_truncated_toward_zero(batch_index, image):
    """As by MXNet's DeformablePSROIPooling, whose own numerical gradient check nudges rois[:, 0]
    by -eps/2: an index in (-1, 0) is image 0."""
    inputs = _inputs()
    out_grad = np.random.RandomState(3).uniform(-1, 1, (4, 4, 3, 3))
    inputs["rois"][1, 0] = image
    want = ours(**inputs, out_grad=out_grad, **BASE)
    inputs["rois"][1, 0] = batch_index
    got = ours(**inputs, out_grad=out_grad, **BASE)
    np.testing.assert_array_equal(got[0], want[0])
    for k in ("data", "trans", "mask"):
        np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)
    ref = psroi_pooling(**inputs, **BASE)
    np.testing.assert_allclose(got[0], ref, rtol=1e-10, atol=1e-12)
    builtin = mxnet_builtin(inputs["data"], inputs["rois"], inputs["trans"], out_grad,
                            no_trans=False, **dict(BASE, output_dim=4))
    unmodulated = ours(**dict(inputs, mask=None), out_grad=out_grad, **BASE)
    np.testing.assert_allclose(unmodulated[0], builtin[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("change,message", [
    (dict(output_dim=5), r"'data' has 36 channels but output_dim\*group_size\^2 = 5\*3\^2 = 45"),
    (dict(group_size=2), r"'data' has 36 channels"),
    (dict(output_dim=3, group_size=1, data_channels=3),
     r"'output_dim' \(3\) must be divisible by the number of classes \(2\)"),
    (dict(part_size=2), r"input 'trans' has shape \(4, 4, 3, 3\) but \(4, 4, 2, 2\)"),
    (dict(mask_part=2), r"input 'mask' has shape \(4, 2, 2, 2\) but \(4, 2, 3, 3\)"),
    (dict(mask_classes=1), r"input 'mask' has shape \(4, 1, 3, 3\) but \(4, 2, 3, 3\)"),
    (dict(trans_channels=3), r"'trans' has 3 channels but 2\*num_classes"),
    (dict(rois_cols=4), r"input 'rois' has shape \(4, 4\) but \(4, 5\)"),
    (dict(spatial_scale=0), r"'spatial_scale' must be positive"),
    (dict(spatial_scale=-0.5), r"'spatial_scale' must be positive"),
    (dict(pooled_size=0), r"'pooled_size' must be >= 1"),
    (dict(sample_per_part=0), r"'sample_per_part' must be >= 1"),
    (dict(group_size=0), r"'group_size' must be >= 1"),
    (dict(part_size=-1), r"'part_size' must be >= 0 \(0 means pooled_size\), got -1"),
    (dict(part_size=(3, -1)), r"'part_size' must be >= 0 \(0 means pooled_size\), got -1"),
    (dict(pooled_size=(3, 0)), r"'pooled_size' must be >= 1, got 0"),
    (dict(pooled_size=(3, 3, 3)), r"'pooled_size' = '\(3, 3, 3\)': expected a tuple of 2"),
    (dict(group_size=(3, 2)), r"36 channels but output_dim\*group_h\*group_w = 4\*3\*2 = 24"),
    (dict(part_size=(3, 2)), r"input 'trans' has shape \(4, 4, 3, 3\) but \(4, 4, 3, 2\)"),
    (dict(trans_std=float("nan")), r"'trans_std' = 'nan': expected a finite number"),
    (dict(pooling_size=3), r"unknown parameter 'pooling_size'"),
])
def test_bad_input_is_a_clear_error(change, message):
    inputs = _inputs()
    params = dict(BASE)
    change = dict(change)
    if "data_channels" in change:
        inputs["data"] = inputs["data"][:, :change.pop("data_channels")]
    if "mask_part" in change:
        inputs["mask"] = inputs["mask"][:, :, :change.pop("mask_part"), :2]
    if "mask_classes" in change:
        inputs["mask"] = inputs["mask"][:, :change.pop("mask_classes")]
    if "trans_channels" in change:
        inputs["trans"] = inputs["trans"][:, :change.pop("trans_channels")]
    if "rois_cols" in change:
        inputs["rois"] = inputs["rois"][:, :change.pop("rois_cols")]
    params.update(change)
    with pytest.raises(mx.MXNetError, match=OP + ".*" + message):
        ours(**inputs, **params)


def test_missing_required_parameter_is_a_clear_error():
    data, rois, trans, _ = make_inputs(np.random.RandomState(0))
    nd = {k: mx.nd.array(v) for k, v in dict(data=data, rois=rois, trans=trans).items()}
    with pytest.raises(TypeError, match=r"\['spatial_scale'\] are required"):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(
            **nd, output_dim=4, group_size=3, pooled_size=3)
    with pytest.raises(mx.MXNetError, match=r"parameter 'spatial_scale' is required"):
        dcnv2_mx.ops._raw("nd", OP)(*nd.values(), output_dim=4, group_size=3, pooled_size=3,
                                    no_mask=True).asnumpy()
    with pytest.raises(TypeError, match=r"missing required input\(s\) \['trans'\]"):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(data=nd["data"], rois=nd["rois"], **BASE)
    with pytest.raises(TypeError, match="no_trans=True takes no trans"):
        mx.nd.contrib.ModulatedDeformablePSROIPooling(**nd, no_trans=True, **BASE)


def test_wild_rois_and_offsets_give_finite_output():
    rng = np.random.RandomState(1)
    data, rois, trans, mask = make_inputs(rng, num_rois=8)
    rois[0, 1:] = [12, 12, 4, 4]            # inverted
    rois[1, 1:] = [-500, -500, -400, -400]  # outside the image
    rois[2, 1:] = [1e30, -1e30, 3e30, 1e30]  # huge
    rois[3, 1:] = [np.nan, 2, 8, np.inf]    # not numbers
    trans[4] = np.nan
    trans[5] = 1e30
    trans[6] = -np.inf
    trans[7, 0] = 1e6
    out_grad = np.ones((8, 4, 3, 3))
    outs = {}
    for dtype in ("float32", "float64"):
        out, grads = ours(data, rois, trans, mask, out_grad, dtype, **BASE)
        assert np.isfinite(out).all()
        for name, grad in grads.items():
            assert np.isfinite(grad).all(), name
        assert (out[1] == 0).all() and (out[4:7] == 0).all()  # no sample on the map
        assert np.abs(out[0]).max() > 0  # an inverted RoI pools a 0.1-wide window
        outs[dtype] = out
    numbers = [r for r in range(8) if r != 3]  # the reference takes no NaN corners
    want = psroi_pooling(data, rois[numbers], trans[numbers], mask[numbers], **BASE)
    np.testing.assert_allclose(outs["float64"][numbers], want, rtol=1e-12, atol=1e-13)


def test_backward_is_deterministic_across_runs_and_thread_counts():
    rng = np.random.RandomState(2)
    data, rois, trans, mask = make_inputs(rng, num_rois=6)
    rois[:, 0] = 0  # all RoIs on one image: overlapping scatters into the same planes
    out_grad = rng.uniform(-1, 1, (6, 4, 3, 3))
    args = (data, rois, trans, mask, out_grad, "float32")
    first = ours(*args, **BASE)[1]
    second = ours(*args, **BASE)[1]
    script = (
        "import pickle, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import dcnv2_mx, helpers\n"
        "args, params = pickle.load(sys.stdin.buffer)\n"
        "pickle.dump(helpers.ours(*args, **params)[1], sys.stdout.buffer)\n")
    env = dict(os.environ, OMP_NUM_THREADS="3")
    proc = subprocess.run([sys.executable, "-c", script], input=pickle.dumps((args, BASE)),
                          capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    threaded = pickle.loads(proc.stdout)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        np.testing.assert_array_equal(first[name], threaded[name], err_msg=name)


@pytest.mark.parametrize("no_trans", [False, True])
def test_float16_on_cpu_matches_the_reference(no_trans):
    """The CPU computes float16 calls in float32: the output and the data, trans and mask
    gradients are the float64 reference's on the same (float16) inputs, rounded to float16."""
    rng = np.random.RandomState(7)
    data, rois, trans, mask = (a.astype(np.float16).astype(np.float64)
                               for a in make_inputs(rng, part=3))
    trans = None if no_trans else trans
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 4, 3, 3)).astype(np.float16).astype(np.float64)
    want, want_grads = psroi_pooling(data, rois, trans, mask, out_grad=out_grad, **BASE)
    out, grads = ours(data, rois, trans, mask, out_grad, dtype="float16", no_trans=no_trans,
                      **BASE)
    for name, value, expected in [("out", out, want)] + [
            (k, grads[k], want_grads[k]) for k in ("data", "mask") + (() if no_trans else
                                                                      ("trans",))]:
        assert value.dtype == np.float16, name
        scale = np.abs(expected).max()
        assert scale > 0.1, name
        # float16 keeps 11 significant bits: a relative rounding error of at most 2^-11.
        np.testing.assert_allclose(value.astype(np.float64), expected, rtol=2e-3,
                                   atol=1e-3 * scale, err_msg=name)
    np.testing.assert_array_equal(grads["rois"], 0)


# ----------------------------------------------------------------------------------------------
# Symbol API

def _symbol(with_mask=True, no_trans=False, name="pool"):
    variables = {k: mx.sym.var(k) for k in ("data", "rois", "trans", "mask")}
    if not with_mask:
        del variables["mask"]
    if no_trans:
        del variables["trans"]
    return mx.sym.contrib.ModulatedDeformablePSROIPooling(**variables, no_trans=no_trans,
                                                          name=name, **BASE)


def test_symbol_arguments_and_shape_inference():
    sym = _symbol()
    assert sym.list_arguments() == ["data", "rois", "trans", "mask"]
    assert _symbol(with_mask=False, no_trans=True).list_arguments() == ["data", "rois"]
    assert _symbol(with_mask=True, no_trans=True).list_arguments() == ["data", "rois", "mask"]
    args, outs, _ = sym.infer_shape(data=(2, 36, 9, 8), rois=(5, 5), trans=(5, 4, 3, 3))
    assert outs == [(5, 4, 3, 3)]
    assert args == [(2, 36, 9, 8), (5, 5), (5, 4, 3, 3), (5, 2, 3, 3)]
    # The number of RoIs and of classes may come from the mask alone.
    args, outs, _ = sym.infer_shape(data=(2, 36, 9, 8), mask=(6, 4, 3, 3))
    assert args[1:] == [(6, 5), (6, 8, 3, 3), (6, 4, 3, 3)] and outs == [(6, 4, 3, 3)]
    with pytest.raises(mx.MXNetError, match="the number of classes is unknown"):
        sym.infer_shape(data=(2, 36, 9, 8), rois=(5, 5))


def test_symbol_json_round_trip_and_executor():
    rng = np.random.RandomState(4)
    data, rois, trans, mask = make_inputs(rng)
    values = dict(data=data, rois=rois, trans=trans, mask=mask)
    for with_mask in (True, False):
        sym = _symbol(with_mask)
        loaded = mx.sym.load_json(sym.tojson())
        assert loaded.list_arguments() == sym.list_arguments()
        attrs = json.loads(sym.tojson())["nodes"][-1]["attrs"]
        assert attrs["no_mask"] == str(not with_mask)
        feed = {k: mx.nd.array(values[k]) for k in sym.list_arguments()}
        want = ours(**{k: values[k] for k in sym.list_arguments()}, dtype="float32", **BASE)
        for s in (sym, loaded):
            out = s.bind(mx.cpu(), feed).forward()[0].asnumpy()
            np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)


def test_non_square_symbol_json_round_trip():
    params = dict(spatial_scale=0.5, output_dim=2, group_size=(1, 2), pooled_size=(2, 3),
                  part_size=(2, 1), sample_per_part=2, trans_std=0.1)
    data, rois, trans, mask = make_inputs(np.random.RandomState(8), output_dim=2,
                                          group_size=(1, 2), num_classes=1, part=(2, 1))
    sym = mx.sym.contrib.ModulatedDeformablePSROIPooling(
        mx.sym.var("data"), mx.sym.var("rois"), mx.sym.var("trans"), mx.sym.var("mask"),
        name="pool", **params)
    loaded = mx.sym.load_json(sym.tojson())
    assert json.loads(loaded.tojson())["nodes"][-1]["attrs"]["pooled_size"] == "(2, 3)"
    for s in (sym, loaded):
        args, outs, _ = s.infer_shape(data=data.shape, mask=mask.shape)
        assert outs == [(4, 2, 2, 3)] and args[1:] == [(4, 5), (4, 2, 2, 1), (4, 1, 2, 1)]
        feed = {k: mx.nd.array(v, dtype="float64")
                for k, v in dict(data=data, rois=rois, trans=trans, mask=mask).items()}
        out = s.bind(mx.cpu(), feed).forward()[0].asnumpy()
        np.testing.assert_allclose(out, psroi_pooling(data, rois, trans, mask, **params),
                                   rtol=1e-12, atol=1e-13)


def test_grad_req_add_accumulates():
    rng = np.random.RandomState(6)
    data, rois, trans, mask = make_inputs(rng)
    sym = _symbol()
    exe = sym.simple_bind(mx.cpu(), data=data.shape, rois=rois.shape, trans=trans.shape,
                          mask=mask.shape, grad_req="add")
    for k, v in dict(data=data, rois=rois, trans=trans, mask=mask).items():
        exe.arg_dict[k][:] = v
        exe.grad_dict[k][:] = 0
    out_grad = mx.nd.array(rng.uniform(-1, 1, (4, 4, 3, 3)))
    for _ in range(2):
        exe.forward(is_train=True)
        exe.backward(out_grad)
    _, once = ours(data, rois, trans, mask, out_grad.asnumpy(), "float32", **BASE)
    for k in ("data", "trans", "mask"):
        np.testing.assert_allclose(exe.grad_dict[k].asnumpy(), 2 * once[k], rtol=1e-5,
                                   atol=1e-6, err_msg=k)


def test_installed_and_documented():
    for module in (mx.nd.contrib, mx.sym.contrib):
        assert getattr(module, OP) is dcnv2_mx.ModulatedDeformablePSROIPooling
    doc = dcnv2_mx.ModulatedDeformablePSROIPooling.__doc__
    assert "(R, 2*num_classes, part_h, part_w)" in doc and "sigmoid" in doc
