#include "deformable_conv_param.h"

#include "common/shapes.h"

#include <climits>
#include <stdexcept>

namespace dcnv2_mx {

DeformConvParam DeformConvParam::parse(const std::string& op_name, bool modulated,
                                       const AttrMap& attrs) {
  AttrReader r(op_name, attrs);
  DeformConvParam p;
  p.op_name = op_name;
  p.modulated = modulated;
  const IntRange positive;  // [1, 2^31 - 1]
  const auto kernel = r.int_tuple("kernel", 2, true, {}, positive);
  const auto stride = r.int_tuple("stride", 2, false, {1, 1}, positive);
  const auto dilate = r.int_tuple("dilate", 2, false, {1, 1}, positive);
  const auto pad = r.int_tuple("pad", 2, false, {0, 0}, IntRange{0, INT_MAX});
  for (int d = 0; d < 2; ++d) {
    p.kernel[d] = kernel[d];
    p.stride[d] = stride[d];
    p.dilate[d] = dilate[d];
    p.pad[d] = pad[d];
  }
  p.num_filter = r.integer("num_filter", true, 0, positive);
  p.num_group = r.integer("num_group", false, 1, positive);
  p.num_deformable_group = r.integer("num_deformable_group", false, 1, positive);
  p.workspace_mb = r.integer("workspace", false, 1024, IntRange{1, INT_MAX, "MiB"});
  p.im2col_step = r.integer("im2col_step", false, 64, positive);
  p.no_bias = r.boolean("no_bias", false);
  const std::string layout = r.text("layout", "NCHW");
  // MXNet's own op also accepts cudnn_tune/cudnn_off; they select nothing here, so a symbol
  // written for the built-in op can be switched over by name alone.
  r.text("cudnn_tune", "");
  r.boolean("cudnn_off", false);
  r.reject_unknown();

  if (p.num_filter % p.num_group != 0)
    r.fail("parameter 'num_filter' (" + std::to_string(p.num_filter) +
           ") must be divisible by 'num_group' (" + std::to_string(p.num_group) + ")");
  if (layout != "NCHW" && layout != "None" && !layout.empty())
    r.fail("parameter 'layout' = '" + layout + "': only 'NCHW' is supported");
  return p;
}

std::vector<std::string> DeformConvParam::input_names() const {
  std::vector<std::string> names = {"data", "offset"};
  if (modulated) names.push_back("mask");
  names.push_back("weight");
  if (!no_bias) names.push_back("bias");
  return names;
}

DeformConvGeometry DeformConvParam::geometry(const std::vector<int64_t>& s) const {
  DeformConvGeometry g;
  g.batch = s[0];
  g.channels = s[1];
  g.height = s[2];
  g.width = s[3];
  g.filters = num_filter;
  g.kernel_h = kernel[0];
  g.kernel_w = kernel[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = pad[0];
  g.pad_w = pad[1];
  g.dilate_h = dilate[0];
  g.dilate_w = dilate[1];
  // In 64 bits: every parameter is below 2^31, so none of these terms overflows.
  g.out_h = (g.height + 2 * static_cast<index_t>(g.pad_h) -
             static_cast<index_t>(g.dilate_h) * (g.kernel_h - 1) - 1) / g.stride_h + 1;
  g.out_w = (g.width + 2 * static_cast<index_t>(g.pad_w) -
             static_cast<index_t>(g.dilate_w) * (g.kernel_w - 1) - 1) / g.stride_w + 1;
  g.groups = num_group;
  g.deformable_groups = num_deformable_group;
  g.modulated = modulated;
  return g;
}

DeformConvGeometry DeformConvParam::checked_geometry(const Shape64& ds) const {
  AttrReader r(op_name);
  if (ds.size() != 4 || ds[0] < 0)
    r.fail("input 'data' must be 4-D (N, C, H, W), got shape " + shape_str(ds));
  // Under numpy shape semantics a 0 is a real size: an empty batch gives an empty output, but a
  // convolution over no channels or an empty plane is refused (as by MXNet's Convolution).
  if (ds[1] <= 0 || ds[2] <= 0 || ds[3] <= 0)
    r.fail("input 'data' has shape " + shape_str(ds) +
           ": channels, height and width must be >= 1 (only the batch may be empty)");
  // Bilinear corner offsets are 32-bit within one channel plane.
  if (!product_at_most({ds[2], ds[3]}, INT_MAX - 1))
    r.fail("input 'data' planes of more than 2^31-1 pixels are not supported, got H x W = " +
           std::to_string(ds[2]) + " x " + std::to_string(ds[3]));
  const DeformConvGeometry g = geometry(ds);
  if (g.channels % num_group != 0)
    r.fail("data channels (" + std::to_string(g.channels) +
           ") must be divisible by 'num_group' (" + std::to_string(num_group) + ")");
  if (g.channels % num_deformable_group != 0)
    r.fail("data channels (" + std::to_string(g.channels) +
           ") must be divisible by 'num_deformable_group' (" +
           std::to_string(num_deformable_group) + ")");
  if (g.out_h <= 0 || g.out_w <= 0)
    r.fail("the output would be empty: input " + std::to_string(g.height) + "x" +
           std::to_string(g.width) + " is smaller than the dilated kernel after padding");
  // BLAS takes 32-bit sizes: one output plane and one column-matrix row must fit; shape
  // inference passes 32-bit dimensions.
  if (!product_at_most({g.out_h, g.out_w}, INT_MAX - 1))
    r.fail("the output planes would be Ho x Wo = " + std::to_string(g.out_h) + " x " +
           std::to_string(g.out_w) + " pixels, more than the 2^31-1 supported: check 'pad', "
           "'stride' and 'dilate'");
  if (!product_at_most({g.channels, kernel[0], kernel[1]}, INT_MAX - 1))
    r.fail("C*kh*kw = " + std::to_string(g.channels) + "*" + std::to_string(kernel[0]) + "*" +
           std::to_string(kernel[1]) + " is more than the 2^31-1 supported");
  if (!product_at_most({2, num_deformable_group, kernel[0], kernel[1]}, INT_MAX))
    r.fail("input 'offset' would have 2*num_deformable_group*kh*kw = 2*" +
           std::to_string(num_deformable_group) + "*" + std::to_string(kernel[0]) + "*" +
           std::to_string(kernel[1]) + " channels, more than the 2^31-1 supported");
  return g;
}

std::vector<TensorSpec> DeformConvParam::input_specs(const DeformConvGeometry& g) const {
  const index_t n = g.batch, ho = g.out_h, wo = g.out_w;
  std::vector<TensorSpec> specs = {
      input_spec("data", {n, g.channels, g.height, g.width}, "(N, C, H, W)"),
      input_spec("offset", {n, g.offset_channels(), ho, wo},
                 "(N, 2*num_deformable_group*kh*kw, Ho, Wo)")};
  if (modulated)
    specs.push_back(input_spec("mask", {n, g.mask_channels(), ho, wo},
                               "(N, num_deformable_group*kh*kw, Ho, Wo)"));
  specs.push_back(input_spec("weight", {num_filter, g.channels_per_group(), kernel[0], kernel[1]},
                             "(num_filter, C/num_group, kh, kw)"));
  if (!no_bias) specs.push_back(input_spec("bias", {num_filter}, "(num_filter,)"));
  return specs;
}

namespace {

TensorSpec output_spec(const DeformConvGeometry& g) {
  return TensorSpec{"the output", {g.batch, g.filters, g.out_h, g.out_w},
                    "(N, num_filter, Ho, Wo)"};
}

}  // namespace

std::vector<unsigned> DeformConvParam::infer_shapes(
    std::vector<std::vector<unsigned>>* in_shapes) const {
  AttrReader r(op_name);
  auto& in = *in_shapes;
  if (static_cast<int>(in.size()) != num_inputs())
    r.fail("expected " + std::to_string(num_inputs()) + " inputs, got " +
           std::to_string(in.size()));
  const auto& ds = in[0];
  // MXNet's extension API would turn shapes left unknown here into scalars, so the data shape
  // must be known: every other shape follows from it.
  if (!shape_known(ds, 4))
    r.fail("the shape of input 'data' must be known and 4-D (N, C, H, W) to infer shapes, got " +
           (ds.empty() ? std::string("unknown") : shape_str(ds)) +
           "; give it to infer_shape or to the variable (shape=...)");
  const DeformConvGeometry g = checked_geometry({ds[0], ds[1], ds[2], ds[3]});
  const std::vector<TensorSpec> specs = input_specs(g);
  for (size_t i = 1; i < specs.size(); ++i) complete_shape(r, specs[i], &in[i]);
  return to_shape(output_spec(g).shape);
}

DeformConvGeometry DeformConvParam::check_tensors(bool backward,
                                                  const std::vector<TensorInfo>& inputs,
                                                  const std::vector<TensorInfo>& outputs,
                                                  const std::string& device_type) const {
  AttrReader r(op_name);
  check_tensor_counts(r, backward, inputs.size(), outputs.size(), num_inputs());
  // A backward call's inputs start with the output gradient; the data follows it.
  const DeformConvGeometry g = checked_geometry(inputs[backward ? 1 : 0].shape);
  check_call_tensors(r, backward, device_type, inputs, outputs, input_specs(g), output_spec(g));
  return g;
}

}  // namespace dcnv2_mx
