/*!
 * \file op_adapter.h
 * \brief One call of an operator on one device, whoever hosts it: MXNet's registration
 *        (ext_util.h) and the test harnesses under tests/gpu describe a call as positional
 *        tensors (OpCall) and what the host provides (CallHost), and run() takes it from there.
 *
 * An operator is described once by a spec (deformable_conv_op.h, psroi_pooling_op.h): its
 * name, parameters, geometry, how its kernels' Args structs are built from the positional
 * tensors, and per device a planner (the scratch a call needs) and the kernel entry points.
 * run() checks nothing itself: the parameters come parsed and the shapes checked by the host.
 */
#ifndef DCNV2_MX_COMMON_OP_ADAPTER_H_
#define DCNV2_MX_COMMON_OP_ADAPTER_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "../cpu/float16.h"
#include "dtype.h"
#include "host_device.h"
#include "scratch.h"

namespace dcnv2_mx {

/*! \brief One tensor of a call: its memory on the call's device, shape and dtype code. */
struct TensorRef {
  void* data = nullptr;  //!< null: an output that is not wanted (a gradient)
  std::vector<int64_t> shape;
  int dtype = -1;

  index_t size() const {
    index_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
};

/*!
 * \brief One forward or backward call, its tensors positional as the operator declares them.
 *        Backward reads `out_grad` and the forward `inputs` and writes one gradient per input.
 */
struct OpCall {
  bool backward = false;
  std::vector<TensorRef> inputs;   //!< the operator's inputs
  TensorRef out_grad;              //!< backward: the gradient of the output
  std::vector<TensorRef> outputs;  //!< forward: the output; backward: a gradient per input

  int dtype() const { return inputs.at(0).dtype; }
  std::vector<std::vector<int64_t>> input_shapes() const {
    std::vector<std::vector<int64_t>> shapes;
    for (const TensorRef& t : inputs) shapes.push_back(t.shape);
    return shapes;
  }
};

/*! \brief What the host of a call provides. */
struct CallHost {
  /*! \brief One block of scratch memory of the given size on the call's device (once a call). */
  std::function<void*(size_t)> alloc;
  void* stream = nullptr;      //!< GPU: the cudaStream_t to run on
  int device = -1;             //!< GPU: the device to make current; -1 leaves the current one
  bool deterministic = false;  //!< GPU: sum data gradients in a fixed order, not with atomics
  size_t budget_bytes = 0;     //!< scratch budget; 0: the operator's own (`workspace`)
};

/*! \brief The CPU as a device of run(): float16 is stored as Float16 and computed in float32. */
struct Cpu {
  using Half = Float16;
  static constexpr const char* kName = "CPU";
  static void zero(void* ptr, size_t bytes, const CallHost&) { std::memset(ptr, 0, bytes); }
  /*! \brief Nothing to make current. */
  struct Guard {
    explicit Guard(int) {}
  };
};

/*! \brief Element pointer of positional tensor `index` (null when index < 0 or not wanted). */
template <typename T>
T* tensor_data(const std::vector<TensorRef>& tensors, int index) {
  return index < 0 ? nullptr : static_cast<T*>(tensors.at(index).data);
}

namespace detail {

/*! \brief Plans, takes the scratch from the host and runs the kernels of `call` in type T. */
template <typename Op, typename Device, typename T>
void run_typed(const typename Op::Param& p, const typename Op::Geometry& g, const OpCall& call,
               const CallHost& host, size_t budget_bytes) {
  const auto plan = Op::template plan<T>(Device{}, g, call, host, budget_bytes, 0);
  const Scratch scratch{plan.scratch_bytes ? host.alloc(plan.scratch_bytes) : nullptr,
                        plan.scratch_bytes};
  if (call.backward)
    Op::backward(Device{}, g, Op::template backward_args<T>(p, call), plan, scratch, host);
  else
    Op::forward(Device{}, g, Op::template forward_args<T>(p, call), plan, scratch, host);
}

/*!
 * \brief A float16 call on the CPU: float32 copies of the tensors it reads and float32
 *        gradients or output, carved from one scratch block together with the kernels' own
 *        scratch (so they count toward the budget), the float32 kernels, and the results
 *        rounded back to float16.
 */
template <typename Op>
void run_float16_on_cpu(const typename Op::Param& p, const typename Op::Geometry& g,
                        const OpCall& call, const CallHost& host, size_t budget_bytes) {
  OpCall wide = call;
  auto carve = [&](ScratchCarver* carver) {
    auto take = [&](const TensorRef& from, TensorRef* to) {
      to->dtype = static_cast<int>(DType::kFloat32);
      to->data = from.data ? carver->take<float>(static_cast<size_t>(from.size())) : nullptr;
    };
    for (size_t i = 0; i < call.inputs.size(); ++i) take(call.inputs[i], &wide.inputs[i]);
    if (call.backward) take(call.out_grad, &wide.out_grad);
    for (size_t i = 0; i < call.outputs.size(); ++i) take(call.outputs[i], &wide.outputs[i]);
  };
  ScratchCarver measure(Scratch{nullptr, 0});
  carve(&measure);
  const auto plan =
      Op::template plan<float>(Cpu{}, g, wide, host, budget_bytes, measure.bytes_needed());
  measure.take<char>(plan.scratch_bytes);
  const size_t bytes = measure.bytes_needed();
  ScratchCarver carver(Scratch{host.alloc(bytes), bytes});
  carve(&carver);
  const Scratch scratch{carver.take<char>(plan.scratch_bytes), plan.scratch_bytes};

  auto widen = [](const TensorRef& from, const TensorRef& to) {
    if (from.data)
      cpu::to_float32(static_cast<const Float16*>(from.data), from.size(),
                      static_cast<float*>(to.data));
  };
  for (size_t i = 0; i < call.inputs.size(); ++i) widen(call.inputs[i], wide.inputs[i]);
  if (call.backward) widen(call.out_grad, wide.out_grad);
  if (call.backward)
    Op::backward(Cpu{}, g, Op::template backward_args<float>(p, wide), plan, scratch, host);
  else
    Op::forward(Cpu{}, g, Op::template forward_args<float>(p, wide), plan, scratch, host);
  for (size_t i = 0; i < call.outputs.size(); ++i)
    if (call.outputs[i].data)
      cpu::to_float16(static_cast<const float*>(wide.outputs[i].data), call.outputs[i].size(),
                      static_cast<Float16*>(call.outputs[i].data));
}

}  // namespace detail

/*!
 * \brief Runs operator `Op`'s forward or backward `call` on `Device` (Cpu, or Gpu from
 *        cuda/cuda_common.h) with parameters `p`: makes the device current, dispatches on the
 *        dtype, plans, takes one scratch block from the host, builds the kernels' arguments
 *        and runs them.
 */
template <typename Op, typename Device>
void run(const typename Op::Param& p, const OpCall& call, const CallHost& host) {
  const typename Op::Geometry g = Op::geometry(p, call);
  const size_t budget_bytes = host.budget_bytes ? host.budget_bytes : Op::budget_bytes(p);
  const typename Device::Guard guard(host.device);
  if (Op::empty(g)) {
    // Nothing to compute (numpy shape semantics: no images, no RoIs), as MXNet's own operators
    // do it: the output is empty, and each gradient that is not (weight, bias, PS-RoI data)
    // is zero.
    if (call.backward)
      for (const TensorRef& grad : call.outputs)
        if (grad.data && grad.size() > 0)
          Device::zero(grad.data, static_cast<size_t>(grad.size()) * float_dtype_size(grad.dtype),
                       host);
    return;
  }
  dispatch_dtype<Device>(call.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, Float16>::value)
      detail::run_float16_on_cpu<Op>(p, g, call, host, budget_bytes);
    else
      detail::run_typed<Op, Device, T>(p, g, call, host, budget_bytes);
  });
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_OP_ADAPTER_H_
