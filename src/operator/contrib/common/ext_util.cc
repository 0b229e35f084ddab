#include "ext_util.h"

#include <cctype>
#include <climits>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace dcnv2_mx {

// dtype.h's codes are MXNet's.
static_assert(static_cast<int>(DType::kFloat32) == mxnet::ext::kFloat32 &&
                  static_cast<int>(DType::kFloat64) == mxnet::ext::kFloat64 &&
                  static_cast<int>(DType::kFloat16) == mxnet::ext::kFloat16 &&
                  static_cast<int>(DType::kUint8) == mxnet::ext::kUint8 &&
                  static_cast<int>(DType::kInt32) == mxnet::ext::kInt32 &&
                  static_cast<int>(DType::kInt8) == mxnet::ext::kInt8 &&
                  static_cast<int>(DType::kInt64) == mxnet::ext::kInt64,
              "dtype codes differ from MXNet's");

void infer_float_types(const char* op_name, const std::vector<std::string>& input_names,
                       std::vector<int>* in_types, std::vector<int>* out_types) {
  auto name = [&](size_t i) { return i < input_names.size() ? input_names[i] : std::to_string(i); };
  size_t ref = 0;
  while (ref < in_types->size() && (*in_types)[ref] < 0) ++ref;
  if (ref == in_types->size()) return;  // nothing known yet
  const int dtype = (*in_types)[ref];
  if (!is_float_dtype(dtype))
    throw std::invalid_argument(std::string("inputs must be float32, float64 or float16, got ") +
                                dtype_name(dtype));
  for (size_t i = 0; i < in_types->size(); ++i) {
    int& t = (*in_types)[i];
    if (t >= 0 && t != dtype)
      throw std::invalid_argument(
          "input '" + name(i) + "' is " + dtype_name(t) + " but input '" + name(ref) + "' is " +
          dtype_name(dtype) +
          ": all inputs must have the same dtype");
    t = dtype;
  }
  for (int& t : *out_types) t = dtype;
}

bool enforce_determinism() {
  const char* value = std::getenv("MXNET_ENFORCE_DETERMINISM");
  if (value == nullptr) return false;
  std::string v(value);
  for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return !(v.empty() || v == "0" || v == "false");
}

namespace {

TensorRef tensor_ref(const mxnet::ext::MXTensor& t) {
  return TensorRef{t.data_ptr, t.shape, static_cast<int>(t.dtype)};
}

}  // namespace

OpCall op_call(bool backward, const std::vector<mxnet::ext::MXTensor>& inputs,
               const std::vector<mxnet::ext::MXTensor>& outputs) {
  OpCall call;
  call.backward = backward;
  // Backward: one gradient per forward input, which follow the output gradient.
  const size_t first = backward ? 1 : 0;
  const size_t count = backward ? outputs.size() : inputs.size();
  for (size_t i = first; i < first + count; ++i) call.inputs.push_back(tensor_ref(inputs.at(i)));
  if (backward) call.out_grad = tensor_ref(inputs.at(0));
  for (const mxnet::ext::MXTensor& t : outputs) call.outputs.push_back(tensor_ref(t));
  return call;
}

std::vector<TensorInfo> describe(const std::vector<mxnet::ext::MXTensor>& tensors) {
  std::vector<TensorInfo> infos;
  for (const mxnet::ext::MXTensor& t : tensors) {
    // Only float dtypes reach a call: type inference refuses the others.
    size_t bytes = float_dtype_size(t.dtype);
    for (const int64_t d : t.shape) bytes *= static_cast<size_t>(d);
    infos.push_back({t.shape, dtype_name(t.dtype), t.ctx.dev_type, t.ctx.dev_id,
                     reinterpret_cast<uintptr_t>(t.data_ptr), bytes});
  }
  return infos;
}

CallHost call_host(const mxnet::ext::OpResource& res, const mxnet::ext::MXTensor& tensor,
                   bool gpu) {
  CallHost host;
  // The CPU block beyond MXNet's int: shared by the copies of host.alloc, so it lives as long
  // as the CallHost (the call).
  auto own = std::make_shared<std::unique_ptr<void, void (*)(void*)>>(nullptr, std::free);
  host.alloc = [&res, gpu, own](size_t bytes) {
    void* ptr = nullptr;
    if (bytes <= static_cast<size_t>(INT_MAX)) {
      ptr = gpu ? res.alloc_gpu(static_cast<int>(bytes)) : res.alloc_cpu(static_cast<int>(bytes));
    } else if (gpu) {
      throw std::invalid_argument(
          "the call needs " + std::to_string(bytes) + " bytes of temporary memory in one "
          "block, more than MXNet's limit of one temporary allocation (2 GiB)");
    } else {
      own->reset(std::aligned_alloc(kScratchAlignment, align_up(bytes)));  // size: a multiple
      ptr = own->get();
    }
    if (ptr == nullptr && bytes > 0)
      throw std::runtime_error("could not allocate " + std::to_string(bytes >> 20) +
                               " MiB of scratch memory: lower 'workspace' to work in smaller "
                               "tiles");
    return ptr;
  };
  if (gpu) {
    host.stream = res.get_cuda_stream();
    host.device = tensor.ctx.dev_id;  // gpu(1) runs on device 1
    host.deterministic = enforce_determinism();
  }
  return host;
}

}  // namespace dcnv2_mx
