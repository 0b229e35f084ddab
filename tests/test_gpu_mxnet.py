"""The deformable convolutions and the modulated deformable PS-RoI pooling on GPU through MXNet
(mxnet-cu112 and the CUDA build of dcnv2_mx): CPU-vs-GPU parity of the output and every gradient
in float64 and float32, float16 against the float64 reference, numerical gradients on the GPU,
the deterministic data gradient (MXNET_ENFORCE_DETERMINISM), tiling under a small workspace,
grad_req='add', and gpu(1). Skipped, with the reason, where MXNet sees no GPU."""
import mxnet as mx
import numpy as np
import pytest

from dcnv2_mx.tools.reference.psroi import psroi_pooling
from helpers import CASES, cases, make_inputs, ours

pytestmark = pytest.mark.skipif(
    mx.context.num_gpus() == 0,
    reason="MXNet sees no GPU (mx.context.num_gpus() == 0): these tests need a GPU, "
           "mxnet-cu112 and dcnv2_mx built with CUDA (DCNV2_MX_CUDA=1 pip install .)")

#: float64 GPU sums run in another order than the CPU's (atomics, GEMM blocking).
PARITY_TOLERANCES = {"float64": (1e-10, 1e-11), "float32": (1e-4, 1e-5)}


def run_on(ctx, problem, dtype, out_grad, **overrides):
    """The output and every gradient (NumPy) of `problem` computed on `ctx`."""
    with ctx:
        return problem.run_nd(dtype, out_grad=out_grad, **overrides)


def assert_parity(expected, actual, dtype, what=""):
    """Outputs and gradient dicts agree within PARITY_TOLERANCES[dtype] of their scale."""
    rtol, atol = PARITY_TOLERANCES[dtype]
    (out_e, grads_e), (out_a, grads_a) = expected, actual
    pairs = [("out", out_e, out_a)] + [(k, grads_e[k], grads_a[k]) for k in grads_e]
    assert sorted(grads_e) == sorted(grads_a)
    for name, e, a in pairs:
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * max(1.0, np.abs(e).max()),
                                   err_msg=f"{what} {name}")


def test_the_library_has_gpu_kernels(make_problem):
    problem = make_problem(**CASES["b1-k3x3"])
    try:
        with mx.gpu(0):
            problem.run_nd("float32")
    except mx.base.MXNetError as err:
        pytest.fail("the loaded dcnv2_mx library has no working GPU kernels; build it with "
                    f"CUDA (DCNV2_MX_CUDA=1 pip install .): {err}")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", sorted(PARITY_TOLERANCES))
@pytest.mark.parametrize("case", cases())
def test_gpu_matches_cpu(make_problem, rng, monkeypatch, case, dtype, deterministic):
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1" if deterministic else "0")
    problem = make_problem(**case)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    assert_parity(run_on(mx.cpu(), problem, dtype, out_grad),
                  run_on(mx.gpu(0), problem, dtype, out_grad), dtype)


@pytest.mark.parametrize("case", cases("b2-k3x2-s21-p10-d21-g2-dg2", "v1-b2-k3x2-p10-g2-dg2"))
def test_float16_matches_the_reference(make_problem, rng, case):
    problem = make_problem(**case)
    # The reference gets exactly the float16 inputs.
    problem.arrays = {k: v.astype(np.float16).astype(np.float64) for k, v in problem.arrays.items()}
    out_grad = rng.uniform(-1, 1, problem.out_shape).astype(np.float16).astype(np.float64)
    out, grads = run_on(mx.gpu(0), problem, "float16", out_grad)
    assert out.dtype == np.float16
    expected = dict(problem.reference_grads(out_grad), out=problem.reference())
    for name, value in dict(grads, out=out).items():
        scale = np.abs(expected[name]).max()
        assert scale > 0.1, name
        np.testing.assert_allclose(value.astype(np.float64), expected[name], rtol=1e-2,
                                   atol=1e-2 * scale, err_msg=name)


@pytest.mark.parametrize("case", cases("b1-k3x3", "b2-k3x2-s21-p10-d21-g2-dg2",
                                       "v1-b2-k3x2-p10-g2-dg2"))
def test_numerical_gradient_on_gpu(make_problem, case):
    problem = make_problem(**case)
    # As on the CPU: samples stay >= 0.1 from cell edges, so eps = 1e-4 never crosses one.
    mx.test_utils.check_numeric_gradient(problem.symbol(), problem.symbol_location(),
                                         numeric_eps=1e-4, rtol=1e-6, atol=1e-8,
                                         dtype=np.float64, ctx=mx.gpu(0))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_deterministic_data_gradient_is_reproducible(make_problem, rng, monkeypatch, dtype):
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1")
    # All samples in four cells: every input pixel there receives many contributions.
    problem = make_problem(batch=2, channels=16, height=8, width=8, num_filter=8,
                           offsets="clustered")
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    first = run_on(mx.gpu(0), problem, dtype, out_grad)
    for _ in range(2):
        again = run_on(mx.gpu(0), problem, dtype, out_grad)
        np.testing.assert_array_equal(again[0], first[0])
        for name in first[1]:
            np.testing.assert_array_equal(again[1][name], first[1][name], err_msg=name)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_small_workspace_tiles_on_gpu(make_problem, rng, monkeypatch, deterministic):
    """One image's columns (64 channels x 9 taps x 1024 pixels in float64, 4.7 MB) exceed
    workspace=1 (MiB): forward and backward run in tiles of pixels."""
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1" if deterministic else "0")
    problem = make_problem(batch=2, channels=64, height=32, width=32, num_filter=4,
                           num_deformable_group=2)
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    assert_parity(run_on(mx.cpu(), problem, "float64", out_grad),
                  run_on(mx.gpu(0), problem, "float64", out_grad, workspace=1), "float64")


def test_grad_req_add_accumulates_on_gpu(make_problem, rng):
    problem = make_problem(**CASES["b2-k3x2-s21-p10-d21-g2-dg2"])
    with mx.gpu(0):
        arrays = problem.nd_arrays()
        for a in arrays.values():
            a.attach_grad(grad_req="add")
        out_grad = mx.nd.array(rng.uniform(-1, 1, problem.out_shape), dtype="float64")
        for _ in range(2):
            with mx.autograd.record():
                out = getattr(mx.nd.contrib, problem.op)(**arrays, **problem.params)
            out.backward(out_grad)
        grads = {k: a.grad.asnumpy() for k, a in arrays.items()}
    expected = problem.reference_grads(out_grad.asnumpy())
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, 2 * expected[name], rtol=1e-10, atol=1e-11,
                                   err_msg=name)


@pytest.mark.skipif(mx.context.num_gpus() < 2, reason="needs a second GPU (gpu(1))")
def test_second_gpu_matches_cpu(make_problem, rng):
    problem = make_problem(**CASES["b2-k3x3-s21-p10-d21-g2-dg3-nobias"])
    out_grad = rng.uniform(-1, 1, problem.out_shape)
    assert_parity(run_on(mx.cpu(), problem, "float64", out_grad),
                  run_on(mx.gpu(1), problem, "float64", out_grad), "float64")


# ----------------------------------------------------------------------------------------------
# Modulated deformable PS-RoI pooling

PSROI_PARAMS = dict(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3,
                    sample_per_part=2, trans_std=0.1)


def psroi_case(seed, part=3, no_trans=False):
    """Inputs (data, rois, trans or None, mask), parameters and an output gradient."""
    rng = np.random.RandomState(seed)
    data, rois, trans, mask = make_inputs(rng, part=part)
    params = dict(PSROI_PARAMS, part_size=part, no_trans=no_trans)
    out_grad = rng.uniform(-1, 1, (rois.shape[0], 4, 3, 3))
    return (data, rois, None if no_trans else trans, mask), params, out_grad


def psroi_on(ctx, inputs, params, out_grad, dtype):
    """Output and gradients (NumPy) of the pooling computed on `ctx`."""
    with ctx:
        return ours(*inputs, out_grad=out_grad, dtype=dtype, **params)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("dtype", sorted(PARITY_TOLERANCES))
@pytest.mark.parametrize("part,no_trans", [(3, False), (2, False), (3, True)])
def test_psroi_gpu_matches_cpu(monkeypatch, part, no_trans, dtype, deterministic):
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1" if deterministic else "0")
    inputs, params, out_grad = psroi_case(part, part, no_trans)
    assert_parity(psroi_on(mx.cpu(), inputs, params, out_grad, dtype),
                  psroi_on(mx.gpu(0), inputs, params, out_grad, dtype), dtype, "psroi")


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_psroi_float16_matches_the_reference(monkeypatch, deterministic):
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1" if deterministic else "0")
    inputs, params, out_grad = psroi_case(7)
    # The reference gets exactly the float16 inputs.
    inputs = tuple(a.astype(np.float16).astype(np.float64) for a in inputs)
    out_grad = out_grad.astype(np.float16).astype(np.float64)
    out, grads = psroi_on(mx.gpu(0), inputs, params, out_grad, "float16")
    assert out.dtype == np.float16
    want, want_grads = psroi_pooling(*inputs, out_grad=out_grad, **PSROI_PARAMS, part_size=3)
    for name, value, expected in [("out", out, want)] + [
            (k, grads[k], want_grads[k]) for k in ("data", "trans", "mask")]:
        scale = np.abs(expected).max()
        assert scale > 0.1, name
        np.testing.assert_allclose(value.astype(np.float64), expected, rtol=1e-2,
                                   atol=1e-2 * scale, err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_psroi_deterministic_backward_is_reproducible(monkeypatch, dtype):
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1")
    rng = np.random.RandomState(3)
    # Many overlapping RoIs of one image: every input pixel receives many contributions.
    data, rois, trans, mask = make_inputs(rng, batch=1, num_rois=32)
    out_grad = rng.uniform(-1, 1, (32, 4, 3, 3))
    params = dict(PSROI_PARAMS, part_size=3)
    first = psroi_on(mx.gpu(0), (data, rois, trans, mask), params, out_grad, dtype)
    for _ in range(2):
        again = psroi_on(mx.gpu(0), (data, rois, trans, mask), params, out_grad, dtype)
        np.testing.assert_array_equal(again[0], first[0])
        for name in first[1]:
            np.testing.assert_array_equal(again[1][name], first[1][name], err_msg=name)


def test_psroi_roi_outside_the_batch_pools_to_zero_on_gpu():
    """The GPU kernels do not read the device-side batch indices back to the host: a RoI of an
    image that is not in the batch pools to 0 and passes no gradient (the CPU raises)."""
    inputs, params, out_grad = psroi_case(5)
    data, rois, trans, mask = inputs
    rois = rois.copy()
    rois[1, 0] = data.shape[0]
    out, grads = psroi_on(mx.gpu(0), (data, rois, trans, mask), params, out_grad, "float64")
    assert not out[1].any() and not grads["trans"][1].any() and not grads["mask"][1].any()
    keep = np.arange(rois.shape[0]) != 1
    want, want_grads = psroi_on(mx.cpu(), (data, rois[keep], trans[keep], mask[keep]), params,
                                out_grad[keep], "float64")
    np.testing.assert_allclose(out[keep], want, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(grads["data"], want_grads["data"], rtol=1e-10, atol=1e-11)


@pytest.mark.skipif(mx.context.num_gpus() < 2, reason="needs a second GPU (gpu(1))")
def test_psroi_second_gpu_matches_cpu():
    inputs, params, out_grad = psroi_case(11)
    assert_parity(psroi_on(mx.cpu(), inputs, params, out_grad, "float64"),
                  psroi_on(mx.gpu(1), inputs, params, out_grad, "float64"), "float64", "psroi")
