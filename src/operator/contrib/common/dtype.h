/*!
 * \file dtype.h
 * \brief The element types of the operators' tensors: MXNet's dtype codes, the one switch from
 *        a code to a C++ type, and float16's storage on the CPU.
 */
#ifndef DCNV2_MX_COMMON_DTYPE_H_
#define DCNV2_MX_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace dcnv2_mx {

/*! \brief MXNet's dtype codes (mshadow's), as a call gives them; ext_util.cc checks they agree. */
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kUint8 = 3,
  kInt32 = 4,
  kInt8 = 5,
  kInt64 = 6,
};

/*! \brief Name of a dtype code, for messages. */
inline const char* dtype_name(int dtype) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kUint8: return "uint8";
    case DType::kInt32: return "int32";
    case DType::kInt8: return "int8";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

/*! \brief Whether the operators take tensors of `dtype` (float32, float64, float16). */
inline bool is_float_dtype(int dtype) {
  return dtype == static_cast<int>(DType::kFloat32) ||
         dtype == static_cast<int>(DType::kFloat64) ||
         dtype == static_cast<int>(DType::kFloat16);
}

/*! \brief Bytes of one element of a float dtype (is_float_dtype). */
inline size_t float_dtype_size(int dtype) {
  return dtype == static_cast<int>(DType::kFloat64) ? 8
         : dtype == static_cast<int>(DType::kFloat16) ? 2
                                                        : 4;
}

/*!
 * \brief An IEEE binary16 element in CPU memory: storage only. The CPU computes float16 calls
 *        in float32 (cpu/float16.h converts), so it needs no arithmetic on it.
 */
struct Float16 {
  uint16_t bits;
};
static_assert(sizeof(Float16) == 2, "Float16 is NumPy's and MXNet's 2-byte float16");

/*!
 * \brief Calls body(T{}) with T the C++ type of `dtype` on `Device` (float, double, or the
 *        device's float16 type Device::Half); throws std::invalid_argument naming the dtype
 *        otherwise.
 */
template <typename Device, typename Body>
void dispatch_dtype(int dtype, Body&& body) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: return body(float{});
    case DType::kFloat64: return body(double{});
    case DType::kFloat16: return body(typename Device::Half{});
    default:
      throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) +
                                  " is not supported on " + Device::kName +
                                  " (use float32, float64 or float16)");
  }
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_DTYPE_H_
