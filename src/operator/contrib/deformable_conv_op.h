/*!
 * \file deformable_conv_op.h
 * \brief The spec of DeformableConvolutionV2 (DCNv2: offset and mask) and ...V1 (offset only)
 *        for run() (common/op_adapter.h): parameters, geometry, the kernels' arguments from the
 *        positional tensors, and per device the planner and the kernel entry points. MXNet-free:
 *        the registration (deformable_conv_op.cc) and the test harnesses use it alike.
 *
 * Inputs are positional: data, offset, [mask], weight, [bias]; one output.
 */
#ifndef DCNV2_MX_DEFORMABLE_CONV_OP_H_
#define DCNV2_MX_DEFORMABLE_CONV_OP_H_

#include "common/op_adapter.h"
#include "deformable_conv_kernel.h"
#include "deformable_conv_param.h"
#if DCNV2_MX_WITH_CUDA
#include "cuda/deformable_conv_cuda.h"
#endif

namespace dcnv2_mx {

template <bool kModulated>
struct DeformConvOp {
  using Param = DeformConvParam;
  using Geometry = DeformConvGeometry;
  static constexpr const char* kName =
      kModulated ? "DeformableConvolutionV2" : "DeformableConvolutionV1";

  static Param parse(const AttrMap& attrs) { return Param::parse(kName, kModulated, attrs); }
  static size_t budget_bytes(const Param& p) { return p.workspace_bytes(); }
  static Geometry geometry(const Param& p, const OpCall& call) {
    return p.geometry(call.inputs.at(0).shape);
  }
  /*! \brief A batch of no images (numpy shape semantics). */
  static bool empty(const Geometry& g) { return g.batch == 0; }

  /*! \brief The forward inputs (and, forward, the output) of `call` as kernel arguments. */
  template <typename T>
  static DeformConvForwardArgs<T> forward_args(const Param& p, const OpCall& call) {
    const std::vector<TensorRef>& in = call.inputs;
    DeformConvForwardArgs<T> a;
    a.data = tensor_data<const T>(in, 0);
    a.offset = tensor_data<const T>(in, 1);
    a.mask = tensor_data<const T>(in, p.mask_index());
    a.weight = tensor_data<const T>(in, p.weight_index());
    a.bias = tensor_data<const T>(in, p.bias_index());
    a.out = call.backward ? nullptr : tensor_data<T>(call.outputs, 0);
    return a;
  }

  /*! \brief The output gradient, forward inputs and input gradients of a backward `call`. */
  template <typename T>
  static DeformConvBackwardArgs<T> backward_args(const Param& p, const OpCall& call) {
    const std::vector<TensorRef>& grads = call.outputs;
    DeformConvBackwardArgs<T> a;
    a.out_grad = static_cast<const T*>(call.out_grad.data);
    a.in = forward_args<T>(p, call);
    a.data_grad = tensor_data<T>(grads, 0);
    a.offset_grad = tensor_data<T>(grads, 1);
    a.mask_grad = tensor_data<T>(grads, p.mask_index());
    a.weight_grad = tensor_data<T>(grads, p.weight_index());
    a.bias_grad = tensor_data<T>(grads, p.bias_index());
    return a;
  }

  template <typename T>
  static CpuTilePlan plan(Cpu, const Geometry& g, const OpCall& call, const CallHost&,
                          size_t budget_bytes, size_t reserved_bytes) {
    return plan_deform_conv_cpu<T>(g, call.backward, budget_bytes, reserved_bytes);
  }
  template <typename T>
  static void forward(Cpu, const Geometry& g, const DeformConvForwardArgs<T>& a,
                      const CpuTilePlan& plan, Scratch scratch, const CallHost&) {
    deform_conv_forward_cpu<T>(g, a, plan, scratch);
  }
  template <typename T>
  static void backward(Cpu, const Geometry& g, const DeformConvBackwardArgs<T>& a,
                       const CpuTilePlan& plan, Scratch scratch, const CallHost&) {
    deform_conv_backward_cpu<T>(g, a, plan, scratch);
  }

#if DCNV2_MX_WITH_CUDA
  template <typename T>
  static GpuTilePlan plan(Gpu, const Geometry& g, const OpCall& call, const CallHost& host,
                          size_t budget_bytes, size_t) {
    return plan_deform_conv_gpu<T>(g, call.backward, data_grad_mode(host), budget_bytes);
  }
  template <typename T>
  static void forward(Gpu, const Geometry& g, const DeformConvForwardArgs<T>& a,
                      const GpuTilePlan& plan, Scratch scratch, const CallHost& host) {
    deform_conv_forward_gpu<T>(g, a, plan, scratch, static_cast<cudaStream_t>(host.stream));
  }
  template <typename T>
  static void backward(Gpu, const Geometry& g, const DeformConvBackwardArgs<T>& a,
                       const GpuTilePlan& plan, Scratch scratch, const CallHost& host) {
    deform_conv_backward_gpu<T>(g, a, data_grad_mode(host), plan, scratch,
                                static_cast<cudaStream_t>(host.stream));
  }
#endif
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_DEFORMABLE_CONV_OP_H_
