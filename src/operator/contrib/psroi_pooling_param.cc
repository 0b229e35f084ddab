#include "psroi_pooling_param.h"

#include <climits>
#include <cstdint>

#include "common/shapes.h"

namespace dcnv2_mx {

namespace {

void require(const AttrReader& r, bool ok, const std::string& message) {
  if (!ok) r.fail(message);
}

/*! \brief "3" for a square size, "(3, 5)" otherwise. */
std::string size_str(const int (&size)[2]) {
  if (size[0] == size[1]) return std::to_string(size[0]);
  return "(" + std::to_string(size[0]) + ", " + std::to_string(size[1]) + ")";
}

/*!
 * \brief Reads an int or (h, w) size parameter into `size`: each dimension >= 1, or 0 too when
 *        `zero_means` says what 0 stands for (and it is the default).
 */
void read_size(AttrReader* r, const char* key, bool required, const char* zero_means,
               int (&size)[2]) {
  const int least = zero_means ? 0 : 1;
  const std::vector<int> v = r->int_tuple(key, 2, required, {least, least});
  require(*r, v[0] >= least && v[1] >= least,
          std::string("parameter '") + key + "' must be >= 1" +
              (zero_means ? std::string(" (or 0 for ") + zero_means + ")" : std::string()) +
              ", an int or an (h, w) pair, got " + size_str({v[0], v[1]}));
  size[0] = v[0];
  size[1] = v[1];
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
  read_size(&r, "group_size", true, nullptr, p.group_size);
  read_size(&r, "pooled_size", true, nullptr, p.pooled_size);
  read_size(&r, "part_size", false, "pooled_size", p.part_size);
  p.sample_per_part = r.integer("sample_per_part", false, 1);
  p.trans_std = r.real("trans_std", 0.f);
  p.no_trans = r.boolean("no_trans", false);
  p.no_mask = r.boolean("no_mask", false);
  r.reject_unknown();

  require(r, p.spatial_scale > 0, "parameter 'spatial_scale' must be positive, got " +
          std::to_string(p.spatial_scale));
  require(r, p.output_dim > 0, "parameter 'output_dim' must be >= 1, got " +
          std::to_string(p.output_dim));
  require(r, p.sample_per_part > 0, "parameter 'sample_per_part' must be >= 1, got " +
          std::to_string(p.sample_per_part));
  for (int d = 0; d < 2; ++d)
    if (p.part_size[d] == 0) p.part_size[d] = p.pooled_size[d];
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
  AttrReader r(kOpName);
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
  const uint64_t channels =
      static_cast<uint64_t>(output_dim) * static_cast<uint64_t>(group_size[0]) * group_size[1];
  const std::string group_cells =
      group_size[0] == group_size[1]
          ? "output_dim*group_size^2 = " + std::to_string(output_dim) + "*" +
                std::to_string(group_size[0]) + "^2"
          : "output_dim*group_h*group_w = " + std::to_string(output_dim) + "*" +
                std::to_string(group_size[0]) + "*" + std::to_string(group_size[1]);
  require(r, ds[1] == channels,
          "input 'data' has " + std::to_string(ds[1]) + " channels but " + group_cells + " = " +
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
            "num_classes, part_h, part_w)");
    require(r, classes != 0,
            "input '" + std::string(no_trans ? "mask" : "trans") +
            "' has no classes: num_classes must be >= 1");
    require(r, output_dim % classes == 0,
            "parameter 'output_dim' (" + std::to_string(output_dim) +
            ") must be divisible by the number of classes (" + std::to_string(classes) +
            ") of input '" + (no_trans ? "mask" : "trans") + "'");
  }

  const unsigned part_h = static_cast<unsigned>(part_size[0]);
  const unsigned part_w = static_cast<unsigned>(part_size[1]);
  const std::string part_note = " with part_size = " + size_str(part_size);
  complete_shape(r, "rois", &in[1], {num_rois, 5}, "(R, 5), [batch_index, x1, y1, x2, y2] per RoI");
  if (!no_trans)
    complete_shape(r, "trans", &in[trans_index()], {num_rois, 2 * classes, part_h, part_w},
                   "(R, 2*num_classes, part_h, part_w)" + part_note);
  if (!no_mask)
    complete_shape(r, "mask", &in[mask_index()], {num_rois, classes, part_h, part_w},
                   "(R, num_classes, part_h, part_w)" + part_note);
  return {num_rois, static_cast<unsigned>(output_dim), static_cast<unsigned>(pooled_size[0]),
          static_cast<unsigned>(pooled_size[1])};
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
  g.group_h = group_size[0];
  g.group_w = group_size[1];
  g.pooled_h = pooled_size[0];
  g.pooled_w = pooled_size[1];
  g.part_h = part_size[0];
  g.part_w = part_size[1];
  g.sample_per_part = sample_per_part;
  g.num_classes = !no_trans ? static_cast<int>(input_shapes[trans_index()][1] / 2)
                  : !no_mask ? static_cast<int>(input_shapes[mask_index()][1])
                             : 1;
  g.spatial_scale = spatial_scale;
  g.trans_std = trans_std;
  return g;
}

}  // namespace dcnv2_mx
