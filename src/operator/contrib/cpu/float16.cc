/*!
 * \file float16.cc
 * \brief float16 conversion by bit manipulation: C++17 has no float16 type, and the compilers'
 *        _Float16 is missing on x86-64 before GCC 12, which the library still builds with.
 *        Both directions are exact to IEEE 754 (round to nearest even), as NumPy and MXNet
 *        convert; tests/test_float16_cpu.py checks every float16 value and the rounding ties.
 */
#include "float16.h"

#include <cstring>

#include "threads.h"

namespace dcnv2_mx {
namespace cpu {

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return float_of(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float32.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

uint16_t float_to_half(float value) {
  uint32_t f = bits_of(value);
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  f &= 0x7fffffffu;
  uint16_t h;
  if (f >= 0x47800000u) {  // |value| >= 2^16, inf or NaN: inf, or a quiet NaN
    h = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (f < 0x38800000u) {  // below 2^-14: a subnormal float16 or zero
    // Adding 0.5 puts the float16 subnormal's bits at the bottom of the float32 mantissa,
    // rounded to nearest even by the float32 addition itself.
    h = static_cast<uint16_t>(bits_of(float_of(f) + 0.5f) - 0x3f000000u);
  } else {
    // Rebias the exponent and round the 13 dropped bits to nearest even; a carry out of the
    // mantissa increments the exponent, up to inf.
    const uint32_t odd = (f >> 13) & 1u;
    h = static_cast<uint16_t>((f - 0x38000000u + 0xfffu + odd) >> 13);
  }
  return h | sign;
}

}  // namespace

void to_float32(const Float16* src, index_t count, float* dst) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (index_t i = 0; i < count; ++i) dst[i] = half_to_float(src[i].bits);
}

void to_float16(const float* src, index_t count, Float16* dst) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (index_t i = 0; i < count; ++i) dst[i] = Float16{float_to_half(src[i])};
}

}  // namespace cpu
}  // namespace dcnv2_mx
