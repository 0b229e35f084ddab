/*!
 * \file standalone_capi.cu
 * \brief A C ABI over the CUDA deformable convolution and PS-RoI pooling, without MXNet:
 *        tests/gpu builds it into a shared library with nvcc and drives it through ctypes with
 *        PyTorch device buffers, so the kernels can be checked on a machine that has a GPU but no
 *        CUDA build of MXNet.
 *
 * A call is described like an operator call: the operator's attributes as strings (parsed and
 * validated by the same DeformConvParam or PSROIPoolParam), the input sizes and the dtype.
 * Inputs and gradients are positional as in the operators: data, offset, [mask], weight, [bias]
 * for the convolution; data, rois, [trans], [mask] for the pooling. The caller provides the
 * scratch block (size from dcnv2_standalone_plan or dcnv2_standalone_psroi_scratch_bytes) and
 * the stream; nothing synchronises. Functions return 0, or -1 with the message in
 * dcnv2_standalone_last_error().
 */
#include <climits>
#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "../deformable_conv_param.h"
#include "../psroi_pooling_param.h"
#include "deformable_conv_cuda.h"
#include "psroi_pooling_cuda.h"

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

/*! \brief One (modulated) deformable PS-RoI pooling call. */
struct DcnPsroiStandaloneCall {
  int dtype;                  //!< MXNet's codes: 0 float32, 1 float64, 2 float16
  int num_attrs;              //!< operator attributes, e.g. "pooled_size" -> "7"
  const char* const* keys;
  const char* const* values;
  int64_t data_shape[4];      //!< N, output_dim * group_size^2, H, W
  int64_t num_rois;           //!< R: rois (R, 5)
  int64_t num_classes;        //!< trans (R, 2*K, part, part), mask (R, K, part, part); else 1
  int deterministic;          //!< data gradient: 1 in a fixed order, 0 with atomics
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

dcnv2_mx::AttrMap attr_map(int num_attrs, const char* const* keys, const char* const* values) {
  dcnv2_mx::AttrMap attrs;
  for (int i = 0; i < num_attrs; ++i) attrs[keys[i]] = values[i];
  return attrs;
}

DataGradMode data_grad_mode(int deterministic) {
  return deterministic ? DataGradMode::kDeterministic : DataGradMode::kAtomic;
}

/*!
 * \brief An input shape as the operators' shape inference takes it. Its unsigned dimensions
 *        reserve 0 and UINT_MAX for "unknown", so a call's sizes must lie between.
 */
std::vector<unsigned> known_shape(const std::vector<int64_t>& shape, const char* input) {
  std::vector<unsigned> dims;
  for (const int64_t d : shape) {
    if (d < 1 || d >= static_cast<int64_t>(UINT_MAX))
      throw std::invalid_argument("input '" + std::string(input) + "' dimension " +
                                  std::to_string(d) + " is outside [1, 2^32 - 1)");
    dims.push_back(static_cast<unsigned>(d));
  }
  return dims;
}

Resolved resolve(const DcnStandaloneCall& call) {
  const bool modulated = call.modulated != 0;
  Resolved r;
  r.param = dcnv2_mx::DeformConvParam::parse(
      modulated ? "DeformableConvolutionV2" : "DeformableConvolutionV1", modulated,
      attr_map(call.num_attrs, call.keys, call.values));
  const std::vector<int64_t> shape(call.data_shape, call.data_shape + 4);
  std::vector<std::vector<unsigned>> shapes(r.param.num_inputs());
  shapes[0] = known_shape(shape, "data");
  r.param.infer_shapes(&shapes);  // validates the data shape against the parameters
  r.geometry = r.param.geometry(shape);
  r.mode = data_grad_mode(call.deterministic);
  r.budget_bytes = call.budget_bytes ? call.budget_bytes : r.param.workspace_bytes();
  return r;
}

/*! \brief A pooling call's parameters, checked as the operator checks them. */
struct ResolvedPool {
  dcnv2_mx::PSROIPoolParam param;
  dcnv2_mx::PSROIPoolGeometry geometry;
  DataGradMode mode;
};

ResolvedPool resolve(const DcnPsroiStandaloneCall& call) {
  ResolvedPool r;
  r.param = dcnv2_mx::PSROIPoolParam::parse(attr_map(call.num_attrs, call.keys, call.values));
  const dcnv2_mx::PSROIPoolParam& p = r.param;
  // Without trans and mask no input has classes; any other count would go unchecked.
  if (p.no_trans && p.no_mask && call.num_classes != 1)
    throw std::invalid_argument("num_classes must be 1 without trans and mask, got " +
                                std::to_string(call.num_classes));
  // The inputs' shapes as the operator would see them; infer_shapes checks them against the
  // parameters (channels = output_dim * Gh * Gw, output_dim divisible by the classes).
  const int64_t rois = call.num_rois, classes = call.num_classes;
  const int64_t part_h = p.part_size[0], part_w = p.part_size[1];
  std::vector<std::vector<int64_t>> shapes = {
      std::vector<int64_t>(call.data_shape, call.data_shape + 4), {rois, 5}};
  if (!p.no_trans) shapes.push_back({rois, 2 * classes, part_h, part_w});
  if (!p.no_mask) shapes.push_back({rois, classes, part_h, part_w});
  const std::vector<std::string> names = p.input_names();  // in the order of `shapes`
  std::vector<std::vector<unsigned>> known;
  for (size_t i = 0; i < shapes.size(); ++i)
    known.push_back(known_shape(shapes[i], names[i].c_str()));
  p.infer_shapes(&known);
  r.geometry = p.geometry(shapes);
  r.mode = data_grad_mode(call.deterministic);
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

template <typename T>
dcnv2_mx::PSROIPoolForwardArgs<T> forward_args(const dcnv2_mx::PSROIPoolParam& p,
                                               const void* const* inputs) {
  dcnv2_mx::PSROIPoolForwardArgs<T> a;
  a.data = positional<const T>(inputs, 0);
  a.rois = positional<const T>(inputs, 1);
  a.trans = positional<const T>(inputs, p.trans_index());
  a.mask = positional<const T>(inputs, p.mask_index());
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

/*!
 * \brief Device scratch bytes of a PS-RoI pooling backward call that wants the data gradient
 *        (`data_grad` != 0) or not; the forward takes no scratch.
 */
int dcnv2_standalone_psroi_scratch_bytes(const DcnPsroiStandaloneCall* call, int data_grad,
                                         uint64_t* scratch_bytes) {
  return guarded([&] {
    const ResolvedPool r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      *scratch_bytes = dcnv2_mx::psroi_pool_backward_gpu_scratch_bytes<decltype(tag)>(
          r.geometry, data_grad != 0);
    });
  });
}

/*! \brief out (R, output_dim, P, P) = the pooling of `inputs`, on `stream` (a cudaStream_t). */
int dcnv2_standalone_psroi_forward(const DcnPsroiStandaloneCall* call, const void* const* inputs,
                                   void* out, void* stream) {
  return guarded([&] {
    const ResolvedPool r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      using T = decltype(tag);
      dcnv2_mx::PSROIPoolForwardArgs<T> a = forward_args<T>(r.param, inputs);
      a.out = static_cast<T*>(out);
      dcnv2_mx::psroi_pool_forward_gpu<T>(r.geometry, a, static_cast<cudaStream_t>(stream));
    });
  });
}

/*!
 * \brief Gradients of the pooling's inputs (null entries of `grads` are skipped; the rois
 *        gradient is zero), on `stream`. `scratch` holds at least
 *        dcnv2_standalone_psroi_scratch_bytes(call, grads[0] != null) bytes.
 */
int dcnv2_standalone_psroi_backward(const DcnPsroiStandaloneCall* call, const void* out_grad,
                                    const void* const* inputs, void* const* grads, void* scratch,
                                    uint64_t scratch_bytes, void* stream) {
  return guarded([&] {
    const ResolvedPool r = resolve(*call);
    dispatch(call->dtype, [&](auto tag) {
      using T = decltype(tag);
      const dcnv2_mx::PSROIPoolParam& p = r.param;
      dcnv2_mx::PSROIPoolBackwardArgs<T> a;
      a.out_grad = static_cast<const T*>(out_grad);
      a.in = forward_args<T>(p, inputs);
      a.data_grad = positional<T>(grads, 0);
      a.rois_grad = positional<T>(grads, 1);
      a.trans_grad = positional<T>(grads, p.trans_index());
      a.mask_grad = positional<T>(grads, p.mask_index());
      // The kernels trust the scratch size; a short block would be overrun on the device.
      const size_t needed =
          dcnv2_mx::psroi_pool_backward_gpu_scratch_bytes<T>(r.geometry, a.data_grad != nullptr);
      if (scratch_bytes < needed)
        throw std::invalid_argument("scratch of " + std::to_string(scratch_bytes) +
                                    " bytes, but the backward call needs " +
                                    std::to_string(needed));
      dcnv2_mx::psroi_pool_backward_gpu<T>(r.geometry, a, r.mode, scratch,
                                           static_cast<cudaStream_t>(stream));
    });
  });
}

/*! \brief The message of the calling thread's last failure. */
const char* dcnv2_standalone_last_error(void) { return last_error.c_str(); }

}  // extern "C"
