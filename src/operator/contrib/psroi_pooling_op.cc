/*!
 * \file psroi_pooling_op.cc
 * \brief Registration of _contrib_ModulatedDeformablePSROIPooling with MXNet's extension API.
 *
 * Inputs are positional: data, rois, [trans] (absent when no_trans), [mask] (absent when
 * no_mask). The Python package wraps the operator in a keyword function
 * (mx.sym.contrib.ModulatedDeformablePSROIPooling) that sets no_mask from the inputs given.
 */
#include "common/ext_util.h"
#include "psroi_pooling_op.h"

namespace {

using dcnv2_mx::compute;
using dcnv2_mx::Cpu;
#if DCNV2_MX_WITH_CUDA
using dcnv2_mx::Gpu;
#endif
using Op = dcnv2_mx::PSROIPoolOp;

}  // namespace

REGISTER_OP(_contrib_ModulatedDeformablePSROIPooling)
    .setParseAttrs(dcnv2_mx::parse_attrs<Op>)
    .setInferType(dcnv2_mx::infer_type<Op>)
    .setInferShape(dcnv2_mx::infer_shape<Op>)
#if DCNV2_MX_WITH_CUDA
    .setForward(compute<Op, Gpu, false>, "gpu")
    .setBackward(compute<Op, Gpu, true>, "gpu")
#endif
    .setForward(compute<Op, Cpu, false>, "cpu")
    .setBackward(compute<Op, Cpu, true>, "cpu");
