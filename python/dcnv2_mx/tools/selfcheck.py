"""Self-test of the installed operators (``python -m dcnv2_mx check``).

On every requested device it checks, with small fixed-seed inputs:

* forward parity of ``DeformableConvolutionV2``/``V1`` and ``ModulatedDeformablePSROIPooling``
  with the float64 NumPy references of :mod:`dcnv2_mx.tools.reference` (the ones the tests use;
  they ship with the package, so an installed package checks itself), in float64 and float32,
  and float16 on GPUs;
* gradients of every input against central differences of the operator itself, in float64;
* on a GPU, outputs and gradients against the same computation on the CPU.

The references are looked up in this module's namespace at call time, so a test can replace
them (``deform_conv2d_forward``, ``psroi_pooling``) to make the check fail.
"""
import collections
import math

import numpy as np

import mxnet as mx
from mxnet import autograd

from .reference.conv import deform_conv2d_forward
from .reference.psroi import psroi_pooling

__all__ = ["CheckResult", "contexts", "run_checks", "format_results", "TOLERANCES"]

#: One line of the pass/fail table. error and tolerance are None when the operator raised.
CheckResult = collections.namedtuple(
    "CheckResult", "device operator check dtype error tolerance status note")

#: Tolerances on the scaled error (see _scaled_error) per check and dtype.
TOLERANCES = {("forward", "float64"): 1e-10, ("forward", "float32"): 2e-5,
              ("forward", "float16"): 1e-2, ("gradient", "float64"): 1e-6,
              ("cpu parity", "float64"): 1e-10, ("cpu parity", "float32"): 2e-5}


def contexts(which):
    """MXNet contexts for ``--ctx`` ``cpu``, ``gpu`` or ``all`` (the CPU plus GPU 0 if present).

    Raises ValueError for ``gpu`` when this MXNet sees no GPU.
    """
    gpus = mx.context.num_gpus() if mx.runtime.Features().is_enabled("CUDA") else 0
    if which == "cpu":
        return [mx.cpu()]
    if which == "gpu":
        if not gpus:
            raise ValueError("--ctx gpu: this MXNet sees no GPU (CUDA build: "
                             f"{mx.runtime.Features().is_enabled('CUDA')})")
        return [mx.gpu(0)]
    if which == "all":
        return [mx.cpu()] + ([mx.gpu(0)] if gpus else [])
    raise ValueError(f"--ctx must be cpu, gpu or all, got {which!r}")


def _scaled_error(actual, expected):
    """max |actual - expected| over max(1, max |expected|): relative for large values."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return math.inf
    return float(np.max(np.abs(actual - expected), initial=0.0)
                 / max(1.0, float(np.max(np.abs(expected), initial=0.0))))


def _off_grid(rng, shape, spread=2):
    """Offsets whose fractional part stays in [0.15, 0.85]: the sampling points of an integer
    grid then never sit on a cell edge, where the bilinear gradient jumps."""
    return rng.integers(-spread, spread, shape) + rng.uniform(0.15, 0.85, shape)


# Convolution problems for the forward checks: the data shape (N, C, H, W) and the operator's
# parameters, covering stride, padding, dilation, groups, deformable groups, non-square kernels
# and odd batch sizes.
_CONV_CASES = (
    ((2, 4, 6, 5), dict(num_filter=6, kernel=(3, 3), stride=(1, 1), pad=(1, 1), dilate=(1, 1),
                        num_group=1, num_deformable_group=1)),
    ((1, 4, 7, 7), dict(num_filter=4, kernel=(3, 3), stride=(2, 2), pad=(1, 1), dilate=(2, 2),
                        num_group=1, num_deformable_group=2)),
    ((3, 6, 5, 6), dict(num_filter=4, kernel=(3, 2), stride=(1, 2), pad=(0, 1), dilate=(1, 1),
                        num_group=2, num_deformable_group=3)),
)
# The gradient check: small enough for central differences over every element.
_CONV_GRAD_CASE = ((2, 4, 4, 4), dict(num_filter=2, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                      dilate=(1, 1), num_group=2, num_deformable_group=2))


def _conv_inputs(case, modulated, rng):
    (n, c, h, w), p = case
    kh, kw = p["kernel"]
    ho = (h + 2 * p["pad"][0] - p["dilate"][0] * (kh - 1) - 1) // p["stride"][0] + 1
    wo = (w + 2 * p["pad"][1] - p["dilate"][1] * (kw - 1) - 1) // p["stride"][1] + 1
    taps = p["num_deformable_group"] * kh * kw
    inputs = collections.OrderedDict(
        data=rng.normal(size=(n, c, h, w)),
        offset=_off_grid(rng, (n, 2 * taps, ho, wo)))
    if modulated:
        inputs["mask"] = rng.uniform(0.1, 1.0, (n, taps, ho, wo))
    inputs["weight"] = rng.normal(size=(p["num_filter"], c // p["num_group"], kh, kw))
    inputs["bias"] = rng.normal(size=(p["num_filter"],))
    return inputs


def _conv_op(case, modulated):
    """The operator under test as a function of keyword NDArrays."""
    op = (mx.nd.contrib.DeformableConvolutionV2 if modulated
          else mx.nd.contrib.DeformableConvolutionV1)
    return lambda **arrays: op(**arrays, **case[1])


def _conv_expected(case, inputs):
    p = case[1]
    return deform_conv2d_forward(inputs["data"], inputs["offset"], inputs.get("mask"),
                                 inputs["weight"], inputs["bias"], p["stride"], p["pad"],
                                 p["dilate"], p["num_group"], p["num_deformable_group"])


_PSROI_PARAMS = dict(spatial_scale=0.5, output_dim=4, group_size=2, pooled_size=3, part_size=3,
                     sample_per_part=2, trans_std=0.1)
_PSROI_CLASSES, _PSROI_MAP = 2, (8, 9)


def _psroi_inputs(rng):
    """RoIs well inside the map and small offsets: no sample reaches the clamped border band,
    where MXNet's offset gradient differs from the derivative of the forward by design."""
    group, size = _PSROI_PARAMS["group_size"], _PSROI_PARAMS["part_size"]
    x1, y1 = rng.uniform(3, 6, 3), rng.uniform(3, 5, 3)
    rois = np.stack([np.array([0, 1, 1]), x1, y1, x1 + rng.uniform(4, 7, 3),
                     y1 + rng.uniform(3, 6, 3)], axis=1)
    return collections.OrderedDict(
        data=rng.normal(size=(2, _PSROI_PARAMS["output_dim"] * group * group) + _PSROI_MAP),
        rois=rois,
        trans=rng.uniform(-1, 1, (3, 2 * _PSROI_CLASSES, size, size)),
        mask=rng.uniform(0.1, 1.0, (3, _PSROI_CLASSES, size, size)))


def _psroi_op(**arrays):
    return mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **_PSROI_PARAMS)


def _psroi_expected(inputs):
    return psroi_pooling(inputs["data"], inputs["rois"], inputs["trans"], inputs["mask"],
                         **_PSROI_PARAMS)


def _run(op, inputs, ctx, dtype):
    arrays = {k: mx.nd.array(v, ctx=ctx, dtype=dtype) for k, v in inputs.items()}
    return op(**arrays).asnumpy()


def _gradients(op, inputs, head, ctx, dtype, differentiable):
    """Output and the gradients of sum(out * head) for the inputs named in differentiable."""
    arrays = {k: mx.nd.array(v, ctx=ctx, dtype=dtype) for k, v in inputs.items()}
    for name in differentiable:
        arrays[name].attach_grad()
    with autograd.record():
        out = op(**arrays)
    out.backward(mx.nd.array(head, ctx=ctx, dtype=dtype))
    return out.asnumpy(), {k: arrays[k].grad.asnumpy() for k in differentiable}


def _numerical_gradient(op, inputs, name, head, ctx, eps=1e-6):
    """Central differences of sum(op(inputs) * head) with respect to every element of one input."""
    fixed = {k: mx.nd.array(v, ctx=ctx, dtype="float64") for k, v in inputs.items()}
    values = np.array(inputs[name], np.float64)
    grad = np.zeros_like(values)
    flat, flat_grad = values.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        sides = []
        for step in (eps, -eps):
            original = flat[i]
            flat[i] = original + step
            fixed[name] = mx.nd.array(values, ctx=ctx, dtype="float64")
            sides.append(float((op(**fixed).asnumpy() * head).sum()))
            flat[i] = original
        flat_grad[i] = (sides[0] - sides[1]) / (2 * eps)
    return grad


class _Table:
    """Collects CheckResults: measured (add), or failed with an operator error (fail)."""

    def __init__(self):
        self.results = []

    def add(self, device, operator, check, dtype, error, tolerance, note=""):
        status = "PASS" if error <= tolerance else "FAIL"
        self.results.append(CheckResult(device, operator, check, dtype, error, tolerance,
                                        status, note))

    def fail(self, device, operator, check, dtype, err):
        message = str(err).strip().splitlines()
        self.results.append(CheckResult(device, operator, check, dtype, None, None, "FAIL",
                                        f"{type(err).__name__}: {message[0] if message else ''}"))


def _forward_dtypes(ctx):
    """float16 is a GPU type of the operators."""
    return ("float64", "float32") + (("float16",) if ctx.device_type == "gpu" else ())


def _check_conv(table, ctx, modulated):
    name = "DeformableConvolutionV2" if modulated else "DeformableConvolutionV1"
    device = str(ctx)
    rng = np.random.default_rng(7)
    for dtype in _forward_dtypes(ctx):
        try:
            errors = []
            for case in _CONV_CASES:
                inputs = _conv_inputs(case, modulated, rng)
                errors.append(_scaled_error(_run(_conv_op(case, modulated), inputs, ctx, dtype),
                                            _conv_expected(case, inputs)))
            table.add(device, name, "forward", dtype, max(errors),
                      TOLERANCES[("forward", dtype)],
                      f"vs NumPy reference, {len(_CONV_CASES)} shapes")
        except mx.base.MXNetError as err:
            table.fail(device, name, "forward", dtype, err)
    op = _conv_op(_CONV_GRAD_CASE, modulated)
    inputs = _conv_inputs(_CONV_GRAD_CASE, modulated, rng)
    head = rng.normal(size=_conv_expected(_CONV_GRAD_CASE, inputs).shape)
    _check_gradients(table, device, name, op, inputs, head, ctx, list(inputs))
    _check_cpu_parity(table, ctx, name, op, inputs, head, list(inputs))


def _check_psroi(table, ctx):
    name = "ModulatedDeformablePSROIPooling"
    device = str(ctx)
    rng = np.random.default_rng(11)
    inputs = _psroi_inputs(rng)
    for dtype in _forward_dtypes(ctx):
        try:
            table.add(device, name, "forward", dtype,
                      _scaled_error(_run(_psroi_op, inputs, ctx, dtype), _psroi_expected(inputs)),
                      TOLERANCES[("forward", dtype)], "vs NumPy reference")
        except mx.base.MXNetError as err:
            table.fail(device, name, "forward", dtype, err)
    head = rng.normal(size=_psroi_expected(inputs).shape)
    differentiable = ["data", "trans", "mask"]
    _check_gradients(table, device, name, _psroi_op, inputs, head, ctx, differentiable)
    _check_cpu_parity(table, ctx, name, _psroi_op, inputs, head, differentiable)


def _check_gradients(table, device, name, op, inputs, head, ctx, differentiable):
    try:
        _, grads = _gradients(op, inputs, head, ctx, "float64", differentiable)
        errors = {k: _scaled_error(grads[k], _numerical_gradient(op, inputs, k, head, ctx))
                  for k in differentiable}
        worst = max(errors, key=errors.get)
        table.add(device, name, "gradient", "float64", errors[worst],
                  TOLERANCES[("gradient", "float64")],
                  f"{', '.join(differentiable)} vs central differences; worst: {worst}")
    except mx.base.MXNetError as err:
        table.fail(device, name, "gradient", "float64", err)


def _check_cpu_parity(table, ctx, name, op, inputs, head, differentiable):
    """On a GPU: outputs and gradients against the same computation on the CPU."""
    if ctx.device_type == "cpu":
        return
    for dtype in ("float64", "float32"):
        try:
            out, grads = _gradients(op, inputs, head, ctx, dtype, differentiable)
            cpu_out, cpu_grads = _gradients(op, inputs, head, mx.cpu(), dtype, differentiable)
        except mx.base.MXNetError as err:
            table.fail(str(ctx), name, "cpu parity", dtype, err)
            continue
        error = max([_scaled_error(out, cpu_out)]
                    + [_scaled_error(grads[k], cpu_grads[k]) for k in differentiable])
        table.add(str(ctx), name, "cpu parity", dtype, error, TOLERANCES[("cpu parity", dtype)],
                  "output and all gradients")


def run_checks(ctxs, progress=None):
    """Runs every check on each context in ctxs; returns a list of CheckResult.

    progress, if given, is called with a short label before each operator's checks.
    """
    table = _Table()
    for ctx in ctxs:
        for label, check in (("DCNv2", lambda: _check_conv(table, ctx, True)),
                             ("DCNv1", lambda: _check_conv(table, ctx, False)),
                             ("PS-RoI", lambda: _check_psroi(table, ctx))):
            if progress:
                progress(f"{ctx} {label}")
            check()
    return table.results


def format_results(results):
    """The pass/fail table as text, one line per CheckResult."""
    from .table import format_table

    rows = [(r.device, r.operator, r.check, r.dtype,
             "-" if r.error is None else f"{r.error:.1e}",
             "-" if r.tolerance is None else f"{r.tolerance:.0e}", r.status, r.note)
            for r in results]
    return format_table(["device", "operator", "check", "dtype", "error", "tol", "result",
                         "note"], rows)
