#include "deformable_conv_param.h"

#include "common/shapes.h"

#include <climits>
#include <stdexcept>

namespace dcnv2_mx {

namespace {

void require(const AttrReader& r, bool ok, const std::string& message) {
  if (!ok) r.fail(message);
}

}  // namespace

DeformConvParam DeformConvParam::parse(const std::string& op_name, bool modulated,
                                       const AttrMap& attrs) {
  AttrReader r(op_name, attrs);
  DeformConvParam p;
  p.op_name = op_name;
  p.modulated = modulated;
  const auto kernel = r.int_tuple("kernel", 2, true);
  const auto stride = r.int_tuple("stride", 2, false, {1, 1});
  const auto dilate = r.int_tuple("dilate", 2, false, {1, 1});
  const auto pad = r.int_tuple("pad", 2, false, {0, 0});
  for (int d = 0; d < 2; ++d) {
    p.kernel[d] = kernel[d];
    p.stride[d] = stride[d];
    p.dilate[d] = dilate[d];
    p.pad[d] = pad[d];
  }
  p.num_filter = r.integer("num_filter", true);
  p.num_group = r.integer("num_group", false, 1);
  p.num_deformable_group = r.integer("num_deformable_group", false, 1);
  p.workspace_mb = r.integer("workspace", false, 1024);
  p.im2col_step = r.integer("im2col_step", false, 64);
  p.no_bias = r.boolean("no_bias", false);
  const std::string layout = r.text("layout", "NCHW");
  // MXNet's own op also accepts cudnn_tune/cudnn_off; they select nothing here, so a symbol
  // written for the built-in op can be switched over by name alone.
  r.text("cudnn_tune", "");
  r.boolean("cudnn_off", false);
  r.reject_unknown();

  require(r, kernel[0] > 0 && kernel[1] > 0, "parameter 'kernel' must be positive, got (" +
          std::to_string(kernel[0]) + ", " + std::to_string(kernel[1]) + ")");
  require(r, stride[0] > 0 && stride[1] > 0, "parameter 'stride' must be positive");
  require(r, dilate[0] > 0 && dilate[1] > 0, "parameter 'dilate' must be positive");
  require(r, pad[0] >= 0 && pad[1] >= 0, "parameter 'pad' must be non-negative");
  require(r, p.num_filter > 0, "parameter 'num_filter' must be positive, got " +
          std::to_string(p.num_filter));
  require(r, p.num_group > 0, "parameter 'num_group' must be >= 1");
  require(r, p.num_deformable_group > 0, "parameter 'num_deformable_group' must be >= 1");
  require(r, p.num_filter % p.num_group == 0,
          "parameter 'num_filter' (" + std::to_string(p.num_filter) +
          ") must be divisible by 'num_group' (" + std::to_string(p.num_group) + ")");
  require(r, p.workspace_mb > 0, "parameter 'workspace' (MiB) must be >= 1");
  require(r, p.im2col_step > 0, "parameter 'im2col_step' must be >= 1");
  require(r, layout == "NCHW" || layout == "None" || layout.empty(),
          "parameter 'layout' = '" + layout + "': only 'NCHW' is supported");
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
  g.out_h = (g.height + 2 * g.pad_h - static_cast<index_t>(g.dilate_h) * (g.kernel_h - 1) - 1) /
            g.stride_h + 1;
  g.out_w = (g.width + 2 * g.pad_w - static_cast<index_t>(g.dilate_w) * (g.kernel_w - 1) - 1) /
            g.stride_w + 1;
  g.groups = num_group;
  g.deformable_groups = num_deformable_group;
  g.modulated = modulated;
  return g;
}

std::vector<unsigned> DeformConvParam::infer_shapes(
    std::vector<std::vector<unsigned>>* in_shapes) const {
  AttrReader r(op_name);
  auto& in = *in_shapes;
  require(r, static_cast<int>(in.size()) == num_inputs(),
          "expected " + std::to_string(num_inputs()) + " inputs, got " + std::to_string(in.size()));
  const auto& ds = in[0];
  // MXNet's extension API would turn shapes left unknown here into scalars, so the data shape
  // must be known: every other shape follows from it.
  require(r, shape_known(ds, 4),
          "the shape of input 'data' must be known and 4-D (N, C, H, W) to infer shapes, got " +
          (ds.empty() ? std::string("unknown") : shape_str(ds)) +
          "; give it to infer_shape or to the variable (shape=...)");
  // Under numpy shape semantics a 0 is a real size: an empty batch gives an empty output, but a
  // convolution over no channels or an empty plane is refused (as by MXNet's Convolution).
  require(r, ds[1] > 0 && ds[2] > 0 && ds[3] > 0,
          "input 'data' has shape " + shape_str(ds) +
          ": channels, height and width must be >= 1 (only the batch may be empty)");
  const DeformConvGeometry g = geometry({ds[0], ds[1], ds[2], ds[3]});
  require(r, g.channels % num_group == 0,
          "data channels (" + std::to_string(g.channels) + ") must be divisible by 'num_group' (" +
          std::to_string(num_group) + ")");
  require(r, g.channels % num_deformable_group == 0,
          "data channels (" + std::to_string(g.channels) +
          ") must be divisible by 'num_deformable_group' (" +
          std::to_string(num_deformable_group) + ")");
  require(r, g.out_h > 0 && g.out_w > 0,
          "the output would be empty: input " + std::to_string(g.height) + "x" +
          std::to_string(g.width) + " is smaller than the dilated kernel after padding");
  // Bilinear corner offsets are 32-bit within one channel plane.
  require(r, g.in_plane() < INT_MAX, "input 'data' planes of more than 2^31 pixels are not supported");
  // BLAS takes 32-bit sizes: one output plane and one column-matrix row must fit.
  require(r, g.out_plane() < INT_MAX && g.channels * g.taps() < INT_MAX,
          "output planes or C*kh*kw of more than 2^31 elements are not supported");

  const unsigned n = ds[0], ho = g.out_h, wo = g.out_w;
  const unsigned taps = static_cast<unsigned>(g.taps());
  struct Expected {
    int index;
    const char* name;
    std::vector<unsigned> shape;
    const char* meaning;
  };
  std::vector<Expected> expected = {
      {1, "offset", {n, static_cast<unsigned>(g.offset_channels()), ho, wo},
       "(N, 2*num_deformable_group*kh*kw, Ho, Wo)"},
      {weight_index(), "weight",
       {static_cast<unsigned>(num_filter), static_cast<unsigned>(g.channels_per_group()),
        static_cast<unsigned>(kernel[0]), static_cast<unsigned>(kernel[1])},
       "(num_filter, C/num_group, kh, kw)"}};
  if (modulated)
    expected.push_back({mask_index(), "mask", {n, num_deformable_group * taps, ho, wo},
                        "(N, num_deformable_group*kh*kw, Ho, Wo)"});
  if (!no_bias)
    expected.push_back({bias_index(), "bias", {static_cast<unsigned>(num_filter)}, "(num_filter,)"});
  for (const auto& e : expected) complete_shape(r, e.name, &in[e.index], e.shape, e.meaning);
  return {n, static_cast<unsigned>(num_filter), ho, wo};
}

}  // namespace dcnv2_mx
