/*!
 * \file deformable_conv_cuda.cu
 * \brief CUDA deformable convolution (DCNv2 and DCNv1), forward and backward.
 *
 * The per-element math is shared with the CPU path: the sample (make_sample, through tap_sample
 * of deformable_conv_kernel.h) and its weights and position derivatives (blend_and_slopes,
 * through value_and_position_grad) in common/bilinear.h, read with gather and scatter.
 *
 * Tiles: a tile is a block of output pixels of one image, or several whole images when images
 * are small, sized so that the scratch memory stays within `workspace`. Its column matrix
 * col (C*K, cols) has row c*K + k (channel c, tap k) and column j = image b of the tile, pixel
 * p, at j = b*np + p, so the rows of a convolution group are contiguous and one GEMM per group
 * spans the whole tile:
 *  - forward:  out_fm (F, cols) = W x col, then out[n, f, p] = out_fm[f, j] + bias[f];
 *  - backward: dout_fm (F, cols) is packed from the output gradient;
 *    bias_grad (+)= dout_fm x 1 and weight_grad (+)= dout_fm x col^T; col is then
 *    overwritten by the column gradient W^T x dout_fm; the offset and mask gradients sum it
 *    over the channels of a deformable group, one thread per output element or, where that is
 *    too few threads, per element and chunk of channels, the chunks then added in order (no
 *    atomics either way); the data gradient is summed either with atomics or,
 *    deterministically, by sorting the tile's (sample corner -> input pixel) contributions with
 *    a stable radix sort so that every input element adds its own in a fixed order.
 * The im2col and atomic scatter kernels give each thread a few channels of one sample, so the
 * sample is computed once for them. float16 is sampled, interpolated and accumulated in
 * float32, including the weight, bias and data gradients across tiles (float32 scratch).
 * Everything runs on the caller's stream, without host synchronisation.
 */
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cublas_gemm.h"
#include "deformable_conv_cuda.h"
#include "launch.h"

namespace dcnv2_mx {

namespace {

using cuda::accumulator;
using cuda::convert_kernel;
using cuda::grid_stride;
using cuda::kAccumulatesApart;
using cuda::launch;

/*! \brief Column bytes per tile the planner aims at: large GEMMs, few launches. */
constexpr size_t kTargetColumnBytes = size_t(64) << 20;

/*! \brief Channels per thread of the im2col and atomic scatter kernels (one sample each). */
constexpr index_t kChannelsPerThread = 8;

/*! \brief Corners per bilinear sample: entries per sample of the deterministic data gradient. */
constexpr index_t kCorners = 4;

/*!
 * \brief Threads the offset and mask gradient of a tile aims at. One per sample is too few
 *        where images are small and channels many (res_c5, 25x34 pixels of 512 channels: 7650
 *        threads of 512 channels each), so the channels are split into chunks whose partial
 *        sums a second pass adds in order.
 */
constexpr index_t kOffsetGradThreads = index_t(1) << 18;

/*!
 * \brief Chunks of a deformable group's channels for the offset and mask gradient of a tile of
 *        `cols` columns: about kOffsetGradThreads threads in all (fewer than twice as many), at
 *        most one chunk per kChannelsPerThread channels, and their partial sums (3 per chunk and
 *        sample) within `capacity` elements.
 */
inline index_t offset_grad_chunks(const DeformConvGeometry& g, index_t cols, size_t capacity) {
  const index_t samples = g.deformable_groups * g.taps() * cols, cpd = g.channels_per_dgroup();
  index_t chunks = std::min((cpd + kChannelsPerThread - 1) / kChannelsPerThread,
                            (kOffsetGradThreads + samples - 1) / samples);
  chunks = std::min<index_t>(chunks, static_cast<index_t>(capacity / (3 * samples)));
  if (chunks <= 1) return 1;
  const index_t width = (cpd + chunks - 1) / chunks;
  return (cpd + width - 1) / width;  // no empty chunk
}

/*!
 * \brief Elements of the partial sums that offset_grad_chunks may ask for on a tile of `cols`
 *        columns (samples * chunks < 2 * kOffsetGradThreads), 0 where a group's channels never
 *        split. Never smaller for more columns, so that the planner's scratch grows with the
 *        tile.
 */
inline size_t offset_partial_capacity(const DeformConvGeometry& g, index_t cols) {
  const index_t samples = g.deformable_groups * g.taps() * cols;
  const index_t most = (g.channels_per_dgroup() + kChannelsPerThread - 1) / kChannelsPerThread;
  return most <= 1 ? 0
                   : 3 * static_cast<size_t>(std::min(samples * most, 2 * kOffsetGradThreads));
}

/*! \brief Pixels [p0, p0 + np) of each of images [n0, n1); tile column j is image n0 + j / np. */
struct GpuTile {
  index_t n0, n1, p0, np;
  DCN_HD index_t images() const { return n1 - n0; }
  DCN_HD index_t pixels() const { return images() * np; }
  DCN_HD index_t image(index_t j) const { return n0 + j / np; }
  DCN_HD index_t pixel(index_t j) const { return p0 + j % np; }
};

/*! \brief Calls body(tile) for the tiles of a call, in order. */
template <typename Body>
void for_each_tile(const DeformConvGeometry& g, const GpuTilePlan& plan, Body&& body) {
  const index_t P = g.out_plane();
  for (index_t n0 = 0; n0 < g.batch; n0 += plan.images)
    for (index_t p0 = 0; p0 < P; p0 += plan.tile)
      body(GpuTile{n0, std::min(g.batch, n0 + plan.images), p0, std::min(plan.tile, P - p0)});
}

/*! \brief Work item (deformable group, tap, tile column) of the per-sample kernels. */
struct SampleItem {
  index_t dgroup, k, j;
};

/*! \brief The sample of item `it` (tap k of deformable group `dgroup` at tile column j); its
 *         modulation in *m. */
template <typename T, typename Acc>
__device__ __forceinline__ BilinearSample<Acc> column_sample(const DeformConvGeometry& g,
                                                             const T* offset, const T* mask,
                                                             const GpuTile& tile,
                                                             const SampleItem& it, Acc* m) {
  const index_t n = tile.image(it.j), P = g.out_plane();
  return tap_sample<T, Acc>(g, offset + n * g.offset_channels() * P,
                            mask ? mask + n * g.mask_channels() * P : nullptr, it.dgroup, it.k,
                            tile.pixel(it.j), m);
}

/*! \brief Item i of the per-sample kernels: i = (dgroup * K + k) * cols + j. */
DCN_HD SampleItem sample_item(const DeformConvGeometry& g, index_t cols, index_t i) {
  const index_t row = i / cols;
  return SampleItem{row / g.taps(), row % g.taps(), i % cols};
}

/*! \brief Work item of the per-channel-chunk kernels: channels [c0, c1) of one sample. */
struct ChunkItem {
  index_t c0, c1;
  SampleItem sample;
};

DCN_HD index_t chunks_per_dgroup(const DeformConvGeometry& g) {
  return (g.channels_per_dgroup() + kChannelsPerThread - 1) / kChannelsPerThread;
}

/*! \brief Items of the per-channel-chunk kernels over a tile of `cols` columns. */
DCN_HD index_t chunk_items(const DeformConvGeometry& g, index_t cols) {
  return g.deformable_groups * chunks_per_dgroup(g) * g.taps() * cols;
}

/*! \brief Item i: i = ((dgroup * chunks + chunk) * K + k) * cols + j, j fastest (coalesced). */
DCN_HD ChunkItem chunk_item(const DeformConvGeometry& g, index_t cols, index_t i) {
  const index_t j = i % cols, row = i / cols;
  const index_t k = row % g.taps(), chunk_row = row / g.taps();
  const index_t chunks = chunks_per_dgroup(g);
  const index_t dgroup = chunk_row / chunks, chunk = chunk_row % chunks;
  const index_t cpd = g.channels_per_dgroup();
  const index_t c0 = dgroup * cpd + chunk * kChannelsPerThread;
  const index_t c1 = c0 + kChannelsPerThread, group_end = (dgroup + 1) * cpd;
  return ChunkItem{c0, c1 < group_end ? c1 : group_end, SampleItem{dgroup, k, j}};
}

/*! \brief col[c*K + k, j] = m * bilinear(data[n(j), c], sample(dgroup(c), k, j)). */
template <typename T, typename Acc>
__global__ void im2col_kernel(index_t count, DeformConvGeometry g, const T* data,
                              const T* offset, const T* mask, GpuTile tile, T* col) {
  const index_t cols = tile.pixels(), K = g.taps(), HW = g.in_plane();
  grid_stride(count, [&](index_t i) {
    const ChunkItem it = chunk_item(g, cols, i);
    Acc m;
    const BilinearSample<Acc> s = column_sample<T, Acc>(g, offset, mask, tile, it.sample, &m);
    const T* image = data + tile.image(it.sample.j) * g.channels * HW;
    T* out = col + it.sample.k * cols + it.sample.j;
    for (index_t c = it.c0; c < it.c1; ++c)
      out[c * K * cols] =
          static_cast<T>(s.valid ? m * gather<T, Acc>(image + c * HW, s) : Acc(0));
  });
}

/*! \brief Position of element (f, tile column j) in an (N, F, Ho*Wo) tensor. */
DCN_HD index_t image_layout_index(const DeformConvGeometry& g, const GpuTile& tile, index_t f,
                                  index_t j) {
  return (tile.image(j) * g.filters + f) * g.out_plane() + tile.pixel(j);
}

/*! \brief columns (F, cols) = the tile's part of src (N, F, Ho*Wo). */
template <typename T>
__global__ void pack_columns_kernel(index_t count, DeformConvGeometry g, GpuTile tile, const T* src,
                                    T* columns) {
  const index_t cols = tile.pixels();
  grid_stride(count, [&](index_t i) {
    columns[i] = src[image_layout_index(g, tile, i / cols, i % cols)];
  });
}

/*! \brief The tile's part of dst (N, F, Ho*Wo) = columns (F, cols) + bias (F,) if given. */
template <typename T, typename Acc>
__global__ void unpack_columns_kernel(index_t count, DeformConvGeometry g, GpuTile tile,
                                      const T* columns, const T* bias, T* dst) {
  const index_t cols = tile.pixels();
  grid_stride(count, [&](index_t i) {
    const index_t f = i / cols;
    const Acc b = bias ? static_cast<Acc>(bias[f]) : Acc(0);
    dst[image_layout_index(g, tile, f, i % cols)] =
        static_cast<T>(static_cast<Acc>(columns[i]) + b);
  });
}

/*! \brief Sums over channels of the column gradient times the sample's slopes and value. */
template <typename Acc>
struct OffsetMaskSums {
  Acc y, x, m;
};

/*!
 * \brief The offset (y, x) and mask gradient sums of sample `it` over channels [c0, c1) of its
 *        deformable group, before the modulation (*m) of the offset gradient.
 */
template <typename T, typename Acc>
__device__ __forceinline__ OffsetMaskSums<Acc> offset_mask_sums(
    const DeformConvGeometry& g, const T* data, const T* offset, const T* mask,
    const GpuTile& tile, const T* col_grad, const SampleItem& it, index_t c0, index_t c1,
    Acc* m) {
  const index_t cols = tile.pixels(), K = g.taps(), HW = g.in_plane();
  const BilinearSample<Acc> s = column_sample<T, Acc>(g, offset, mask, tile, it, m);
  OffsetMaskSums<Acc> sums{Acc(0), Acc(0), Acc(0)};
  if (!s.valid) return sums;
  const T* image = data + tile.image(it.j) * g.channels * HW;
  for (index_t c = c0; c < c1; ++c) {
    const Acc d = static_cast<Acc>(col_grad[(c * K + it.k) * cols + it.j]);
    Acc v, dv_dy, dv_dx;
    value_and_position_grad<T, Acc>(image + c * HW, s, &v, &dv_dy, &dv_dx);
    sums.y += d * dv_dy;
    sums.x += d * dv_dx;
    sums.m += d * v;
  }
  return sums;
}

/*! \brief Writes the offset and mask gradients, where wanted, of sample `it` from its sums. */
template <typename T, typename Acc>
__device__ __forceinline__ void store_offset_mask_grads(const DeformConvGeometry& g,
                                                        const GpuTile& tile, const SampleItem& it,
                                                        const OffsetMaskSums<Acc>& sums, Acc m,
                                                        T* offset_grad, T* mask_grad) {
  const index_t n = tile.image(it.j), pix = tile.pixel(it.j), P = g.out_plane();
  const index_t K = g.taps();
  if (offset_grad) {
    T* grad_y = offset_grad + (n * g.offset_channels() + (it.dgroup * K + it.k) * 2) * P + pix;
    grad_y[0] = static_cast<T>(sums.y * m);
    grad_y[P] = static_cast<T>(sums.x * m);
  }
  if (mask_grad)
    mask_grad[(n * g.mask_channels() + it.dgroup * K + it.k) * P + pix] = static_cast<T>(sums.m);
}

/*!
 * \brief Offset and mask gradients of the tile: one thread per (deformable group, tap, column)
 *        sums over the group's channels, so every element is written once, without atomics.
 */
template <typename T, typename Acc>
__global__ void offset_mask_grad_kernel(index_t count, DeformConvGeometry g, const T* data,
                                        const T* offset, const T* mask, GpuTile tile,
                                        const T* col_grad, T* offset_grad, T* mask_grad) {
  const index_t cpd = g.channels_per_dgroup();
  grid_stride(count, [&](index_t i) {
    const SampleItem it = sample_item(g, tile.pixels(), i);
    Acc m;
    const OffsetMaskSums<Acc> sums = offset_mask_sums<T, Acc>(
        g, data, offset, mask, tile, col_grad, it, it.dgroup * cpd, (it.dgroup + 1) * cpd, &m);
    store_offset_mask_grads<T, Acc>(g, tile, it, sums, m, offset_grad, mask_grad);
  });
}

/*!
 * \brief The same sums over chunks of `width` channels of the group, one thread per (chunk,
 *        sample), the sample fastest: partial[q * count + i] holds sum q (y, x, mask) of item i.
 */
template <typename T, typename Acc>
__global__ void offset_mask_chunks_kernel(index_t count, DeformConvGeometry g, const T* data,
                                          const T* offset, const T* mask, GpuTile tile,
                                          const T* col_grad, index_t width, Acc* partial) {
  const index_t cpd = g.channels_per_dgroup();
  const index_t samples = g.deformable_groups * g.taps() * tile.pixels();
  grid_stride(count, [&](index_t i) {
    const SampleItem it = sample_item(g, tile.pixels(), i % samples);
    const index_t c0 = it.dgroup * cpd + i / samples * width;
    const index_t group_end = (it.dgroup + 1) * cpd;
    Acc m;
    const OffsetMaskSums<Acc> sums = offset_mask_sums<T, Acc>(
        g, data, offset, mask, tile, col_grad, it, c0,
        c0 + width < group_end ? c0 + width : group_end, &m);
    partial[i] = sums.y;
    partial[count + i] = sums.x;
    partial[2 * count + i] = sums.m;
  });
}

/*! \brief Offset and mask gradients of each sample of the tile: its chunks' sums, in order. */
template <typename T, typename Acc>
__global__ void offset_mask_sum_kernel(index_t count, DeformConvGeometry g, const T* offset,
                                       const T* mask, GpuTile tile, index_t chunks,
                                       const Acc* partial, T* offset_grad, T* mask_grad) {
  const index_t items = count * chunks;
  grid_stride(count, [&](index_t i) {
    const SampleItem it = sample_item(g, tile.pixels(), i);
    Acc m;
    column_sample<T, Acc>(g, offset, mask, tile, it, &m);
    OffsetMaskSums<Acc> sums{Acc(0), Acc(0), Acc(0)};
    for (index_t chunk = 0; chunk < chunks; ++chunk) {
      sums.y += partial[chunk * count + i];
      sums.x += partial[items + chunk * count + i];
      sums.m += partial[2 * items + chunk * count + i];
    }
    store_offset_mask_grads<T, Acc>(g, tile, it, sums, m, offset_grad, mask_grad);
  });
}

/*! \brief image_grad (images of the tile, C, H*W) += atomic scatter of the column gradient. */
template <typename T, typename Acc>
__global__ void data_grad_atomic_kernel(index_t count, DeformConvGeometry g, const T* offset,
                                        const T* mask, GpuTile tile, const T* col_grad,
                                        Acc* image_grad) {
  const index_t cols = tile.pixels(), K = g.taps(), HW = g.in_plane();
  grid_stride(count, [&](index_t i) {
    const ChunkItem it = chunk_item(g, cols, i);
    Acc m;
    const BilinearSample<Acc> s = column_sample<T, Acc>(g, offset, mask, tile, it.sample, &m);
    if (!s.valid) return;
    Acc* grad = image_grad + (it.sample.j / tile.np) * g.channels * HW;
    const T* dcol = col_grad + it.sample.k * cols + it.sample.j;
    for (index_t c = it.c0; c < it.c1; ++c) {
      const Acc d = static_cast<Acc>(dcol[c * K * cols]);
      scatter<Acc, Acc>(grad + c * HW, s, m * d, cuda::AtomicAdd());
    }
  });
}

/*!
 * \brief One entry per sample corner, entry e = sample item * 4 + corner: key = the input pixel
 *        it feeds, ((b * dg + dgroup) * H*W + y*W + x) over the tile's images b, or `sentinel`
 *        for a corner off the map; id = e; weight = interpolation weight * modulation.
 */
template <typename T, typename Acc>
__global__ void corner_entries_kernel(index_t count, DeformConvGeometry g, const T* offset,
                                      const T* mask, GpuTile tile, uint32_t sentinel,
                                      uint32_t* keys, uint32_t* ids, Acc* weights) {
  const index_t cols = tile.pixels(), HW = g.in_plane();
  grid_stride(count, [&](index_t i) {
    const SampleItem it = sample_item(g, cols, i);
    Acc m;
    const BilinearSample<Acc> s = column_sample<T, Acc>(g, offset, mask, tile, it, &m);
    const index_t plane = ((it.j / tile.np) * g.deformable_groups + it.dgroup) * HW;
DCN_UNROLL
    for (int q = 0; q < kCorners; ++q) {
      const index_t e = i * kCorners + q;
      keys[e] = ((s.valid >> q) & 1u) ? static_cast<uint32_t>(plane + s.offset[q]) : sentinel;
      ids[e] = static_cast<uint32_t>(e);
      weights[e] = s.weight[q] * m;
    }
  });
}

/*! \brief starts[t] = first position of key t in the sorted keys (lower bound), t <= targets. */
__global__ void segment_starts_kernel(index_t count, const uint32_t* sorted_keys, index_t entries,
                                      uint32_t* starts) {
  grid_stride(count, [&](index_t t) {
    index_t lo = 0, hi = entries;
    while (lo < hi) {
      const index_t mid = lo + (hi - lo) / 2;
      if (static_cast<index_t>(sorted_keys[mid]) < t)
        lo = mid + 1;
      else
        hi = mid;
    }
    starts[t] = static_cast<uint32_t>(lo);
  });
}

/*!
 * \brief image_grad (images of the tile, C, H*W) (+)= the contributions of the tile, gathered:
 *        each element sums the entries of its pixel in sorted order (by entry id: tap, column,
 *        corner), so the result does not depend on thread timing.
 */
template <typename T, typename Acc>
__global__ void data_grad_gather_kernel(index_t count, DeformConvGeometry g, GpuTile tile,
                                        const uint32_t* starts, const uint32_t* sorted_ids,
                                        const Acc* weights, const T* col_grad, bool accumulate,
                                        Acc* image_grad) {
  const index_t cols = tile.pixels(), K = g.taps(), HW = g.in_plane(), C = g.channels;
  grid_stride(count, [&](index_t i) {
    const index_t yx = i % HW, bc = i / HW, c = bc % C, b = bc / C;
    const index_t target = (b * g.deformable_groups + c / g.channels_per_dgroup()) * HW + yx;
    const T* dcol = col_grad + c * K * cols;
    Acc sum = Acc(0);
    for (index_t e = starts[target]; e < starts[target + 1]; ++e) {
      const index_t id = sorted_ids[e], item = id / kCorners;
      const SampleItem it = sample_item(g, cols, item);
      sum += weights[id] * static_cast<Acc>(dcol[it.k * cols + it.j]);
    }
    image_grad[i] = accumulate ? image_grad[i] + sum : sum;
  });
}

/*! \brief Bits of the radix sort keys: enough for every key up to and including `sentinel`. */
int key_bits(uint32_t sentinel) {
  int bits = 1;
  while (bits < 32 && (sentinel >> bits) != 0) ++bits;
  return bits;
}

/*! \brief Scratch bytes of CUB's radix sort of `entries` (key, id) pairs (a host-side query). */
size_t radix_sort_temp_bytes(index_t entries) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr), ids(nullptr, nullptr);
  cuda::check(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, ids,
                                              static_cast<int>(entries), 0, 32),
              "cub::DeviceRadixSort::SortPairs (size query)");
  return bytes;
}

/*! \brief What a call holds in scratch, for a tile of plan.images x plan.tile pixels. */
struct Layout {
  bool backward;
  DataGradMode mode;
  size_t sort_temp_bytes;  //!< CUB's scratch (deterministic backward), for the largest tile
};

/*! \brief Sub-buffers of one call's scratch block; on a null block, only its size. */
template <typename T>
struct GpuBuffers {
  using Acc = typename AccType<T>::type;
  T* col;                    //!< (C*K, cols): columns, then (backward) their gradient
  T* filter_major;           //!< (F, cols): output before unpacking; packed output gradient
  T* ones = nullptr;         //!< (cols): all 1, the bias gradient's GEMM operand (backward)
  Acc* weight_grad = nullptr;  //!< (F, C/G*K): float32 weight gradient of float16 (backward)
  Acc* bias_grad = nullptr;    //!< (F): float32 bias gradient of float16 (backward)
  Acc* image_grad = nullptr;   //!< (images, C, H*W): float32 data gradient of float16 (backward)
  Acc* offset_partial = nullptr;  //!< partial offset and mask gradient sums (backward)
  size_t offset_partial_elems = 0;
  // Deterministic data gradient: double buffers of the radix sort and the entries' weights.
  uint32_t* keys[2] = {nullptr, nullptr};
  uint32_t* ids[2] = {nullptr, nullptr};
  Acc* corner_weights = nullptr;  //!< (4 * dg * K * cols)
  uint32_t* segment_starts = nullptr;  //!< (images * dg * H*W + 1)
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
  size_t bytes;  //!< size of the block these buffers need

  GpuBuffers(const DeformConvGeometry& g, const Layout& layout, index_t tile, index_t images,
          Scratch scratch) {
    ScratchCarver carver(scratch);
    const size_t cols = static_cast<size_t>(tile * images);
    const size_t image_elems = static_cast<size_t>(images * g.channels * g.in_plane());
    col = carver.take<T>(static_cast<size_t>(g.channels * g.taps()) * cols);
    filter_major = carver.take<T>(static_cast<size_t>(g.filters) * cols);
    if (layout.backward) ones = carver.take<T>(cols);
    if (layout.backward) {
      offset_partial_elems = offset_partial_capacity(g, static_cast<index_t>(cols));
      if (offset_partial_elems) offset_partial = carver.take<Acc>(offset_partial_elems);
    }
    if (layout.backward && kAccumulatesApart<T>) {
      weight_grad = carver.take<Acc>(static_cast<size_t>(g.filters * g.col_rows_per_group()));
      bias_grad = carver.take<Acc>(static_cast<size_t>(g.filters));
      image_grad = carver.take<Acc>(image_elems);
    }
    if (layout.backward && layout.mode == DataGradMode::kDeterministic) {
      const size_t entries = static_cast<size_t>(kCorners * g.deformable_groups * g.taps()) * cols;
      for (int i = 0; i < 2; ++i) keys[i] = carver.take<uint32_t>(entries);
      for (int i = 0; i < 2; ++i) ids[i] = carver.take<uint32_t>(entries);
      corner_weights = carver.take<Acc>(entries);
      segment_starts = carver.take<uint32_t>(
          static_cast<size_t>(images * g.deformable_groups * g.in_plane()) + 1);
      sort_temp_bytes = layout.sort_temp_bytes;
      sort_temp = carver.take<char>(sort_temp_bytes);
    }
    bytes = carver.bytes_needed();
  }
};

/*! \brief Bytes of scratch for tiles of `images` x `tile` pixels. */
template <typename T>
size_t scratch_bytes(const DeformConvGeometry& g, const Layout& layout, index_t tile,
                     index_t images) {
  return GpuBuffers<T>(g, layout, tile, images, Scratch{nullptr, 0}).bytes;
}

/*! \brief Pixels per tile the planner aims at: the target, within CUB's int item counts. */
template <typename T>
index_t target_pixels(const DeformConvGeometry& g, bool sorted) {
  const size_t col_per_pixel = static_cast<size_t>(g.channels * g.taps()) * sizeof(T);
  index_t pixels = static_cast<index_t>(kTargetColumnBytes / col_per_pixel) + 1;
  if (sorted)
    pixels = std::min<index_t>(pixels, INT_MAX / (kCorners * g.deformable_groups * g.taps()));
  return std::max<index_t>(pixels, 1);
}

/*!
 * \brief Columns of the largest tile a call may use: the target, or one whole image if that is
 *        more (a tile of whole images never exceeds the target; a pixel tile is at most one).
 */
template <typename T>
index_t max_tile_columns(const DeformConvGeometry& g, bool sorted) {
  return std::min(g.batch * g.out_plane(), std::max(g.out_plane(), target_pixels<T>(g, sorted)));
}

/*! \brief The scratch layout of a call (the same for planning and running it). */
template <typename T>
Layout make_layout(const DeformConvGeometry& g, bool backward, DataGradMode mode) {
  const bool sorted = backward && mode == DataGradMode::kDeterministic;
  const index_t max_entries =
      kCorners * g.deformable_groups * g.taps() * max_tile_columns<T>(g, sorted);
  return Layout{backward, mode, sorted ? radix_sort_temp_bytes(max_entries) : 0};
}

/*! \brief Data gradient of one tile (into the accumulator of the tile's images). */
template <typename T>
void data_grad_tile(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                    DataGradMode mode, const GpuTile& tile, const GpuBuffers<T>& buf,
                    cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  const index_t HW = g.in_plane(), cols = tile.pixels();
  const index_t elements = tile.images() * g.channels * HW;
  T* data_grad = a.data_grad + tile.n0 * g.channels * HW;
  Acc* image_grad = accumulator(data_grad, buf.image_grad);
  const bool first = tile.p0 == 0;  // the tile's images get their first contributions
  if (mode == DataGradMode::kAtomic) {
    if (first)
      cuda::check(cudaMemsetAsync(image_grad, 0, sizeof(Acc) * elements, stream),
                  "cudaMemsetAsync");
    launch(data_grad_atomic_kernel<T, Acc>, chunk_items(g, cols), stream, g, a.in.offset,
           a.in.mask, tile, buf.col, image_grad);
  } else {
    const index_t samples = g.deformable_groups * g.taps() * cols;
    const index_t entries = kCorners * samples;
    const index_t targets = tile.images() * g.deformable_groups * HW;
    const uint32_t sentinel = static_cast<uint32_t>(targets);
    launch(corner_entries_kernel<T, Acc>, samples, stream, g, a.in.offset, a.in.mask, tile,
           sentinel, buf.keys[0], buf.ids[0], buf.corner_weights);
    cub::DoubleBuffer<uint32_t> keys(buf.keys[0], buf.keys[1]), ids(buf.ids[0], buf.ids[1]);
    if (radix_sort_temp_bytes(entries) > buf.sort_temp_bytes)
      throw std::logic_error("radix sort scratch too small (internal planning error)");
    size_t temp_bytes = buf.sort_temp_bytes;
    // Stable: entries of one input pixel keep their id order, whatever the thread timing.
    cuda::check(cub::DeviceRadixSort::SortPairs(buf.sort_temp, temp_bytes, keys, ids,
                                                static_cast<int>(entries), 0,
                                                key_bits(sentinel), stream),
                "cub::DeviceRadixSort::SortPairs");
    launch(segment_starts_kernel, targets + 1, stream, keys.Current(), entries,
           buf.segment_starts);
    launch(data_grad_gather_kernel<T, Acc>, elements, stream, g, tile, buf.segment_starts,
           ids.Current(), buf.corner_weights, buf.col, !first, image_grad);
  }
  if (kAccumulatesApart<T> && tile.p0 + tile.np == g.out_plane())
    launch(convert_kernel<T, Acc>, elements, stream, image_grad, data_grad);
}

}  // namespace

template <typename T>
GpuTilePlan plan_deform_conv_gpu(const DeformConvGeometry& g, bool backward, DataGradMode mode,
                                 size_t budget_bytes) {
  const bool sorted = backward && mode == DataGradMode::kDeterministic;
  const uint64_t planes = static_cast<uint64_t>(g.deformable_groups * g.in_plane());
  if (sorted && planes >= UINT32_MAX)
    throw std::invalid_argument(
        "the deterministic data gradient (MXNET_ENFORCE_DETERMINISM) supports "
        "num_deformable_group * H * W < 2^32");
  const Layout layout = make_layout<T>(g, backward, mode);
  const size_t budget = scratch_budget(budget_bytes);
  auto bytes = [&](index_t tile, index_t images) {
    return scratch_bytes<T>(g, layout, tile, images);
  };
  const index_t P = g.out_plane();
  // Every sub-buffer is sized by a count that never shrinks as a tile grows in pixels or
  // images (offset_partial_capacity is written so): the largest n in [1, most] whose scratch
  // fits is found by bisection (1 fits).
  auto largest_fitting = [&](index_t most, auto scratch_of) {
    index_t lo = 1, hi = std::max<index_t>(most, 1);
    while (lo < hi) {
      const index_t mid = (lo + hi + 1) / 2;
      if (scratch_of(mid) <= budget)
        lo = mid;
      else
        hi = mid - 1;
    }
    return lo;
  };
  // The largest pixel tile of one image, up to the target, whose scratch fits.
  if (bytes(1, 1) > budget) throw_workspace_too_small(budget_bytes, bytes(1, 1));
  GpuTilePlan plan{largest_fitting(std::min(P, target_pixels<T>(g, sorted)),
                                   [&](index_t tile) { return bytes(tile, 1); }),
                   1, 0};
  if (plan.tile == P && g.batch > 1) {
    // Whole images: as many per tile as the target, the sort keys (32 bits: images * dg * H*W
    // + 1 distinct values) and the budget allow.
    index_t most = max_tile_columns<T>(g, sorted) / P;
    if (sorted) most = std::min<index_t>(most, static_cast<index_t>((UINT32_MAX - 1) / planes));
    plan.images = largest_fitting(most, [&](index_t images) { return bytes(P, images); });
  }
  plan.scratch_bytes = bytes(plan.tile, plan.images);
  return plan;
}

template <typename T>
void deform_conv_forward_gpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const GpuTilePlan& plan, Scratch scratch, cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  const GpuBuffers<T> buf(g, make_layout<T>(g, false, DataGradMode::kAtomic), plan.tile,
                       plan.images, scratch);
  cublasHandle_t blas = cuda::cublas_handle(stream);
  const int fg = static_cast<int>(g.filters_per_group());
  const int rows_g = static_cast<int>(g.col_rows_per_group());
  for_each_tile(g, plan, [&](const GpuTile& tile) {
    const index_t cols = tile.pixels();
    launch(im2col_kernel<T, Acc>, chunk_items(g, cols), stream, g, a.data, a.offset, a.mask,
           tile, buf.col);
    for (int grp = 0; grp < g.groups; ++grp)
      cuda::gemm<T, T>(blas, false, false, fg, static_cast<int>(cols), rows_g,
                       a.weight + grp * fg * rows_g, rows_g, buf.col + grp * rows_g * cols,
                       static_cast<int>(cols), Acc(0), buf.filter_major + grp * fg * cols,
                       static_cast<int>(cols));
    launch(unpack_columns_kernel<T, Acc>, g.filters * cols, stream, g, tile, buf.filter_major,
           a.bias, a.out);
  });
}

template <typename T>
void deform_conv_backward_gpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              DataGradMode mode, const GpuTilePlan& plan, Scratch scratch,
                              cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  const GpuBuffers<T> buf(g, make_layout<T>(g, true, mode), plan.tile, plan.images, scratch);
  cublasHandle_t blas = cuda::cublas_handle(stream);
  const int fg = static_cast<int>(g.filters_per_group());
  const int rows_g = static_cast<int>(g.col_rows_per_group());
  const bool need_col_grad = a.data_grad || a.offset_grad || a.mask_grad;
  Acc* weight_grad = a.weight_grad ? accumulator(a.weight_grad, buf.weight_grad) : nullptr;
  Acc* bias_grad = a.bias_grad ? accumulator(a.bias_grad, buf.bias_grad) : nullptr;
  if (bias_grad)
    launch(cuda::fill_kernel<T>, plan.tile * plan.images, stream, T(1), buf.ones);
  bool started = false;  // whether the weight and bias gradients hold earlier tiles' sums
  auto backward_tile = [&](const GpuTile& tile) {
    const index_t cols = tile.pixels();
    const int icols = static_cast<int>(cols);
    const Acc beta = started ? Acc(1) : Acc(0);
    launch(pack_columns_kernel<T>, g.filters * cols, stream, g, tile, a.out_grad,
           buf.filter_major);
    // bias_grad (+)= dout_fm x 1, a GEMM like the weight gradient's: as reproducible as cuBLAS
    // (bit-identical on one GPU model, one stream at a time).
    if (bias_grad)
      cuda::gemm<T, Acc>(blas, false, false, static_cast<int>(g.filters), 1, icols,
                         buf.filter_major, icols, buf.ones, 1, beta, bias_grad, 1);
    if (weight_grad) {
      launch(im2col_kernel<T, Acc>, chunk_items(g, cols), stream, g, a.in.data, a.in.offset,
             a.in.mask, tile, buf.col);
      for (int grp = 0; grp < g.groups; ++grp)
        cuda::gemm<T, Acc>(blas, false, true, fg, rows_g, icols,
                           buf.filter_major + grp * fg * cols, icols,
                           buf.col + grp * rows_g * cols, icols, beta,
                           weight_grad + grp * fg * rows_g, rows_g);
    }
    started = true;
    if (!need_col_grad) return;
    // The column gradient replaces the columns (the GEMMs above have consumed them).
    for (int grp = 0; grp < g.groups; ++grp)
      cuda::gemm<T, T>(blas, true, false, rows_g, icols, fg, a.in.weight + grp * fg * rows_g,
                       rows_g, buf.filter_major + grp * fg * cols, icols, Acc(0),
                       buf.col + grp * rows_g * cols, icols);
    if (a.offset_grad || a.mask_grad) {
      const index_t samples = g.deformable_groups * g.taps() * cols;
      const index_t chunks = offset_grad_chunks(g, cols, buf.offset_partial_elems);
      if (chunks == 1) {
        launch(offset_mask_grad_kernel<T, Acc>, samples, stream, g, a.in.data, a.in.offset,
               a.in.mask, tile, buf.col, a.offset_grad, a.mask_grad);
      } else {
        const index_t cpd = g.channels_per_dgroup();
        launch(offset_mask_chunks_kernel<T, Acc>, samples * chunks, stream, g, a.in.data,
               a.in.offset, a.in.mask, tile, buf.col, (cpd + chunks - 1) / chunks,
               buf.offset_partial);
        launch(offset_mask_sum_kernel<T, Acc>, samples, stream, g, a.in.offset, a.in.mask, tile,
               chunks, buf.offset_partial, a.offset_grad, a.mask_grad);
      }
    }
    if (a.data_grad) data_grad_tile(g, a, mode, tile, buf, stream);
  };
  if (weight_grad || bias_grad || need_col_grad) for_each_tile(g, plan, backward_tile);
  if constexpr (kAccumulatesApart<T>) {
    if (weight_grad)
      launch(convert_kernel<T, Acc>, g.filters * g.col_rows_per_group(), stream, weight_grad,
             a.weight_grad);
    if (bias_grad) launch(convert_kernel<T, Acc>, g.filters, stream, bias_grad, a.bias_grad);
  }
}

#define DCNV2_MX_INSTANTIATE_GPU(T)                                                          \
  template GpuTilePlan plan_deform_conv_gpu<T>(const DeformConvGeometry&, bool, DataGradMode,\
                                               size_t);                                      \
  template void deform_conv_forward_gpu<T>(const DeformConvGeometry&,                        \
                                           const DeformConvForwardArgs<T>&, const GpuTilePlan&, \
                                           Scratch, cudaStream_t);                           \
  template void deform_conv_backward_gpu<T>(const DeformConvGeometry&,                       \
                                            const DeformConvBackwardArgs<T>&, DataGradMode,  \
                                            const GpuTilePlan&, Scratch, cudaStream_t);
DCNV2_MX_INSTANTIATE_GPU(float)
DCNV2_MX_INSTANTIATE_GPU(double)
DCNV2_MX_INSTANTIATE_GPU(__half)

}  // namespace dcnv2_mx
