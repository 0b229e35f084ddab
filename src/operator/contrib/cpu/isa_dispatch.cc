#include "isa_dispatch.h"

#include <cstdlib>

#if DCNV2_MX_CPU_DISPATCH
#include <cpuid.h>  // x86 only, as dispatch is
#endif

namespace dcnv2_mx {

namespace cpu {

namespace {

/*! \brief The kernel builds of this library, narrowest first. */
enum class Isa { kX86_64_v2, kX86_64_v3, kX86_64_v4, kSingle };

#if DCNV2_MX_CPU_DISPATCH
Isa chosen = Isa::kX86_64_v2;

/*! \brief CPUID's F16C bit: clang 14's __builtin_cpu_supports does not know "f16c". */
bool has_f16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}

/*! \brief The widest level this CPU (and its OS, which must save the wider registers) runs. */
Isa widest_supported() {
  __builtin_cpu_init();
  // The features of each level that compilers use for vector code; every CPU with these has
  // the rest of its level (LZCNT, MOVBE, ...).
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && has_f16c();
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  return v4 ? Isa::kX86_64_v4 : v3 ? Isa::kX86_64_v3 : Isa::kX86_64_v2;
}
#else
const Isa chosen = Isa::kSingle;
#endif

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::kX86_64_v2: return "x86-64-v2";
    case Isa::kX86_64_v3: return "x86-64-v3 (AVX2, FMA)";
    case Isa::kX86_64_v4: return "x86-64-v4 (AVX-512)";
    default: break;
  }
#if DCNV2_MX_CPU_DISPATCH
  return "unknown";
#else
  return DCNV2_MX_ISA_NAME;  // CMakeLists.txt: what the single build targets
#endif
}

}  // namespace

std::string init_isa() {
  const char* requested = std::getenv("DCNV2_MX_CPU_ISA");
  const std::string wanted = requested ? requested : "";
#if DCNV2_MX_CPU_DISPATCH
  const Isa widest = widest_supported();
  chosen = widest;
  if (wanted.empty()) return "";
  const Isa levels[] = {Isa::kX86_64_v2, Isa::kX86_64_v3, Isa::kX86_64_v4};
  const char* level_names[] = {"x86-64-v2", "x86-64-v3", "x86-64-v4"};
  for (int i = 0; i < 3; ++i)
    if (wanted == level_names[i]) {
      if (levels[i] > widest)
        return "DCNV2_MX_CPU_ISA=" + wanted + ": this CPU supports at most " + name_of(widest);
      chosen = levels[i];
      return "";
    }
  return "DCNV2_MX_CPU_ISA=" + wanted + " is not one of x86-64-v2, x86-64-v3, x86-64-v4";
#else
  if (wanted.empty()) return "";
  return "DCNV2_MX_CPU_ISA=" + wanted + ": this library has one build of its kernels (" +
         DCNV2_MX_ISA_NAME + "); only the portable x86-64 build can choose";
#endif
}

const char* isa_name() { return name_of(chosen); }

}  // namespace cpu

// Forwards to the chosen build of `function`.
#if DCNV2_MX_CPU_DISPATCH
#define DCNV2_MX_CALL_CHOSEN(function, ...)                                 \
  switch (cpu::chosen) {                                                  \
    case cpu::Isa::kX86_64_v4: return isa_x86_64_v4::function(__VA_ARGS__); \
    case cpu::Isa::kX86_64_v3: return isa_x86_64_v3::function(__VA_ARGS__); \
    default: return isa_x86_64_v2::function(__VA_ARGS__);                   \
  }
#else
#define DCNV2_MX_CALL_CHOSEN(function, ...) return isa_single::function(__VA_ARGS__)
#endif

template <typename T>
CpuTilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward, size_t budget_bytes,
                                 size_t reserved_bytes) {
  DCNV2_MX_CALL_CHOSEN(plan_deform_conv_cpu<T>, g, backward, budget_bytes, reserved_bytes);
}

template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const CpuTilePlan& plan, Scratch scratch) {
  DCNV2_MX_CALL_CHOSEN(deform_conv_forward_cpu<T>, g, a, plan, scratch);
}

template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              const CpuTilePlan& plan, Scratch scratch) {
  DCNV2_MX_CALL_CHOSEN(deform_conv_backward_cpu<T>, g, a, plan, scratch);
}

template <typename T>
void psroi_pool_forward_cpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a) {
  DCNV2_MX_CALL_CHOSEN(psroi_pool_forward_cpu<T>, g, a);
}

template <typename T>
void psroi_pool_backward_cpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  DCNV2_MX_CALL_CHOSEN(psroi_pool_backward_cpu<T>, g, a);
}

DCNV2_MX_INSTANTIATE_CONV_KERNELS(float)
DCNV2_MX_INSTANTIATE_CONV_KERNELS(double)
DCNV2_MX_INSTANTIATE_POOL_KERNELS(float)
DCNV2_MX_INSTANTIATE_POOL_KERNELS(double)

}  // namespace dcnv2_mx
