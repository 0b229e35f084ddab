#include "shapes.h"

#include <climits>
#include <sstream>

namespace dcnv2_mx {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) {
    os << (i ? ", " : "");
    if (dim_known(s[i]))
      os << s[i];
    else
      os << "?";
  }
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

bool dim_known(unsigned d) { return d != UINT_MAX; }

bool shape_known(const Shape& s, size_t ndim) {
  if (s.size() != ndim) return false;
  for (unsigned d : s)
    if (!dim_known(d)) return false;
  return true;
}

void complete_shape(const AttrReader& r, const std::string& name, Shape* given,
                    const Shape& expected, const std::string& meaning) {
  bool ok = given->empty() || given->size() == expected.size();
  for (size_t i = 0; ok && i < given->size(); ++i)
    ok = !dim_known((*given)[i]) || (*given)[i] == expected[i];
  if (!ok)
    r.fail("input '" + name + "' has shape " + shape_str(*given) + " but " + shape_str(expected) +
           " = " + meaning + " was expected");
  *given = expected;
}

}  // namespace dcnv2_mx
