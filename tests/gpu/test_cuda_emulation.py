"""What the host emulation of CUDA (cuda_emulation/) adds to the standalone checks on the CPU,
and that it is able to fail: threads run in an order that changes from launch to launch (the
atomic data gradient's rounding varies as on a GPU, the deterministic one must not), work on
the default stream is refused, and every check also passes under AddressSanitizer and, with
launches spread over host threads, under ThreadSanitizer."""
import subprocess
import sys

import numpy as np
import pytest

import standalone


@pytest.fixture(scope="module")
def harness():
    try:
        return standalone.Harness(standalone.build_harness(emulated=True))
    except standalone.HarnessUnavailable as reason:
        pytest.skip(f"emulated CUDA harness unavailable: {reason}")


def data_grads(harness, deterministic, runs=3):
    """The float32 data gradient of the clustered determinism problem, from `runs` calls."""
    problem = standalone.make_problem(standalone.DETERMINISM_CASE, "float32", offsets="clustered")
    spec = standalone.spec_of(problem)
    out_grad = standalone.random_out_grad(problem.out_shape, "float32", seed=5)
    b = harness.buffers

    def body():
        inputs = standalone.device_inputs(harness, problem.arrays, "float32")
        dout = b.put(out_grad, b.default_device)
        return [harness.backward(spec, inputs, dout, "float32", deterministic)["data"]
                for _ in range(runs)]

    return b.on_side_stream(body, b.default_device)


def test_thread_order_changes_atomic_rounding_but_not_the_deterministic_gradient(harness):
    atomic = data_grads(harness, deterministic=False)
    assert any(not harness.buffers.equal(atomic[0], other) for other in atomic[1:])
    np.testing.assert_allclose(atomic[1], atomic[0], rtol=1e-5, atol=1e-5)
    deterministic = data_grads(harness, deterministic=True)
    assert all(harness.buffers.equal(deterministic[0], other) for other in deterministic[1:])


def test_work_on_the_default_stream_is_refused(harness):
    problem = standalone.make_problem(standalone.CASES["b2-k3x3-c12"], "float32")
    inputs = standalone.device_inputs(harness, problem.arrays, "float32")
    with pytest.raises(RuntimeError, match="kernel launch on the default stream"):
        harness.forward(standalone.spec_of(problem), inputs, "float32")  # not on a side stream


@pytest.mark.parametrize("flag", ["--asan", "--tsan"])
def test_every_check_passes_under_a_sanitizer(flag):
    """AddressSanitizer: no out-of-bounds access; ThreadSanitizer, with each launch on four host
    threads: no two GPU threads touch an element without atomics."""
    proc = subprocess.run([sys.executable, standalone.__file__, "check", flag],
                          capture_output=True, text=True)
    if proc.returncode == 2 and "cannot run here" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 failed" in proc.stdout
