"""The CUDA kernels through the standalone C-ABI harness (standalone.py), without MXNet: forward
and every gradient of the deformable convolution and the PS-RoI pooling against the float64
references in float64, float32 and float16, with atomic and deterministic data gradients; for
the convolution also under forced tilings, non-finite offsets and on a second GPU; determinism
of both; RoIs whose batch index is outside the batch.

Each check runs twice: on a GPU (the harness built with nvcc; skipped, with the reason, where
PyTorch, a GPU, nvcc or cuBLAS is missing) and on the CPU, on the harness built against the
host emulation of CUDA (cuda_emulation/; needs only a C++ compiler), which verifies the kernels'
logic but not their execution on a GPU."""
import pytest

import standalone


@pytest.fixture(scope="module", params=["gpu", "emulated"])
def harness(request):
    """The harness library: built for this GPU (or $DCNV2_STANDALONE_LIB), or emulated."""
    try:
        if request.param == "gpu":
            standalone.require_gpu()
            return standalone.Harness(standalone.build_harness())
        return standalone.Harness(standalone.build_harness(emulated=True))
    except standalone.HarnessUnavailable as reason:
        pytest.skip(f"standalone CUDA harness ({request.param}) unavailable: {reason}")


@pytest.mark.parametrize("check", [pytest.param(check, id=name)
                                   for name, check in standalone.all_checks()])
def test_kernels(harness, check):
    try:
        check(harness)
    except standalone.HarnessUnavailable as reason:
        pytest.skip(str(reason))
