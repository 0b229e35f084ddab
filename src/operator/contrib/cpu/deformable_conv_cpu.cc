/*!
 * \file deformable_conv_cpu.cc
 * \brief OpenMP + BLAS deformable convolution (DCNv2 and DCNv1), forward and backward.
 *
 * Layout: each image is first copied pixel-major (HW, C), so the four bilinear corners of a
 * sample are four contiguous channel vectors and every sampling loop vectorises over channels.
 * The column matrix of a tile is kept pixel-major as well, colT (tile, G, K, C/G), and the
 * GEMMs read it transposed; the weight is permuted to (G, F/G, K, C/G) to match.
 *
 * Work is done one image and one tile of output pixels at a time, so the scratch memory stays
 * within the `workspace` bound and a column tile is consumed while still in cache:
 *  1. the bilinear sample of every (deformable group, tap, pixel) is computed once and reused
 *     for all channels of the group;
 *  2. im2col fills colT, one task per pixel chunk;
 *  3. one GEMM per convolution group writes straight into the output.
 * Backward recomputes the samples, forms the column gradient with one GEMM per group, and
 * reduces it without atomics: over channels for the offset and mask gradients (one task per
 * (group, tap, pixel chunk)) and over taps and pixels for the data gradient (each thread owns a
 * block of channels). Every output element is written by one thread in a fixed order, so
 * results are bit-identical across runs.
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

/*! \brief Scratch that a call holds whatever its tile: pixel-major image, permuted weight. */
template <typename T>
size_t fixed_scratch_bytes(const DeformConvGeometry& g, bool backward) {
  const size_t image = static_cast<size_t>(g.channels * g.in_plane()) * sizeof(T);
  const size_t weight = static_cast<size_t>(g.filters * g.col_rows_per_group()) * sizeof(T);
  return backward ? 2 * (image + weight) : image + weight;
}

/*! \brief Sub-buffers of one call's scratch block. */
template <typename T, typename Acc>
struct Buffers {
  T* image;                      //!< (HW, C): the current image, pixel-major
  T* image_grad;                 //!< (HW, C): its gradient (backward)
  T* weight;                     //!< (G, F/G, K, C/G): the permuted weight
  T* weight_grad;                //!< (G, F/G, K, C/G): its gradient (backward)
  BilinearSample<Acc>* samples;  //!< (dg, K, tile)
  Acc* modulation;               //!< (dg, K, tile)
  T* col;                        //!< (tile, G, K, C/G)
  T* col_grad;                   //!< (tile, G, K, C/G) (backward)

  Buffers(const DeformConvGeometry& g, Scratch scratch, index_t tile, bool backward) {
    char* p = static_cast<char*>(scratch.ptr);
    auto take = [&p](size_t count, size_t size) {
      p = reinterpret_cast<char*>(align_up(reinterpret_cast<size_t>(p)));
      char* out = p;
      p += count * size;
      return out;
    };
    const size_t image_n = static_cast<size_t>(g.channels * g.in_plane());
    const size_t weight_n = static_cast<size_t>(g.filters * g.col_rows_per_group());
    const size_t samples_n = static_cast<size_t>(g.deformable_groups * g.taps() * tile);
    const size_t col_n = static_cast<size_t>(g.channels * g.taps() * tile);
    image = reinterpret_cast<T*>(take(image_n, sizeof(T)));
    weight = reinterpret_cast<T*>(take(weight_n, sizeof(T)));
    samples = reinterpret_cast<BilinearSample<Acc>*>(take(samples_n, sizeof(BilinearSample<Acc>)));
    modulation = reinterpret_cast<Acc*>(take(samples_n, sizeof(Acc)));
    col = reinterpret_cast<T*>(take(col_n, sizeof(T)));
    image_grad = backward ? reinterpret_cast<T*>(take(image_n, sizeof(T))) : nullptr;
    weight_grad = backward ? reinterpret_cast<T*>(take(weight_n, sizeof(T))) : nullptr;
    col_grad = backward ? reinterpret_cast<T*>(take(col_n, sizeof(T))) : nullptr;
  }
};

/*! \brief dst (cols, rows) = src (rows, cols)^T, in cache-sized blocks. */
template <typename T>
void transpose(const T* src, index_t rows, index_t cols, T* dst) {
  constexpr index_t kBlock = 32;
  const index_t row_blocks = (rows + kBlock - 1) / kBlock, col_blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t b = 0; b < row_blocks * col_blocks; ++b) {
    const index_t r0 = (b / col_blocks) * kBlock, c0 = (b % col_blocks) * kBlock;
    const index_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
    for (index_t c = c0; c < c1; ++c)
      for (index_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
  }
}

/*!
 * \brief Moves a weight between the operator's layout (G, F/G, C/G, K) and the GEMM layout
 *        (G, F/G, K, C/G): both are a transpose of each filter's (C/G, K) block.
 */
template <typename T>
void permute_weight(const DeformConvGeometry& g, const T* src, T* dst, bool to_gemm_layout) {
  const index_t cg = g.channels_per_group(), K = g.taps(), block = cg * K;
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t f = 0; f < g.filters; ++f) {
    const T* s = src + f * block;
    T* d = dst + f * block;
    for (index_t c = 0; c < cg; ++c)
      for (index_t k = 0; k < K; ++k) {
        if (to_gemm_layout)
          d[k * cg + c] = s[c * K + k];
        else
          d[c * K + k] = s[k * cg + c];
      }
  }
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

/*! \brief Samples of pixels [p0, p0 + np) of one image, for every deformable group and tap. */
template <typename T, typename Acc>
void build_samples(const DeformConvGeometry& g, const T* offset_n, const T* mask_n, index_t p0,
                   index_t np, BilinearSample<Acc>* samples, Acc* modulation) {
  const index_t rows = g.deformable_groups * g.taps();
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t r = 0; r < rows; ++r) {
    const index_t dgroup = r / g.taps(), k = r - dgroup * g.taps();
    for (index_t p = 0; p < np; ++p)
      samples[r * np + p] =
          tap_sample<T, Acc>(g, offset_n, mask_n, dgroup, k, p0 + p, &modulation[r * np + p]);
  }
}

/*! \brief colT[p, grp, k, c] = m * bilinear(image[c], sample(dgroup(c), k, p)). */
template <typename T, typename Acc>
void im2col(const DeformConvGeometry& g, const Buffers<T, Acc>& buf, index_t np) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t p = 0; p < np; ++p) {
    T* col_p = buf.col + p * C * K;
    for (index_t k = 0; k < K; ++k)
      for_channel_runs(g, 0, C, [&](index_t c0, index_t c1, index_t dgroup, index_t col_offset) {
        const index_t srow = (dgroup * K + k) * np + p;
        const BilinearSample<Acc> s = buf.samples[srow];  // a local copy stays in registers
        const Acc m = buf.modulation[srow];
        T* out = col_p + col_offset + k * cg;
        for (index_t c = c0; c < c1; ++c)
          out[c - c0] = static_cast<T>(m * gather<T, Acc>(buf.image + c, s, C));
      });
  }
}

/*!
 * \brief Offset and mask gradients of pixels [p0, p0 + np): sums over the channels of each
 *        deformable group, one task per (deformable group, tap, pixel chunk).
 */
template <typename T, typename Acc>
void position_and_mask_grads(const DeformConvGeometry& g, const Buffers<T, Acc>& buf, index_t p0,
                             index_t np, T* offset_grad_n, T* mask_grad_n) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t cpd = g.channels_per_dgroup(), out_plane = g.out_plane();
  const index_t chunks = (np + kPixelChunk - 1) / kPixelChunk;
  const index_t tasks = g.deformable_groups * K * chunks;
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t t = 0; t < tasks; ++t) {
    const index_t row = t / chunks, chunk = t - row * chunks;  // row = dgroup * K + k
    const index_t dgroup = row / K, k = row - dgroup * K;
    const index_t pb = chunk * kPixelChunk, pe = std::min(np, pb + kPixelChunk);
    T* grad_y = offset_grad_n ? offset_grad_n + (dgroup * 2 * K + 2 * k) * out_plane + p0 : nullptr;
    T* grad_m = mask_grad_n ? mask_grad_n + row * out_plane + p0 : nullptr;
    for (index_t p = pb; p < pe; ++p) {
      const BilinearSample<Acc> s = buf.samples[row * np + p];
      Acc sum_y = Acc(0), sum_x = Acc(0), sum_m = Acc(0);
      if (s.valid) {
        const T* dcol_p = buf.col_grad + p * C * K;
        for_channel_runs(g, dgroup * cpd, (dgroup + 1) * cpd,
                         [&](index_t c0, index_t c1, index_t, index_t col_offset) {
          const T* dcol = dcol_p + col_offset + k * cg;
          for (index_t c = c0; c < c1; ++c) {
            const Acc d = static_cast<Acc>(dcol[c - c0]);
            Acc v, dv_dy, dv_dx;
            value_and_position_grad<T, Acc>(buf.image + c, s, &v, &dv_dy, &dv_dx, C);
            sum_y += d * dv_dy;
            sum_x += d * dv_dx;
            sum_m += d * v;
          }
        });
      }
      const Acc m = buf.modulation[row * np + p];
      if (grad_y) {
        grad_y[p] = static_cast<T>(sum_y * m);
        grad_y[out_plane + p] = static_cast<T>(sum_x * m);
      }
      if (grad_m) grad_m[p] = static_cast<T>(sum_m);
    }
  }
}

/*!
 * \brief image_grad += scatter of colT's gradient over the samples.
 *
 * Each thread owns a contiguous block of channels, so no two threads write the same element,
 * and every element receives its contributions in the same (pixel, tap) order whatever the
 * number of threads: the result is bit-identical across runs and thread counts.
 */
template <typename T, typename Acc>
void col2im(const DeformConvGeometry& g, const Buffers<T, Acc>& buf, index_t np) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
#pragma omp parallel num_threads(cpu::threads())
  {
    const index_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const index_t c_begin = C * thread / threads, c_end = C * (thread + 1) / threads;
    for (index_t p = 0; p < np; ++p) {
      const T* dcol_p = buf.col_grad + p * C * K;
      for (index_t k = 0; k < K; ++k)
        for_channel_runs(g, c_begin, c_end,
                         [&](index_t c0, index_t c1, index_t dgroup, index_t col_offset) {
          const index_t srow = (dgroup * K + k) * np + p;
          const BilinearSample<Acc> s = buf.samples[srow];
          if (!s.valid) return;
          const Acc m = buf.modulation[srow];
          const T* dcol = dcol_p + col_offset + k * cg;
          for (index_t c = c0; c < c1; ++c)
            scatter<T, Acc>(buf.image_grad + c, s, m * static_cast<Acc>(dcol[c - c0]), C);
        });
    }
  }
}

}  // namespace

template <typename T>
TilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward, size_t budget_bytes) {
  using Acc = typename AccType<T>::type;
  const size_t col_bytes_per_pixel = static_cast<size_t>(g.channels * g.taps()) * sizeof(T);
  return plan_tiles(g, sizeof(T), sizeof(BilinearSample<Acc>) + sizeof(Acc), backward,
                    budget_bytes, kTargetTileBytes / col_bytes_per_pixel + 1,
                    fixed_scratch_bytes<T>(g, backward));
}

template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             Scratch scratch, index_t tile) {
  using Acc = typename AccType<T>::type;
  Buffers<T, Acc> buf(g, scratch, tile, false);
  const index_t P = g.out_plane(), C = g.channels, K = g.taps();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  permute_weight(g, a.weight, buf.weight, true);
  for (index_t n = 0; n < g.batch; ++n) {
    const T* offset_n = a.offset + n * g.offset_channels() * P;
    const T* mask_n = a.mask ? a.mask + n * g.mask_channels() * P : nullptr;
    T* out_n = a.out + n * g.filters * P;
    transpose(a.data + n * C * g.in_plane(), C, g.in_plane(), buf.image);
    for (index_t p0 = 0; p0 < P; p0 += tile) {
      const index_t np = std::min(tile, P - p0);
      build_samples<T, Acc>(g, offset_n, mask_n, p0, np, buf.samples, buf.modulation);
      im2col<T, Acc>(g, buf, np);
      for (int grp = 0; grp < g.groups; ++grp)
        cpu::gemm(false, true, fg, np, rows_g, T(1), buf.weight + grp * fg * rows_g, rows_g,
                  buf.col + grp * rows_g, C * K, T(0), out_n + grp * fg * P + p0, P);
    }
    if (a.bias) {
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
      for (index_t f = 0; f < g.filters; ++f)
        for (index_t p = 0; p < P; ++p) out_n[f * P + p] += a.bias[f];
    }
  }
}

template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              Scratch scratch, index_t tile) {
  using Acc = typename AccType<T>::type;
  Buffers<T, Acc> buf(g, scratch, tile, true);
  const index_t P = g.out_plane(), C = g.channels, K = g.taps(), HW = g.in_plane();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  const bool need_col_grad = a.data_grad || a.offset_grad || a.mask_grad;
  const bool need_image = a.weight_grad || a.offset_grad || a.mask_grad;
  permute_weight(g, a.in.weight, buf.weight, true);
  bool weight_grad_started = false;
  for (index_t n = 0; n < g.batch; ++n) {
    const T* offset_n = a.in.offset + n * g.offset_channels() * P;
    const T* mask_n = a.in.mask ? a.in.mask + n * g.mask_channels() * P : nullptr;
    const T* dout_n = a.out_grad + n * g.filters * P;
    if (need_image) transpose(a.in.data + n * C * HW, C, HW, buf.image);
    if (a.data_grad) std::memset(buf.image_grad, 0, sizeof(T) * static_cast<size_t>(C * HW));
    for (index_t p0 = 0; p0 < P; p0 += tile) {
      const index_t np = std::min(tile, P - p0);
      build_samples<T, Acc>(g, offset_n, mask_n, p0, np, buf.samples, buf.modulation);
      if (a.weight_grad) {
        im2col<T, Acc>(g, buf, np);
        for (int grp = 0; grp < g.groups; ++grp)
          cpu::gemm(false, false, fg, rows_g, np, T(1), dout_n + grp * fg * P + p0, P,
                    buf.col + grp * rows_g, C * K, weight_grad_started ? T(1) : T(0),
                    buf.weight_grad + grp * fg * rows_g, rows_g);
        weight_grad_started = true;
      }
      if (!need_col_grad) continue;
      for (int grp = 0; grp < g.groups; ++grp)
        cpu::gemm(true, false, np, rows_g, fg, T(1), dout_n + grp * fg * P + p0, P,
                  buf.weight + grp * fg * rows_g, rows_g, T(0), buf.col_grad + grp * rows_g,
                  C * K);
      if (a.offset_grad || a.mask_grad)
        position_and_mask_grads<T, Acc>(
            g, buf, p0, np, a.offset_grad ? a.offset_grad + n * g.offset_channels() * P : nullptr,
            a.mask_grad ? a.mask_grad + n * g.mask_channels() * P : nullptr);
      if (a.data_grad) col2im<T, Acc>(g, buf, np);
    }
    if (a.data_grad) transpose(buf.image_grad, HW, C, a.data_grad + n * C * HW);
  }
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

#define DCNV2_MX_INSTANTIATE_CPU(T)                                                          \
  template TilePlan plan_deform_conv_cpu<T>(const DeformConvGeometry&, bool, size_t);       \
  template void deform_conv_forward_cpu<T>(const DeformConvGeometry&,                       \
                                           const DeformConvForwardArgs<T>&, Scratch, index_t); \
  template void deform_conv_backward_cpu<T>(const DeformConvGeometry&,                      \
                                            const DeformConvBackwardArgs<T>&, Scratch, index_t);
DCNV2_MX_INSTANTIATE_CPU(float)
DCNV2_MX_INSTANTIATE_CPU(double)

}  // namespace dcnv2_mx
