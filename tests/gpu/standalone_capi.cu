/*!
 * \file standalone_capi.cu
 * \brief A test interface: a C ABI over the CUDA deformable convolution and PS-RoI pooling,
 *        without MXNet. standalone.py builds it into a shared library with nvcc (or against the
 *        CUDA emulation) and drives it through ctypes with PyTorch device buffers, so the kernels
 *        can be checked on a machine that has a GPU but no CUDA build of MXNet.
 *
 * A call is described like an operator call: the operator's attributes as strings (parsed and
 * validated by the same DeformConvParam or PSROIPoolParam), the input sizes and the dtype, and
 * it runs through the same operator specs and run() as the MXNet registration.
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

#include "deformable_conv_op.h"
#include "psroi_pooling_op.h"

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
  int64_t data_shape[4];      //!< N, output_dim * Gh * Gw, H, W
  int64_t num_rois;           //!< R: rois (R, 5)
  int64_t num_classes;        //!< trans (R, 2*K, part_h, part_w), mask (R, K, part_h, part_w); else 1
  int deterministic;          //!< data gradient: 1 in a fixed order, 0 with atomics
};

}  // extern "C"

namespace {

using dcnv2_mx::CallHost;
using dcnv2_mx::Gpu;
using dcnv2_mx::OpCall;
using dcnv2_mx::TensorRef;
using ConvV2 = dcnv2_mx::DeformConvOp<true>;
using ConvV1 = dcnv2_mx::DeformConvOp<false>;
using Pool = dcnv2_mx::PSROIPoolOp;

thread_local std::string last_error;

dcnv2_mx::AttrMap attr_map(int num_attrs, const char* const* keys, const char* const* values) {
  dcnv2_mx::AttrMap attrs;
  for (int i = 0; i < num_attrs; ++i) attrs[keys[i]] = values[i];
  return attrs;
}

/*!
 * \brief An input shape as the operators' shape inference takes it. Its unsigned dimensions
 *        reserve 0 and UINT_MAX for "unknown", so a call's sizes must lie between.
 */
std::vector<unsigned> known_shape(const std::vector<int64_t>& shape, const std::string& input) {
  std::vector<unsigned> dims;
  for (const int64_t d : shape) {
    if (d < 1 || d >= static_cast<int64_t>(UINT_MAX))
      throw std::invalid_argument("input '" + input + "' dimension " + std::to_string(d) +
                                  " is outside [1, 2^32 - 1)");
    dims.push_back(static_cast<unsigned>(d));
  }
  return dims;
}

/*!
 * \brief A call of an operator with parameters `p` whose input shapes, `given` (unknown ones
 *        left out at the end), are completed and checked by the operator's shape inference:
 *        tensors without memory yet, positional as the operator declares them.
 */
template <typename Param>
OpCall shaped_call(const Param& p, int dtype, bool backward,
                   const std::vector<std::vector<int64_t>>& given) {
  const std::vector<std::string> names = p.input_names();
  std::vector<std::vector<unsigned>> shapes(p.num_inputs());
  for (size_t i = 0; i < given.size(); ++i) shapes.at(i) = known_shape(given[i], names.at(i));
  const std::vector<unsigned> out_shape = p.infer_shapes(&shapes);
  auto tensor = [dtype](const std::vector<unsigned>& shape) {
    return TensorRef{nullptr, std::vector<int64_t>(shape.begin(), shape.end()), dtype};
  };
  OpCall call;
  call.backward = backward;
  for (const auto& shape : shapes) call.inputs.push_back(tensor(shape));
  if (backward) {
    call.out_grad = tensor(out_shape);
    call.outputs = call.inputs;  // a gradient per input
  } else {
    call.outputs.push_back(tensor(out_shape));
  }
  return call;
}

/*! \brief A convolution call, its parameters and shapes checked as the operator checks them. */
struct ConvCall {
  bool modulated;
  dcnv2_mx::DeformConvParam param;
  OpCall call;
  CallHost host;
};

ConvCall resolve(const DcnStandaloneCall& c, bool backward) {
  ConvCall r;
  r.modulated = c.modulated != 0;
  const dcnv2_mx::AttrMap attrs = attr_map(c.num_attrs, c.keys, c.values);
  r.param = r.modulated ? ConvV2::parse(attrs) : ConvV1::parse(attrs);
  r.call = shaped_call(r.param, c.dtype, backward,
                       {std::vector<int64_t>(c.data_shape, c.data_shape + 4)});
  r.host.deterministic = c.deterministic != 0;
  r.host.budget_bytes = c.budget_bytes;
  return r;
}

/*! \brief A pooling call, its parameters and shapes checked as the operator checks them. */
struct PoolCall {
  dcnv2_mx::PSROIPoolParam param;
  OpCall call;
  CallHost host;
};

PoolCall resolve(const DcnPsroiStandaloneCall& c, bool backward) {
  PoolCall r;
  r.param = Pool::parse(attr_map(c.num_attrs, c.keys, c.values));
  const dcnv2_mx::PSROIPoolParam& p = r.param;
  // Without trans and mask no input has classes; any other count would go unchecked.
  if (p.no_trans && p.no_mask && c.num_classes != 1)
    throw std::invalid_argument("num_classes must be 1 without trans and mask, got " +
                                std::to_string(c.num_classes));
  // The inputs' shapes as the operator would see them; infer_shapes checks them against the
  // parameters (channels = output_dim * Gh * Gw, output_dim divisible by the classes).
  const int64_t rois = c.num_rois, classes = c.num_classes;
  const int64_t part_h = p.part_size[0], part_w = p.part_size[1];
  std::vector<std::vector<int64_t>> shapes = {
      std::vector<int64_t>(c.data_shape, c.data_shape + 4), {rois, 5}};
  if (!p.no_trans) shapes.push_back({rois, 2 * classes, part_h, part_w});
  if (!p.no_mask) shapes.push_back({rois, classes, part_h, part_w});
  r.call = shaped_call(p, c.dtype, backward, shapes);
  r.host.deterministic = c.deterministic != 0;
  return r;
}

/*!
 * \brief Gives `call` the caller's device memory, positional: the forward inputs, the output
 *        gradient (backward) and the outputs (the output, or a gradient per input, null when
 *        not wanted).
 */
void attach(OpCall* call, const void* const* inputs, const void* out_grad,
            void* const* outputs) {
  for (size_t i = 0; i < call->inputs.size(); ++i)
    call->inputs[i].data = const_cast<void*>(inputs[i]);
  if (call->backward) call->out_grad.data = const_cast<void*>(out_grad);
  for (size_t i = 0; i < call->outputs.size(); ++i) call->outputs[i].data = outputs[i];
}

/*! \brief The caller's scratch block and stream as what the host of a call provides. */
void provide(CallHost* host, bool backward, void* scratch, uint64_t scratch_bytes,
             void* stream) {
  host->stream = stream;
  // The kernels trust the scratch size; a short block would be overrun on the device.
  host->alloc = [=](size_t needed) {
    if (scratch_bytes < needed)
      throw std::invalid_argument("scratch of " + std::to_string(scratch_bytes) +
                                  " bytes, but the " + (backward ? "backward" : "forward") +
                                  " call needs " + std::to_string(needed));
    return scratch;
  };
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

/*! \brief run() of the convolution of the call's kind (DCNv2 or DCNv1). */
void run_conv(const ConvCall& r) {
  if (r.modulated)
    dcnv2_mx::run<ConvV2, Gpu>(r.param, r.call, r.host);
  else
    dcnv2_mx::run<ConvV1, Gpu>(r.param, r.call, r.host);
}

}  // namespace

extern "C" {

/*! \brief The tiling of a call: pixels per tile, images per tile and scratch bytes. */
int dcnv2_standalone_plan(const DcnStandaloneCall* call, int backward, int64_t* tile,
                          int64_t* images, uint64_t* scratch_bytes) {
  return guarded([&] {
    const ConvCall r = resolve(*call, backward != 0);
    const size_t budget =
        r.host.budget_bytes ? r.host.budget_bytes : ConvV2::budget_bytes(r.param);
    dcnv2_mx::dispatch_dtype<Gpu>(call->dtype, [&](auto tag) {
      const dcnv2_mx::GpuTilePlan plan = ConvV2::plan<decltype(tag)>(
          Gpu{}, ConvV2::geometry(r.param, r.call), r.call, r.host, budget, 0);
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
    ConvCall r = resolve(*call, false);
    attach(&r.call, inputs, nullptr, &out);
    provide(&r.host, false, scratch, scratch_bytes, stream);
    run_conv(r);
  });
}

/*! \brief Gradients of the inputs (null entries of `grads` are skipped), on `stream`. */
int dcnv2_standalone_backward(const DcnStandaloneCall* call, const void* out_grad,
                              const void* const* inputs, void* const* grads, void* scratch,
                              uint64_t scratch_bytes, void* stream) {
  return guarded([&] {
    ConvCall r = resolve(*call, true);
    attach(&r.call, inputs, out_grad, grads);
    provide(&r.host, true, scratch, scratch_bytes, stream);
    run_conv(r);
  });
}

/*!
 * \brief Device scratch bytes of a PS-RoI pooling backward call that wants the data gradient
 *        (`data_grad` != 0) or not and the offset and mask gradients (`part_grads` != 0) or
 *        not; the forward takes no scratch.
 */
int dcnv2_standalone_psroi_scratch_bytes(const DcnPsroiStandaloneCall* call, int data_grad,
                                         int part_grads, uint64_t* scratch_bytes) {
  return guarded([&] {
    PoolCall r = resolve(*call, true);
    static char wanted;  // any address: the planner asks only whether a gradient is wanted
    r.call.outputs[0].data = data_grad ? &wanted : nullptr;
    for (size_t i = 2; i < r.call.outputs.size(); ++i)
      r.call.outputs[i].data = part_grads ? &wanted : nullptr;
    dcnv2_mx::dispatch_dtype<Gpu>(call->dtype, [&](auto tag) {
      *scratch_bytes = Pool::plan<decltype(tag)>(Gpu{}, Pool::geometry(r.param, r.call), r.call,
                                                 r.host, Pool::budget_bytes(r.param), 0)
                           .scratch_bytes;
    });
  });
}

/*! \brief out (R, output_dim, P, P) = the pooling of `inputs`, on `stream` (a cudaStream_t). */
int dcnv2_standalone_psroi_forward(const DcnPsroiStandaloneCall* call, const void* const* inputs,
                                   void* out, void* stream) {
  return guarded([&] {
    PoolCall r = resolve(*call, false);
    attach(&r.call, inputs, nullptr, &out);
    provide(&r.host, false, nullptr, 0, stream);
    dcnv2_mx::run<Pool, Gpu>(r.param, r.call, r.host);
  });
}

/*!
 * \brief Gradients of the pooling's inputs (null entries of `grads` are skipped; the rois
 *        gradient is zero), on `stream`. `scratch` holds at least
 *        dcnv2_standalone_psroi_scratch_bytes(call, grads[0] != null, any of grads[2:] !=
 *        null) bytes.
 */
int dcnv2_standalone_psroi_backward(const DcnPsroiStandaloneCall* call, const void* out_grad,
                                    const void* const* inputs, void* const* grads, void* scratch,
                                    uint64_t scratch_bytes, void* stream) {
  return guarded([&] {
    PoolCall r = resolve(*call, true);
    attach(&r.call, inputs, out_grad, grads);
    provide(&r.host, true, scratch, scratch_bytes, stream);
    dcnv2_mx::run<Pool, Gpu>(r.param, r.call, r.host);
  });
}

/*! \brief The message of the calling thread's last failure. */
const char* dcnv2_standalone_last_error(void) { return last_error.c_str(); }

}  // extern "C"
