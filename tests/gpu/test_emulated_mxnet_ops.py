"""The operators' GPU entry points, as registered with MXNet's extension API, run on the CPU: the
library built by CMake with DCNV2_MX_CUDA_EMULATION (the CUDA sources against the CUDA emulation
of cuda_emulation/, plus a driver, op_driver.cc, that calls a registered operator as MXNet's
lib_api.cc does). That covers what the standalone harness does not: the operators' GPU glue
(parameters, the dtype dispatch with float16, the device guard, scratch from the resource's
alloc_gpu, the resource's stream, the backward argument layout, MXNET_ENFORCE_DETERMINISM, dtype
errors), for both operators. Results are compared with the float64 references and with the CPU
entry points of the same library. Building takes about 20 s on two cores."""
import ctypes

import numpy as np
import pytest

import standalone
from cmake_build import build_library

CONV_OPS = {True: "_contrib_DeformableConvolutionV2", False: "_contrib_DeformableConvolutionV1"}
PSROI_OP = "_contrib_ModulatedDeformablePSROIPooling"

#: MXNet's dtype codes (mshadow's).
DTYPE_CODES = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2,
               np.dtype("int32"): 4}

#: The stream handle the driver passes (never dereferenced); the emulator refuses any other.
STREAM = 0x5000


class _Tensor(ctypes.Structure):
    """Mirror of DcnDriverTensor in op_driver.cc."""
    _fields_ = [("data", ctypes.c_void_p), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("ndim", ctypes.c_int), ("dtype", ctypes.c_int)]


class OpDriver:
    """Calls a registered operator's forward or backward on "cpu" or "gpu" with NumPy arrays."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        tensors = ctypes.POINTER(_Tensor)
        strings = ctypes.POINTER(ctypes.c_char_p)
        lib.dcnv2_emulation_call_op.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, strings,
            strings, tensors, ctypes.c_int, tensors, ctypes.c_int, ctypes.c_void_p]
        lib.dcnv2_emulation_op_error.restype = ctypes.c_char_p
        self.lib = lib

    @staticmethod
    def _tensors(arrays):
        specs = (_Tensor * len(arrays))()
        for spec, array in zip(specs, arrays):
            assert array.flags.c_contiguous
            spec.data = array.ctypes.data
            spec.shape = (ctypes.c_int64 * array.ndim)(*array.shape)
            spec.ndim = array.ndim
            spec.dtype = DTYPE_CODES[array.dtype]
        return specs

    def call(self, op, device, backward, params, inputs, outputs, dev_id=0, stream=STREAM):
        """Runs the operator; `outputs` (NumPy arrays) receive the results."""
        keys, values = standalone._attribute_strings(params)
        rc = self.lib.dcnv2_emulation_call_op(
            op.encode(), device.encode(), dev_id, int(backward), len(keys), keys, values,
            self._tensors(inputs), len(inputs), self._tensors(outputs), len(outputs), stream)
        if rc != 0:
            raise RuntimeError(self.lib.dcnv2_emulation_op_error().decode())

    def forward_backward(self, op, device, params, inputs, out_shape, out_grad, **kwargs):
        """(output, gradients of every input) of the operator on `device`; gradients start NaN,
        so that elements left unwritten show."""
        out = np.full(out_shape, np.nan, dtype=inputs[0].dtype)
        self.call(op, device, False, params, inputs, [out], **kwargs)
        grads = [np.full_like(a, np.nan) for a in inputs]
        self.call(op, device, True, params, [out_grad, *inputs, out], grads, **kwargs)
        return out, grads


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver of a library built with DCNV2_MX_CUDA_EMULATION (by $CXX or c++)."""
    try:
        standalone.require_emulation_compiler()
    except standalone.HarnessUnavailable as reason:
        pytest.skip(str(reason))
    # oneDNN's headers are a build requirement of the package, not in the test environment:
    # the CPU entry points of this build multiply with OpenBLAS (tested by test_gemm_fallback).
    return OpDriver(build_library(tmp_path_factory.mktemp("build-emulated-cuda"),
                                  "-DDCNV2_MX_CUDA_EMULATION=ON", "-DDCNV2_MX_ONEDNN=OFF"))


def conv_call(case, dtype):
    """(problem, op, params, inputs in positional order, output gradient) of a CASES problem."""
    problem = standalone.make_problem(case, dtype)
    spec = standalone.spec_of(problem)
    inputs = [np.ascontiguousarray(problem.arrays[k], dtype=dtype) for k in spec.inputs]
    out_grad = standalone.random_out_grad(spec.out_shape, dtype)
    return problem, CONV_OPS[spec.modulated], spec.params, inputs, out_grad


def psroi_call(case, dtype):
    problem = standalone.make_psroi_problem(case, dtype)
    spec = problem.spec
    inputs = [np.ascontiguousarray(problem.arrays[k], dtype=dtype) for k in spec.inputs]
    out_grad = standalone.random_out_grad(spec.out_shape, dtype)
    return problem, PSROI_OP, spec.params, inputs, out_grad


def assert_matches(names, out, grads, expected_out, expected_grads, dtype):
    """The output and the gradients (in input order, named `names`) close to the expected."""
    standalone.assert_results_close(out, dict(zip(names, grads)), expected_out, expected_grads,
                                    dtype)


@pytest.mark.parametrize("dtype", sorted(standalone.TOLERANCES))
@pytest.mark.parametrize("case", sorted(standalone.CASES))
def test_convolution_on_gpu_matches_the_reference_and_the_cpu(driver, case, dtype):
    problem, op, params, inputs, out_grad = conv_call(standalone.CASES[case], dtype)
    names = standalone.spec_of(problem).inputs
    out, grads = driver.forward_backward(op, "gpu", params, inputs, problem.out_shape, out_grad)
    assert_matches(names, out, grads, problem.reference(),
                   problem.reference_grads(out_grad.astype(np.float64)), dtype)
    if dtype != "float16":  # the CPU kernels take float32 and float64
        cpu_out, cpu_grads = driver.forward_backward(op, "cpu", params, inputs,
                                                     problem.out_shape, out_grad)
        assert_matches(names, out, grads, cpu_out, dict(zip(names, cpu_grads)), dtype)


@pytest.mark.parametrize("dtype", sorted(standalone.TOLERANCES))
@pytest.mark.parametrize("case", sorted(standalone.PSROI_CASES))
def test_psroi_pooling_on_gpu_matches_the_reference_and_the_cpu(driver, case, dtype):
    problem, op, params, inputs, out_grad = psroi_call(standalone.PSROI_CASES[case], dtype)
    names = problem.spec.inputs
    out, grads = driver.forward_backward(op, "gpu", params, inputs, problem.out_shape, out_grad)
    expected_out, expected_grads = problem.reference(out_grad.astype(np.float64))
    assert_matches(names, out, grads, expected_out, expected_grads, dtype)
    if dtype != "float16":
        cpu_out, cpu_grads = driver.forward_backward(op, "cpu", params, inputs,
                                                     problem.out_shape, out_grad)
        assert_matches(names, out, grads, cpu_out, dict(zip(names, cpu_grads)), dtype)


def clustered_calls():
    """(op, params, inputs, output shape, output gradient) of a float32 convolution whose samples
    all share four cells and of a PS-RoI pooling with many overlapping RoIs on one image: their
    data gradients collide."""
    conv = standalone.make_problem(standalone.DETERMINISM_CASE, "float32", offsets="clustered")
    conv_spec = standalone.spec_of(conv)
    psroi = standalone.make_psroi_problem(standalone.PSROI_DETERMINISM_CASE, "float32")
    calls = []
    for op, params, arrays, names, out_shape in [
            (CONV_OPS[True], conv_spec.params, conv.arrays, conv_spec.inputs, conv_spec.out_shape),
            (PSROI_OP, psroi.spec.params, psroi.arrays, psroi.spec.inputs, psroi.out_shape)]:
        inputs = [np.ascontiguousarray(arrays[k], dtype="float32") for k in names]
        calls.append((op, params, inputs, out_shape,
                      standalone.random_out_grad(out_shape, "float32", seed=5)))
    return calls


@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_enforce_determinism_selects_the_fixed_order_data_gradient(driver, monkeypatch, call):
    """MXNET_ENFORCE_DETERMINISM, read at every call, makes the data gradient bit-identical;
    without it the atomic one rounds differently as the emulated thread order changes."""
    op, params, inputs, out_shape, out_grad = call

    def data_grads():
        return [driver.forward_backward(op, "gpu", params, inputs, out_shape, out_grad)[1][0]
                for _ in range(3)]

    monkeypatch.delenv("MXNET_ENFORCE_DETERMINISM", raising=False)
    atomic = data_grads()
    assert any(not np.array_equal(atomic[0], other) for other in atomic[1:])
    monkeypatch.setenv("MXNET_ENFORCE_DETERMINISM", "1")
    deterministic = data_grads()
    assert all(np.array_equal(deterministic[0], other) for other in deterministic[1:])
    np.testing.assert_allclose(deterministic[0], atomic[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_the_tensors_device_is_made_current(driver, call, backward):
    """gpu(1) runs on device 1: the emulation has only device 0, so the guard's switch fails
    with CUDA's error, reported by the operator."""
    op, params, inputs, out_shape, out_grad = call
    out = np.empty(out_shape, dtype="float32")
    if backward:
        inputs, outputs = [out_grad, *inputs, out], [np.empty_like(a) for a in inputs]
    else:
        outputs = [out]
    with pytest.raises(RuntimeError, match=r"cudaSetDevice failed: cudaErrorInvalidDevice "
                                           r"\(device 1"):
        driver.call(op, "gpu", backward, params, inputs, outputs, dev_id=1)


@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_gpu_dtype_errors_name_the_dtypes(driver, call):
    op, params, inputs, out_shape, _ = call
    ints = [a.astype(np.int32) for a in inputs]
    out = np.empty(out_shape, dtype=np.int32)
    with pytest.raises(RuntimeError, match=r"dtype int32 is not supported on GPU \(use float32, "
                                           r"float64 or float16\)"):
        driver.call(op, "gpu", False, params, ints, [out])
