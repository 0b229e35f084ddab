/*!
 * \file op_driver.cc
 * \brief Calls the operators as MXNet's lib_api.cc does (_opRegGet, _opCallFCompute), through
 *        their registration with the extension API, with host buffers: the "gpu" entry points
 *        run the CUDA code on the CUDA emulation, the "cpu" ones the OpenMP kernels. Built into
 *        the test library dcnv2_mx_cuda_emulation (CMake's DCNV2_MX_CUDA_EMULATION; used by
 *        tests/gpu/test_emulated_mxnet_ops.py), so that the GPU glue of the operators (device
 *        guard, dtype dispatch, scratch from alloc_gpu, the stream from the resource, the
 *        backward argument layout) runs without a GPU. The library's entry point, here, refuses
 *        to load into MXNet.
 *
 * As in MXNet's calls (lib_api.cc, _opCallFCompute), backward takes the output gradient, the
 * forward inputs and the forward output, and writes the gradient of every forward input.
 */
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "include/cuda_runtime_api.h"
#include "mxnet/lib_api.h"

using mxnet::ext::CustomOp;
using mxnet::ext::MXTensor;

extern "C" {

/*! \brief A dense tensor of a call: data, shape (ndim sizes) and MXNet's dtype code. */
struct DcnDriverTensor {
  void* data;
  const int64_t* shape;
  int ndim;
  int dtype;
};

}  // extern "C"

namespace {

thread_local std::string last_error;

/*! \brief One call at a time: the emulator's state is global. */
std::mutex calls;

/*!
 * \brief A call's temporary space as MXNet manages it: alloc_cpu and alloc_gpu both return the
 *        one buffer of the call's workspace resource, grown (and moved) when a request is
 *        larger. Every request refills it with 0xFF, so a kernel that reads scratch it did not
 *        write computes with NaN, and an operator that took two blocks would find the first
 *        overwritten, as it would be in MXNet.
 */
struct TempSpace {
  std::unique_ptr<char[]> buffer;
  size_t bytes = 0;

  /*! \brief xpu_malloc_t. */
  static void* allocate(void* space, int size) {
    auto* self = static_cast<TempSpace*>(space);
    if (size < 0) throw std::invalid_argument("temporary space of negative size requested");
    if (static_cast<size_t>(size) > self->bytes || !self->buffer) {
      self->buffer.reset(new char[size > 0 ? size : 1]);
      self->bytes = static_cast<size_t>(size);
    }
    std::memset(self->buffer.get(), 0xFF, self->bytes);
    return self->buffer.get();
  }
};

/*!
 * \brief Operator `name`'s function for `device` ("cpu" or "gpu"), forward or backward, found
 *        as MXNet finds it (lib_api.cc's _opRegGet: the op's context lists); null if none.
 */
mxnet::ext::fcomp_t find_function(const char* name, const char* device, bool backward) {
  auto* registry = mxnet::ext::Registry<CustomOp>::get();
  for (int i = 0; i < registry->size(); ++i) {
    CustomOp& op = registry->get(i);
    if (std::strcmp(op.name, name) != 0) continue;
    if (op.forward_ctx_cstr.empty() && op.backward_ctx_cstr.empty()) op.mapToVector();
    const std::vector<const char*>& devices =
        backward ? op.backward_ctx_cstr : op.forward_ctx_cstr;
    for (size_t d = 0; d < devices.size(); ++d)
      if (std::strcmp(devices[d], device) == 0)
        return backward ? op.backward_fp[d] : op.forward_fp[d];
  }
  return nullptr;
}

std::vector<MXTensor> tensors(const DcnDriverTensor* specs, int count, const char* device,
                              int dev_id) {
  std::vector<MXTensor> result(count);
  for (int i = 0; i < count; ++i)
    result[i].setTensor(specs[i].data, static_cast<mxnet::ext::MXDType>(specs[i].dtype),
                        specs[i].shape, specs[i].ndim, 0, mxnet::ext::MXContext(device, dev_id),
                        mxnet::ext::kDefaultStorage);
  return result;
}

/*! \brief The error messages the operator left, as MXNet would raise them (the operator's
 *         report_error replaces earlier ones). */
std::string error_messages() {
  auto* messages = mxnet::ext::MXerrorMsgs::get();
  std::string text;
  for (int i = 0; i < messages->size(); ++i) {
    std::unique_ptr<const std::string> message(messages->get(i));
    text += (text.empty() ? "" : "\n") + *message;
  }
  return text.empty() ? "the operator failed without a message" : text;
}

}  // namespace

/*! \brief mx.library.load's entry point: refuses, as the "gpu" functions of this library would
 *         treat device pointers as host memory. */
mxnet::ext::MXReturnValue initialize(int version) {
  MX_ERROR_MSG << "this dcnv2_mx library is a test build with emulated CUDA "
                  "(dcnv2_mx_cuda_emulation); load the library built without it into MXNet";
  return mxnet::ext::MX_FAIL;
}

extern "C" {

void dcnv2_emulation_expect_stream(void* stream);  // cuda_emulation.cc

/*!
 * \brief Forward (backward = 0) or backward of operator `op_name` on `device` ("cpu" or "gpu")
 *        number `dev_id`, with the attributes `keys` -> `values`, on `stream` (gpu). Returns 0,
 *        or -1 with the message in dcnv2_emulation_op_error().
 */
int dcnv2_emulation_call_op(const char* op_name, const char* device, int dev_id, int backward,
                            int num_attrs, const char* const* keys, const char* const* values,
                            const DcnDriverTensor* inputs, int num_inputs,
                            const DcnDriverTensor* outputs, int num_outputs, void* stream) {
  const std::lock_guard<std::mutex> lock(calls);
  try {
    const mxnet::ext::fcomp_t function = find_function(op_name, device, backward != 0);
    if (function == nullptr)
      throw std::invalid_argument(std::string("no ") + (backward ? "backward" : "forward") +
                                  " of " + op_name + " on " + device);
    std::unordered_map<std::string, std::string> attrs;
    for (int i = 0; i < num_attrs; ++i) attrs[keys[i]] = values[i];
    std::vector<MXTensor> in = tensors(inputs, num_inputs, device, dev_id);
    std::vector<MXTensor> out = tensors(outputs, num_outputs, device, dev_id);
    TempSpace space;
    const mxnet::ext::OpResource resource(TempSpace::allocate, &space, TempSpace::allocate,
                                          &space, stream, nullptr, nullptr, nullptr, nullptr);
    dcnv2_emulation_expect_stream(stream);  // the resource's stream, and no other
    const bool ok = function(attrs, &in, &out, resource) == mxnet::ext::MX_SUCCESS;
    dcnv2_emulation_expect_stream(nullptr);
    if (!ok) throw std::runtime_error(error_messages());
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  }
  return -1;
}

/*! \brief The messages of the calling thread's last failed call. */
const char* dcnv2_emulation_op_error(void) { return last_error.c_str(); }

}  // extern "C"
