#include "shapes.h"

#include <climits>
#include <string>
#include <utility>

namespace dcnv2_mx {

namespace {

template <typename Dims, typename Known>
std::string dims_str(const Dims& s, Known&& known) {
  std::string text = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) text += ", ";
    text += known(s[i]) ? std::to_string(s[i]) : "?";
  }
  text += s.size() == 1 ? ",)" : ")";
  return text;
}

}  // namespace

std::string shape_str(const Shape& s) { return dims_str(s, dim_known); }

std::string shape_str(const Shape64& s) {
  return dims_str(s, [](int64_t d) { return d >= 0; });
}

bool product_at_most(std::initializer_list<int64_t> factors, int64_t limit) {
  int64_t product = 1;
  for (int64_t f : factors) {
    if (f == 0) return limit >= 0;
    if (__builtin_mul_overflow(product, f, &product) || product > limit) return false;
  }
  return product <= limit;
}

bool dim_known(unsigned d) { return d != UINT_MAX; }

bool shape_known(const Shape& s, size_t ndim) {
  if (s.size() != ndim) return false;
  for (unsigned d : s)
    if (!dim_known(d)) return false;
  return true;
}

void complete_shape(const AttrReader& r, const TensorSpec& spec, Shape* given) {
  const Shape expected = to_shape(spec.shape);
  bool ok = given->empty() || given->size() == expected.size();
  for (size_t i = 0; ok && i < given->size(); ++i)
    ok = !dim_known((*given)[i]) || (*given)[i] == expected[i];
  if (!ok) r.fail(spec.role + " has shape " + shape_str(*given) + " but " + spec.expectation());
  *given = expected;
}

Shape to_shape(const Shape64& shape) { return Shape(shape.begin(), shape.end()); }

std::string TensorSpec::expectation() const {
  if (gradient) return meaning + " is " + shape_str(shape);
  return shape_str(shape) + " = " + meaning + " was expected";
}

TensorSpec input_spec(const std::string& name, const Shape64& shape, std::string meaning) {
  return TensorSpec{"input '" + name + "'", shape, std::move(meaning)};
}

void check_tensor_counts(const AttrReader& r, bool backward, size_t inputs, size_t outputs,
                         int forward_inputs) {
  const size_t n = static_cast<size_t>(forward_inputs);
  const size_t expected[2] = {backward ? n + 2 : n, backward ? n : 1};
  const size_t given[2] = {inputs, outputs};
  const char* what[2] = {"inputs", "outputs"};
  for (int i = 0; i < 2; ++i)
    if (given[i] != expected[i])
      r.fail(std::string("the ") + (backward ? "backward" : "forward") + " call has " +
             std::to_string(given[i]) + " " + what[i] + " but the parameters imply " +
             std::to_string(expected[i]));
}

namespace {

/*! \brief Checks `tensors` against `specs`; tensors[reference] sets dtype and device. */
void check_tensors(const AttrReader& r, const std::string& device_type,
                   const std::vector<TensorInfo>& tensors, const std::vector<TensorSpec>& specs,
                   size_t reference) {
  const TensorInfo& ref = tensors.at(reference);
  const std::string& ref_role = specs.at(reference).role;
  auto device = [](const TensorInfo& t) {
    return t.device_type + "(" + std::to_string(t.device_id) + ")";
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorInfo& t = tensors.at(i);
    const TensorSpec& spec = specs[i];
    if (t.device_type != device_type)
      r.fail(spec.role + " is on " + device(t) + " but this is the " + device_type +
             " implementation: all tensors of a call must be on one device");
    if (t.device_id != ref.device_id)
      r.fail(spec.role + " is on " + device(t) + " but " + ref_role + " is on " + device(ref) +
             ": all tensors of a call must be on one device");
    if (t.dtype != ref.dtype)
      r.fail(spec.role + " is " + t.dtype + " but " + ref_role + " is " + ref.dtype +
             ": all tensors of a call must have the same dtype");
    if (t.shape != spec.shape)
      r.fail(spec.role + " has shape " + shape_str(t.shape) + " but " + spec.expectation());
  }
}

/*!
 * \brief Throws unless each of tensors[first_written...] (what the call writes) lies apart from
 *        every tensor before it.
 */
void check_written_apart(const AttrReader& r, const std::vector<TensorInfo>& tensors,
                         const std::vector<TensorSpec>& specs, size_t first_written) {
  auto overlap = [](const TensorInfo& a, const TensorInfo& b) {
    return a.bytes > 0 && b.bytes > 0 && a.address < b.address + b.bytes &&
           b.address < a.address + a.bytes;
  };
  for (size_t w = first_written; w < tensors.size(); ++w)
    for (size_t i = 0; i < w; ++i)
      if (overlap(tensors[w], tensors[i]))
        r.fail(specs[w].role + " shares memory with " + specs[i].role +
               ": outputs must not overlap the call's other tensors (an out= array that is "
               "also an input?)");
}

}  // namespace

void check_call_tensors(const AttrReader& r, bool backward, const std::string& device_type,
                        const std::vector<TensorInfo>& inputs,
                        const std::vector<TensorInfo>& outputs,
                        const std::vector<TensorSpec>& input_specs, const TensorSpec& output_spec) {
  std::vector<TensorInfo> tensors = inputs;
  tensors.insert(tensors.end(), outputs.begin(), outputs.end());
  std::vector<TensorSpec> specs;
  // An autograd user can hand backward() any array as the head gradient; MXNet checks it
  // against the output for built-in operators only.
  if (backward)
    specs.push_back({"the output gradient (head gradient)", output_spec.shape, "the output", true});
  specs.insert(specs.end(), input_specs.begin(), input_specs.end());
  specs.push_back(output_spec);
  if (backward)
    for (const TensorSpec& in : input_specs)
      specs.push_back({"the gradient of " + in.role, in.shape, "the input", true});
  check_tensors(r, device_type, tensors, specs, backward ? 1 : 0);  // the forward data
  check_written_apart(r, tensors, specs, inputs.size());
}

}  // namespace dcnv2_mx
