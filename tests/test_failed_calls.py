"""Failed calls leave nothing behind: MXNet fetches an extension's error messages through the
library's `_msgGet`, whose MXNet 1.9.1 version leaked each message (about 1.2 KB per failed
call, src/operator/contrib/common/lib_api_glue.cc). Measured in a fresh process, so that other
tests' allocations do not blur the figure."""
import statistics
import subprocess
import sys
import textwrap

import pytest

# Heap growth per failed call, measured exactly (glibc's mallinfo2): a shape-inference failure of
# MXNet's own Convolution keeps about 250 bytes (MXNet's, on its imperative path); ours kept
# 1270 (shape inference) and 1510 (forward) before the fix, and 250 and 70 after it.
MAX_BYTES_OVER_BUILTIN = 200
# Each failed call leaves cyclic garbage (the exception's traceback and frames) that Python's
# collector frees whenever it happens to run, and MXNet now and then makes a one-off allocation of
# a few hundred KB: over a single window of 1000 calls these read as up to 600 bytes more or less
# per call (CI failed once on 856 against 263). So the collector runs before every reading, and
# the figure is the median of several windows: a leak per call shows in every window, a one-off
# allocation in one.
WINDOWS = 5
CALLS_PER_WINDOW = 200

_SCRIPT = textwrap.dedent("""
    import ctypes
    import gc
    import sys
    import mxnet as mx
    import dcnv2_mx  # noqa: F401
    nd = mx.nd

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2

    def heap_in_use():  # bytes malloc has handed out and not got back, exactly
        gc.collect()  # frees the failed calls' cyclic garbage now, not at a time of its own
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    def shape_failure():  # shape inference: offset has 10 channels, 18 expected
        nd.contrib.DeformableConvolutionV2(
            nd.ones((1, 4, 5, 5)), nd.zeros((1, 10, 5, 5)), nd.ones((1, 9, 5, 5)),
            nd.ones((2, 4, 3, 3)), nd.zeros(2), kernel=(3, 3), pad=(1, 1),
            num_filter=2).wait_to_read()

    def forward_failure():  # forward: the RoI's batch index 5 is not an image of the batch
        nd.contrib.ModulatedDeformablePSROIPooling(
            nd.ones((1, 8, 6, 6)), nd.array([[5, 0, 0, 3, 3]]), spatial_scale=1.0, output_dim=2,
            group_size=2, pooled_size=2, no_trans=True).wait_to_read()

    def builtin_shape_failure():  # MXNet's Convolution: the weight has 2 channels, 4 expected
        nd.Convolution(nd.ones((1, 4, 5, 5)), nd.ones((2, 2, 3, 3)), nd.zeros(2), kernel=(3, 3),
                       pad=(1, 1), num_filter=2).wait_to_read()

    def failing(call):
        try:
            call()
        except mx.MXNetError as err:
            return str(err)
        raise AssertionError(call.__name__ + " did not fail")

    windows, calls = int(sys.argv[1]), int(sys.argv[2])
    for call in (builtin_shape_failure, shape_failure, forward_failure):
        for _ in range(200):  # warm-up: caches and allocator pools reach their size
            failing(call)
        growth = []
        for _ in range(windows):
            before = heap_in_use()
            for _ in range(calls):
                failing(call)
            growth.append((heap_in_use() - before) / calls)
        print(call.__name__, *growth)
""")


@pytest.mark.parametrize("kind", ["shape_failure", "forward_failure"])
def test_failed_calls_keep_no_more_than_builtin_ones(kind, failed_call_growth):
    builtin = failed_call_growth["builtin_shape_failure"]
    assert failed_call_growth[kind] < builtin + MAX_BYTES_OVER_BUILTIN, failed_call_growth


@pytest.fixture(scope="module")
def failed_call_growth():
    """{kind: heap bytes kept per failed call}, the median of WINDOWS windows of CALLS_PER_WINDOW
    calls of each kind."""
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(WINDOWS), str(CALLS_PER_WINDOW)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    print(proc.stdout)  # every window's figure, shown by pytest when an assertion fails
    growth = {}
    for line in proc.stdout.splitlines():
        kind, *per_call = line.split()
        growth[kind] = statistics.median(float(value) for value in per_call)
    return growth
