"""Property-based fuzzing of both operators with hypothesis.

Valid configurations (groups, deformable groups, kernels, stride/pad/dilation, batch, RoIs, part
and group sizes, square or not) must match the float64 NumPy references, forward and every
gradient. Invalid ones (wrong head-gradient shapes, huge integers, mismatched or unsupported
dtypes, wrong input shapes or counts) must give a clean MXNetError and leave the process usable;
each invalid category runs in a fresh interpreter, so that a crash fails its test, not the run.

Examples per test: DCNV2_MX_FUZZ_EXAMPLES (default 12, the CI run). A long run::

    DCNV2_MX_FUZZ_PROFILE=long pytest tests/test_fuzz.py            # 2000 examples per test
    DCNV2_MX_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py            # or any number

The CI profile is derandomized (the same examples every run); the long one is random.
"""
import functools
import math
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mxnet.base import MXNetError

import dcnv2_mx
from conftest import ConvProblem, run_python
from dcnv2_mx.tools.reference.conv import output_size
from dcnv2_mx.tools.reference.psroi import psroi_pooling

_EXAMPLES = int(os.environ.get("DCNV2_MX_FUZZ_EXAMPLES", "0"))
_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=_EXAMPLES or 12, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=_EXAMPLES or 2000, **_COMMON)
settings.load_profile(os.environ.get("DCNV2_MX_FUZZ_PROFILE", "ci"))

PSROI = "ModulatedDeformablePSROIPooling"
SEEDS = st.integers(0, 2 ** 32 - 1)
F64 = dict(rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------------------------
# Valid configurations against the float64 references

@st.composite
def conv_configs(draw):
    """ConvProblem keyword arguments of a random valid call (without the generator)."""
    groups, dgroups = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilate = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    # At least the dilated kernel after padding, so that the output is not empty.
    least = [max(1, d * (k - 1) + 1 - 2 * p) for k, d, p in zip(kernel, dilate, pad)]
    return dict(
        batch=draw(st.integers(1, 3)),
        channels=groups * dgroups // math.gcd(groups, dgroups) * draw(st.integers(1, 2)),
        height=draw(st.integers(least[0], least[0] + 4)),
        width=draw(st.integers(least[1], least[1] + 4)),
        num_filter=groups * draw(st.integers(1, 2)), kernel=kernel,
        stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), pad=pad, dilate=dilate,
        num_group=groups, num_deformable_group=dgroups, no_bias=draw(st.booleans()),
        modulated=draw(st.booleans()),
        offsets=draw(st.sampled_from(["jittered", "clustered", "zero"])))


@given(config=conv_configs(), seed=SEEDS)
def test_conv_matches_reference(config, seed):
    rng = np.random.RandomState(seed)
    c = config
    samples = c["batch"] * c["num_deformable_group"] * np.prod([
        c["kernel"][d] * output_size((c["height"], c["width"])[d], c["kernel"][d],
                                     c["stride"][d], c["pad"][d], c["dilate"][d])
        for d in (0, 1)])
    if c["offsets"] == "jittered" and samples < 4:
        config = dict(c, offsets="clustered")  # "jittered" places four samples on purpose
    problem = ConvProblem(rng, **config)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    out, grads = problem.run_nd("float64", out_grad)
    np.testing.assert_allclose(out, problem.reference(), **F64)
    want = problem.reference_grads(out_grad)
    for name in problem.arrays:
        np.testing.assert_allclose(grads[name], want[name], err_msg=name, **F64)


def _size(draw, low, high):
    """An int (square) or an (h, w) pair."""
    h, w = draw(st.integers(low, high)), draw(st.integers(low, high))
    return h if draw(st.booleans()) else (h, w)


def _pair(size):
    return (size, size) if isinstance(size, int) else size


@st.composite
def psroi_configs(draw):
    """(operator parameters, data shape, number of RoIs, classes, with mask) of a valid call."""
    classes = draw(st.integers(1, 2))
    no_trans = draw(st.booleans())
    params = dict(spatial_scale=draw(st.sampled_from([1.0, 0.5, 0.25, 0.0625])),
                  output_dim=classes * draw(st.integers(1, 2)), group_size=_size(draw, 1, 3),
                  pooled_size=_size(draw, 1, 4),
                  part_size=0 if draw(st.booleans()) else _size(draw, 1, 4),  # 0: pooled_size
                  sample_per_part=draw(st.integers(1, 3)),
                  trans_std=draw(st.sampled_from([0.0, 0.1, 0.5])), no_trans=no_trans)
    gh, gw = _pair(params["group_size"])
    shape = (draw(st.integers(1, 2)), params["output_dim"] * gh * gw, draw(st.integers(1, 8)),
             draw(st.integers(1, 8)))
    with_mask = draw(st.booleans())
    if no_trans and not with_mask:
        classes = 1  # no input has classes
    return params, shape, draw(st.integers(1, 3)), classes, with_mask


def _psroi_inputs(rng, params, shape, num_rois, classes, with_mask):
    """Random inputs: RoIs on, across and off the map (some inverted), batch indices anywhere
    in (-1, N) (truncated toward zero), offsets and masks."""
    batch, _, height, width = shape
    img_h, img_w = height / params["spatial_scale"], width / params["spatial_scale"]
    rois = np.zeros((num_rois, 5))
    rois[:, 0] = rng.uniform(-0.99, batch - 0.01, num_rois)
    rois[:, 1], rois[:, 3] = (rng.uniform(-0.5 * img_w, 1.2 * img_w, (2, num_rois)))
    rois[:, 2], rois[:, 4] = (rng.uniform(-0.5 * img_h, 1.2 * img_h, (2, num_rois)))
    part = tuple(p or q for p, q in zip(_pair(params["part_size"]),
                                        _pair(params["pooled_size"])))
    inputs = dict(data=rng.uniform(-1, 1, shape), rois=rois,
                  trans=None if params["no_trans"] else rng.normal(0, 1, (num_rois, 2 * classes)
                                                                   + part),
                  mask=rng.uniform(0, 1, (num_rois, classes) + part) if with_mask else None)
    return inputs


@given(config=psroi_configs(), seed=SEEDS)
def test_psroi_matches_reference(config, seed):
    params, shape, num_rois, classes, with_mask = config
    rng = np.random.RandomState(seed)
    inputs = _psroi_inputs(rng, params, shape, num_rois, classes, with_mask)
    arrays = {k: mx.nd.array(v, dtype="float64") for k, v in inputs.items() if v is not None}
    for a in arrays.values():
        a.attach_grad()
    with mx.autograd.record():
        out = mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **params)
    out_grad = rng.uniform(-1, 1, out.shape)
    out.backward(mx.nd.array(out_grad, dtype="float64"))
    reference_params = {k: v for k, v in params.items() if k != "no_trans"}
    want, want_grads = psroi_pooling(**inputs, out_grad=out_grad, **reference_params)
    np.testing.assert_allclose(out.asnumpy(), want, **F64)
    for name in arrays.keys() - {"rois"}:
        np.testing.assert_allclose(arrays[name].grad.asnumpy(), want_grads[name], err_msg=name,
                                   **F64)
    np.testing.assert_array_equal(arrays["rois"].grad.asnumpy(), 0)


# ----------------------------------------------------------------------------------------------
# Invalid calls: each category runs in a subprocess (test_invalid_category_in_subprocess)

INVALID = {}  # category name -> hypothesis test function, run in a fresh interpreter


def invalid_category(fn):
    INVALID[fn.__name__] = fn
    return fn


def _conv_call(dtypes=None, shapes=None, **params):
    """A valid 3x3 DCNv2 call on float32 arrays of ones; `dtypes`/`shapes` replace an input's."""
    shapes = dict(dict(data=(2, 4, 6, 5), offset=(2, 18, 6, 5), mask=(2, 9, 6, 5),
                       weight=(3, 4, 3, 3), bias=(3,)), **(shapes or {}))
    dtypes = dtypes or {}
    arrays = {k: mx.nd.ones(s, dtype=dtypes.get(k, "float32")) for k, s in shapes.items()}
    return arrays, dict(dict(kernel=(3, 3), pad=(1, 1), num_filter=3), **params)


def _psroi_call(dtypes=None, shapes=None, **params):
    """A valid PS-RoI call (non-square pooling, two classes) on float32 arrays."""
    shapes = dict(dict(data=(2, 12, 7, 6), rois=(3, 5), trans=(3, 4, 2, 3), mask=(3, 2, 2, 3)),
                  **(shapes or {}))
    dtypes = dtypes or {}
    rng = np.random.RandomState(0)
    arrays = {k: mx.nd.array(rng.uniform(0, 1, s), dtype=dtypes.get(k, "float32"))
              for k, s in shapes.items()}
    return arrays, dict(dict(spatial_scale=0.5, output_dim=2, group_size=(2, 3),
                             pooled_size=(4, 3), part_size=(2, 3), sample_per_part=2,
                             trans_std=0.1), **params)


CALLS = {"DeformableConvolutionV2": _conv_call, PSROI: _psroi_call}


def _run(op, arrays, params):
    getattr(mx.nd.contrib, op)(**arrays, **params).wait_to_read()


@functools.lru_cache(maxsize=None)
def _usable_checks():
    """(convolution problem, its reference output, PS-RoI reference output): computed once."""
    problem = ConvProblem(np.random.RandomState(5), batch=1, channels=2, height=4, width=4,
                          num_filter=2)
    arrays, params = _psroi_call()
    return problem, problem.reference(), psroi_pooling(
        **{k: v.asnumpy() for k, v in arrays.items()}, **params)


def _assert_still_usable():
    """A valid call of each operator still gives the right answer after the failed one."""
    problem, conv_out, psroi_out = _usable_checks()
    np.testing.assert_allclose(problem.run_nd("float64"), conv_out, **F64)
    arrays, params = _psroi_call()
    got = mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **params).asnumpy()
    np.testing.assert_allclose(got, psroi_out, rtol=1e-5, atol=1e-6)


@invalid_category
@given(op=st.sampled_from(sorted(CALLS)), axis=st.integers(0, 4), delta=st.integers(-3, 3),
       kind=st.sampled_from(["resize", "drop", "add", "scalar"]))
def head_gradient_shape(op, axis, delta, kind):
    """backward with a head gradient of the wrong shape (autograd: MXNet does not check it)."""
    arrays, params = CALLS[op]()
    for a in arrays.values():
        a.attach_grad()
    with mx.autograd.record():
        out = getattr(mx.nd.contrib, op)(**arrays, **params)
    shape = list(out.shape)
    if kind == "resize":
        shape[axis % 4] = max(1, shape[axis % 4] + (delta or 1))
        if tuple(shape) == out.shape:
            shape[axis % 4] += 1
    elif kind == "drop":
        del shape[axis % 4]
    elif kind == "add":
        shape.insert(axis, 1 + abs(delta))
    else:
        shape = [1]
    with pytest.raises(MXNetError):
        out.backward(mx.nd.ones(tuple(shape)))
        mx.nd.waitall()
    _assert_still_usable()


#: Integer parameters of each operator (the first tuple component where it is a tuple).
INT_PARAMS = {
    "DeformableConvolutionV2": ["kernel", "stride", "dilate", "pad", "num_filter", "num_group",
                                "num_deformable_group", "workspace", "im2col_step"],
    PSROI: ["output_dim", "group_size", "pooled_size", "part_size", "sample_per_part"],
}


@invalid_category
@given(op_param=st.sampled_from([(op, p) for op, ps in INT_PARAMS.items() for p in ps]),
       wraps=st.integers(1, 2 ** 31 - 1), component=st.integers(0, 1), data=st.data())
def huge_integers(op_param, wraps, component, data):
    """An integer parameter beyond 32 bits that would wrap to a valid value (or any other
    value >= 2^31) is an error naming the parameter."""
    op, name = op_param
    arrays, params = CALLS[op]()
    value = params.get(name, {"stride": 1, "dilate": 1, "num_group": 1, "num_deformable_group": 1,
                              "workspace": 1024, "im2col_step": 64, "sample_per_part": 1}.get(name))
    pair = isinstance(value, tuple)
    base = value[component] if pair else value
    huge = data.draw(st.one_of(st.just(base + wraps * 2 ** 32), st.integers(2 ** 31, 2 ** 63)))
    if pair:
        value = tuple(huge if i == component else v for i, v in enumerate(value))
    else:
        value = huge
    with pytest.raises(MXNetError, match=name):
        _run(op, arrays, dict(params, **{name: value}))
    _assert_still_usable()


DTYPES = ["float16", "float32", "float64", "int32", "int64", "int8", "uint8"]


@invalid_category
@given(op=st.sampled_from(sorted(CALLS)), data=st.data())
def mismatched_dtypes(op, data):
    """Inputs of different dtypes, or of an integer dtype, are an error naming a dtype."""
    arrays, _ = CALLS[op]()
    dtypes = {k: data.draw(st.sampled_from(DTYPES), label=k) for k in arrays}
    if len(set(dtypes.values())) == 1 and dtypes["data"].startswith("float"):
        dtypes[sorted(dtypes)[0]] = "int32"  # all one float type would be valid
    arrays, params = CALLS[op](dtypes=dtypes)
    with pytest.raises(MXNetError, match="|".join(set(dtypes.values()))):
        _run(op, arrays, params)
    _assert_still_usable()


@invalid_category
@given(op=st.sampled_from(sorted(CALLS)), data=st.data())
def wrong_input_shapes(op, data):
    """One input of a wrong shape (a wrong size or number of dimensions) is an error naming an
    input (the data shape is trusted, so its mistakes show in the shapes that follow from it)."""
    arrays, params = CALLS[op]()
    name = data.draw(st.sampled_from(sorted(arrays)), label="input")
    shape = list(arrays[name].shape)
    kind = data.draw(st.sampled_from(["resize", "drop", "add"]), label="kind")
    axis = data.draw(st.integers(0, len(shape) - 1), label="axis")
    if kind == "resize":
        shape[axis] += data.draw(st.sampled_from([-1, 1, 2, 5]), label="delta")
        if shape[axis] < 1:
            shape[axis] = 2 * arrays[name].shape[axis] + 1
    elif kind == "drop":
        del shape[axis]
        shape = shape or [arrays[name].shape[0] + 1]  # a scalar is no shape for an NDArray
    else:
        shape.insert(axis, data.draw(st.integers(2, 3), label="size"))
    arrays, params = CALLS[op](shapes={name: tuple(shape)})
    if op == PSROI and name == "data" and kind == "resize" and axis != 1:
        return  # another batch or map size is valid (the RoIs' indices stay in range)
    with pytest.raises(MXNetError, match="input '(" + "|".join(arrays) + ")'"):
        _run(op, arrays, params)
    _assert_still_usable()


@invalid_category
@given(op=st.sampled_from(sorted(CALLS)), drop=st.booleans(), data=st.data())
def wrong_input_counts(op, drop, data):
    """The positional operator given one input too few or too many."""
    arrays, params = CALLS[op]()
    inputs = list(arrays.values())
    if drop:
        del inputs[data.draw(st.integers(0, len(inputs) - 1), label="dropped")]
    else:
        inputs.insert(data.draw(st.integers(0, len(inputs)), label="at"), inputs[0].copy())
    if op == PSROI:
        params = dict(params, no_mask=False)
    with pytest.raises(MXNetError):
        dcnv2_mx.ops._raw("nd", op)(*inputs, **params).wait_to_read()
    _assert_still_usable()


@pytest.mark.parametrize("category", list(INVALID))
def test_invalid_category_in_subprocess(category):
    """Every example of the category gives a clean MXNetError and leaves the process usable; a
    signal (crash) or a hang fails the test, not the run."""
    result = run_python(f"import test_fuzz; test_fuzz.INVALID[{category!r}]()", timeout=240)
    assert result.returncode == 0, (
        f"exit status {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
