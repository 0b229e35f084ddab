/*!
 * \file float16.h
 * \brief float16 <-> float32 conversion of whole tensors on the CPU, which computes float16
 *        calls in float32 (common/op_adapter.h).
 */
#ifndef DCNV2_MX_CPU_FLOAT16_H_
#define DCNV2_MX_CPU_FLOAT16_H_

#include "../common/dtype.h"
#include "../common/host_device.h"

namespace dcnv2_mx {
namespace cpu {

/*! \brief dst[i] = src[i] for i < count, exactly (every float16 is a float32). */
void to_float32(const Float16* src, index_t count, float* dst);

/*! \brief dst[i] = src[i] rounded to nearest even float16 (overflow to inf, NaN stays NaN). */
void to_float16(const float* src, index_t count, Float16* dst);

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_FLOAT16_H_
