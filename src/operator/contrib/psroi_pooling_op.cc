/*!
 * \file psroi_pooling_op.cc
 * \brief Registration of _contrib_ModulatedDeformablePSROIPooling with MXNet's extension API.
 *
 * Inputs are positional: data, rois, [trans] (absent when no_trans), [mask] (absent when
 * no_mask). One output; backward recomputes the per-bin sample counts instead of keeping them
 * in a second output. The Python package wraps the operator in a keyword function
 * (mx.sym.contrib.ModulatedDeformablePSROIPooling) that sets no_mask from the inputs given.
 */
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/ext_util.h"
#include "psroi_pooling_kernel.h"
#include "psroi_pooling_param.h"
#if DCNV2_MX_WITH_CUDA
#include "cuda/psroi_pooling_cuda.h"
#endif

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;

namespace dcnv2_mx {
namespace {

constexpr const char* kOpName = PSROIPoolParam::kOpName;

MXReturnValue parse_attrs(const AttrMap& attrs, int* num_in, int* num_out) {
  return guarded(kOpName, [&] {
    *num_in = PSROIPoolParam::parse(attrs).num_inputs();
    *num_out = 1;
  });
}

MXReturnValue infer_type(const AttrMap& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  return guarded(kOpName, [&] {
    infer_float_types(kOpName, PSROIPoolParam::parse(attrs).input_names(), in_types, out_types);
  });
}

MXReturnValue infer_shape(const AttrMap& attrs, std::vector<std::vector<unsigned>>* in_shapes,
                          std::vector<std::vector<unsigned>>* out_shapes) {
  return guarded(kOpName, [&] {
    (*out_shapes)[0] = PSROIPoolParam::parse(attrs).infer_shapes(in_shapes);
  });
}

/*! \brief Forward inputs as kernel arguments; `first` is where data sits in `tensors`. */
template <typename T>
PSROIPoolForwardArgs<T> forward_args(const PSROIPoolParam& p, std::vector<MXTensor>* tensors,
                                     int first) {
  PSROIPoolForwardArgs<T> a;
  a.data = tensor_ptr<T>(tensors, first);
  a.rois = tensor_ptr<T>(tensors, first + 1);
  a.trans = p.no_trans ? nullptr : tensor_ptr<T>(tensors, first + p.trans_index());
  a.mask = p.no_mask ? nullptr : tensor_ptr<T>(tensors, first + p.mask_index());
  a.out = nullptr;
  return a;
}

/*! \brief Backward outputs (one gradient per forward input) as kernel arguments. */
template <typename T>
PSROIPoolBackwardArgs<T> backward_args(const PSROIPoolParam& p, std::vector<MXTensor>* inputs,
                                       std::vector<MXTensor>* outputs) {
  // Backward inputs: output gradient, the forward inputs, the forward output.
  PSROIPoolBackwardArgs<T> a;
  a.out_grad = inputs->at(0).data<T>();
  a.in = forward_args<T>(p, inputs, 1);
  a.data_grad = tensor_ptr<T>(outputs, 0);
  a.rois_grad = tensor_ptr<T>(outputs, 1);
  a.trans_grad = p.no_trans ? nullptr : tensor_ptr<T>(outputs, p.trans_index());
  a.mask_grad = p.no_mask ? nullptr : tensor_ptr<T>(outputs, p.mask_index());
  return a;
}

MXReturnValue forward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(kOpName, [&] {
    const PSROIPoolParam p = PSROIPoolParam::parse(attrs);
    const PSROIPoolGeometry g =
        p.check_forward_tensors(describe(*inputs), describe(*outputs), "cpu");
    dispatch_cpu(inputs->at(0).dtype, [&](auto tag) {
      using T = decltype(tag);
      PSROIPoolForwardArgs<T> a = forward_args<T>(p, inputs, 0);
      a.out = outputs->at(0).data<T>();
      psroi_pool_forward_cpu<T>(g, a);
    });
  });
}

MXReturnValue backward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(kOpName, [&] {
    const PSROIPoolParam p = PSROIPoolParam::parse(attrs);
    const PSROIPoolGeometry g =
        p.check_backward_tensors(describe(*inputs), describe(*outputs), "cpu");
    dispatch_cpu(inputs->at(1).dtype, [&](auto tag) {
      psroi_pool_backward_cpu(g, backward_args<decltype(tag)>(p, inputs, outputs));
    });
  });
}

#if DCNV2_MX_WITH_CUDA
MXReturnValue forward_on_gpu(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(kOpName, [&] {
    const PSROIPoolParam p = PSROIPoolParam::parse(attrs);
    const PSROIPoolGeometry g =
        p.check_forward_tensors(describe(*inputs), describe(*outputs), "gpu");
    const cuda::DeviceGuard device(inputs->at(0).ctx.dev_id);  // gpu(1) runs on device 1
    dispatch_gpu(inputs->at(0).dtype, [&](auto tag) {
      using T = decltype(tag);
      PSROIPoolForwardArgs<T> a = forward_args<T>(p, inputs, 0);
      a.out = outputs->at(0).data<T>();
      psroi_pool_forward_gpu<T>(g, a, stream_of(res));
    });
  });
}

MXReturnValue backward_on_gpu(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  return guarded(kOpName, [&] {
    const PSROIPoolParam p = PSROIPoolParam::parse(attrs);
    const PSROIPoolGeometry g =
        p.check_backward_tensors(describe(*inputs), describe(*outputs), "gpu");
    const cuda::DeviceGuard device(inputs->at(1).ctx.dev_id);
    dispatch_gpu(inputs->at(1).dtype, [&](auto tag) {
      using T = decltype(tag);
      const PSROIPoolBackwardArgs<T> a = backward_args<T>(p, inputs, outputs);
      const size_t scratch_bytes =
          psroi_pool_backward_gpu_scratch_bytes<T>(g, a.data_grad != nullptr);
      // OpResource::alloc_gpu takes an int.
      if (scratch_bytes > static_cast<size_t>(INT_MAX))
        throw std::invalid_argument(
            "the float16 data gradient is accumulated in " + std::to_string(scratch_bytes) +
            " bytes of float32 scratch, more than MXNet's limit of one temporary allocation "
            "(2 GiB): use float32 'data' or a smaller batch");
      void* scratch =
          scratch_bytes ? res.alloc_gpu(static_cast<int>(scratch_bytes)) : nullptr;
      psroi_pool_backward_gpu<T>(g, a, data_grad_mode(), scratch, stream_of(res));
    });
  });
}
#endif  // DCNV2_MX_WITH_CUDA

}  // namespace
}  // namespace dcnv2_mx

REGISTER_OP(_contrib_ModulatedDeformablePSROIPooling)
    .setParseAttrs(dcnv2_mx::parse_attrs)
    .setInferType(dcnv2_mx::infer_type)
    .setInferShape(dcnv2_mx::infer_shape)
#if DCNV2_MX_WITH_CUDA
    .setForward(dcnv2_mx::forward_on_gpu, "gpu")
    .setBackward(dcnv2_mx::backward_on_gpu, "gpu")
#endif
    .setForward(dcnv2_mx::forward, "cpu")
    .setBackward(dcnv2_mx::backward, "cpu");
