"""The host-side pieces of the standalone GPU check, which run without a GPU: the comparison
rule, the problems, the build commands, the tiling plans of the harness (planning needs no
device except for the deterministic backward) and its PS-RoI pooling scratch sizes and
parameter checks. Those run on the harness built with nvcc and cuBLAS (skipped, with the
reason, without them) and on the one built against the CUDA emulation."""
import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

import standalone
from dcnv2_mx.tools.reference.psroi import roi_window, size_pair


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
    for path in standalone.SOURCES:
        assert path in command and os.path.isfile(path), path
    assert "-gencode=arch=compute_90,code=[sm_90,compute_90]" in command
    assert command[-2:] == ["-o", "/tmp/h.so"] and "-l:libcublas.so.13" in command


def test_emulated_command_builds_every_source_against_the_emulation():
    command = standalone.emulated_command("/tmp/h.so", "c++")
    for path in standalone.SOURCES:
        assert path in command, path
    assert "-DDCNV2_MX_CUDA_EMULATION=1" in command and "-Werror" in command
    assert os.path.join(standalone.EMULATION, "include") in command
    for sanitizer, flags in standalone.SANITIZER_FLAGS.items():
        command = standalone.emulated_command("/tmp/h.so", "c++", sanitizer)
        assert all(flag in command for flag in flags) and "-O2" not in command


@pytest.fixture(scope="module", params=["nvcc", "emulated"])
def harness(request):
    """The harness built here with nvcc, or against the CUDA emulation (no GPU needed to load
    either and plan)."""
    try:
        return standalone.Harness(standalone.build_harness(emulated=request.param == "emulated"))
    except standalone.HarnessUnavailable as reason:
        pytest.skip(f"cannot build the standalone CUDA harness ({request.param}): {reason}")


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


def plan_in_subprocess(harness, problem_spec, dtype, backward, budget=0):
    """harness.plan(...) in a fresh process, so that a crash of the planner fails the test:
    (tile, images, scratch)."""
    code = (f"import standalone\n"
            f"harness = standalone.Harness({harness.path!r})\n"
            f"call = standalone.ConvSpec(*{tuple(problem_spec)!r})\n"
            f"print(*harness.plan(call, {dtype!r}, {backward}, False, {budget}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [standalone.HERE, standalone.TESTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return tuple(int(v) for v in proc.stdout.split())


@pytest.mark.parametrize("num_filter", [1, 8])
def test_backward_plans_whole_images_when_partial_sums_outweigh_columns(harness, num_filter):
    """float16, 9 channels: the offset gradient's partial sums (4-byte, 2 chunks per sample)
    once outweighed the columns a second image adds, so the scratch shrank from one image to
    two and the planner divided by zero (or took one image): it must take all four."""
    problem_spec = spec(batch=4, channels=9, height=114, width=128, num_filter=num_filter)
    assert plan_in_subprocess(harness, problem_spec, "float16", False)[:2] == (114 * 128, 4)
    assert plan_in_subprocess(harness, problem_spec, "float16", True)[:2] == (114 * 128, 4)


def test_plan_errors_name_the_parameter(harness):
    with pytest.raises(RuntimeError, match="'workspace'.*too small"):
        harness.plan(spec(batch=1, channels=8, height=5, width=5, num_filter=4), "float32",
                     budget=64)
    bad = spec(batch=1, channels=6, height=5, width=5, num_filter=4)._replace(
        params=dict(kernel=(3, 3), num_filter=4, num_group=4))
    with pytest.raises(RuntimeError, match="num_group"):
        harness.plan(bad, "float32")


# ------------------------------------------------------------------------------------------
# PS-RoI pooling

PSROI_PROBLEMS = [(name, dtype) for name in standalone.PSROI_CASES
                  for dtype in sorted(standalone.TOLERANCES)]


@pytest.mark.parametrize("name,dtype", PSROI_PROBLEMS)
def test_psroi_problems_are_well_formed_and_rounded_to_the_dtype(name, dtype):
    problem = standalone.make_psroi_problem(standalone.PSROI_CASES[name], dtype)
    spec, params = problem.spec, problem.params
    assert list(problem.arrays) == spec.inputs
    batch, channels, height, width = spec.shape
    assert channels == params["output_dim"] * np.prod(size_pair(params["group_size"]))
    part = tuple(p or q for p, q in zip(size_pair(params["part_size"]),
                                        size_pair(params["pooled_size"])))
    expected_shapes = {"data": spec.shape, "rois": (spec.num_rois, 5),
                       "trans": (spec.num_rois, 2 * spec.num_classes) + part,
                       "mask": (spec.num_rois, spec.num_classes) + part}
    for key, array in problem.arrays.items():
        assert array.shape == expected_shapes[key], key
        assert array.dtype == np.float64
        np.testing.assert_array_equal(standalone.rounded(array, dtype), array, key)
    batch_index = problem.arrays["rois"][:, 0]
    assert set(batch_index) == set(range(batch))  # every image, one index per RoI
    assert len(problem.roi_kinds) == spec.num_rois
    trans = problem.arrays.get("trans")
    for r in range(spec.num_rois):
        positions = problem.sample_positions(problem.arrays["rois"][r],
                                             None if trans is None else trans[r])
        assert standalone.samples_keep_clear(positions, height, width, trans is not None), r


def test_samples_keep_clear_of_borders_and_grid_lines():
    clearance = standalone.SAMPLE_CLEARANCE
    inside = np.array([[1.5, 2.25], [np.nan, 0.0], [np.inf, 9.0]])
    assert standalone.samples_keep_clear(inside, 5, 6, offsets=True)
    on_grid_line = np.array([[1.5, 2.0 + clearance / 2]])
    assert standalone.samples_keep_clear(on_grid_line, 5, 6, offsets=False)
    assert not standalone.samples_keep_clear(on_grid_line, 5, 6, offsets=True)
    for border in ([[-0.5 - clearance / 2, 1.3]], [[1.3, 5.5 + clearance / 2]]):
        assert not standalone.samples_keep_clear(np.array(border), 5, 6, offsets=False)
    np.testing.assert_array_equal(
        standalone.samples_used(np.array([[-0.5, 5.5], [-0.51, 1.0], [np.nan, 1.0]]), 5, 6),
        [True, False, False])


def _has_roi_partly_off_the_map(problem):
    """Whether a random RoI's window (before offsets) overlaps the map and sticks out of it."""
    _, _, height, width = problem.spec.shape
    for roi, kind in zip(problem.arrays["rois"], problem.roi_kinds):
        start_h, start_w, roi_h, roi_w = roi_window(roi, problem.params["spatial_scale"])
        spans = [(start_h, start_h + roi_h, height), (start_w, start_w + roi_w, width)]
        overlaps = all(start < size - 0.5 and end > -0.5 for start, end, size in spans)
        sticks_out = any(start < -0.5 or end > size - 0.5 for start, end, size in spans)
        if kind == "random" and overlaps and sticks_out:
            return True
    return False


def test_psroi_cases_cover_the_semantics():
    problems = [standalone.make_psroi_problem(case, "float64")
                for case in standalone.PSROI_CASES.values()]
    features = {
        "mask": lambda p: not p.params["no_mask"],
        "no mask": lambda p: p.params["no_mask"],
        "offsets": lambda p: not p.params["no_trans"],
        "no_trans with mask": lambda p: p.params["no_trans"] and not p.params["no_mask"],
        "no_trans without mask": lambda p: p.params["no_trans"] and p.params["no_mask"],
        "several classes": lambda p: p.spec.num_classes > 1,
        "group_size > 1": lambda p: max(size_pair(p.params["group_size"])) > 1,
        "groups of several bins": lambda p: p.params["group_size"] not in (
            1, p.params["pooled_size"]),
        "part_size != pooled_size": lambda p: p.params["part_size"] not in (
            0, p.params["pooled_size"]),
        "non-square bins, groups and part cells": lambda p: all(
            len(set(size_pair(p.params[k]))) == 2
            for k in ("pooled_size", "group_size", "part_size")),
        "sample_per_part 1": lambda p: p.params["sample_per_part"] == 1,
        "sample_per_part 4": lambda p: p.params["sample_per_part"] == 4,
        "spatial_scale 1/16": lambda p: p.params["spatial_scale"] == 0.0625,
        "a RoI partly off the map": _has_roi_partly_off_the_map,
    }
    for kind in standalone.ROI_KINDS:
        features[f"a {kind} RoI"] = lambda p, k=kind: k in p.roi_kinds
    missing = [name for name, has in features.items() if not any(map(has, problems))]
    assert not missing, missing


@pytest.mark.parametrize("name,dtype", PSROI_PROBLEMS)
def test_psroi_references_can_catch_errors(name, dtype):
    """Every expected output and gradient of a check is far from zero somewhere, RoIs that
    reach no sample pool to exactly 0, inverted RoIs pool a small window and the special
    offsets move some bins off the map."""
    problem = standalone.make_psroi_problem(standalone.PSROI_CASES[name], dtype)
    out_grad = standalone.random_out_grad(problem.out_shape, dtype).astype(np.float64)
    out, grads = problem.reference(out_grad)
    assert np.abs(out).max() > 0.1
    for key, grad in grads.items():
        if key == "rois":
            assert (grad == 0).all()
        else:
            assert np.abs(grad).max() > 0.1, key
    for r, kind in enumerate(problem.roi_kinds):
        if kind == "outside":
            assert (out[r] == 0).all()
        if kind == "inverted":
            assert np.abs(out[r]).max() > 0
        if kind in ("nan-trans", "large-trans"):  # some bins moved off the map, not all
            assert (out[r] == 0).any() and (out[r] != 0).any()


@pytest.mark.parametrize("name,dtype", [(n, d) for n, d in PSROI_PROBLEMS if d != "float16"])
def test_psroi_problems_pass_on_the_cpu_operator(name, dtype):
    """The CPU operator runs the same per-element code (psroi_pooling_kernel.h) as the CUDA
    kernels: it meets the checks' tolerances on their problems, so the problems keep clear of
    float32's rounding and a failing GPU check points at the CUDA code."""
    mx = pytest.importorskip("mxnet")
    pytest.importorskip("dcnv2_mx")
    problem = standalone.make_psroi_problem(standalone.PSROI_CASES[name], dtype)
    out_grad = standalone.random_out_grad(problem.out_shape, dtype)
    arrays = {k: mx.nd.array(v, dtype=dtype) for k, v in problem.arrays.items()}
    for array in arrays.values():
        array.attach_grad()
    params = {k: v for k, v in problem.params.items() if k != "no_mask"}  # set from the inputs
    with mx.autograd.record():
        out = mx.nd.contrib.ModulatedDeformablePSROIPooling(**arrays, **params)
    out.backward(mx.nd.array(out_grad, dtype=dtype))
    expected_out, expected_grads = problem.reference(out_grad.astype(np.float64))
    standalone.assert_results_close(out.asnumpy(), {k: a.grad.asnumpy() for k, a in arrays.items()},
                                    expected_out, expected_grads, dtype)


def small_psroi_spec(num_rois=5, num_classes=2, **changes):
    """The PSROISpec of a small call on data (2, 36, 9, 8), parameters changed by `changes`."""
    params = dict(spatial_scale=0.5, output_dim=4, group_size=3, pooled_size=3, part_size=0,
                  sample_per_part=2, trans_std=0.1, no_trans=False, no_mask=False)
    params.update(changes)
    return standalone.psroi_spec(params, (2, 36, 9, 8), num_rois, num_classes)


@pytest.mark.parametrize("dtype", sorted(standalone.DTYPE_CODES))
def test_psroi_scratch_holds_what_the_wanted_gradients_need(harness, dtype):
    """A float32 atomic data gradient for float16; the bin table and RoI boxes of the
    deterministic data gradient; partial sums (3 per RoI, class, chunk of 8 channels and
    part cell) of the offset and mask gradients when a class has more than 8 channels. Each
    block has room to align its start (63 bytes)."""
    spec = small_psroi_spec()  # 5 RoIs, 2 classes of 2 channels: one chunk, no partial sums
    assert harness.psroi_scratch_bytes(spec, dtype) == (
        4 * 2 * 36 * 9 * 8 + 63 if dtype == "float16" else 0)
    assert harness.psroi_scratch_bytes(spec, dtype, data_grad=False) == 0
    # The deterministic data gradient's table: 5 RoIs x 2 classes x 9 bins of (where the bin
    # samples: 4 floats and a 64-bit part index; modulation, count, a box of 4 ints), 64-byte
    # aligned, and a box per RoI and class.
    table_entry = 72 if dtype == "float64" else 48
    aligned_table = -(-5 * 2 * 9 * table_entry // 64) * 64
    assert harness.psroi_scratch_bytes(spec, dtype, data_grad=True, part_grads=False,
                                       deterministic=True) == aligned_table + 16 * 5 * 2 + 63
    wide = small_psroi_spec(output_dim=36, group_size=1)  # 18 channels per class: 3 chunks
    accumulator_bytes = 8 if dtype == "float64" else 4
    assert harness.psroi_scratch_bytes(wide, dtype, data_grad=False) == (
        3 * 5 * 2 * 3 * 9 * accumulator_bytes + 63)
    assert harness.psroi_scratch_bytes(wide, dtype, data_grad=False, part_grads=False) == 0


@pytest.mark.parametrize("changes,message", [
    (dict(pooled_size=0), r"'pooled_size' must be >= 1"),
    (dict(part_size=-1), r"'part_size' must be >= 0 \(0 means pooled_size\)"),
    (dict(output_dim=5), r"'data' has 36 channels but output_dim\*group_size\^2 = 5"),
    (dict(num_classes=3),
     r"'output_dim' \(4\) must be divisible by the number of classes \(3\) of input 'trans'"),
    (dict(pooling_size=3), r"unknown parameter 'pooling_size'"),
    (dict(trans_std=float("nan")), r"'trans_std' = 'nan': expected a finite number"),
    (dict(no_trans=True, no_mask=True), r"num_classes must be 1 without trans and mask"),
    (dict(num_rois=0), r"input 'rois' dimension 0"),
])
def test_psroi_errors_name_the_parameter(harness, changes, message):
    with pytest.raises(RuntimeError, match=message):
        harness.psroi_scratch_bytes(small_psroi_spec(**changes), "float32")


def test_psroi_missing_scale_is_an_error(harness):
    spec = small_psroi_spec()
    spec = spec._replace(params={k: v for k, v in spec.params.items() if k != "spatial_scale"})
    with pytest.raises(RuntimeError, match="parameter 'spatial_scale' is required"):
        harness.psroi_scratch_bytes(spec, "float32")


def test_psroi_backward_refuses_short_scratch_before_touching_the_device(harness):
    """float16 needs float32 scratch for the data gradient; a short block is refused before
    any launch (so no GPU is needed, and the pointers are never used)."""
    spec = small_psroi_spec()
    call = harness._psroi_call(spec, "float16")
    fake = ctypes.c_void_p(256)  # never dereferenced: the call fails first
    inputs = (ctypes.c_void_p * 4)(fake, fake, fake, fake)
    grads = (ctypes.c_void_p * 4)(fake, None, None, None)
    needed = harness.psroi_scratch_bytes(spec, "float16", part_grads=False)
    rc = harness.lib.dcnv2_standalone_psroi_backward(ctypes.byref(call), fake, inputs, grads,
                                                     fake, needed - 1, None)
    assert rc == -1
    assert harness.lib.dcnv2_standalone_last_error().decode() == (
        f"scratch of {needed - 1} bytes, but the backward call needs {needed}")


@pytest.mark.parametrize("dtype", sorted(standalone.DTYPE_CODES))
@pytest.mark.parametrize("backward,deterministic", [(False, False), (True, False), (True, True)])
def test_plans_stay_within_the_budget(harness, dtype, backward, deterministic):
    """Every plan that a budget admits fits it, over budgets from too small to ample."""
    if deterministic and not harness.emulated:
        pytest.skip("planning the deterministic backward asks CUB, which needs a GPU")
    problem_spec = spec(batch=3, channels=20, height=7, width=6, num_filter=4, kernel=(3, 2),
                        num_deformable_group=2)
    planned = 0
    for budget in np.unique(np.geomspace(2 << 10, 4 << 20, 300).astype(int)):
        try:
            tile, images, scratch = harness.plan(problem_spec, dtype, backward, deterministic,
                                                 int(budget))
        except RuntimeError as error:
            assert "'workspace'" in str(error) and "too small" in str(error)
            continue
        planned += 1
        assert scratch <= budget, (budget, tile, images, scratch)
    assert planned > 100
