/*!
 * \file deformable_conv_op.cc
 * \brief Registration of _contrib_DeformableConvolutionV2 (DCNv2: offset and mask) and
 *        _contrib_DeformableConvolutionV1 (offset only) with MXNet's extension API.
 *
 * Inputs are positional: data, offset, [mask], weight, [bias]. The Python package wraps them in
 * keyword functions with auto-created weights (mx.sym.contrib.DeformableConvolutionV2).
 */
#include "common/ext_util.h"
#include "deformable_conv_op.h"

namespace {

using dcnv2_mx::compute;
using dcnv2_mx::Cpu;
using dcnv2_mx::infer_shape;
using dcnv2_mx::infer_type;
using dcnv2_mx::parse_attrs;
#if DCNV2_MX_WITH_CUDA
using dcnv2_mx::Gpu;
#endif
using V2 = dcnv2_mx::DeformConvOp<true>;
using V1 = dcnv2_mx::DeformConvOp<false>;

}  // namespace

REGISTER_OP(_contrib_DeformableConvolutionV2)
    .setParseAttrs(parse_attrs<V2>)
    .setInferType(infer_type<V2>)
    .setInferShape(infer_shape<V2>)
#if DCNV2_MX_WITH_CUDA
    .setForward(compute<V2, Gpu, false>, "gpu")
    .setBackward(compute<V2, Gpu, true>, "gpu")
#endif
    .setForward(compute<V2, Cpu, false>, "cpu")
    .setBackward(compute<V2, Cpu, true>, "cpu");

REGISTER_OP(_contrib_DeformableConvolutionV1)
    .setParseAttrs(parse_attrs<V1>)
    .setInferType(infer_type<V1>)
    .setInferShape(infer_shape<V1>)
#if DCNV2_MX_WITH_CUDA
    .setForward(compute<V1, Gpu, false>, "gpu")
    .setBackward(compute<V1, Gpu, true>, "gpu")
#endif
    .setForward(compute<V1, Cpu, false>, "cpu")
    .setBackward(compute<V1, Cpu, true>, "cpu");
