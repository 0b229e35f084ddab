"""The operators' GPU entry points, as registered with MXNet's extension API, run on the CPU: the
test library dcnv2_mx_cuda_emulation that CMake builds with DCNV2_MX_CUDA_EMULATION (the CUDA
sources against the CUDA emulation of cuda_emulation/, plus a driver, op_driver.cc, that calls a
registered operator as MXNet's lib_api.cc does). That covers what the standalone harness does not: the operators' GPU glue
(parameters, the dtype dispatch with float16, the device guard, scratch from the resource's
alloc_gpu, the resource's stream, the backward argument layout, MXNET_ENFORCE_DETERMINISM, dtype
errors), for both operators. Results are compared with the float64 references and with the CPU
entry points of the same library. Building takes about 20 s on two cores."""
import collections
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
                                  "-DDCNV2_MX_CUDA_EMULATION=ON", "-DDCNV2_MX_ONEDNN=OFF",
                                  target="dcnv2_mx_cuda_emulation"))


#: One operator call: operator name, attributes, input names and arrays (positional order),
#: output shape, output gradient, and reference() -> float64 (output, gradients by name).
OpCall = collections.namedtuple("OpCall", "op params names inputs out_shape out_grad reference")


def conv_call(problem, dtype, seed=99):
    """The OpCall of a convolution problem (standalone.ConvInputs) with inputs as `dtype`."""
    spec = standalone.spec_of(problem)
    out_grad = standalone.random_out_grad(spec.out_shape, dtype, seed)
    return OpCall(CONV_OPS[spec.modulated], spec.params, spec.inputs,
                  [np.ascontiguousarray(problem.arrays[k], dtype=dtype) for k in spec.inputs],
                  spec.out_shape, out_grad,
                  lambda: (problem.reference(),
                           problem.reference_grads(out_grad.astype(np.float64))))


def psroi_call(problem, dtype, seed=99):
    """The OpCall of a PS-RoI pooling problem (standalone.PSROIInputs)."""
    spec = problem.spec
    out_grad = standalone.random_out_grad(spec.out_shape, dtype, seed)
    return OpCall(PSROI_OP, spec.params, spec.inputs,
                  [np.ascontiguousarray(problem.arrays[k], dtype=dtype) for k in spec.inputs],
                  spec.out_shape, out_grad,
                  lambda: problem.reference(out_grad.astype(np.float64)))


#: Every problem of the standalone checks, by name: make(dtype) -> OpCall.
CALLS = {**{f"conv-{name}": (lambda dtype, c=case: conv_call(standalone.make_problem(c, dtype),
                                                               dtype))
            for name, case in standalone.CASES.items()},
         **{f"psroi-{name}": (lambda dtype, c=case: psroi_call(
             standalone.make_psroi_problem(c, dtype), dtype))
            for name, case in standalone.PSROI_CASES.items()}}


def forward_backward(driver, call, device):
    """(output, gradients by input name) of `call` on `device`."""
    out, grads = driver.forward_backward(call.op, device, call.params, call.inputs,
                                         call.out_shape, call.out_grad)
    return out, dict(zip(call.names, grads))


@pytest.mark.parametrize("dtype", sorted(standalone.TOLERANCES))
@pytest.mark.parametrize("name", sorted(CALLS))
def test_gpu_entry_points_match_the_reference_and_the_cpu(driver, name, dtype):
    call = CALLS[name](dtype)
    out, grads = forward_backward(driver, call, "gpu")
    standalone.assert_results_close(out, grads, *call.reference(), dtype)
    # float16 on the CPU: float32 copies and kernels, in the one temporary space of the call.
    standalone.assert_results_close(out, grads, *forward_backward(driver, call, "cpu"), dtype)


def clustered_calls():
    """float32 OpCalls of a convolution whose samples all share four cells and of a PS-RoI
    pooling with many overlapping RoIs on one image: their data gradients collide."""
    return [conv_call(standalone.make_problem(standalone.DETERMINISM_CASE, "float32",
                                              offsets="clustered"), "float32", seed=5),
            psroi_call(standalone.make_psroi_problem(standalone.PSROI_DETERMINISM_CASE,
                                                     "float32"), "float32", seed=5)]


@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_enforce_determinism_selects_the_fixed_order_data_gradient(driver, monkeypatch, call):
    """MXNET_ENFORCE_DETERMINISM, read at every call, makes the data gradient bit-identical;
    without it the atomic one rounds differently as the emulated thread order changes."""
    def data_grads():
        return [forward_backward(driver, call, "gpu")[1]["data"] for _ in range(3)]

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
    out = np.empty(call.out_shape, dtype="float32")
    if backward:
        inputs = [call.out_grad, *call.inputs, out]
        outputs = [np.empty_like(a) for a in call.inputs]
    else:
        inputs, outputs = call.inputs, [out]
    with pytest.raises(RuntimeError, match=r"cudaSetDevice failed: cudaErrorInvalidDevice "
                                           r"\(device 1"):
        driver.call(call.op, "gpu", backward, call.params, inputs, outputs, dev_id=1)


@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_gpu_dtype_errors_name_the_dtypes(driver, call):
    ints = [a.astype(np.int32) for a in call.inputs]
    out = np.empty(call.out_shape, dtype=np.int32)
    with pytest.raises(RuntimeError, match=r"dtype int32 is not supported on GPU \(use float32, "
                                           r"float64 or float16\)"):
        driver.call(call.op, "gpu", False, call.params, ints, [out])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_empty_inputs_on_the_gpu_entry_points(driver, dtype):
    """Under numpy shape semantics: an empty batch (convolution) and no RoIs (pooling) give an
    empty output; the backward zeroes the only non-empty gradients (weight and bias; data)."""
    conv_inputs = [np.ones(s, dtype) for s in ((0, 4, 5, 5), (0, 18, 5, 5), (0, 9, 5, 5),
                                               (3, 4, 3, 3), (3,))]
    out, grads = driver.forward_backward(
        CONV_OPS[True], "gpu", dict(kernel=(3, 3), pad=(1, 1), num_filter=3), conv_inputs,
        (0, 3, 5, 5), np.ones((0, 3, 5, 5), dtype))
    assert out.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(grads[3], 0)
    np.testing.assert_array_equal(grads[4], 0)
    psroi_inputs = [np.ones(s, dtype) for s in ((2, 8, 6, 7), (0, 5), (0, 2, 2, 3),
                                                (0, 1, 2, 3))]
    params = dict(spatial_scale=0.5, output_dim=2, group_size=2, pooled_size=(3, 4),
                  part_size=(2, 3), trans_std=0.1, no_trans=False, no_mask=False)
    out, grads = driver.forward_backward(PSROI_OP, "gpu", params, psroi_inputs, (0, 2, 3, 4),
                                         np.ones((0, 2, 3, 4), dtype))
    assert out.shape == (0, 2, 3, 4)
    np.testing.assert_array_equal(grads[0], 0)


def _backward_tensors(call, out_grad=None, grads=None):
    """(inputs, outputs) of a backward call of `call`, optionally with another head gradient or
    other gradient arrays."""
    out = np.zeros(call.out_shape, dtype=call.inputs[0].dtype)
    head = call.out_grad if out_grad is None else out_grad
    return [head, *call.inputs, out], grads or [np.empty_like(a) for a in call.inputs]


@pytest.mark.parametrize("device", ["gpu", "cpu"])
@pytest.mark.parametrize("call", clustered_calls(), ids=["convolution", "psroi"])
def test_every_tensor_of_a_call_is_checked_before_a_kernel_reads_it(driver, call, device):
    """The head gradient, the forward output and every gradient: shape, dtype and number, on
    both entry points (a head gradient of one element was read past its end)."""
    def refused(message, inputs, outputs, backward=True):
        with pytest.raises(RuntimeError, match=message):
            driver.call(call.op, device, backward, call.params, inputs, outputs)

    shape = str(tuple(call.out_shape)).replace("(", r"\(").replace(")", r"\)")
    refused(r"the output gradient \(head gradient\) has shape \(1,\) but the output is " + shape,
            *_backward_tensors(call, out_grad=np.ones(1, dtype="float32")))
    grads = [np.empty_like(a) for a in call.inputs]
    grads[1] = np.empty(grads[1].shape[:-1] + (1,), dtype="float32")
    refused(f"the gradient of input '{call.names[1]}' has shape",
            *_backward_tensors(call, grads=grads))
    grads = [np.empty_like(a) for a in call.inputs]
    grads[0] = grads[0].astype(np.float64)
    refused(f"the gradient of input '{call.names[0]}' is float64 but input 'data' is float32",
            *_backward_tensors(call, grads=grads))
    inputs, outputs = _backward_tensors(call)
    refused(f"the backward call has {len(inputs) - 1} inputs but the parameters imply {len(inputs)}",
            inputs[:-1], outputs)
    refused(f"the forward call has {len(call.inputs)} outputs but the parameters imply 1", call.inputs,
            [np.empty(call.out_shape, dtype="float32") for _ in call.inputs], backward=False)
    refused(r"the output has shape \(1,\)", call.inputs, [np.empty(1, dtype="float32")],
            backward=False)
