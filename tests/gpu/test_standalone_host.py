"""The host-side pieces of the standalone GPU check, which run without a GPU: the comparison
rule, the problems, the build command and the tiling plans of the harness (planning needs no
device except for the deterministic backward). The plans need nvcc and cuBLAS to build the
harness and are skipped, with the reason, without them."""
import os

import numpy as np
import pytest

import standalone


@pytest.mark.parametrize("dtype", sorted(standalone.TOLERANCES))
def test_assert_close_accepts_rounding_and_rejects_errors(dtype):
    rng = np.random.RandomState(0)
    expected = rng.uniform(-2, 2, (3, 4, 5))
    rtol, atol = standalone.TOLERANCES[dtype]
    standalone.assert_close("x", expected * (1 + rtol / 2), expected, dtype)
    wrong = expected.copy()
    wrong[1, 2, 3] += 4 * (rtol + atol) * np.abs(expected).max()
    with pytest.raises(AssertionError, match=r"1 of 60 elements differ; worst at \(1, 2, 3\)"):
        standalone.assert_close("x", wrong, expected, dtype)
    wrong[1, 2, 3] = np.nan
    with pytest.raises(AssertionError):
        standalone.assert_close("x", wrong, expected, dtype)
    with pytest.raises(AssertionError):
        standalone.assert_close("x", expected[:2], expected, dtype)


def test_problems_are_rounded_to_the_dtype_the_kernels_get():
    problem = standalone.make_problem(standalone.CASES["b2-k3x3-c12"], "float16")
    for name, array in problem.arrays.items():
        assert array.dtype == np.float64
        np.testing.assert_array_equal(array.astype(np.float16).astype(np.float64), array, name)


def test_clustered_samples_share_corners():
    problem = standalone.make_problem(dict(batch=2, channels=4, height=8, width=8, num_filter=2),
                                      "float64", offsets="clustered")
    py, px = problem.positions
    for pos in (py, px):
        assert ((pos > 2) & (pos < 5)).all()
        assert (np.abs(pos - np.round(pos)) >= 0.1 - 1e-9).all()
    # All 2 x 9 x 64 samples (images, taps, pixels) lie in the four central cells.
    corners = {(int(y), int(x)) for y, x in zip(np.floor(py).ravel(), np.floor(px).ravel())}
    assert corners <= {(3, 3), (3, 4), (4, 3), (4, 4)}


def test_nvcc_command_builds_every_source_for_one_architecture():
    command = standalone.nvcc_command("/tmp/h.so", "90", "/inc", "/lib/libcublas.so.13")
    for source in standalone.SOURCES:
        path = os.path.join(standalone.CONTRIB, source)
        assert path in command and os.path.isfile(path), source
    assert "-gencode=arch=compute_90,code=[sm_90,compute_90]" in command
    assert command[-2:] == ["-o", "/tmp/h.so"] and "-l:libcublas.so.13" in command


@pytest.fixture(scope="module")
def harness():
    """The harness built here (no GPU needed to load it and plan)."""
    try:
        return standalone.Harness(standalone.build_harness())
    except standalone.HarnessUnavailable as reason:
        pytest.skip(f"cannot build the standalone CUDA harness: {reason}")


def spec(**case):
    return standalone.spec_of(standalone.make_problem(case, "float64"))


@pytest.mark.parametrize("dtype", sorted(standalone.DTYPE_CODES))
def test_plan_takes_whole_batches_of_small_images(harness, dtype):
    small = spec(batch=6, channels=8, height=5, width=5, num_filter=4)
    tile, images, scratch = harness.plan(small, dtype)
    assert (tile, images) == (25, 6)
    itemsize = np.dtype(dtype).itemsize
    assert scratch >= 6 * 25 * (8 * 9 + 4) * itemsize  # columns and filter-major rows


@pytest.mark.parametrize("tiling", standalone.TILINGS)
def test_budgets_force_each_tiling(harness, tiling):
    problem_spec = standalone.spec_of(standalone.make_problem(standalone.TILING_CASE, "float64"))
    budget = standalone.budget_for(harness, problem_spec, tiling, deterministic=False)
    plan = harness.plan(problem_spec, "float64", True, False, budget)
    pixels = problem_spec.out_shape[2] * problem_spec.out_shape[3]
    assert standalone.has_tiling(tiling, plan, pixels, problem_spec.shape[0])
    assert plan[2] <= budget


def test_plan_errors_name_the_parameter(harness):
    with pytest.raises(RuntimeError, match="'workspace'.*too small"):
        harness.plan(spec(batch=1, channels=8, height=5, width=5, num_filter=4), "float32",
                     budget=64)
    bad = spec(batch=1, channels=6, height=5, width=5, num_filter=4)._replace(
        params=dict(kernel=(3, 3), num_filter=4, num_group=4))
    with pytest.raises(RuntimeError, match="num_group"):
        harness.plan(bad, "float32")
