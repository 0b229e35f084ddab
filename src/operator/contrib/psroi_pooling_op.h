/*!
 * \file psroi_pooling_op.h
 * \brief The spec of ModulatedDeformablePSROIPooling for run() (common/op_adapter.h):
 *        parameters, geometry, the kernels' arguments from the positional tensors, and per
 *        device the scratch and the kernel entry points. MXNet-free: the registration
 *        (psroi_pooling_op.cc) and the test harnesses use it alike.
 *
 * Inputs are positional: data, rois, [trans] (absent when no_trans), [mask] (absent when
 * no_mask); one output. Backward recomputes the per-bin sample counts instead of keeping them
 * in a second output.
 */
#ifndef DCNV2_MX_PSROI_POOLING_OP_H_
#define DCNV2_MX_PSROI_POOLING_OP_H_

#include "common/op_adapter.h"
#include "psroi_pooling_kernel.h"
#include "psroi_pooling_param.h"
#if DCNV2_MX_WITH_CUDA
#include "cuda/psroi_pooling_cuda.h"
#endif

namespace dcnv2_mx {

struct PSROIPoolOp {
  using Param = PSROIPoolParam;
  using Geometry = PSROIPoolGeometry;
  static constexpr const char* kName = PSROIPoolParam::kOpName;

  /*! \brief The scratch a CPU call needs: none. (A GPU call's plan is a PsroiGpuPlan.) */
  struct Plan {
    size_t scratch_bytes;
  };

  static Param parse(const AttrMap& attrs) { return Param::parse(attrs); }
  /*! \brief No `workspace` parameter: the most MXNet gives in one block. */
  static size_t budget_bytes(const Param&) { return scratch_budget(SIZE_MAX); }
  static Geometry geometry(const Param& p, const OpCall& call) {
    return p.geometry(call.input_shapes());
  }
  /*! \brief No RoIs (numpy shape semantics). */
  static bool empty(const Geometry& g) { return g.rois == 0; }

  /*! \brief The forward inputs (and, forward, the output) of `call` as kernel arguments. */
  template <typename T>
  static PSROIPoolForwardArgs<T> forward_args(const Param& p, const OpCall& call) {
    const std::vector<TensorRef>& in = call.inputs;
    PSROIPoolForwardArgs<T> a;
    a.data = tensor_data<const T>(in, 0);
    a.rois = tensor_data<const T>(in, 1);
    a.trans = tensor_data<const T>(in, p.trans_index());
    a.mask = tensor_data<const T>(in, p.mask_index());
    a.out = call.backward ? nullptr : tensor_data<T>(call.outputs, 0);
    return a;
  }

  /*! \brief The output gradient, forward inputs and input gradients of a backward `call`. */
  template <typename T>
  static PSROIPoolBackwardArgs<T> backward_args(const Param& p, const OpCall& call) {
    const std::vector<TensorRef>& grads = call.outputs;
    PSROIPoolBackwardArgs<T> a;
    a.out_grad = static_cast<const T*>(call.out_grad.data);
    a.in = forward_args<T>(p, call);
    a.data_grad = tensor_data<T>(grads, 0);
    a.rois_grad = tensor_data<T>(grads, 1);
    a.trans_grad = tensor_data<T>(grads, p.trans_index());
    a.mask_grad = tensor_data<T>(grads, p.mask_index());
    return a;
  }

  template <typename T>
  static Plan plan(Cpu, const Geometry&, const OpCall&, const CallHost&, size_t, size_t) {
    return Plan{0};
  }
  template <typename T>
  static void forward(Cpu, const Geometry& g, const PSROIPoolForwardArgs<T>& a, const Plan&,
                      Scratch, const CallHost&) {
    psroi_pool_forward_cpu<T>(g, a);
  }
  template <typename T>
  static void backward(Cpu, const Geometry& g, const PSROIPoolBackwardArgs<T>& a, const Plan&,
                       Scratch, const CallHost&) {
    psroi_pool_backward_cpu<T>(g, a);
  }

#if DCNV2_MX_WITH_CUDA
  template <typename T>
  static PsroiGpuPlan plan(Gpu, const Geometry& g, const OpCall& call, const CallHost& host,
                           size_t budget_bytes, size_t) {
    if (!call.backward) return PsroiGpuPlan{0, 0, 0};
    // Gradients in the order of the inputs: data, rois, [trans], [mask].
    bool part_grads = false;
    for (size_t i = 2; i < call.outputs.size(); ++i) part_grads |= call.outputs[i].data != nullptr;
    return plan_psroi_pool_backward_gpu<T>(g, call.outputs.at(0).data != nullptr, part_grads,
                                           data_grad_mode(host), budget_bytes);
  }
  template <typename T>
  static void forward(Gpu, const Geometry& g, const PSROIPoolForwardArgs<T>& a,
                      const PsroiGpuPlan&, Scratch, const CallHost& host) {
    psroi_pool_forward_gpu<T>(g, a, static_cast<cudaStream_t>(host.stream));
  }
  template <typename T>
  static void backward(Gpu, const Geometry& g, const PSROIPoolBackwardArgs<T>& a,
                       const PsroiGpuPlan& plan, Scratch scratch, const CallHost& host) {
    psroi_pool_backward_gpu<T>(g, a, data_grad_mode(host), plan, scratch,
                               static_cast<cudaStream_t>(host.stream));
  }
#endif
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_PSROI_POOLING_OP_H_
