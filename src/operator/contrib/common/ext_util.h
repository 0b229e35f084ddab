/*!
 * \file ext_util.h
 * \brief Glue between MXNet's extension API (lib_api.h) and the MXNet-free operators: the
 *        functions an operator registers, for any operator spec (deformable_conv_op.h,
 *        psroi_pooling_op.h), which turn MXNet's tensors and resource into a run() call.
 *
 * Attributes are parsed once per callback. The API hands every callback (parse_attrs,
 * infer_type, infer_shape, forward, backward) only the attribute map, so the parsed parameters
 * cannot travel from one to the next. MXNet calls them often: an imperative forward and
 * backward under autograd calls parse_attrs about 50 times (its gradient pass asks for the
 * number of inputs again and again), so reading attributes and checking a call take no string
 * streams (attrs.cc) and their messages are built only when a check fails. Caching the
 * parameters keyed by the map would cost about what reading them now costs (comparing the
 * strings) and need a lock. A stateful operator (setCreateOpState) would parse once per state,
 * but MXNet creates the state anew for every imperative call, so it would change how both
 * operators register for no saving where most calls are made; the registration stays
 * stateless.
 */
#ifndef DCNV2_MX_COMMON_EXT_UTIL_H_
#define DCNV2_MX_COMMON_EXT_UTIL_H_

#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "attrs.h"
#include "mxnet/lib_api.h"
#include "op_adapter.h"
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

/*!
 * \brief Type inference shared by the operators: every input takes the type of the first known
 *        one, which must be a floating type; all outputs take it as well.
 */
void infer_float_types(const char* op_name, const std::vector<std::string>& input_names,
                       std::vector<int>* in_types, std::vector<int>* out_types);

/*!
 * \brief MXNet's switch for reproducible kernels, MXNET_ENFORCE_DETERMINISM: set to anything
 *        but 0 or false. Read at every call.
 */
bool enforce_determinism();

/*!
 * \brief A compute call of MXNet as an OpCall. MXNet's backward inputs are the output gradient,
 *        the forward inputs and the forward output; its outputs one gradient per input.
 */
OpCall op_call(bool backward, const std::vector<mxnet::ext::MXTensor>& inputs,
               const std::vector<mxnet::ext::MXTensor>& outputs);

/*! \brief What the parameter checks need to know of each tensor of a call. */
std::vector<TensorInfo> describe(const std::vector<mxnet::ext::MXTensor>& tensors);

/*!
 * \brief Checks every tensor MXNet hands a compute call of parameters `p` on the CPU (or, `gpu`,
 *        the GPU) before run() reads any: their number, and the shape, dtype and device of each,
 *        the head gradient included, and that what the call writes shares no memory with the
 *        rest (Param::check_tensors).
 */
template <typename Param>
void check_call(const Param& p, bool backward, const std::vector<mxnet::ext::MXTensor>& inputs,
                const std::vector<mxnet::ext::MXTensor>& outputs, bool gpu) {
  p.check_tensors(backward, describe(inputs), describe(outputs), gpu ? "gpu" : "cpu");
}

/*!
 * \brief What MXNet's resource gives a call on the CPU (or, `gpu`, the GPU) with `tensor`.
 *
 *        The scratch block: MXNet's temporary space when it fits OpResource's int-sized
 *        requests. Every request of a call returns that same space (MXNet 1.9's kTempSpace
 *        resource, resized on demand), so a larger block cannot be assembled from several: on
 *        the CPU it is a 64-byte aligned heap block of the host's own, freed with the returned
 *        CallHost at the end of the call; the GPU refuses it. Either way its size is what the
 *        planner chose within `workspace`.
 */
CallHost call_host(const mxnet::ext::OpResource& res, const mxnet::ext::MXTensor& tensor,
                   bool gpu);

/*! \brief The registered parseAttrs of operator spec Op: its number of inputs, one output. */
template <typename Op>
mxnet::ext::MXReturnValue parse_attrs(const AttrMap& attrs, int* num_in, int* num_out) {
  return guarded(Op::kName, [&] {
    *num_in = Op::parse(attrs).num_inputs();
    *num_out = 1;
  });
}

/*! \brief The registered inferType of operator spec Op. */
template <typename Op>
mxnet::ext::MXReturnValue infer_type(const AttrMap& attrs, std::vector<int>* in_types,
                                     std::vector<int>* out_types) {
  return guarded(Op::kName, [&] {
    infer_float_types(Op::kName, Op::parse(attrs).input_names(), in_types, out_types);
  });
}

/*! \brief The registered inferShape of operator spec Op. */
template <typename Op>
mxnet::ext::MXReturnValue infer_shape(const AttrMap& attrs,
                                      std::vector<std::vector<unsigned>>* in_shapes,
                                      std::vector<std::vector<unsigned>>* out_shapes) {
  return guarded(Op::kName, [&] { (*out_shapes)[0] = Op::parse(attrs).infer_shapes(in_shapes); });
}

/*! \brief The registered forward (kBackward false) or backward of Op on Device (Cpu or Gpu). */
template <typename Op, typename Device, bool kBackward>
mxnet::ext::MXReturnValue compute(const AttrMap& attrs,
                                  std::vector<mxnet::ext::MXTensor>* inputs,
                                  std::vector<mxnet::ext::MXTensor>* outputs,
                                  const mxnet::ext::OpResource& res) {
  return guarded(Op::kName, [&] {
    constexpr bool kGpu = !std::is_same<Device, Cpu>::value;
    const typename Op::Param p = Op::parse(attrs);
    check_call(p, kBackward, *inputs, *outputs, kGpu);
    const OpCall call = op_call(kBackward, *inputs, *outputs);
    run<Op, Device>(p, call, call_host(res, inputs->at(0), kGpu));
  });
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_EXT_UTIL_H_
