#include "psroi_pooling_param.h"

#include <climits>
#include <cstdint>

#include "common/shapes.h"

namespace dcnv2_mx {

namespace {

/*! \brief "3" for a square size, "(3, 5)" otherwise. */
std::string size_str(const int (&size)[2]) {
  if (size[0] == size[1]) return std::to_string(size[0]);
  return "(" + std::to_string(size[0]) + ", " + std::to_string(size[1]) + ")";
}

/*! \brief Reads an int or (h, w) size parameter into `size`, each dimension in `range`. */
void read_size(AttrReader* r, const char* key, bool required, IntRange range, int (&size)[2]) {
  const int least = static_cast<int>(range.min);
  const std::vector<int> v = r->int_tuple(key, 2, required, {least, least}, range);
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

/*! \brief Checks a 4-D data shape against the parameters and the kernels' 32-bit planes. */
void check_data_shape(const AttrReader& r, const PSROIPoolParam& p, const Shape64& ds) {
  const int gh = p.group_size[0], gw = p.group_size[1];
  // output_dim*Gh*Gw < 2^94: equal to ds[1] iff at most ds[1] and more than ds[1] - 1.
  if (!product_at_most({p.output_dim, gh, gw}, ds[1]) ||
      product_at_most({p.output_dim, gh, gw}, ds[1] - 1)) {
    const bool fits = product_at_most({p.output_dim, gh, gw}, INT64_MAX);
    const std::string group_cells =
        gh == gw ? "output_dim*group_size^2 = " + std::to_string(p.output_dim) + "*" +
                       std::to_string(gh) + "^2"
                 : "output_dim*group_h*group_w = " + std::to_string(p.output_dim) + "*" +
                       std::to_string(gh) + "*" + std::to_string(gw);
    r.fail("input 'data' has " + std::to_string(ds[1]) + " channels but " + group_cells +
           (fits ? " = " + std::to_string(int64_t{p.output_dim} * gh * gw) : std::string()) +
           " were expected");
  }
  // A 0 is a real size under numpy shape semantics: no images or no RoIs give an empty output,
  // but a bin must have a plane to sample from.
  if (ds[2] <= 0 || ds[3] <= 0)
    r.fail("input 'data' has shape " + shape_str(ds) + ": height and width must be >= 1");
  // Bilinear corner offsets are 32-bit within one channel plane.
  if (!product_at_most({ds[2], ds[3]}, INT_MAX - 1))
    r.fail("input 'data' planes of more than 2^31-1 pixels are not supported, got H x W = " +
           std::to_string(ds[2]) + " x " + std::to_string(ds[3]));
}

/*! \brief Checks the number of classes (from input `source`) and the output's size. */
void check_classes_and_output(const AttrReader& r, const PSROIPoolParam& p, int64_t rois,
                              int64_t classes, const char* source) {
  if (classes == 0)
    r.fail("input '" + std::string(source) + "' has no classes: num_classes must be >= 1");
  if (p.output_dim % classes != 0)
    r.fail("parameter 'output_dim' (" + std::to_string(p.output_dim) +
           ") must be divisible by the number of classes (" + std::to_string(classes) +
           ") of input '" + source + "'");
  // Output elements are indexed in 64 bits.
  if (!product_at_most({rois, p.output_dim, p.pooled_size[0], p.pooled_size[1]}, INT64_MAX))
    r.fail("the output (R, output_dim, pooled_h, pooled_w) would have more than 2^63-1 elements");
}

/*! \brief The geometry of a call on data of shape `ds`, with `rois` RoIs of `classes` classes. */
PSROIPoolGeometry make_geometry(const PSROIPoolParam& p, const Shape64& ds, int64_t rois,
                                int64_t classes) {
  PSROIPoolGeometry g;
  g.batch = ds[0];
  g.channels = ds[1];
  g.height = ds[2];
  g.width = ds[3];
  g.rois = rois;
  g.output_dim = p.output_dim;
  g.group_h = p.group_size[0];
  g.group_w = p.group_size[1];
  g.pooled_h = p.pooled_size[0];
  g.pooled_w = p.pooled_size[1];
  g.part_h = p.part_size[0];
  g.part_w = p.part_size[1];
  g.sample_per_part = p.sample_per_part;
  g.num_classes = static_cast<int>(classes);
  g.spatial_scale = p.spatial_scale;
  g.trans_std = p.trans_std;
  return g;
}

TensorSpec output_spec(const PSROIPoolGeometry& g) {
  const Shape64 shape = {g.rois, g.output_dim, g.pooled_h, g.pooled_w};
  return TensorSpec{"the output", shape, "(R, output_dim, pooled_h, pooled_w)"};
}

}  // namespace

PSROIPoolParam PSROIPoolParam::parse(const AttrMap& attrs) {
  AttrReader r(kOpName, attrs);
  PSROIPoolParam p;
  // AttrReader::real has no "required" flag: a missing scale would read as the fallback.
  if (attrs.count("spatial_scale") == 0)
    r.fail("parameter 'spatial_scale' is required (expected a positive number, e.g. 0.0625 for "
           "a stride-16 feature map)");
  p.spatial_scale = r.real("spatial_scale", 0.f);
  const IntRange positive;  // [1, 2^31 - 1]
  p.output_dim = r.integer("output_dim", true, 0, positive);
  read_size(&r, "group_size", true, positive, p.group_size);
  read_size(&r, "pooled_size", true, positive, p.pooled_size);
  read_size(&r, "part_size", false, IntRange{0, INT_MAX, "0 means pooled_size"}, p.part_size);
  p.sample_per_part = r.integer(
      "sample_per_part", false, 1,
      IntRange{1, kMaxSamplePerPart, "a bin averages S x S samples; see the README"});
  p.trans_std = r.real("trans_std", 0.f);
  p.no_trans = r.boolean("no_trans", false);
  p.no_mask = r.boolean("no_mask", false);
  r.reject_unknown();

  if (!(p.spatial_scale > 0))
    r.fail("parameter 'spatial_scale' must be positive, got " + std::to_string(p.spatial_scale));
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
  if (static_cast<int>(in.size()) != num_inputs())
    r.fail("expected " + std::to_string(num_inputs()) + " inputs, got " +
           std::to_string(in.size()));
  const auto& ds = in[0];
  // MXNet's extension API would turn shapes left unknown here into scalars, so the data shape
  // must be known.
  if (!shape_known(ds, 4))
    r.fail("the shape of input 'data' must be known and 4-D (N, output_dim*group_size^2, H, W) to "
           "infer shapes, got " + (ds.empty() ? std::string("unknown") : shape_str(ds)) +
           "; give it to infer_shape or to the variable (shape=...)");
  const Shape64 data_shape = {ds[0], ds[1], ds[2], ds[3]};
  check_data_shape(r, *this, data_shape);

  unsigned num_rois = known_dim(in, 1, 2, 0);
  if (num_rois == kUnknown) num_rois = known_dim(in, trans_index(), 4, 0);
  if (num_rois == kUnknown) num_rois = known_dim(in, mask_index(), 4, 0);
  if (num_rois == kUnknown)
    r.fail("the number of RoIs is unknown: give the shape of input 'rois' (R, 5)");

  unsigned classes = 1;
  if (!no_trans || !no_mask) {
    const unsigned trans_channels = known_dim(in, trans_index(), 4, 1);
    if (trans_channels != kUnknown && trans_channels % 2 != 0)
      r.fail("input 'trans' has " + std::to_string(trans_channels) +
             " channels but 2*num_classes (an x and a y offset per class) were expected");
    classes =
        trans_channels != kUnknown ? trans_channels / 2 : known_dim(in, mask_index(), 4, 1);
    if (classes == kUnknown)
      r.fail("the number of classes is unknown: give the shape of input '" +
             std::string(no_trans ? "mask" : "trans") + "' (R, " + (no_trans ? "" : "2*") +
             "num_classes, part_h, part_w)");
  }
  check_classes_and_output(r, *this, num_rois, classes, no_trans ? "mask" : "trans");

  const PSROIPoolGeometry g = make_geometry(*this, data_shape, num_rois, classes);
  const std::vector<TensorSpec> specs = input_specs(g);
  for (size_t i = 1; i < specs.size(); ++i) complete_shape(r, specs[i], &in[i]);
  return to_shape(output_spec(g).shape);
}

PSROIPoolGeometry PSROIPoolParam::geometry(const std::vector<Shape64>& input_shapes) const {
  const int64_t classes = !no_trans ? input_shapes[trans_index()][1] / 2
                          : !no_mask ? input_shapes[mask_index()][1]
                                     : 1;
  return make_geometry(*this, input_shapes[0], input_shapes[1][0], classes);
}

PSROIPoolGeometry PSROIPoolParam::checked_geometry(const std::vector<Shape64>& shapes) const {
  AttrReader r(kOpName);
  const Shape64& ds = shapes[0];
  if (ds.size() != 4 || ds[0] < 0)
    r.fail("input 'data' must be 4-D (N, output_dim*group_size^2, H, W), got shape " +
           shape_str(ds));
  check_data_shape(r, *this, ds);
  if (shapes[1].size() != 2)
    r.fail("input 'rois' must be 2-D (R, 5), got shape " + shape_str(shapes[1]));
  const int classes_from = no_trans ? mask_index() : trans_index();
  if (classes_from >= 0) {
    const Shape64& cs = shapes[classes_from];
    if (cs.size() != 4 || (!no_trans && cs[1] % 2 != 0))
      r.fail("input '" + std::string(no_trans ? "mask" : "trans") + "' has shape " +
             shape_str(cs) + " but (R, " + (no_trans ? "" : "2*") +
             "num_classes, part_h, part_w) was expected");
  }
  const PSROIPoolGeometry g = geometry(shapes);
  check_classes_and_output(r, *this, g.rois, g.num_classes, no_trans ? "mask" : "trans");
  return g;
}

std::vector<TensorSpec> PSROIPoolParam::input_specs(const PSROIPoolGeometry& g) const {
  const index_t rois = g.rois, classes = g.num_classes, part_h = g.part_h, part_w = g.part_w;
  const std::string part_note = " with part_size = " + size_str(part_size);
  std::vector<TensorSpec> specs = {
      input_spec("data", {g.batch, g.channels, g.height, g.width},
                 "(N, output_dim*group_h*group_w, H, W)"),
      input_spec("rois", {rois, 5}, "(R, 5), [batch_index, x1, y1, x2, y2] per RoI")};
  if (!no_trans)
    specs.push_back(input_spec("trans", {rois, 2 * classes, part_h, part_w},
                               "(R, 2*num_classes, part_h, part_w)" + part_note));
  if (!no_mask)
    specs.push_back(input_spec("mask", {rois, classes, part_h, part_w},
                               "(R, num_classes, part_h, part_w)" + part_note));
  return specs;
}

PSROIPoolGeometry PSROIPoolParam::check_tensors(bool backward,
                                                const std::vector<TensorInfo>& inputs,
                                                const std::vector<TensorInfo>& outputs,
                                                const std::string& device_type) const {
  AttrReader r(kOpName);
  check_tensor_counts(r, backward, inputs.size(), outputs.size(), num_inputs());
  // A backward call's inputs start with the output gradient; the forward inputs follow it.
  const size_t first = backward ? 1 : 0;
  std::vector<Shape64> shapes;
  for (int i = 0; i < num_inputs(); ++i) shapes.push_back(inputs[first + i].shape);
  const PSROIPoolGeometry g = checked_geometry(shapes);
  check_call_tensors(r, backward, device_type, inputs, outputs, input_specs(g), output_spec(g));
  return g;
}

}  // namespace dcnv2_mx
