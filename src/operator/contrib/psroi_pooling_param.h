/*!
 * \file psroi_pooling_param.h
 * \brief Parameters and shape inference of the (modulated) deformable PS-RoI pooling, apart
 *        from the kernels and from MXNet's extension API.
 */
#ifndef DCNV2_MX_PSROI_POOLING_PARAM_H_
#define DCNV2_MX_PSROI_POOLING_PARAM_H_

#include <string>
#include <vector>

#include "common/attrs.h"
#include "common/shapes.h"
#include "psroi_pooling_kernel.h"

namespace dcnv2_mx {

/*!
 * \brief User-facing parameters: those of MXNet's DeformablePSROIPooling, with the same
 *        defaults, and `no_mask`. The inputs a call takes follow from the parameters alone
 *        (MXNet asks for their number before it sees any input): `no_trans` drops the offsets
 *        and `no_mask` the modulation. The Python layer sets `no_mask` from whether a mask is
 *        given, and it is saved with the symbol like any parameter.
 */
struct PSROIPoolParam {
  static constexpr const char* kOpName = "ModulatedDeformablePSROIPooling";

  /*!
   * \brief The largest `sample_per_part`. A bin averages S x S samples, so a call costs S^2 times
   *        as much as with one sample; published models use S = 4 (16 samples). S = 64 (4,096
   *        samples, 256 times S = 4) spaces the samples of a bin spanning a whole 64-pixel
   *        feature map one pixel apart, where more samples no longer add detail to a bilinear
   *        map, and keeps the slowest call within seconds where S = 3,000 took 4 s per small
   *        call and S = 50,000 hours (a typo then looked like a hang that Ctrl-C cannot stop).
   */
  static constexpr int kMaxSamplePerPart = 64;

  float spatial_scale = 0.f;  //!< feature map size / image size, e.g. 1/16
  int output_dim = 0;
  // group_size, pooled_size and part_size are an int (square) or an (h, w) pair, as in Paddle.
  int group_size[2] = {0, 0};
  int pooled_size[2] = {0, 0};
  int part_size[2] = {0, 0};  //!< 0 in the attributes means pooled_size (per dimension)
  int sample_per_part = 1;
  float trans_std = 0.f;
  bool no_trans = false;
  bool no_mask = false;

  /*! \brief Parses and validates attributes; throws std::invalid_argument naming the problem. */
  static PSROIPoolParam parse(const AttrMap& attrs);

  /*! \brief Positions of the inputs: data, rois, [trans], [mask]. */
  int num_inputs() const { return 2 + (no_trans ? 0 : 1) + (no_mask ? 0 : 1); }
  int trans_index() const { return no_trans ? -1 : 2; }
  int mask_index() const { return no_mask ? -1 : (no_trans ? 2 : 3); }
  std::vector<std::string> input_names() const;

  /*!
   * \brief Completes unknown input shapes, checks the known ones and returns the output shape.
   *        The data shape must be known; the number of RoIs comes from rois, trans or mask, the
   *        number of classes from trans or mask (1 when neither is an input). Output
   *        (R, output_dim, pooled_h, pooled_w).
   */
  std::vector<unsigned> infer_shapes(std::vector<std::vector<unsigned>>* in_shapes) const;

  /*! \brief Geometry of one call from the (checked) shapes of its inputs. */
  PSROIPoolGeometry geometry(const std::vector<Shape64>& input_shapes) const;

  /*!
   * \brief The geometry of a call on inputs of shapes `input_shapes` (positional order), after
   *        checking the data shape against the parameters, the ranks of the other inputs and
   *        the sizes the kernels index. The other shapes are checked against input_specs().
   */
  PSROIPoolGeometry checked_geometry(const std::vector<Shape64>& input_shapes) const;

  /*! \brief The shapes of the inputs of a call of geometry `g`, in positional order. */
  std::vector<TensorSpec> input_specs(const PSROIPoolGeometry& g) const;

  /*!
   * \brief Checks the tensors MXNet hands a forward (or `backward`) call on a `device_type`
   *        ("cpu" or "gpu") device, before any kernel reads them: their number, and the shape,
   *        dtype and device of each, the output gradient (head gradient) and the gradients of a
   *        backward call included (check_call_tensors). Returns the call's geometry.
   */
  PSROIPoolGeometry check_tensors(bool backward, const std::vector<TensorInfo>& inputs,
                                  const std::vector<TensorInfo>& outputs,
                                  const std::string& device_type) const;
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_PSROI_POOLING_PARAM_H_
