/*!
 * \file deformable_conv_param.h
 * \brief Parameters and shape inference of the deformable convolutions (DCNv2 and DCNv1),
 *        apart from the kernels and from MXNet's extension API.
 */
#ifndef DCNV2_MX_DEFORMABLE_CONV_PARAM_H_
#define DCNV2_MX_DEFORMABLE_CONV_PARAM_H_

#include <string>
#include <vector>

#include "common/attrs.h"
#include "common/shapes.h"
#include "deformable_conv_kernel.h"

namespace dcnv2_mx {

/*! \brief User-facing parameters; defaults follow MXNet's ModulatedDeformableConvolution. */
struct DeformConvParam {
  std::string op_name;        //!< for messages: DeformableConvolutionV2 or ...V1
  bool modulated = true;      //!< DCNv2 (offset and mask) or DCNv1 (offset only)
  int kernel[2] = {0, 0};
  int stride[2] = {1, 1};
  int dilate[2] = {1, 1};
  int pad[2] = {0, 0};
  int num_filter = 0;
  int num_group = 1;
  int num_deformable_group = 1;
  int workspace_mb = 1024;    //!< bound on temporary memory per call, in MiB
  int im2col_step = 64;       //!< accepted for compatibility; tiling follows `workspace`
  bool no_bias = false;

  /*! \brief Parses and validates attributes; throws std::invalid_argument naming the problem. */
  static DeformConvParam parse(const std::string& op_name, bool modulated, const AttrMap& attrs);

  /*! \brief Positions of the inputs: data, offset, [mask], weight, [bias]. */
  int num_inputs() const { return 3 + (modulated ? 1 : 0) + (no_bias ? 0 : 1); }
  int mask_index() const { return modulated ? 2 : -1; }
  int weight_index() const { return modulated ? 3 : 2; }
  int bias_index() const { return no_bias ? -1 : weight_index() + 1; }
  std::vector<std::string> input_names() const;

  /*!
   * \brief Completes unknown input shapes from the data shape, checks the known ones and
   *        returns the output shape. An empty vector means "unknown".
   */
  std::vector<unsigned> infer_shapes(std::vector<std::vector<unsigned>>* in_shapes) const;

  /*! \brief Geometry of one call from the data shape (N, C, H, W), unchecked. */
  DeformConvGeometry geometry(const std::vector<int64_t>& data_shape) const;

  /*!
   * \brief The geometry of a call on data of shape `data_shape`, after checking that the
   *        parameters fit it and that every size derived from them stays within what the
   *        kernels index (32-bit planes and column rows) and MXNet's 32-bit shape dimensions.
   */
  DeformConvGeometry checked_geometry(const Shape64& data_shape) const;

  /*! \brief The shapes of the inputs of a call of geometry `g`, in positional order. */
  std::vector<TensorSpec> input_specs(const DeformConvGeometry& g) const;

  /*!
   * \brief Checks the tensors MXNet hands a forward (or `backward`) call on a `device_type`
   *        ("cpu" or "gpu") device, before any kernel reads them: their number, and the shape,
   *        dtype and device of each, the output gradient (head gradient) and the gradients of a
   *        backward call included (check_call_tensors). Returns the call's geometry.
   */
  DeformConvGeometry check_tensors(bool backward, const std::vector<TensorInfo>& inputs,
                                   const std::vector<TensorInfo>& outputs,
                                   const std::string& device_type) const;

  /*! \brief Temporary memory allowed per call, in bytes. */
  size_t workspace_bytes() const { return static_cast<size_t>(workspace_mb) << 20; }
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_DEFORMABLE_CONV_PARAM_H_
