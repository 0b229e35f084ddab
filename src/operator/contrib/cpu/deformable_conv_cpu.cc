/*!
 * \file deformable_conv_cpu.cc
 * \brief OpenMP + BLAS deformable convolution (DCNv2 and DCNv1), forward and backward.
 *
 * Layout: images are copied pixel-major (HW, C), so the four bilinear corners of a sample are
 * four contiguous channel vectors and every sampling loop vectorises over channels. The column
 * matrix of a tile is pixel-major as well, colT (pixels, G, K, C/G), and the GEMMs read it
 * transposed; the weight is permuted to (G, F/G, K, C/G) to match.
 *
 * Tiles: a tile is a block of output pixels of one image, or several whole images when images
 * are small, so that the column tile stays in cache and a call runs few parallel regions (each
 * region ends in a barrier, which is what costs when other processes share the cores). The
 * scratch memory of a call stays within the `workspace` bound. Per tile:
 *  1. the bilinear sample of every (image, deformable group, tap, pixel) is computed once and
 *     reused for all channels of the group;
 *  2. im2col fills colT;
 *  3. GEMMs write straight into the output, each thread a block of the tile's pixels.
 * Backward recomputes the samples, forms the column gradient by GEMMs, and reduces it without
 * atomics: over channels for the offset and mask gradients (one task per group, tap and pixel
 * chunk) and over taps and pixels for the data gradient (each thread owns a block of channels);
 * the weight gradient is split by columns, each accumulated over the tile's images in order.
 * Every output element is written by one thread in a fixed order, so results are bit-identical
 * across runs.
 */
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "../deformable_conv_kernel.h"
#include "blas.h"
#include "threads.h"

namespace dcnv2_mx {

namespace {

/*! \brief Column tile size the planner aims at: it stays in a core's cache for the GEMM. */
constexpr size_t kTargetTileBytes = size_t(4) << 20;

/*! \brief Pixels per task of the sampling loops: enough work per task, little imbalance. */
constexpr index_t kPixelChunk = 16;

/*! \brief Granularity of the GEMM splits: a multiple of the BLAS kernels' vector width. */
constexpr index_t kGemmAlign = 16;

/*! \brief This thread's share of [0, count) in blocks of `align` (inside a parallel region). */
inline void thread_share(index_t count, index_t align, index_t* begin, index_t* end) {
  const index_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
  const index_t blocks = (count + align - 1) / align;
  *begin = std::min(count, blocks * thread / threads * align);
  *end = std::min(count, blocks * (thread + 1) / threads * align);
}

/*! \brief Pixels [p0, p0 + np) of each of images [n0, n1); tile pixel t is image n0 + t / np. */
struct Tile {
  index_t n0, n1, p0, np;
  index_t pixels() const { return (n1 - n0) * np; }
};

/*! \brief Sub-buffers of one call's scratch block. */
template <typename T, typename Acc>
struct Buffers {
  T* images;                     //!< (images per tile, HW, C), pixel-major
  T* image_grads;                //!< the same for their gradients (backward)
  T* weight;                     //!< (G, F/G, K, C/G): the permuted weight
  T* weight_grad;                //!< the same for its gradient (backward)
  BilinearSample<Acc>* samples;  //!< (dg, K, tile pixels)
  Acc* modulation;               //!< (dg, K, tile pixels)
  T* col;                        //!< (tile pixels, G, K, C/G)
  T* col_grad;                   //!< the same for its gradient (backward)

  Buffers(const DeformConvGeometry& g, const TilePlan& plan, Scratch scratch, bool backward) {
    ScratchCarver carver(scratch);
    const size_t pixels = static_cast<size_t>(plan.images * plan.tile);
    const size_t images_n = static_cast<size_t>(plan.images * g.channels * g.in_plane());
    const size_t weight_n = static_cast<size_t>(g.filters * g.col_rows_per_group());
    const size_t samples_n = static_cast<size_t>(g.deformable_groups * g.taps()) * pixels;
    const size_t col_n = static_cast<size_t>(g.channels * g.taps()) * pixels;
    images = carver.take<T>(images_n);
    weight = carver.take<T>(weight_n);
    samples = carver.take<BilinearSample<Acc>>(samples_n);
    modulation = carver.take<Acc>(samples_n);
    col = carver.take<T>(col_n);
    image_grads = backward ? carver.take<T>(images_n) : nullptr;
    weight_grad = backward ? carver.take<T>(weight_n) : nullptr;
    col_grad = backward ? carver.take<T>(col_n) : nullptr;
  }
};

/*! \brief dst (cols, rows) = src (rows, cols)^T for `count` matrices, in cache-sized blocks. */
template <typename T>
void transpose(const T* src, index_t count, index_t rows, index_t cols, T* dst) {
  constexpr index_t kBlock = 32;
  const index_t row_blocks = (rows + kBlock - 1) / kBlock, col_blocks = (cols + kBlock - 1) / kBlock;
  const index_t per_matrix = row_blocks * col_blocks;
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t b = 0; b < count * per_matrix; ++b) {
    const index_t m = b / per_matrix, block = b - m * per_matrix;
    const index_t r0 = (block / col_blocks) * kBlock, c0 = (block % col_blocks) * kBlock;
    const index_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
    const T* s = src + m * rows * cols;
    T* d = dst + m * rows * cols;
    for (index_t c = c0; c < c1; ++c)
      for (index_t r = r0; r < r1; ++r) d[c * rows + r] = s[r * cols + c];
  }
}

/*!
 * \brief Moves a weight between the operator's layout (G, F/G, C/G, K) and the GEMM layout
 *        (G, F/G, K, C/G): both are a transpose of each filter's (C/G, K) block.
 */
template <typename T>
void permute_weight(const DeformConvGeometry& g, const T* src, T* dst, bool to_gemm_layout) {
  if (to_gemm_layout)
    transpose(src, g.filters, g.channels_per_group(), g.taps(), dst);
  else
    transpose(src, g.filters, g.taps(), g.channels_per_group(), dst);
}

/*!
 * \brief Calls body(c0, c1, dgroup, col_offset) for each maximal run of channels in [begin, end)
 *        that shares a deformable group and a convolution group; `col_offset` is the position of
 *        channel c0, tap 0, within a row of colT (channels of a run are contiguous there).
 */
template <typename Body>
void for_channel_runs(const DeformConvGeometry& g, index_t begin, index_t end, Body&& body) {
  const index_t cpd = g.channels_per_dgroup(), cg = g.channels_per_group(), K = g.taps();
  for (index_t c0 = begin; c0 < end;) {
    const index_t dgroup = c0 / cpd, grp = c0 / cg;
    const index_t c1 = std::min(end, std::min((dgroup + 1) * cpd, (grp + 1) * cg));
    body(c0, c1, dgroup, grp * K * cg + (c0 - grp * cg));
    c0 = c1;
  }
}

/*! \brief Offset (and mask) planes of image n. */
template <typename T>
const T* image_offset(const DeformConvGeometry& g, const T* offset, index_t n) {
  return offset + n * g.offset_channels() * g.out_plane();
}
template <typename T>
const T* image_mask(const DeformConvGeometry& g, const T* mask, index_t n) {
  return mask ? mask + n * g.mask_channels() * g.out_plane() : nullptr;
}

/*!
 * \brief Samples of every tile pixel for every deformable group and tap. Pixel coordinates are
 *        stepped, not divided out, per sample: 64-bit divisions would dominate this loop.
 */
template <typename T, typename Acc>
void build_samples(const DeformConvGeometry& g, const T* offset, const T* mask, const Tile& tile,
                   const Buffers<T, Acc>& buf) {
  const index_t pixels = tile.pixels(), chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const index_t rows = g.deformable_groups * g.taps();
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t task = 0; task < rows * chunks; ++task) {
    const index_t row = task / chunks, chunk = task - row * chunks;  // row = dgroup * K + k
    const index_t dgroup = row / g.taps(), k = row - dgroup * g.taps();
    const index_t i = k / g.kernel_w, j = k - i * g.kernel_w;
    const index_t tb = chunk * kPixelChunk, te = std::min(pixels, tb + kPixelChunk);
    index_t image = tb / tile.np, p = tile.p0 + tb - image * tile.np;
    index_t ho = p / g.out_w, wo = p - ho * g.out_w;
    for (index_t t = tb; t < te; ++t) {
      const index_t n = tile.n0 + image;
      buf.samples[row * pixels + t] =
          tap_sample_at<T, Acc>(g, image_offset(g, offset, n), image_mask(g, mask, n), dgroup, k,
                                i, j, ho, wo, &buf.modulation[row * pixels + t]);
      if (++wo == g.out_w) {
        wo = 0;
        ++ho;
      }
      if (++p == tile.p0 + tile.np) {  // next image of a multi-image tile
        ++image;
        p = tile.p0;
        ho = p / g.out_w;
        wo = p - ho * g.out_w;
      }
    }
  }
}

/*! \brief colT[t, grp, k, c] = m * bilinear(image(t)[c], sample(dgroup(c), k, t)). */
template <typename T, typename Acc>
void im2col(const DeformConvGeometry& g, const Tile& tile, const Buffers<T, Acc>& buf) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t pixels = tile.pixels();
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t t = 0; t < pixels; ++t) {
    const T* image = buf.images + (t / tile.np) * g.in_plane() * C;
    T* col_t = buf.col + t * C * K;
    for (index_t k = 0; k < K; ++k)
      for_channel_runs(g, 0, C, [&](index_t c0, index_t c1, index_t dgroup, index_t col_offset) {
        const index_t srow = (dgroup * K + k) * pixels + t;
        const BilinearSample<Acc> s = buf.samples[srow];  // a local copy stays in registers
        const Acc m = buf.modulation[srow];
        T* out = col_t + col_offset + k * cg;
        for (index_t c = c0; c < c1; ++c)
          out[c - c0] = static_cast<T>(m * gather<T, Acc>(image + c, s, C));
      });
  }
}

/*!
 * \brief Calls body(n, p, t, count) for the runs of this thread's share of the tile's pixels
 *        that lie in one image: pixels [p, p + count) of image n, at tile pixel t.
 */
template <typename Body>
void for_own_pixel_runs(const Tile& tile, Body&& body) {
  index_t begin, end;
  thread_share(tile.pixels(), kGemmAlign, &begin, &end);
  for (index_t t = begin; t < end;) {
    const index_t image = t / tile.np, p = t - image * tile.np;
    const index_t count = std::min(end - t, tile.np - p);
    body(tile.n0 + image, tile.p0 + p, t, count);
    t += count;
  }
}

/*! \brief out[n, :, p] = W x colT[t]^T + bias for every tile pixel. */
template <typename T, typename Acc>
void forward_gemm(const DeformConvGeometry& g, const Tile& tile, const Buffers<T, Acc>& buf,
                  const T* bias, T* out) {
  const index_t P = g.out_plane(), CK = g.channels * g.taps();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
#pragma omp parallel num_threads(cpu::threads())
  for_own_pixel_runs(tile, [&](index_t n, index_t p, index_t t, index_t count) {
    T* out_n = out + n * g.filters * P + p;
    for (int grp = 0; grp < g.groups; ++grp)
      cpu::gemm(false, true, fg, count, rows_g, T(1), buf.weight + grp * fg * rows_g, rows_g,
                buf.col + t * CK + grp * rows_g, CK, T(0), out_n + grp * fg * P, P);
    if (bias)
      for (index_t f = 0; f < g.filters; ++f)
        for (index_t i = 0; i < count; ++i) out_n[f * P + i] += bias[f];
  });
}

/*! \brief weight_grad (+)= sum over the tile's images of dout x colT, split by columns. */
template <typename T, typename Acc>
void weight_grad_gemm(const DeformConvGeometry& g, const Tile& tile, const Buffers<T, Acc>& buf,
                      const T* out_grad, bool accumulate) {
  const index_t P = g.out_plane(), CK = g.channels * g.taps();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
#pragma omp parallel num_threads(cpu::threads())
  {
    index_t begin, end;
    thread_share(rows_g, kGemmAlign, &begin, &end);
    if (begin < end)
      for (index_t n = tile.n0; n < tile.n1; ++n) {
        const T* col = buf.col + (n - tile.n0) * tile.np * CK + begin;
        const bool add = accumulate || n > tile.n0;
        for (int grp = 0; grp < g.groups; ++grp)
          cpu::gemm(false, false, fg, end - begin, tile.np, T(1),
                    out_grad + (n * g.filters + grp * fg) * P + tile.p0, P, col + grp * rows_g,
                    CK, add ? T(1) : T(0), buf.weight_grad + grp * fg * rows_g + begin, rows_g);
      }
  }
}

/*! \brief colT_grad[t] = dout[n, :, p]^T x W for every tile pixel. */
template <typename T, typename Acc>
void col_grad_gemm(const DeformConvGeometry& g, const Tile& tile, const Buffers<T, Acc>& buf,
                   const T* out_grad) {
  const index_t P = g.out_plane(), CK = g.channels * g.taps();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
#pragma omp parallel num_threads(cpu::threads())
  for_own_pixel_runs(tile, [&](index_t n, index_t p, index_t t, index_t count) {
    for (int grp = 0; grp < g.groups; ++grp)
      cpu::gemm(true, false, count, rows_g, fg, T(1), out_grad + (n * g.filters + grp * fg) * P + p,
                P, buf.weight + grp * fg * rows_g, rows_g, T(0),
                buf.col_grad + t * CK + grp * rows_g, CK);
  });
}

/*!
 * \brief Offset and mask gradients of the tile's pixels: sums over the channels of each
 *        deformable group, one task per (deformable group, tap, pixel chunk).
 */
template <typename T, typename Acc>
void position_and_mask_grads(const DeformConvGeometry& g, const Tile& tile,
                             const Buffers<T, Acc>& buf, T* offset_grad, T* mask_grad) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t cpd = g.channels_per_dgroup(), P = g.out_plane(), pixels = tile.pixels();
  const index_t chunks = (pixels + kPixelChunk - 1) / kPixelChunk;
  const index_t tasks = g.deformable_groups * K * chunks;
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t task = 0; task < tasks; ++task) {
    const index_t row = task / chunks, chunk = task - row * chunks;  // row = dgroup * K + k
    const index_t dgroup = row / K, k = row - dgroup * K;
    const index_t tb = chunk * kPixelChunk, te = std::min(pixels, tb + kPixelChunk);
    for (index_t t = tb; t < te; ++t) {
      const index_t n = tile.n0 + t / tile.np, p = tile.p0 + t % tile.np;
      const T* image = buf.images + (n - tile.n0) * g.in_plane() * C;
      const BilinearSample<Acc> s = buf.samples[row * pixels + t];
      Acc sum_y = Acc(0), sum_x = Acc(0), sum_m = Acc(0);
      if (s.valid) {
        const T* dcol_t = buf.col_grad + t * C * K;
        for_channel_runs(g, dgroup * cpd, (dgroup + 1) * cpd,
                         [&](index_t c0, index_t c1, index_t, index_t col_offset) {
          const T* dcol = dcol_t + col_offset + k * cg;
          for (index_t c = c0; c < c1; ++c) {
            const Acc d = static_cast<Acc>(dcol[c - c0]);
            Acc v, dv_dy, dv_dx;
            value_and_position_grad<T, Acc>(image + c, s, &v, &dv_dy, &dv_dx, C);
            sum_y += d * dv_dy;
            sum_x += d * dv_dx;
            sum_m += d * v;
          }
        });
      }
      const Acc m = buf.modulation[row * pixels + t];
      if (offset_grad) {
        T* grad_y = offset_grad + (n * g.offset_channels() + dgroup * 2 * K + 2 * k) * P + p;
        grad_y[0] = static_cast<T>(sum_y * m);
        grad_y[P] = static_cast<T>(sum_x * m);
      }
      if (mask_grad) mask_grad[(n * g.mask_channels() + row) * P + p] = static_cast<T>(sum_m);
    }
  }
}

/*!
 * \brief image_grads += scatter of colT's gradient over the samples.
 *
 * Each thread owns a contiguous block of channels, so no two threads write the same element,
 * and every element receives its contributions in the same (pixel, tap) order whatever the
 * number of threads: the result is bit-identical across runs and thread counts.
 */
template <typename T, typename Acc>
void col2im(const DeformConvGeometry& g, const Tile& tile, const Buffers<T, Acc>& buf) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t pixels = tile.pixels();
#pragma omp parallel num_threads(cpu::threads())
  {
    const index_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const index_t c_begin = C * thread / threads, c_end = C * (thread + 1) / threads;
    for (index_t t = 0; t < pixels; ++t) {
      T* image_grad = buf.image_grads + (t / tile.np) * g.in_plane() * C;
      const T* dcol_t = buf.col_grad + t * C * K;
      for (index_t k = 0; k < K; ++k)
        for_channel_runs(g, c_begin, c_end,
                         [&](index_t c0, index_t c1, index_t dgroup, index_t col_offset) {
          const index_t srow = (dgroup * K + k) * pixels + t;
          const BilinearSample<Acc> s = buf.samples[srow];
          if (!s.valid) return;
          const Acc m = buf.modulation[srow];
          const T* dcol = dcol_t + col_offset + k * cg;
          for (index_t c = c0; c < c1; ++c)
            scatter<T, Acc>(image_grad + c, s, m * static_cast<Acc>(dcol[c - c0]), C);
        });
    }
  }
}

/*! \brief Calls body(tile) for the tiles of a call in order: whole images, or parts of one. */
template <typename Body>
void for_tiles(const DeformConvGeometry& g, const TilePlan& plan, Body&& body) {
  const index_t P = g.out_plane();
  for (index_t n0 = 0; n0 < g.batch; n0 += plan.images) {
    const index_t n1 = std::min(g.batch, n0 + plan.images);
    for (index_t p0 = 0; p0 < P; p0 += plan.tile) body(Tile{n0, n1, p0, std::min(plan.tile, P - p0)});
  }
}

}  // namespace

template <typename T>
TilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward, size_t budget_bytes) {
  using Acc = typename AccType<T>::type;
  const size_t image = static_cast<size_t>(g.channels * g.in_plane()) * sizeof(T);
  const size_t weight = static_cast<size_t>(g.filters * g.col_rows_per_group()) * sizeof(T);
  const size_t col_per_pixel = static_cast<size_t>(g.channels * g.taps()) * sizeof(T);
  const size_t copies = backward ? 2 : 1;  // the gradients of image, weight and column
  const index_t target_pixels = static_cast<index_t>(kTargetTileBytes / col_per_pixel) + 1;
  // Small images: as many whole images per tile as the target allows.
  TilePlan plan = plan_tiles(g, sizeof(T), sizeof(BilinearSample<Acc>) + sizeof(Acc), backward,
                             budget_bytes, target_pixels, copies * (image + weight));
  if (plan.tile == g.out_plane()) {
    const index_t images = std::max<index_t>(1, std::min(g.batch, target_pixels / g.out_plane()));
    for (plan.images = images; plan.images > 1; --plan.images) {
      const size_t bytes = copies * (plan.images * image + weight) +
                           (plan.scratch_bytes - copies * (image + weight)) * plan.images;
      if (bytes <= budget_bytes) {
        plan.scratch_bytes = bytes;
        break;
      }
    }
  }
  return plan;
}

template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const TilePlan& plan, Scratch scratch) {
  using Acc = typename AccType<T>::type;
  Buffers<T, Acc> buf(g, plan, scratch, false);
  const index_t C = g.channels, HW = g.in_plane();
  permute_weight(g, a.weight, buf.weight, true);
  for_tiles(g, plan, [&](const Tile& tile) {
    if (tile.p0 == 0) transpose(a.data + tile.n0 * C * HW, tile.n1 - tile.n0, C, HW, buf.images);
    build_samples<T, Acc>(g, a.offset, a.mask, tile, buf);
    im2col<T, Acc>(g, tile, buf);
    forward_gemm<T, Acc>(g, tile, buf, a.bias, a.out);
  });
}

template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              const TilePlan& plan, Scratch scratch) {
  using Acc = typename AccType<T>::type;
  Buffers<T, Acc> buf(g, plan, scratch, true);
  const index_t P = g.out_plane(), C = g.channels, HW = g.in_plane();
  const bool need_col_grad = a.data_grad || a.offset_grad || a.mask_grad;
  const bool need_images = a.weight_grad || a.offset_grad || a.mask_grad;
  permute_weight(g, a.in.weight, buf.weight, true);
  bool weight_grad_started = false;
  for_tiles(g, plan, [&](const Tile& tile) {
    const index_t images = tile.n1 - tile.n0;
    if (tile.p0 == 0) {
      if (need_images) transpose(a.in.data + tile.n0 * C * HW, images, C, HW, buf.images);
      if (a.data_grad)
        std::memset(buf.image_grads, 0, sizeof(T) * static_cast<size_t>(images * C * HW));
    }
    build_samples<T, Acc>(g, a.in.offset, a.in.mask, tile, buf);
    if (a.weight_grad) {
      im2col<T, Acc>(g, tile, buf);
      weight_grad_gemm<T, Acc>(g, tile, buf, a.out_grad, weight_grad_started);
      weight_grad_started = true;
    }
    if (need_col_grad) {
      col_grad_gemm<T, Acc>(g, tile, buf, a.out_grad);
      if (a.offset_grad || a.mask_grad)
        position_and_mask_grads<T, Acc>(g, tile, buf, a.offset_grad, a.mask_grad);
      if (a.data_grad) col2im<T, Acc>(g, tile, buf);
    }
    if (a.data_grad && tile.p0 + tile.np == P)
      transpose(buf.image_grads, images, HW, C, a.data_grad + tile.n0 * C * HW);
  });
  if (a.weight_grad) permute_weight(g, buf.weight_grad, a.weight_grad, false);
  if (a.bias_grad) {
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
    for (index_t f = 0; f < g.filters; ++f) {
      Acc sum = Acc(0);
      for (index_t n = 0; n < g.batch; ++n) {
        const T* row = a.out_grad + (n * g.filters + f) * P;
        for (index_t p = 0; p < P; ++p) sum += static_cast<Acc>(row[p]);
      }
      a.bias_grad[f] = static_cast<T>(sum);
    }
  }
}

#define DCNV2_MX_INSTANTIATE_CPU(T)                                                             \
  template TilePlan plan_deform_conv_cpu<T>(const DeformConvGeometry&, bool, size_t);          \
  template void deform_conv_forward_cpu<T>(const DeformConvGeometry&,                          \
                                           const DeformConvForwardArgs<T>&, const TilePlan&,   \
                                           Scratch);                                           \
  template void deform_conv_backward_cpu<T>(const DeformConvGeometry&,                         \
                                            const DeformConvBackwardArgs<T>&, const TilePlan&, \
                                            Scratch);
DCNV2_MX_INSTANTIATE_CPU(float)
DCNV2_MX_INSTANTIATE_CPU(double)

}  // namespace dcnv2_mx
