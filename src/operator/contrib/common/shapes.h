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

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "attrs.h"

namespace dcnv2_mx {

/*! \brief A shape as shape inference sees it (MXNet's extension API: 32-bit dimensions). */
using Shape = std::vector<unsigned>;
/*! \brief A shape as a forward or backward call sees it. */
using Shape64 = std::vector<int64_t>;

/*! \brief "(2, 18, 5, 5)", with "?" for unknown dimensions. */
std::string shape_str(const Shape& s);
std::string shape_str(const Shape64& s);

/*!
 * \brief True if the product of `factors` (each >= 0) is at most `limit`, computed without
 *        overflow: derived sizes are checked with it before anything multiplies them.
 */
bool product_at_most(std::initializer_list<int64_t> factors, int64_t limit);

/*! \brief Whether a dimension is known (0 included: an empty dimension under numpy shapes). */
bool dim_known(unsigned d);

/*! \brief True if every dimension of a shape of `ndim` dimensions is known. */
bool shape_known(const Shape& s, size_t ndim);

/*! \brief What a forward or backward call knows of one of its tensors. */
struct TensorInfo {
  Shape64 shape;
  std::string dtype;        //!< "float32", ...
  std::string device_type;  //!< "cpu" or "gpu"
  int device_id = 0;
  uintptr_t address = 0;  //!< where its memory starts on its device
  size_t bytes = 0;       //!< its memory's size (0: nothing that could overlap)
};

/*!
 * \brief What a call expects of one tensor: its role in messages, its shape, and what that shape
 *        is, for the message when a tensor's differs (built only then: calls are checked often).
 */
struct TensorSpec {
  std::string role;
  Shape64 shape;
  /*! \brief The shape's layout, e.g. "(N, C, H, W)"; for a gradient, whose shape is that of the
   *         tensor it is the gradient of, the name of that tensor: "the output", "the input". */
  std::string meaning;
  bool gradient = false;

  /*! \brief "(1, 18, 5, 5) = (N, ...) was expected", or for a gradient "the output is (2, 4, 5,
   *         5)". */
  std::string expectation() const;
};

/*! \brief The spec of input `name`: "input 'offset' ... (1, 18, 5, 5) = `meaning` was expected". */
TensorSpec input_spec(const std::string& name, const Shape64& shape, std::string meaning);

/*! \brief A shape of dimensions that shape inference can pass (each checked to be < 2^31). */
Shape to_shape(const Shape64& shape);

/*!
 * \brief Completes the unknown dimensions of an input's shape `given` from its spec, or throws
 *        (through `r`) naming the input, its shape and the expected one.
 */
void complete_shape(const AttrReader& r, const TensorSpec& spec, Shape* given);

/*!
 * \brief Throws (through `r`) unless a call of an operator with `forward_inputs` inputs and one
 *        output has as many tensors as it should: forward, the inputs and the output; backward,
 *        the output gradient, the inputs and the output, and a gradient per input. MXNet
 *        decides their number, and nothing may index past it.
 */
void check_tensor_counts(const AttrReader& r, bool backward, size_t inputs, size_t outputs,
                         int forward_inputs);

/*!
 * \brief Checks every tensor of a call against the specs of the forward inputs and output, before
 *        any kernel reads memory: each must be on a `device_type` device, the device of the
 *        (forward) data input, have its dtype, and have exactly its expected shape; and what the
 *        call writes (`outputs`) must not share memory with any other of its tensors, as the
 *        kernels read the inputs while they write (an `out=` array over an input). A forward
 *        call's tensors are the inputs, then the output; a backward call's are the output
 *        gradient (head gradient), the forward inputs and the forward output, then the gradients
 *        of the forward inputs. Throws (through `r`) naming the first tensor that does not
 *        match. The tensor counts must have been checked (check_tensor_counts).
 */
void check_call_tensors(const AttrReader& r, bool backward, const std::string& device_type,
                        const std::vector<TensorInfo>& inputs,
                        const std::vector<TensorInfo>& outputs,
                        const std::vector<TensorSpec>& input_specs, const TensorSpec& output_spec);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_SHAPES_H_
