/*!
 * \file deformable_conv_cpu.cc
 * \brief OpenMP + BLAS deformable convolution (DCNv2 and DCNv1), forward and backward.
 *
 * Work is done one image and one tile of output pixels at a time, so the scratch memory stays
 * within the `workspace` bound and a column tile is consumed by the GEMM while still in cache:
 *  1. the bilinear sample of every (deformable group, tap, pixel) is computed once and reused
 *     for all channels of the group;
 *  2. im2col fills the (C*K, tile) column matrix, one row per thread task;
 *  3. one GEMM per convolution group writes straight into the output.
 * Backward recomputes the samples, forms the column gradient with one GEMM per group, and then
 * reduces it twice without atomics: over channels for the offset and mask gradients (one task
 * per (group, tap, pixel chunk)) and over taps and pixels for the data gradient (one task per
 * channel, so no two threads write the same plane). Every output element is written by one
 * thread in a fixed order, so results are bit-identical across runs at a fixed thread count.
 */
#include <algorithm>
#include <cstring>

#include "../deformable_conv_kernel.h"
#include "blas.h"

namespace dcnv2_mx {

namespace {

/*! \brief Sub-buffers of one call's scratch block. */
template <typename T, typename Acc>
struct TileBuffers {
  BilinearSample<Acc>* samples;  //!< (dg, K, tile)
  Acc* modulation;               //!< (dg, K, tile)
  T* col;                        //!< (C*K, tile)
  T* col_grad;                   //!< (C*K, tile), backward only

  TileBuffers(const DeformConvGeometry& g, Scratch scratch, index_t tile, bool backward) {
    char* p = static_cast<char*>(scratch.ptr);
    auto take = [&p](size_t bytes) {
      p = reinterpret_cast<char*>(align_up(reinterpret_cast<size_t>(p)));
      char* out = p;
      p += bytes;
      return out;
    };
    const size_t n_samples = static_cast<size_t>(g.deformable_groups * g.taps() * tile);
    const size_t n_col = static_cast<size_t>(g.channels * g.taps() * tile);
    samples = reinterpret_cast<BilinearSample<Acc>*>(take(n_samples * sizeof(BilinearSample<Acc>)));
    modulation = reinterpret_cast<Acc*>(take(n_samples * sizeof(Acc)));
    col = reinterpret_cast<T*>(take(n_col * sizeof(T)));
    col_grad = backward ? reinterpret_cast<T*>(take(n_col * sizeof(T))) : nullptr;
  }
};

/*! \brief Samples of pixels [p0, p0 + np) of one image, for every deformable group and tap. */
template <typename T, typename Acc>
void build_samples(const DeformConvGeometry& g, const T* offset_n, const T* mask_n, index_t p0,
                   index_t np, BilinearSample<Acc>* samples, Acc* modulation) {
  const index_t rows = g.deformable_groups * g.taps();
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < rows; ++r) {
    const index_t dgroup = r / g.taps(), k = r - dgroup * g.taps();
    for (index_t p = 0; p < np; ++p)
      samples[r * np + p] =
          tap_sample<T, Acc>(g, offset_n, mask_n, dgroup, k, p0 + p, &modulation[r * np + p]);
  }
}

/*! \brief col[c*K + k, p] = m * bilinear(data[c], sample(g(c), k, p)). */
template <typename T, typename Acc>
void im2col(const DeformConvGeometry& g, const T* data_n, const TileBuffers<T, Acc>& buf,
            index_t np) {
  const index_t K = g.taps(), rows = g.channels * K, cpg = g.channels_per_dgroup();
#pragma omp parallel for schedule(static)
  for (index_t r = 0; r < rows; ++r) {
    const index_t c = r / K, k = r - c * K;
    const T* plane = data_n + c * g.in_plane();
    const index_t srow = ((c / cpg) * K + k) * np;
    const BilinearSample<Acc>* s = buf.samples + srow;
    const Acc* m = buf.modulation + srow;
    T* out = buf.col + r * np;
    for (index_t p = 0; p < np; ++p) out[p] = static_cast<T>(m[p] * gather<T, Acc>(plane, s[p]));
  }
}

/*! \brief Offset and mask gradients of pixels [p0, p0 + np): sums over the group's channels. */
template <typename T, typename Acc>
void position_and_mask_grads(const DeformConvGeometry& g, const T* data_n,
                             const TileBuffers<T, Acc>& buf, index_t p0, index_t np,
                             T* offset_grad_n, T* mask_grad_n) {
  constexpr index_t kChunk = 64;
  const index_t K = g.taps(), cpg = g.channels_per_dgroup(), plane = g.out_plane();
  const index_t chunks = (np + kChunk - 1) / kChunk;
  const index_t tasks = g.deformable_groups * K * chunks;
#pragma omp parallel for schedule(static)
  for (index_t t = 0; t < tasks; ++t) {
    const index_t row = t / chunks, chunk = t - row * chunks;  // row = dgroup * K + k
    const index_t dgroup = row / K, k = row - dgroup * K;
    const index_t pb = chunk * kChunk, pe = std::min(np, pb + kChunk);
    Acc grad_y[kChunk] = {}, grad_x[kChunk] = {}, grad_m[kChunk] = {};
    const BilinearSample<Acc>* s = buf.samples + row * np;
    for (index_t c = dgroup * cpg; c < (dgroup + 1) * cpg; ++c) {
      const T* plane_c = data_n + c * g.in_plane();
      const T* dcol = buf.col_grad + (c * K + k) * np;
      for (index_t p = pb; p < pe; ++p) {
        if (s[p].valid == 0) continue;
        const Acc d = static_cast<Acc>(dcol[p]);
        Acc dv_dy, dv_dx;
        position_grad<T, Acc>(plane_c, s[p], &dv_dy, &dv_dx);
        grad_y[p - pb] += d * dv_dy;
        grad_x[p - pb] += d * dv_dx;
        grad_m[p - pb] += d * gather<T, Acc>(plane_c, s[p]);
      }
    }
    const Acc* m = buf.modulation + row * np;
    T* gy = offset_grad_n ? offset_grad_n + (dgroup * 2 * K + 2 * k) * plane + p0 : nullptr;
    T* gm = mask_grad_n ? mask_grad_n + row * plane + p0 : nullptr;
    for (index_t p = pb; p < pe; ++p) {
      if (gy) {
        gy[p] = static_cast<T>(grad_y[p - pb] * m[p]);
        gy[plane + p] = static_cast<T>(grad_x[p - pb] * m[p]);
      }
      if (gm) gm[p] = static_cast<T>(grad_m[p - pb]);
    }
  }
}

/*! \brief data_grad[c] += scatter of col_grad over the samples, one channel per task. */
template <typename T, typename Acc>
void col2im(const DeformConvGeometry& g, const TileBuffers<T, Acc>& buf, index_t np,
            T* data_grad_n) {
  const index_t K = g.taps(), cpg = g.channels_per_dgroup();
#pragma omp parallel for schedule(static)
  for (index_t c = 0; c < g.channels; ++c) {
    T* plane = data_grad_n + c * g.in_plane();
    for (index_t k = 0; k < K; ++k) {
      const index_t srow = ((c / cpg) * K + k) * np;
      const BilinearSample<Acc>* s = buf.samples + srow;
      const Acc* m = buf.modulation + srow;
      const T* dcol = buf.col_grad + (c * K + k) * np;
      for (index_t p = 0; p < np; ++p)
        if (s[p].valid) scatter<T, Acc>(plane, s[p], m[p] * static_cast<Acc>(dcol[p]));
    }
  }
}

template <typename T>
void fill_zero(T* ptr, index_t count) {
  if (ptr) std::memset(ptr, 0, sizeof(T) * static_cast<size_t>(count));
}

}  // namespace

template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             Scratch scratch, index_t tile) {
  using Acc = typename AccType<T>::type;
  TileBuffers<T, Acc> buf(g, scratch, tile, false);
  const index_t P = g.out_plane(), fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  for (index_t n = 0; n < g.batch; ++n) {
    const T* data_n = a.data + n * g.channels * g.in_plane();
    const T* offset_n = a.offset + n * g.offset_channels() * P;
    const T* mask_n = a.mask ? a.mask + n * g.mask_channels() * P : nullptr;
    T* out_n = a.out + n * g.filters * P;
    for (index_t p0 = 0; p0 < P; p0 += tile) {
      const index_t np = std::min(tile, P - p0);
      build_samples<T, Acc>(g, offset_n, mask_n, p0, np, buf.samples, buf.modulation);
      im2col<T, Acc>(g, data_n, buf, np);
      for (int grp = 0; grp < g.groups; ++grp)
        cpu::gemm(false, false, fg, np, rows_g, T(1), a.weight + grp * fg * rows_g, rows_g,
                  buf.col + grp * rows_g * np, np, T(0), out_n + grp * fg * P + p0, P);
    }
    if (a.bias) {
#pragma omp parallel for schedule(static)
      for (index_t f = 0; f < g.filters; ++f)
        for (index_t p = 0; p < P; ++p) out_n[f * P + p] += a.bias[f];
    }
  }
}

template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              Scratch scratch, index_t tile) {
  using Acc = typename AccType<T>::type;
  TileBuffers<T, Acc> buf(g, scratch, tile, true);
  const index_t P = g.out_plane(), fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  const bool need_col_grad = a.data_grad || a.offset_grad || a.mask_grad;
  fill_zero(a.data_grad, g.batch * g.channels * g.in_plane());
  fill_zero(a.weight_grad, g.filters * rows_g);
  bool weight_grad_started = false;
  for (index_t n = 0; n < g.batch; ++n) {
    const T* data_n = a.in.data + n * g.channels * g.in_plane();
    const T* offset_n = a.in.offset + n * g.offset_channels() * P;
    const T* mask_n = a.in.mask ? a.in.mask + n * g.mask_channels() * P : nullptr;
    const T* dout_n = a.out_grad + n * g.filters * P;
    for (index_t p0 = 0; p0 < P; p0 += tile) {
      const index_t np = std::min(tile, P - p0);
      build_samples<T, Acc>(g, offset_n, mask_n, p0, np, buf.samples, buf.modulation);
      if (a.weight_grad) {
        im2col<T, Acc>(g, data_n, buf, np);
        for (int grp = 0; grp < g.groups; ++grp)
          cpu::gemm(false, true, fg, rows_g, np, T(1), dout_n + grp * fg * P + p0, P,
                    buf.col + grp * rows_g * np, np, weight_grad_started ? T(1) : T(0),
                    a.weight_grad + grp * fg * rows_g, rows_g);
        weight_grad_started = true;
      }
      if (!need_col_grad) continue;
      for (int grp = 0; grp < g.groups; ++grp)
        cpu::gemm(true, false, rows_g, np, fg, T(1), a.in.weight + grp * fg * rows_g, rows_g,
                  dout_n + grp * fg * P + p0, P, T(0), buf.col_grad + grp * rows_g * np, np);
      if (a.offset_grad || a.mask_grad)
        position_and_mask_grads<T, Acc>(
            g, data_n, buf, p0, np,
            a.offset_grad ? a.offset_grad + n * g.offset_channels() * P : nullptr,
            a.mask_grad ? a.mask_grad + n * g.mask_channels() * P : nullptr);
      if (a.data_grad) col2im<T, Acc>(g, buf, np, a.data_grad + n * g.channels * g.in_plane());
    }
  }
  if (a.bias_grad) {
#pragma omp parallel for schedule(static)
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

template void deform_conv_forward_cpu<float>(const DeformConvGeometry&,
                                             const DeformConvForwardArgs<float>&, Scratch, index_t);
template void deform_conv_forward_cpu<double>(const DeformConvGeometry&,
                                              const DeformConvForwardArgs<double>&, Scratch,
                                              index_t);
template void deform_conv_backward_cpu<float>(const DeformConvGeometry&,
                                              const DeformConvBackwardArgs<float>&, Scratch,
                                              index_t);
template void deform_conv_backward_cpu<double>(const DeformConvGeometry&,
                                               const DeformConvBackwardArgs<double>&, Scratch,
                                               index_t);

}  // namespace dcnv2_mx
