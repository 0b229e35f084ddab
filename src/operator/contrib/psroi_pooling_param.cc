#include "psroi_pooling_param.h"

#include <climits>
#include <cstdint>

#include "common/shapes.h"

namespace dcnv2_mx {

namespace {

void require(const AttrReader& r, bool ok, const std::string& message) {
  if (!ok) r.fail(message);
}

/*! \brief Stands for an unknown dimension (as MXNet's -1 does). */
constexpr unsigned kUnknown = UINT_MAX;

/*! \brief Dimension `axis` of input `index` if that input exists, has `ndim` dimensions and the
 *         dimension is known (0 included: no RoIs under numpy shapes); kUnknown otherwise. */
unsigned known_dim(const std::vector<std::vector<unsigned>>& in, int index, size_t ndim,
                   size_t axis) {
  if (index < 0 || in[index].size() != ndim) return kUnknown;
  return in[index][axis];
}

}  // namespace

PSROIPoolParam PSROIPoolParam::parse(const AttrMap& attrs) {
  AttrReader r(kOpName, attrs);
  PSROIPoolParam p;
  // AttrReader::real has no "required" flag: a missing scale would read as the fallback.
  require(r, attrs.count("spatial_scale") != 0,
          "parameter 'spatial_scale' is required (expected a positive number, e.g. 0.0625 for "
          "a stride-16 feature map)");
  p.spatial_scale = r.real("spatial_scale", 0.f);
  p.output_dim = r.integer("output_dim", true);
  p.group_size = r.integer("group_size", true);
  p.pooled_size = r.integer("pooled_size", true);
  const int part_size = r.integer("part_size", false, 0);
  p.sample_per_part = r.integer("sample_per_part", false, 1);
  p.trans_std = r.real("trans_std", 0.f);
  p.no_trans = r.boolean("no_trans", false);
  p.no_mask = r.boolean("no_mask", false);
  r.reject_unknown();

  require(r, p.spatial_scale > 0, "parameter 'spatial_scale' must be positive, got " +
          std::to_string(p.spatial_scale));
  require(r, p.output_dim > 0, "parameter 'output_dim' must be >= 1, got " +
          std::to_string(p.output_dim));
  require(r, p.group_size > 0, "parameter 'group_size' must be >= 1, got " +
          std::to_string(p.group_size));
  require(r, p.pooled_size > 0, "parameter 'pooled_size' must be >= 1, got " +
          std::to_string(p.pooled_size));
  require(r, part_size >= 0, "parameter 'part_size' must be >= 1 (or 0 for pooled_size), got " +
          std::to_string(part_size));
  require(r, p.sample_per_part > 0, "parameter 'sample_per_part' must be >= 1, got " +
          std::to_string(p.sample_per_part));
  p.part_size = part_size == 0 ? p.pooled_size : part_size;
  return p;
}

std::vector<std::string> PSROIPoolParam::input_names() const {
  std::vector<std::string> names = {"data", "rois"};
  if (!no_trans) names.push_back("trans");
  if (!no_mask) names.push_back("mask");
  return names;
}

std::vector<unsigned> PSROIPoolParam::infer_shapes(
    std::vector<std::vector<unsigned>>* in_shapes) const {
  AttrReader r(kOpName, {});
  auto& in = *in_shapes;
  require(r, static_cast<int>(in.size()) == num_inputs(),
          "expected " + std::to_string(num_inputs()) + " inputs, got " + std::to_string(in.size()));
  const auto& ds = in[0];
  // MXNet's extension API would turn shapes left unknown here into scalars, so the data shape
  // must be known.
  require(r, shape_known(ds, 4),
          "the shape of input 'data' must be known and 4-D (N, output_dim*group_size^2, H, W) to "
          "infer shapes, got " + (ds.empty() ? std::string("unknown") : shape_str(ds)) +
          "; give it to infer_shape or to the variable (shape=...)");
  const uint64_t channels = static_cast<uint64_t>(output_dim) * group_size * group_size;
  require(r, ds[1] == channels,
          "input 'data' has " + std::to_string(ds[1]) + " channels but output_dim*group_size^2 = " +
          std::to_string(output_dim) + "*" + std::to_string(group_size) + "^2 = " +
          std::to_string(channels) + " were expected");
  // A 0 is a real size under numpy shape semantics: no images or no RoIs give an empty output,
  // but a bin must have a plane to sample from.
  require(r, ds[2] > 0 && ds[3] > 0,
          "input 'data' has shape " + shape_str(ds) + ": height and width must be >= 1");
  // Bilinear corner offsets are 32-bit within one channel plane.
  require(r, static_cast<uint64_t>(ds[2]) * ds[3] < INT_MAX,
          "input 'data' planes of more than 2^31 pixels are not supported");

  unsigned num_rois = known_dim(in, 1, 2, 0);
  if (num_rois == kUnknown) num_rois = known_dim(in, trans_index(), 4, 0);
  if (num_rois == kUnknown) num_rois = known_dim(in, mask_index(), 4, 0);
  require(r, num_rois != kUnknown,
          "the number of RoIs is unknown: give the shape of input 'rois' (R, 5)");

  unsigned classes = 1;
  if (!no_trans || !no_mask) {
    const unsigned trans_channels = known_dim(in, trans_index(), 4, 1);
    require(r, trans_channels == kUnknown || trans_channels % 2 == 0,
            "input 'trans' has " + std::to_string(trans_channels) +
            " channels but 2*num_classes (an x and a y offset per class) were expected");
    classes =
        trans_channels != kUnknown ? trans_channels / 2 : known_dim(in, mask_index(), 4, 1);
    require(r, classes != kUnknown,
            "the number of classes is unknown: give the shape of input '" +
            std::string(no_trans ? "mask" : "trans") + "' (R, " + (no_trans ? "" : "2*") +
            "num_classes, part_size, part_size)");
    require(r, classes != 0,
            "input '" + std::string(no_trans ? "mask" : "trans") +
            "' has no classes: num_classes must be >= 1");
    require(r, output_dim % classes == 0,
            "parameter 'output_dim' (" + std::to_string(output_dim) +
            ") must be divisible by the number of classes (" + std::to_string(classes) +
            ") of input '" + (no_trans ? "mask" : "trans") + "'");
  }

  const unsigned part = static_cast<unsigned>(part_size);
  const std::string part_note = " with part_size = " + std::to_string(part_size);
  complete_shape(r, "rois", &in[1], {num_rois, 5}, "(R, 5), [batch_index, x1, y1, x2, y2] per RoI");
  if (!no_trans)
    complete_shape(r, "trans", &in[trans_index()], {num_rois, 2 * classes, part, part},
                   "(R, 2*num_classes, part_size, part_size)" + part_note);
  if (!no_mask)
    complete_shape(r, "mask", &in[mask_index()], {num_rois, classes, part, part},
                   "(R, num_classes, part_size, part_size)" + part_note);
  const unsigned pooled = static_cast<unsigned>(pooled_size);
  return {num_rois, static_cast<unsigned>(output_dim), pooled, pooled};
}

PSROIPoolGeometry PSROIPoolParam::geometry(
    const std::vector<std::vector<int64_t>>& input_shapes) const {
  const auto& ds = input_shapes[0];
  PSROIPoolGeometry g;
  g.batch = ds[0];
  g.channels = ds[1];
  g.height = ds[2];
  g.width = ds[3];
  g.rois = input_shapes[1][0];
  g.output_dim = output_dim;
  g.group_size = group_size;
  g.pooled_size = pooled_size;
  g.part_size = part_size;
  g.sample_per_part = sample_per_part;
  g.num_classes = !no_trans ? static_cast<int>(input_shapes[trans_index()][1] / 2)
                  : !no_mask ? static_cast<int>(input_shapes[mask_index()][1])
                             : 1;
  g.spatial_scale = spatial_scale;
  g.trans_std = trans_std;
  return g;
}

}  // namespace dcnv2_mx
