/*!
 * \file deformable_conv_op.cc
 * \brief Registration of _contrib_DeformableConvolutionV2 (DCNv2: offset and mask) and
 *        _contrib_DeformableConvolutionV1 (offset only) with MXNet's extension API.
 *
 * Inputs are positional: data, offset, [mask], weight, [bias]. The Python package wraps them in
 * keyword functions with auto-created weights (mx.sym.contrib.DeformableConvolutionV2).
 */
#include <stdexcept>
#include <string>
#include <vector>

#include "common/ext_util.h"
#include "deformable_conv_kernel.h"
#include "deformable_conv_param.h"
#if DCNV2_MX_WITH_CUDA
#include "cuda/deformable_conv_cuda.h"
#endif

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace dcnv2_mx {
namespace {

template <bool kModulated>
const char* op_name() {
  return kModulated ? "DeformableConvolutionV2" : "DeformableConvolutionV1";
}

template <bool kModulated>
DeformConvParam parse(const AttrMap& attrs) {
  return DeformConvParam::parse(op_name<kModulated>(), kModulated, attrs);
}

template <bool kModulated>
MXReturnValue parse_attrs(const AttrMap& attrs, int* num_in, int* num_out) {
  return guarded(op_name<kModulated>(), [&] {
    *num_in = parse<kModulated>(attrs).num_inputs();
    *num_out = 1;
  });
}

template <bool kModulated>
MXReturnValue infer_type(const AttrMap& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return guarded(op_name<kModulated>(), [&] {
    infer_float_types(op_name<kModulated>(), parse<kModulated>(attrs).input_names(), in_types,
                      out_types);
  });
}

template <bool kModulated>
MXReturnValue infer_shape(const AttrMap& attrs, std::vector<std::vector<unsigned>>* in_shapes,
                          std::vector<std::vector<unsigned>>* out_shapes) {
  return guarded(op_name<kModulated>(), [&] {
    (*out_shapes)[0] = parse<kModulated>(attrs).infer_shapes(in_shapes);
  });
}

/*! \brief Forward inputs as kernel arguments; `first` is where data sits in `tensors`. */
template <typename T>
DeformConvForwardArgs<T> forward_args(const DeformConvParam& p, std::vector<MXTensor>* tensors,
                                      int first) {
  DeformConvForwardArgs<T> a;
  a.data = tensor_ptr<T>(tensors, first);
  a.offset = tensor_ptr<T>(tensors, first + 1);
  a.mask = p.modulated ? tensor_ptr<T>(tensors, first + p.mask_index()) : nullptr;
  a.weight = tensor_ptr<T>(tensors, first + p.weight_index());
  a.bias = p.no_bias ? nullptr : tensor_ptr<T>(tensors, first + p.bias_index());
  a.out = nullptr;
  return a;
}

template <typename T>
void forward_cpu(const DeformConvParam& p, const DeformConvGeometry& g,
                 std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                 const OpResource& res) {
  const TilePlan plan = plan_deform_conv_cpu<T>(g, false, p.workspace_bytes());
  DeformConvForwardArgs<T> a = forward_args<T>(p, inputs, 0);
  a.out = outputs->at(0).data<T>();
  const CpuScratch block(res, plan.scratch_bytes);
  const Scratch scratch{block.ptr(), plan.scratch_bytes};
  deform_conv_forward_cpu<T>(g, a, plan, scratch);
}

/*! \brief Backward inputs (output gradient, forward inputs, ...) and gradients as arguments. */
template <typename T>
DeformConvBackwardArgs<T> backward_args(const DeformConvParam& p, std::vector<MXTensor>* inputs,
                                        std::vector<MXTensor>* outputs) {
  DeformConvBackwardArgs<T> a;
  a.out_grad = inputs->at(0).data<T>();
  a.in = forward_args<T>(p, inputs, 1);
  a.data_grad = tensor_ptr<T>(outputs, 0);
  a.offset_grad = tensor_ptr<T>(outputs, 1);
  a.mask_grad = p.modulated ? tensor_ptr<T>(outputs, p.mask_index()) : nullptr;
  a.weight_grad = tensor_ptr<T>(outputs, p.weight_index());
  a.bias_grad = p.no_bias ? nullptr : tensor_ptr<T>(outputs, p.bias_index());
  return a;
}

template <typename T>
void backward_cpu(const DeformConvParam& p, const DeformConvGeometry& g,
                  std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                  const OpResource& res) {
  const TilePlan plan = plan_deform_conv_cpu<T>(g, true, p.workspace_bytes());
  const CpuScratch block(res, plan.scratch_bytes);
  const Scratch scratch{block.ptr(), plan.scratch_bytes};
  deform_conv_backward_cpu<T>(g, backward_args<T>(p, inputs, outputs), plan, scratch);
}

template <bool kModulated>
MXReturnValue forward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(op_name<kModulated>(), [&] {
    const DeformConvParam p = parse<kModulated>(attrs);
    const DeformConvGeometry g =
        p.check_forward_tensors(describe(*inputs), describe(*outputs), "cpu");
    dispatch_cpu(inputs->at(0).dtype, [&](auto tag) {
      forward_cpu<decltype(tag)>(p, g, inputs, outputs, res);
    });
  });
}

template <bool kModulated>
MXReturnValue backward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(op_name<kModulated>(), [&] {
    const DeformConvParam p = parse<kModulated>(attrs);
    // Backward inputs: output gradient, the forward inputs, the forward output.
    const DeformConvGeometry g =
        p.check_backward_tensors(describe(*inputs), describe(*outputs), "cpu");
    dispatch_cpu(inputs->at(1).dtype, [&](auto tag) {
      backward_cpu<decltype(tag)>(p, g, inputs, outputs, res);
    });
  });
}

#if DCNV2_MX_WITH_CUDA
template <typename T>
void forward_gpu(const DeformConvParam& p, const DeformConvGeometry& g,
                 std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                 const OpResource& res) {
  const TilePlan plan =
      plan_deform_conv_gpu<T>(g, false, DataGradMode::kAtomic, p.workspace_bytes());
  DeformConvForwardArgs<T> a = forward_args<T>(p, inputs, 0);
  a.out = outputs->at(0).data<T>();
  const Scratch scratch{res.alloc_gpu(static_cast<int>(plan.scratch_bytes)), plan.scratch_bytes};
  deform_conv_forward_gpu<T>(g, a, plan, scratch, stream_of(res));
}

template <typename T>
void backward_gpu(const DeformConvParam& p, const DeformConvGeometry& g,
                  std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                  const OpResource& res) {
  const DataGradMode mode = data_grad_mode();
  const TilePlan plan = plan_deform_conv_gpu<T>(g, true, mode, p.workspace_bytes());
  const Scratch scratch{res.alloc_gpu(static_cast<int>(plan.scratch_bytes)), plan.scratch_bytes};
  deform_conv_backward_gpu<T>(g, backward_args<T>(p, inputs, outputs), mode, plan, scratch,
                              stream_of(res));
}

template <bool kModulated>
MXReturnValue forward_on_gpu(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(op_name<kModulated>(), [&] {
    const DeformConvParam p = parse<kModulated>(attrs);
    const DeformConvGeometry g =
        p.check_forward_tensors(describe(*inputs), describe(*outputs), "gpu");
    const cuda::DeviceGuard device(inputs->at(0).ctx.dev_id);  // gpu(1) runs on device 1
    dispatch_gpu(inputs->at(0).dtype, [&](auto tag) {
      forward_gpu<decltype(tag)>(p, g, inputs, outputs, res);
    });
  });
}

template <bool kModulated>
MXReturnValue backward_on_gpu(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(op_name<kModulated>(), [&] {
    const DeformConvParam p = parse<kModulated>(attrs);
    const DeformConvGeometry g =
        p.check_backward_tensors(describe(*inputs), describe(*outputs), "gpu");
    const cuda::DeviceGuard device(inputs->at(1).ctx.dev_id);
    dispatch_gpu(inputs->at(1).dtype, [&](auto tag) {
      backward_gpu<decltype(tag)>(p, g, inputs, outputs, res);
    });
  });
}
#endif  // DCNV2_MX_WITH_CUDA

}  // namespace
}  // namespace dcnv2_mx

using dcnv2_mx::backward;
using dcnv2_mx::forward;
using dcnv2_mx::infer_shape;
using dcnv2_mx::infer_type;
using dcnv2_mx::parse_attrs;
#if DCNV2_MX_WITH_CUDA
using dcnv2_mx::backward_on_gpu;
using dcnv2_mx::forward_on_gpu;
#endif

REGISTER_OP(_contrib_DeformableConvolutionV2)
    .setParseAttrs(parse_attrs<true>)
    .setInferType(infer_type<true>)
    .setInferShape(infer_shape<true>)
#if DCNV2_MX_WITH_CUDA
    .setForward(forward_on_gpu<true>, "gpu")
    .setBackward(backward_on_gpu<true>, "gpu")
#endif
    .setForward(forward<true>, "cpu")
    .setBackward(backward<true>, "cpu");

REGISTER_OP(_contrib_DeformableConvolutionV1)
    .setParseAttrs(parse_attrs<false>)
    .setInferType(infer_type<false>)
    .setInferShape(infer_shape<false>)
#if DCNV2_MX_WITH_CUDA
    .setForward(forward_on_gpu<false>, "gpu")
    .setBackward(backward_on_gpu<false>, "gpu")
#endif
    .setForward(forward<false>, "cpu")
    .setBackward(backward<false>, "cpu");
