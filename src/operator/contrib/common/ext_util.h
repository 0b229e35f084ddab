/*!
 * \file ext_util.h
 * \brief Glue between MXNet's extension API (lib_api.h) and the MXNet-free operator code.
 */
#ifndef DCNV2_MX_COMMON_EXT_UTIL_H_
#define DCNV2_MX_COMMON_EXT_UTIL_H_

#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"
#include "shapes.h"
#if DCNV2_MX_WITH_CUDA
#include "../cuda/cuda_common.h"
#endif

namespace dcnv2_mx {

/*! \brief Hands one error message, prefixed with the operator name, to MXNet. */
void report_error(const char* op_name, const std::string& message);

/*!
 * \brief Runs `body` and turns any exception into an MXNet error message: exceptions must not
 *        cross the C boundary into MXNet, and MX_ERROR_MSG reaches Python as an MXNetError.
 */
template <typename F>
mxnet::ext::MXReturnValue guarded(const char* op_name, F&& body) {
  try {
    body();
    return mxnet::ext::MX_SUCCESS;
  } catch (const std::exception& e) {
    report_error(op_name, e.what());
  } catch (...) {
    report_error(op_name, "unknown error");
  }
  return mxnet::ext::MX_FAIL;
}

/*! \brief Name of an MXNet dtype code, for messages. */
inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "unknown";
  }
}

/*! \brief Calls body(T{}) with T the C++ type of a CPU dtype; float16 is a GPU type here. */
template <typename Body>
void dispatch_cpu(int dtype, Body&& body) {
  switch (dtype) {
    case mxnet::ext::kFloat32: return body(float{});
    case mxnet::ext::kFloat64: return body(double{});
    default:
      throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) +
                                  " is not supported on CPU (use float32 or float64)");
  }
}

#if DCNV2_MX_WITH_CUDA
/*!
 * \brief How the GPU backward passes sum gradients that many threads contribute to: in a fixed
 *        order when MXNet's switch for reproducible kernels, MXNET_ENFORCE_DETERMINISM, is set
 *        (to anything but 0 or false), with atomics otherwise. Read at every call.
 */
DataGradMode data_grad_mode();

/*! \brief The CUDA stream MXNet gives a GPU call. */
inline cudaStream_t stream_of(const mxnet::ext::OpResource& res) {
  return static_cast<cudaStream_t>(res.get_cuda_stream());
}

/*! \brief Calls body(T{}) with T the C++ type of a GPU dtype (float16 is CUDA's __half). */
template <typename Body>
void dispatch_gpu(int dtype, Body&& body) {
  switch (dtype) {
    case mxnet::ext::kFloat32: return body(float{});
    case mxnet::ext::kFloat64: return body(double{});
    case mxnet::ext::kFloat16: return body(__half{});
    default:
      throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) +
                                  " is not supported on GPU (use float32, float64 or float16)");
  }
}
#endif

/*!
 * \brief Type inference shared by the operators: every input takes the type of the first known
 *        one, which must be a floating type; all outputs take it as well.
 */
void infer_float_types(const char* op_name, const std::vector<std::string>& input_names,
                       std::vector<int>* in_types, std::vector<int>* out_types);

/*!
 * \brief The scratch block of a CPU call. Under 2 GiB it is MXNet's temporary space, which MXNet
 *        keeps between calls; OpResource::alloc_cpu takes an int, and every request of a call
 *        returns that same space (MXNet 1.9's kTempSpace resource, resized on demand), so a
 *        larger block cannot be assembled from several requests: it is a 64-byte aligned heap
 *        block of the operator's own, freed when this object goes out of scope at the end of
 *        the call. Either way its size is what the planner chose within `workspace`.
 */
class CpuScratch {
 public:
  CpuScratch(const mxnet::ext::OpResource& res, size_t bytes);
  void* ptr() const { return ptr_; }

 private:
  std::unique_ptr<void, void (*)(void*)> own_{nullptr, std::free};
  void* ptr_ = nullptr;
};

/*! \brief What the parameter checks need to know of each tensor of a call. */
std::vector<TensorInfo> describe(const std::vector<mxnet::ext::MXTensor>& tensors);

/*! \brief The element pointer of an optional tensor (null when `index` < 0). */
template <typename T>
T* tensor_ptr(std::vector<mxnet::ext::MXTensor>* tensors, int index) {
  return index < 0 ? nullptr : tensors->at(index).data<T>();
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_EXT_UTIL_H_
