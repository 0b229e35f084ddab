/*!
 * \file deformable_conv_kernel.h
 * \brief Device-independent description of one deformable convolution call and the kernel entry
 *        points. The kernels take raw pointers and know nothing of MXNet, so they can be driven
 *        from a test harness as well as from the operator registration.
 */
#ifndef DCNV2_MX_DEFORMABLE_CONV_KERNEL_H_
#define DCNV2_MX_DEFORMABLE_CONV_KERNEL_H_

#include <cstddef>
#include <stdexcept>
#include <string>

#include "common/bilinear.h"
#include "common/scratch.h"

namespace dcnv2_mx {

/*! \brief Sizes of one call. Shapes are NCHW; `K` = kernel_h * kernel_w taps. */
struct DeformConvGeometry {
  index_t batch, channels, height, width;
  index_t filters, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilate_h, dilate_w;
  int groups, deformable_groups;
  bool modulated;

  DCN_HD index_t taps() const { return static_cast<index_t>(kernel_h) * kernel_w; }
  DCN_HD index_t in_plane() const { return height * width; }
  DCN_HD index_t out_plane() const { return out_h * out_w; }
  DCN_HD index_t channels_per_dgroup() const { return channels / deformable_groups; }
  DCN_HD index_t channels_per_group() const { return channels / groups; }
  DCN_HD index_t filters_per_group() const { return filters / groups; }
  /*! \brief Rows of the column matrix of one convolution group: (C / G) * K. */
  DCN_HD index_t col_rows_per_group() const { return channels_per_group() * taps(); }
  /*! \brief Channels of the offset input: 2 * dg * K, interleaved (dy, dx) per tap. */
  DCN_HD index_t offset_channels() const { return 2 * deformable_groups * taps(); }
  DCN_HD index_t mask_channels() const { return deformable_groups * taps(); }
  /*! \brief Row (column) of the map under tap row i (column j) at output row ho (column wo). */
  DCN_HD index_t tap_origin_y(index_t ho, index_t i) const {
    return ho * stride_h - pad_h + i * dilate_h;
  }
  DCN_HD index_t tap_origin_x(index_t wo, index_t j) const {
    return wo * stride_w - pad_w + j * dilate_w;
  }
};

/*!
 * \brief The sample of tap k of deformable group `dgroup` at output pixel `pix` = ho * out_w + wo
 *        of one image (the CUDA kernels; the CPU builds whole output rows of samples at once).
 *
 * `offset_n` and `mask_n` point at the image's offset (2*dg*K, Ho*Wo) and mask (dg*K, Ho*Wo)
 * planes; `mask_n` may be null (DCNv1, modulation 1). The modulation is returned in `*m`.
 */
template <typename T, typename Acc>
DCN_HD BilinearSample<Acc> tap_sample(const DeformConvGeometry& g, const T* offset_n,
                                      const T* mask_n, index_t dgroup, index_t k, index_t pix,
                                      Acc* m) {
  const index_t plane = g.out_plane(), ho = pix / g.out_w, i = k / g.kernel_w;
  const index_t ch = dgroup * 2 * g.taps() + 2 * k;
  const Acc dy = static_cast<Acc>(offset_n[ch * plane + pix]);
  const Acc dx = static_cast<Acc>(offset_n[(ch + 1) * plane + pix]);
  const Acc py = static_cast<Acc>(g.tap_origin_y(ho, i)) + dy;
  const Acc px = static_cast<Acc>(g.tap_origin_x(pix - ho * g.out_w, k - i * g.kernel_w)) + dx;
  *m = mask_n ? static_cast<Acc>(mask_n[(dgroup * g.taps() + k) * plane + pix]) : Acc(1);
  return make_sample<Acc>(py, px, static_cast<int>(g.height), static_cast<int>(g.width));
}

/*! \brief Inputs and outputs of one forward call (device pointers on the call's device). */
template <typename T>
struct DeformConvForwardArgs {
  const T* data;    //!< (N, C, H, W)
  const T* offset;  //!< (N, 2*dg*K, Ho, Wo)
  const T* mask;    //!< (N, dg*K, Ho, Wo), null for DCNv1
  const T* weight;  //!< (F, C/G, kh, kw)
  const T* bias;    //!< (F,) or null
  T* out;           //!< (N, F, Ho, Wo)
};

/*! \brief Gradients to produce in one backward call; a null pointer skips that gradient. */
template <typename T>
struct DeformConvBackwardArgs {
  const T* out_grad;  //!< (N, F, Ho, Wo)
  DeformConvForwardArgs<T> in;  //!< the forward inputs (out unused)
  T* data_grad;
  T* offset_grad;
  T* mask_grad;
  T* weight_grad;
  T* bias_grad;
};

/*!
 * \brief Tiling of a CPU call: the output pixels of a block of `images` whole images are split
 *        into one contiguous share per thread, which each of `threads` threads takes in tiles of
 *        at most `tile` pixels with its own buffers.
 */
struct CpuTilePlan {
  index_t tile;          //!< output pixels per tile of one thread
  index_t images;        //!< images per block, whose pixels the threads share
  int threads;           //!< OpenMP threads of the call
  size_t scratch_bytes;  //!< scratch memory the call needs
  /*!
   * \brief The block's images are copied pixel-major and each backward thread sums its own
   *        image gradient (the fast path). False when those copies do not fit `workspace`: the
   *        kernels then read the NCHW input itself and scatter into the data gradient directly,
   *        each thread owning a range of its channels, so scratch no longer grows with the image.
   */
  bool image_copies = true;
  /*!
   * \brief Each pixel's columns are in the weight's own (C/G, K) order, so that the GEMMs read
   *        the operator's (F, C/G, K) weight as it is (the forward's transposed), set for calls
   *        with few output pixels per filter. Otherwise the columns are (K, C/G) and the call
   *        rearranges the weight for its GEMMs: a pass over the whole weight that costs more
   *        than the slower transposed GEMM saves when the weight is large beside the pixels
   *        (ResNet's 7 x 7 layers: 512 x 512 x 3 x 3 weights, 49 pixels an image).
   */
  bool channel_major = false;
};

/*!
 * \brief Throws the error for a call whose smallest tiling needs `needed_bytes` of scratch: it
 *        names `workspace` when that is the limit, or MXNet's 2 GiB per temporary allocation
 *        when `budget_bytes` would have been enough.
 */
[[noreturn]] inline void throw_workspace_too_small(size_t budget_bytes, size_t needed_bytes) {
  const std::string needed = std::to_string(needed_bytes) + " bytes (" +
                             std::to_string((needed_bytes + (1 << 20) - 1) >> 20) + " MiB)";
  if (needed_bytes <= budget_bytes)
    throw std::invalid_argument(
        "this input needs " + needed + " of scratch memory at least, more than the 2 GiB that "
        "MXNet's extension API can give a GPU operator in one temporary allocation "
        "(OpResource::alloc_gpu takes an int): use fewer channels or smaller kernels per call");
  throw std::invalid_argument("parameter 'workspace' (" + std::to_string(budget_bytes >> 20) +
                              " MiB) is too small: this input needs " + needed +
                              " of scratch memory at least; raise 'workspace'");
}

/*!
 * \brief Tiling and scratch size of a CPU call whose scratch fits `budget_bytes` together with
 *        `reserved_bytes` that its caller takes from the same budget. Throws
 *        std::invalid_argument naming `workspace` when not even one pixel per tile fits.
 */
template <typename T>
CpuTilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward, size_t budget_bytes,
                                 size_t reserved_bytes = 0);
template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const CpuTilePlan& plan, Scratch scratch);
template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              const CpuTilePlan& plan, Scratch scratch);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_DEFORMABLE_CONV_KERNEL_H_
