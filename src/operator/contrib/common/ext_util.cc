#include "ext_util.h"

#include <cctype>
#include <climits>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace dcnv2_mx {

namespace {

// MXNet 1.9 appends every extension error to one list that it never clears, so each error
// would also repeat every earlier one. The list is private; an explicit template instantiation
// may name private members ([temp.spec]/6), which reaches it without patching MXNet's header.
using MessageList = std::vector<std::stringstream*>;
using MessageListMember = MessageList mxnet::ext::MXerrorMsgs::*;
MessageListMember message_list();
template <MessageListMember kMember>
struct MessageListAccess {
  friend MessageListMember message_list() { return kMember; }
};
template struct MessageListAccess<&mxnet::ext::MXerrorMsgs::messages>;

}  // namespace

void report_error(const char* op_name, const std::string& message) {
  MessageList& earlier = mxnet::ext::MXerrorMsgs::get()->*message_list();
  for (std::stringstream* m : earlier) delete m;
  earlier.clear();
  // Messages of the parameter and shape checks already start with the operator name.
  if (message.rfind(op_name, 0) == 0)
    MX_ERROR_MSG << message;
  else
    MX_ERROR_MSG << op_name << ": " << message;
}

void infer_float_types(const char* op_name, const std::vector<std::string>& input_names,
                       std::vector<int>* in_types, std::vector<int>* out_types) {
  auto name = [&](size_t i) { return i < input_names.size() ? input_names[i] : std::to_string(i); };
  size_t ref = 0;
  while (ref < in_types->size() && (*in_types)[ref] < 0) ++ref;
  if (ref == in_types->size()) return;  // nothing known yet
  const int dtype = (*in_types)[ref];
  if (dtype != mxnet::ext::kFloat32 && dtype != mxnet::ext::kFloat64 &&
      dtype != mxnet::ext::kFloat16)
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

CpuScratch::CpuScratch(const mxnet::ext::OpResource& res, size_t bytes) {
  if (bytes <= static_cast<size_t>(INT_MAX)) {
    ptr_ = res.alloc_cpu(static_cast<int>(bytes));
  } else {
    own_.reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));  // a multiple of the alignment
    ptr_ = own_.get();
  }
  if (ptr_ == nullptr && bytes > 0)
    throw std::runtime_error("could not allocate " + std::to_string(bytes >> 20) +
                             " MiB of scratch memory: lower 'workspace' to work in smaller "
                             "tiles");
}

std::vector<TensorInfo> describe(const std::vector<mxnet::ext::MXTensor>& tensors) {
  std::vector<TensorInfo> infos;
  for (const mxnet::ext::MXTensor& t : tensors)
    infos.push_back({t.shape, dtype_name(t.dtype), t.ctx.dev_type, t.ctx.dev_id});
  return infos;
}

#if DCNV2_MX_WITH_CUDA
DataGradMode data_grad_mode() {
  const char* value = std::getenv("MXNET_ENFORCE_DETERMINISM");
  if (value == nullptr) return DataGradMode::kAtomic;
  std::string v(value);
  for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return v.empty() || v == "0" || v == "false" ? DataGradMode::kAtomic
                                               : DataGradMode::kDeterministic;
}
#endif

}  // namespace dcnv2_mx
