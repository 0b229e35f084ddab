/*!
 * \file shapes.h
 * \brief Shape checks shared by the operators' shape inference.
 *
 * MXNet hands a library operator an unknown dimension as -1, which arrives as UINT_MAX, and an
 * unknown shape as an empty vector, whatever its shape semantics: under the legacy ones
 * (mx.util.set_np_shape(False), the default) MXNet turns every 0 into -1 before it asks an
 * operator to infer shapes, so a 0 reaches us only under numpy shape semantics, where it is a
 * real, empty dimension.
 */
#ifndef DCNV2_MX_COMMON_SHAPES_H_
#define DCNV2_MX_COMMON_SHAPES_H_

#include <string>
#include <vector>

#include "attrs.h"

namespace dcnv2_mx {

using Shape = std::vector<unsigned>;

/*! \brief "(2, 18, 5, 5)", with "?" for unknown dimensions. */
std::string shape_str(const Shape& s);

/*! \brief Whether a dimension is known (0 included: an empty dimension under numpy shapes). */
bool dim_known(unsigned d);

/*! \brief True if every dimension of a shape of `ndim` dimensions is known. */
bool shape_known(const Shape& s, size_t ndim);

/*!
 * \brief Completes the unknown dimensions of input `name` from `expected`, or throws (through
 *        `r`) naming the input, its shape, the expected shape and what it means.
 */
void complete_shape(const AttrReader& r, const std::string& name, Shape* given,
                    const Shape& expected, const std::string& meaning);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_SHAPES_H_
