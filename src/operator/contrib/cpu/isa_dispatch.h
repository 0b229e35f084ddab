/*!
 * \file isa_dispatch.h
 * \brief The CPU kernels, compiled once per instruction set, and the choice among them.
 *
 * A portable x86-64 build (the default) compiles the library for x86-64-v2 and the kernel files
 * (deformable_conv_cpu.cc, psroi_pooling_cpu.cc) twice more, for x86-64-v3 (AVX2, FMA) and
 * x86-64-v4 (AVX-512), each build into its own namespace (DCNV2_MX_ISA_NAMESPACE, set by
 * CMakeLists.txt). isa_dispatch.cc defines the kernel entry points of deformable_conv_kernel.h
 * and psroi_pooling_kernel.h by forwarding to the build for the widest instruction set that the
 * running CPU supports, chosen once when the library loads. Other builds (DCNV2_MX_NATIVE, other
 * processors) compile the kernels once, into isa_single. Why namespaces: every function of a
 * kernel build gets its own symbol, so the linker never merges one build's copy into another.
 */
#ifndef DCNV2_MX_CPU_ISA_DISPATCH_H_
#define DCNV2_MX_CPU_ISA_DISPATCH_H_

#include <cstddef>
#include <string>

#include "../deformable_conv_kernel.h"
#include "../psroi_pooling_kernel.h"

/*! \brief The kernel entry points of the build in namespace `isa` (defined by the kernel files). */
#define DCNV2_MX_DECLARE_CPU_KERNELS(isa)                                                      \
  namespace isa {                                                                             \
  template <typename T>                                                                       \
  CpuTilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward,                \
                                   size_t budget_bytes, size_t reserved_bytes);               \
  template <typename T>                                                                       \
  void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a, \
                               const CpuTilePlan& plan, Scratch scratch);                     \
  template <typename T>                                                                       \
  void deform_conv_backward_cpu(const DeformConvGeometry& g,                                  \
                                const DeformConvBackwardArgs<T>& a, const CpuTilePlan& plan,  \
                                Scratch scratch);                                             \
  template <typename T>                                                                       \
  void psroi_pool_forward_cpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a);  \
  template <typename T>                                                                       \
  void psroi_pool_backward_cpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a); \
  }

/*! \brief Explicit instantiations of the entry points, in the namespace where they appear. */
#define DCNV2_MX_INSTANTIATE_CONV_KERNELS(T)                                                   \
  template CpuTilePlan plan_deform_conv_cpu<T>(const DeformConvGeometry&, bool, size_t,       \
                                               size_t);                                        \
  template void deform_conv_forward_cpu<T>(const DeformConvGeometry&,                          \
                                           const DeformConvForwardArgs<T>&, const CpuTilePlan&, \
                                           Scratch);                                           \
  template void deform_conv_backward_cpu<T>(const DeformConvGeometry&,                         \
                                            const DeformConvBackwardArgs<T>&,                  \
                                            const CpuTilePlan&, Scratch);
#define DCNV2_MX_INSTANTIATE_POOL_KERNELS(T)                                                   \
  template void psroi_pool_forward_cpu<T>(const PSROIPoolGeometry&,                            \
                                          const PSROIPoolForwardArgs<T>&);                     \
  template void psroi_pool_backward_cpu<T>(const PSROIPoolGeometry&,                           \
                                           const PSROIPoolBackwardArgs<T>&);

namespace dcnv2_mx {

#if DCNV2_MX_CPU_DISPATCH
DCNV2_MX_DECLARE_CPU_KERNELS(isa_x86_64_v2)
DCNV2_MX_DECLARE_CPU_KERNELS(isa_x86_64_v3)
DCNV2_MX_DECLARE_CPU_KERNELS(isa_x86_64_v4)
#else
DCNV2_MX_DECLARE_CPU_KERNELS(isa_single)
#endif

namespace cpu {

/*!
 * \brief Chooses the kernels' instruction set: the widest this CPU supports, or the one the
 *        environment variable DCNV2_MX_CPU_ISA names (x86-64-v2, -v3 or -v4; for tests and
 *        comparisons). Called from initialize(); returns an error message, empty on success.
 */
std::string init_isa();

/*! \brief The chosen instruction set, e.g. "x86-64-v3 (AVX2, FMA)". */
const char* isa_name();

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_ISA_DISPATCH_H_
