/*!
 * \file standalone_capi.cu
 * \brief A C ABI over the CUDA deformable convolution, without MXNet: tests/gpu builds it into a
 *        shared library with nvcc and drives it through ctypes with PyTorch device buffers, so
 *        the kernels can be checked on a machine that has a GPU but no CUDA build of MXNet.
 *
 * A call is described like an operator call: the operator's attributes as strings (parsed and
 * validated by the same DeformConvParam), the data shape and the dtype. Inputs and gradients are
 * positional as in the operator: data, offset, [mask], weight, [bias]. The caller provides the
 * scratch block (size from dcnv2_standalone_plan) and the stream; nothing synchronises.
 * Functions return 0, or -1 with the message in dcnv2_standalone_last_error().
 */
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "../deformable_conv_param.h"
#include "deformable_conv_cuda.h"

extern "C" {

/*! \brief One convolution call. */
struct DcnStandaloneCall {
  int modulated;              //!< 1: DeformableConvolutionV2 (with mask), 0: ...V1
  int dtype;                  //!< MXNet's codes: 0 float32, 1 float64, 2 float16
  int num_attrs;              //!< operator attributes, e.g. "kernel" -> "(3, 3)"
  const char* const* keys;
  const char* const* values;
  int64_t data_shape[4];      //!< N, C, H, W
  int deterministic;          //!< data gradient: 1 in a fixed order, 0 with atomics
  uint64_t budget_bytes;      //!< scratch budget; 0: the 'workspace' attribute
};

}  // extern "C"

namespace {

using dcnv2_mx::DataGradMode;

thread_local std::string last_error;

/*! \brief A call's parameters, checked as the operator checks them. */
struct Resolved {
  dcnv2_mx::DeformConvParam param;
  dcnv2_mx::DeformConvGeometry geometry;
  DataGradMode mode;
  size_t budget_bytes;
};

Resolved resolve(const DcnStandaloneCall& call) {
  dcnv2_mx::AttrMap attrs;
  for (int i = 0; i < call.num_attrs; ++i) attrs[call.keys[i]] = call.values[i];
  const bool modulated = call.modulated != 0;
  Resolved r;
  r.param = dcnv2_mx::DeformConvParam::parse(
      modulated ? "DeformableConvolutionV2" : "DeformableConvolutionV1", modulated, attrs);
  const std::vector<int64_t> shape(call.data_shape, call.data_shape + 4);
  std::vector<std::vector<unsigned>> shapes(r.param.num_inputs());
  shapes[0].assign(shape.begin(), shape.end());
  r.param.infer_shapes(&shapes);  // validates the data shape against the parameters
  r.geometry = r.param.geometry(shape);
  r.mode = call.deterministic ? DataGradMode::kDeterministic : DataGradMode::kAtomic;
  r.budget_bytes = call.budget_bytes ? call.budget_bytes : r.param.workspace_bytes();
  return r;
}

/*! \brief Calls body(T{}) with the C++ type of the call's dtype. */
template <typename Body>
void dispatch(int dtype, Body&& body) {
  switch (dtype) {
    case 0: return body(float{});
    case 1: return body(double{});
    case 2: return body(__half{});
    default: throw std::invalid_argument("dtype code " + std::to_string(dtype) + " unsupported");
  }
}

template <typename Body>
int guarded(Body&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  }
  return -1;
}

/*! \brief Entry `index` of a positional pointer array (null for an absent input, index < 0). */
template <typename T, typename Void>
T* positional(Void* const* pointers, int index) {
  return index < 0 ? nullptr : static_cast<T*>(pointers[index]);
}

template <typename T>
dcnv2_mx::DeformConvForwardArgs<T> forward_args(const dcnv2_mx::DeformConvParam& p,
                                                const void* const* inputs) {
  dcnv2_mx::DeformConvForwardArgs<T> a;
  a.data = positional<const T>(inputs, 0);
  a.offset = positional<const T>(inputs, 1);
  a.mask = positional<const T>(inputs, p.mask_index());
  a.weight = positional<const T>(inputs, p.weight_index());
  a.bias = positional<const T>(inputs, p.bias_index());
  a.out = nullptr;
  return a;
}

}  // namespace

extern "C" {

/*! \brief The tiling of a call: pixels per tile, images per tile and scratch bytes. */
int dcnv2_standalone_plan(const DcnStandaloneCall* call, int backward, int64_t* tile,
                          int64_t* images, uint64_t* scratch_bytes) {
  return guarded([&] {
    const Resolved r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      const dcnv2_mx::TilePlan plan = dcnv2_mx::plan_deform_conv_gpu<decltype(tag)>(
          r.geometry, backward != 0, r.mode, r.budget_bytes);
      *tile = plan.tile;
      *images = plan.images;
      *scratch_bytes = plan.scratch_bytes;
    });
  });
}

/*! \brief out = the convolution of `inputs`, on `stream` (a cudaStream_t). */
int dcnv2_standalone_forward(const DcnStandaloneCall* call, const void* const* inputs, void* out,
                             void* scratch, uint64_t scratch_bytes, void* stream) {
  return guarded([&] {
    const Resolved r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      using T = decltype(tag);
      const dcnv2_mx::TilePlan plan =
          dcnv2_mx::plan_deform_conv_gpu<T>(r.geometry, false, r.mode, r.budget_bytes);
      dcnv2_mx::DeformConvForwardArgs<T> a = forward_args<T>(r.param, inputs);
      a.out = static_cast<T*>(out);
      dcnv2_mx::deform_conv_forward_gpu<T>(r.geometry, a, plan, {scratch, scratch_bytes},
                                           static_cast<cudaStream_t>(stream));
    });
  });
}

/*! \brief Gradients of the inputs (null entries of `grads` are skipped), on `stream`. */
int dcnv2_standalone_backward(const DcnStandaloneCall* call, const void* out_grad,
                              const void* const* inputs, void* const* grads, void* scratch,
                              uint64_t scratch_bytes, void* stream) {
  return guarded([&] {
    const Resolved r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      using T = decltype(tag);
      const dcnv2_mx::DeformConvParam& p = r.param;
      const dcnv2_mx::TilePlan plan =
          dcnv2_mx::plan_deform_conv_gpu<T>(r.geometry, true, r.mode, r.budget_bytes);
      dcnv2_mx::DeformConvBackwardArgs<T> a;
      a.out_grad = static_cast<const T*>(out_grad);
      a.in = forward_args<T>(r.param, inputs);
      a.data_grad = positional<T>(grads, 0);
      a.offset_grad = positional<T>(grads, 1);
      a.mask_grad = positional<T>(grads, p.mask_index());
      a.weight_grad = positional<T>(grads, p.weight_index());
      a.bias_grad = positional<T>(grads, p.bias_index());
      dcnv2_mx::deform_conv_backward_gpu<T>(r.geometry, a, r.mode, plan,
                                            {scratch, scratch_bytes},
                                            static_cast<cudaStream_t>(stream));
    });
  });
}

/*! \brief The message of the calling thread's last failure. */
const char* dcnv2_standalone_last_error(void) { return last_error.c_str(); }

}  // extern "C"
