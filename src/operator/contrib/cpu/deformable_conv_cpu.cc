/*!
 * \file deformable_conv_cpu.cc
 * \brief OpenMP + GEMM deformable convolution (DCNv2 and DCNv1), forward and backward.
 *
 * Threads: a call is one OpenMP parallel region. The output pixels of a block of images are
 * split into one contiguous share per thread, and each thread takes its share end to end, in
 * tiles whose column matrix stays in its cache: samples, column tile, GEMMs, and in backward the
 * column gradient, the offset and mask gradients and the scatter into the thread's own copy of
 * the image gradient. Threads meet only where they share data: once the block's images are
 * copied, and when the per-thread weight and image gradients are summed, in thread order.
 * Why: MXNet runs operators on engine threads, each with its own OpenMP pool, so there are more
 * OpenMP threads than cores and libgomp puts a waiting thread to sleep almost at once; every
 * region start and barrier then costs a wake-up (measured: about 0.1 ms each, several ms per call
 * with one region per loop).
 *
 * Layout: images are copied pixel-major (HW, C), so the four bilinear corners of a sample are
 * four contiguous channel vectors and every sampling loop vectorises over channels. The column
 * tile is pixel-major as well, colT (pixels, G, K, C/G). The forward multiplies it by the weight
 * laid out (G, K, C/G, F/G), which the GEMM reads untransposed (its fastest form here), into a
 * pixel-major (pixels, F) tile, transposed into the output while it is in cache; backward uses
 * the weight permuted to (G, F/G, K, C/G), the right-hand side of its column-gradient GEMM.
 * Calls with few pixels per filter (CpuTilePlan::channel_major) skip those rearrangements: each
 * pixel's columns are reordered to (G, C/G, K) before the GEMMs, which then read the weight as
 * given (the forward's transposed), and the column gradient comes out in that order and is put
 * back to (G, K, C/G) for the sampling loops. Their threads share each tile: they sample
 * shares of its pixels, then each multiplies all of them by a share of the weight, so that each
 * reads only part of it, and backward writes its share of the weight gradient's columns straight
 * into the operator's, with no per-thread part to sum (see forward_team_tiles).
 *
 * Large images: when the block copies (and in backward each thread's image gradient) do not
 * fit `workspace`, the call runs "direct" (CpuTilePlan::image_copies false): the sampling loops
 * read the NCHW input itself, and the data gradient is scattered into the output in rounds, one
 * tile per thread each: after a barrier every thread adds all threads' tiles, in thread order,
 * to its own range of channels. Scratch then holds only the tiles, whatever the image's size.
 *
 * Per tile the bilinear sample of every (deformable group, tap, pixel) is computed once, in
 * vectorised loops over output rows, and reused for all channels of the group as a TapSample:
 * four corner pixels and four weights with the modulation folded in. Corners off the map point
 * at a zero pixel kept after the image copies, so a column element is four multiply-adds of
 * contiguous channel vectors, with no test. Every element is written by one thread in a fixed
 * order and the per-thread partial sums are added in thread order, so results are bit-identical
 * across runs for a given thread count.
 */
#include <omp.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../deformable_conv_kernel.h"
#include "blas.h"
#include "isa_dispatch.h"
#include "threads.h"

namespace dcnv2_mx {
// Compiled once per instruction set, each into its own namespace (see isa_dispatch.h).
namespace DCNV2_MX_ISA_NAMESPACE {

namespace {

/*!
 * \brief Before a loop over channels whose output never overlaps its inputs. Without it GCC
 *        tests each run of the loop for overlaps, as many instructions as the loop's own on 64
 *        channels: im2col took 0.93-0.98 the forward time without the tests on the 64-channel
 *        shapes, and the scatter of sample_grads 0.99 the forward+backward time.
 */
#if defined(__clang__)
#define DCNV2_MX_INDEPENDENT_ITERATIONS _Pragma("clang loop vectorize(assume_safety)")
#else
#define DCNV2_MX_INDEPENDENT_ITERATIONS _Pragma("GCC ivdep")
#endif

/*!
 * \brief Column tile size of one thread: about what a core's L2 cache holds besides the GEMM's
 *        own blocks, so that the GEMM reads the columns im2col has just written from there...
 */
constexpr size_t kThreadTileBytes = size_t(768) << 10;

/*!
 * \brief ...but at least this many pixels (GEMM rows), below which the GEMM loses more than the
 *        cache saves: measured on 512 KiB L2 cores, 768 KiB with 192 pixels at least was 0.80-0.98
 *        the time of 2 MiB tiles on 64-channel shapes and within 4% on the others.
 */
constexpr index_t kMinTilePixels = 192;

/*!
 * \brief Partial sums of the channel reductions: one vector of floats of the build's instruction
 *        set (8 lanes were 2-6% faster than 16 on AVX2 backward, where 16 take two registers).
 */
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif

/*!
 * \brief The sum of kLanes partial sums, pairwise in halves: each step is one vector add, in a
 *        fixed order all the same (the lanes are overwritten).
 */
template <typename Acc>
Acc sum_lanes(Acc (&lanes)[kLanes]) {
  for (int half = kLanes / 2; half > 0; half /= 2)
    for (int lane = 0; lane < half; ++lane) lanes[lane] += lanes[lane + half];
  return lanes[0];
}

/*! \brief sums[i] = sum_lanes(lanes[i]) for four sets of partial sums. */
template <typename Acc>
void sum_lanes4(Acc (&lanes)[4][kLanes], Acc (&sums)[4]) {
  for (int i = 0; i < 4; ++i) sums[i] = sum_lanes(lanes[i]);
}

#if defined(__AVX__)
/*!
 * \brief float: the same additions in the same order, in vector registers, the last two steps
 *        of all four sets at once after a 4 x 4 transpose. The compiler's scalar steps reload
 *        the lanes from the stack and took more time than the channel loop on 128 channels.
 */
inline void sum_lanes4(float (&lanes)[4][kLanes], float (&sums)[4]) {
  __m128 quarter[4];
  for (int i = 0; i < 4; ++i) {
    __m256 half = _mm256_loadu_ps(lanes[i]);
    if constexpr (kLanes == 16) half = _mm256_add_ps(half, _mm256_loadu_ps(lanes[i] + 8));
    quarter[i] = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  }
  // Row j of the transpose holds lane j of every set (set i in element i): sum_lanes adds
  // lanes 0 and 2, 1 and 3, then the two.
  _MM_TRANSPOSE4_PS(quarter[0], quarter[1], quarter[2], quarter[3]);
  _mm_storeu_ps(sums, _mm_add_ps(_mm_add_ps(quarter[0], quarter[2]),
                                 _mm_add_ps(quarter[1], quarter[3])));
}
#endif

/*!
 * \brief A call runs channel-major (CpuTilePlan::channel_major) with at least this many filters
 *        per output pixel of the whole call. Two threads, AVX-512, caches flushed by a 32 MiB
 *        pass before each call, against the tap-major kernel: 0.73-0.84 the forward time and
 *        0.71-0.84 the forward+backward with 0.19 pixels per filter (2 x 512 x 7 x 7 -> 512,
 *        also with stride 2), forward 0.84 with 0.38 (1 x 512 x 14 x 14 -> 512); with 0.5-2
 *        pixels per filter 0.9-1.12 either way (columns only, before the shared tiles), with 12
 *        (2 x 128 x 28 x 28) 1.20.
 */
constexpr index_t kChannelMajorFiltersPerPixel = 2;

/*! \brief Image copies of one block (more images per block: fewer barriers, more memory). */
constexpr size_t kBlockBytes = size_t(32) << 20;

/*!
 * \brief Pixels [first, first + count) of a block of whole images that starts at image n0,
 *        counted across the block: pixel f is pixel f % P of image n0 + f / P.
 */
struct ThreadTile {
  index_t n0, first, count;
};

/*!
 * \brief One bilinear sample as the sampling loops use it: the pixels of its four corners within
 *        the image of its output pixel, and the corners' weights with the modulation folded in,
 *        so that a column element is four multiply-adds over contiguous channel vectors.
 *
 * A corner off the map has weight 0 * m (NaN for a NaN mask, as the release's m * 0) and pixel
 * `outside_pixel`: with image copies the zero pixel kept after the block's images, so im2col
 * reads it without a test; direct, -1, which the reads test. The scatters skip such corners.
 */
template <typename Acc>
struct TapSample {
  int32_t pixel[4];
  Acc weight[4];
};

/*! \brief What backward's position and mask gradients need of a sample besides its TapSample. */
template <typename Acc>
struct TapPosition {
  Acc ly, lx;  //!< fractional position inside the cell (0 for a sample off the map)
  Acc m;       //!< modulation
};

/*! \brief One thread's sub-buffers of the scratch block. */
template <typename T, typename Acc>
struct ThreadBuffers {
  TapSample<Acc>* taps;         //!< (tile pixels, dg, K)
  TapPosition<Acc>* positions;  //!< (tile pixels, dg, K) (backward)
  T* col;                       //!< (tile pixels, G, K, C/G); null in a channel-major call,
                                //!< whose threads take their rows of CpuBuffers::team_col
  T* col_grad;                  //!< the same for its gradient (backward): the buffer of col,
                                //!< which the weight gradient's GEMM has read by then
  T* pixel_out;                 //!< (tile pixels, F): forward, the GEMM's result; backward,
                                //!< the output gradient, pixel-major (channel-major: null, as col)
  T* image_grads;               //!< (block images, HW, C): this thread's part (backward with
                                //!< image copies)
  T* weight_grad;               //!< (G, F/G, K, C/G): this thread's part (backward; none for a
                                //!< channel-major call, whose threads write their columns of
                                //!< the operator's gradient)
  T* pixel_row;                 //!< (C, K): one pixel's columns while they are reordered
                                //!< (channel-major calls)
};

/*!
 * \brief Sub-buffers of one call's scratch block: the block's image copies and the permuted
 *        weight, shared, then each thread's own buffers. Built on a null block it only measures
 *        (`bytes`), which is how the planner sizes the scratch.
 */
template <typename T, typename Acc>
struct CpuBuffers {
  T* images;  //!< (block images, HW, C), pixel-major, and a zero pixel; null when direct
  T* weight;  //!< the permuted weight: forward (G, K, C/G, F/G), backward (G, F/G, K, C/G);
              //!< null for a channel-major call, whose GEMMs read the operator's weight
  T* team_col;  //!< channel-major: the columns (backward: then their gradient) of a team tile,
                //!< (threads * tile, G, C/G, K); else null
  T* team_out;  //!< channel-major: (threads * tile, F), the forward GEMMs' result, backward the
                //!< output gradient pixel-major; else null
  std::vector<ThreadBuffers<T, Acc>> threads;
  size_t bytes;  //!< scratch these buffers need

  CpuBuffers(const DeformConvGeometry& g, const CpuTilePlan& plan, Scratch scratch, bool backward) {
    ScratchCarver carver(scratch);
    const size_t tile = static_cast<size_t>(plan.tile);
    const size_t block_n = static_cast<size_t>(plan.images * g.in_plane() * g.channels);
    // One more pixel after the images: the zero pixel of corners off the map (see TapSample).
    const size_t images_n = block_n + static_cast<size_t>(g.channels);
    const size_t weight_n = static_cast<size_t>(g.filters * g.col_rows_per_group());
    const size_t samples_n = static_cast<size_t>(g.deformable_groups * g.taps()) * tile;
    const size_t row_n = static_cast<size_t>(g.channels * g.taps());  // one pixel's columns
    const size_t col_n = row_n * tile;
    images = plan.image_copies ? carver.take<T>(images_n) : nullptr;
    if (images)  // the zero pixel: never written again
      std::memset(images + block_n, 0, sizeof(T) * static_cast<size_t>(g.channels));
    weight = plan.channel_major ? nullptr : carver.take<T>(weight_n);
    const size_t out_n = static_cast<size_t>(g.filters) * tile;
    // A channel-major call's threads share their columns and GEMM results (team tiles).
    const bool team = plan.channel_major;
    const size_t threads_n = static_cast<size_t>(plan.threads);
    team_col = team ? carver.take<T>(threads_n * col_n) : nullptr;
    team_out = team ? carver.take<T>(threads_n * out_n) : nullptr;
    threads.resize(threads_n);
    for (size_t i = 0; i < threads_n; ++i) {  // each take is 64-byte aligned: no false sharing
      ThreadBuffers<T, Acc>& own = threads[i];
      own.taps = carver.take<TapSample<Acc>>(samples_n);
      own.positions = backward ? carver.take<TapPosition<Acc>>(samples_n) : nullptr;
      // In team tiles a thread's rows start where its share of each tile does: its buffers
      // point at them then (team_share), never here.
      own.col = team ? nullptr : carver.take<T>(col_n);
      own.col_grad = backward ? own.col : nullptr;
      own.pixel_out = team ? nullptr : carver.take<T>(out_n);
      own.image_grads = backward && plan.image_copies ? carver.take<T>(block_n) : nullptr;
      own.weight_grad = backward && !team ? carver.take<T>(weight_n) : nullptr;
      own.pixel_row = plan.channel_major ? carver.take<T>(row_n) : nullptr;
    }
    bytes = carver.bytes_needed();
  }
};

/*! \brief dst[c * dst_ld + r] (+)= src[r * src_ld + c] for r in [r0, r1), c in [c0, c1). */
template <bool kAccumulate, typename T>
void transpose_block(const T* src, index_t src_ld, T* dst, index_t dst_ld, index_t r0, index_t r1,
                     index_t c0, index_t c1) {
  for (index_t c = c0; c < c1; ++c)
    for (index_t r = r0; r < r1; ++r) {
      const T v = src[r * src_ld + c];
      dst[c * dst_ld + r] = kAccumulate ? dst[c * dst_ld + r] + v : v;
    }
}

#if defined(__AVX__)
/*!
 * \brief The 8 x 8 float block at src (+)= into dst, transposed in registers: the scalar loop
 *        becomes strided single loads, several times slower on the image copies and the output.
 */
template <bool kAccumulate>
void transpose_8x8(const float* src, index_t src_ld, float* dst, index_t dst_ld) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_ld);
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // columns (c, c + 4) of four rows
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {  // the halves of rows 0-3 and 4-7 joined: columns c and c + 4
    __m256 low = _mm256_permute2f128_ps(u[c], u[c + 4], 0x20);
    __m256 high = _mm256_permute2f128_ps(u[c], u[c + 4], 0x31);
    if (kAccumulate) {
      low = _mm256_add_ps(_mm256_loadu_ps(dst + c * dst_ld), low);
      high = _mm256_add_ps(_mm256_loadu_ps(dst + (c + 4) * dst_ld), high);
    }
    _mm256_storeu_ps(dst + c * dst_ld, low);
    _mm256_storeu_ps(dst + (c + 4) * dst_ld, high);
  }
}
#endif

/*!
 * \brief dst[c * dst_ld + r] = src[r * src_ld + c] (or += with kAccumulate) for a rows x cols
 *        matrix, in cache-sized blocks, on the calling thread.
 */
template <bool kAccumulate, typename T>
void transpose_2d(const T* src, index_t rows, index_t cols, index_t src_ld, T* dst,
                  index_t dst_ld) {
  constexpr index_t kBlock = 32;
  for (index_t r0 = 0; r0 < rows; r0 += kBlock)
    for (index_t c0 = 0; c0 < cols; c0 += kBlock) {
      const index_t r1 = std::min(rows, r0 + kBlock), c1 = std::min(cols, c0 + kBlock);
      index_t r = r0;
#if defined(__AVX__)
      if constexpr (std::is_same<T, float>::value)
        for (; r + 8 <= r1; r += 8) {
          index_t c = c0;
          for (; c + 8 <= c1; c += 8)
            transpose_8x8<kAccumulate>(src + r * src_ld + c, src_ld, dst + c * dst_ld + r, dst_ld);
          transpose_block<kAccumulate>(src, src_ld, dst, dst_ld, r, r + 8, c, c1);
        }
#endif
      transpose_block<kAccumulate>(src, src_ld, dst, dst_ld, r, r1, c0, c1);
    }
}

/*!
 * \brief dst (count, cols, rows) = the transpose of each of `count` (rows, cols) matrices of
 *        src, split over the team (call from every thread of a parallel region; no barrier) in
 *        strips of source columns, so that each task writes one contiguous block of dst. Strips
 *        of source rows, which write a part of every row of dst, took 1.4-3.8 times as long to
 *        copy images of 64-512 channels pixel-major (two threads, AVX-512): the threads wrote
 *        neighbouring cache lines of the same rows.
 */
template <typename T>
void team_transpose(const T* src, index_t count, index_t rows, index_t cols, T* dst) {
  constexpr index_t kStrip = 32;
  const index_t strips = (cols + kStrip - 1) / kStrip;
#pragma omp for schedule(static) nowait
  for (index_t task = 0; task < count * strips; ++task) {
    const index_t m = task / strips, c0 = (task - m * strips) * kStrip;
    transpose_2d<false>(src + m * rows * cols + c0, rows, std::min(kStrip, cols - c0), cols,
                        dst + (m * cols + c0) * rows, rows);
  }
}

/*!
 * \brief dst (count, cols, rows) = the sum over `parts` of the transposes of (count, rows, cols)
 *        matrices, part 0 first: the ordered reduction of per-thread gradients (team, no
 *        barrier). `part(i)` is the base pointer of part i.
 */
template <typename T, typename Part>
void team_transpose_sum(Part&& part, int parts, index_t count, index_t rows, index_t cols,
                        T* dst) {
  constexpr index_t kStrip = 32;
  const index_t strips = (rows + kStrip - 1) / kStrip;
#pragma omp for schedule(static) nowait
  for (index_t task = 0; task < count * strips; ++task) {
    const index_t m = task / strips, r0 = (task - m * strips) * kStrip;
    const index_t strip_rows = std::min(kStrip, rows - r0);
    transpose_2d<false>(part(0) + (m * rows + r0) * cols, strip_rows, cols, cols,
                        dst + m * rows * cols + r0, rows);
    for (int i = 1; i < parts; ++i)
      transpose_2d<true>(part(i) + (m * rows + r0) * cols, strip_rows, cols, cols,
                         dst + m * rows * cols + r0, rows);
  }
}

/*!
 * \brief dst (G, K, C/G, F/G) = the weight (F, C/G, K) with each group's filters last, split
 *        over the team (no barrier): the forward GEMM's right-hand side, rows in the columns'
 *        (tap, channel) order. oneDNN's sgemm multiplies by it as it is 10-20% faster than
 *        by the (F, K, C/G) weight transposed (AVX-512 and AVX2; ResNet's 3x3 layer shapes,
 *        tiles of 192 pixels), for a copy of the same size.
 */
template <typename T>
void team_weight_by_tap(const DeformConvGeometry& g, const T* weight, T* dst) {
  const index_t K = g.taps(), cg = g.channels_per_group(), fg = g.filters_per_group();
  const index_t src_ld = cg * K, dst_ld = cg * fg;  // from filter to filter; from tap to tap
  // Tasks of a few channels, each channel's destination rows (one per tap) written from filter
  // 0 to the last: with 512 filters and channels this took 0.7-0.75 the time of 16 channels at
  // a time for each block of 8 filters, which writes 32 bytes into each of 144 rows spread over
  // 9 MiB before moving on.
  constexpr index_t kStrip = 4;
  const index_t strips = (cg + kStrip - 1) / kStrip;
#pragma omp for schedule(static) nowait
  for (index_t task = 0; task < g.groups * strips; ++task) {
    const index_t grp = task / strips, c0 = (task - grp * strips) * kStrip;
    const index_t c1 = std::min(cg, c0 + kStrip);
    for (index_t c = c0; c < c1; ++c)
      for (index_t f0 = 0; f0 < fg; f0 += 8) {
        const index_t filters = std::min<index_t>(8, fg - f0);
        // (filters, K) at src, rows src_ld apart, into (K, filters) at out, rows dst_ld apart.
        const T* src = weight + ((grp * fg + f0) * cg + c) * K;
        T* out = dst + grp * K * cg * fg + c * fg + f0;
        index_t k = 0;
#if defined(__AVX__)
        if constexpr (std::is_same<T, float>::value)
          if (filters == 8)
            for (; k + 8 <= K; k += 8)
              transpose_8x8<false>(src + k, src_ld, out + k * dst_ld, dst_ld);
#endif
        transpose_block<false>(src, src_ld, out, dst_ld, 0, filters, k, K);
      }
  }
}

/*! \brief Thread `thread`'s contiguous share of [0, count) among `threads`. */
inline void share_of(index_t count, int thread, int threads, index_t* begin, index_t* end) {
  *begin = count * thread / threads;
  *end = count * (thread + 1) / threads;
}

/*! \brief This thread's contiguous share of [0, count). */
inline void thread_share(index_t count, index_t* begin, index_t* end) {
  share_of(count, omp_get_thread_num(), omp_get_num_threads(), begin, end);
}

/*!
 * \brief Calls body(n, p, t, run) for the runs of a tile that lie in one image: pixels
 *        [p, p + run) of image n are tile pixels [t, t + run).
 */
template <typename Body>
void for_image_runs(const DeformConvGeometry& g, const ThreadTile& tile, Body&& body) {
  const index_t P = g.out_plane();
  for (index_t t = 0; t < tile.count;) {
    const index_t f = tile.first + t, n = tile.n0 + f / P, p = f % P;
    const index_t run = std::min(tile.count - t, P - p);
    body(n, p, t, run);
    t += run;
  }
}

/*!
 * \brief Channels [c0, c1) that share a deformable group and a convolution group; col_offset
 *        is the position of channel c0, tap 0, within a row of colT (the channels of a run are
 *        contiguous there).
 */
struct ChannelRun {
  index_t c0, c1, dgroup, col_offset;
};

/*!
 * \brief The maximal channel runs of a call in channel order, listed once so that the sampling
 *        loops, which visit them for every (pixel, tap), do no divisions.
 */
class ChannelRuns {
 public:
  explicit ChannelRuns(const DeformConvGeometry& g) {
    const index_t cpd = g.channels_per_dgroup(), cg = g.channels_per_group(), K = g.taps();
    for (index_t c0 = 0; c0 < g.channels;) {
      const index_t dgroup = c0 / cpd, grp = c0 / cg;
      const index_t c1 = std::min((dgroup + 1) * cpd, (grp + 1) * cg);
      if (dgroup_start_.size() <= static_cast<size_t>(dgroup)) dgroup_start_.push_back(runs_.size());
      runs_.push_back(ChannelRun{c0, c1, dgroup, grp * K * cg + (c0 - grp * cg)});
      c0 = c1;
    }
    dgroup_start_.push_back(runs_.size());
  }
  const ChannelRun* begin() const { return runs_.data(); }
  const ChannelRun* end() const { return runs_.data() + runs_.size(); }
  /*! \brief The runs of deformable group d: [first, last). */
  const ChannelRun* first_of(index_t d) const { return runs_.data() + dgroup_start_[d]; }
  const ChannelRun* last_of(index_t d) const { return runs_.data() + dgroup_start_[d + 1]; }

 private:
  std::vector<ChannelRun> runs_;
  std::vector<size_t> dgroup_start_;
};

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
 * \brief The pixel that stands for corners off the map in the samples of image `image` of a
 *        block (see TapSample): with image copies the block's zero pixel, counted from that
 *        image's copy; direct, -1.
 */
template <bool kDirect>
int32_t outside_pixel(const DeformConvGeometry& g, const CpuTilePlan& plan, index_t image) {
  // Fits: a block of more than one image is at most kBlockBytes; one image's pixels fit int32.
  return kDirect ? -1 : static_cast<int32_t>((plan.images - image) * g.in_plane());
}

/*!
 * \brief The samples of tap k = (i, j) at `count` consecutive output pixels of one output row,
 *        whose offsets (dy, dx) and (kMasked) modulation m are contiguous: taps[t * stride] and
 *        (kPositions) positions[t * stride] for t < count. Straight-line code over contiguous
 *        inputs, with no test that the compiler could not turn into a select: it vectorises.
 */
template <bool kMasked, bool kPositions, typename T, typename Acc>
void build_row_samples(const DeformConvGeometry& g, index_t ho, index_t wo, index_t i, index_t j,
                       const T* __restrict__ dy, const T* __restrict__ dx,
                       const T* __restrict__ m, index_t count, int32_t outside, index_t stride,
                       TapSample<Acc>* __restrict__ taps, TapPosition<Acc>* __restrict__ positions) {
  const Acc origin_y = static_cast<Acc>(g.tap_origin_y(ho, i));
  // Columns in int: the conversion of a 64-bit integer to floating point has no AVX2 vector form.
  // They fit: an output row maps onto the input's width (an int) plus padding.
  const int origin_x = static_cast<int>(g.tap_origin_x(wo, j)), stride_w = g.stride_w;
  const int height = static_cast<int>(g.height), width = static_cast<int>(g.width);
  for (index_t t = 0; t < count; ++t) {
    const Acc py = origin_y + static_cast<Acc>(dy[t]);
    const Acc px = static_cast<Acc>(origin_x + static_cast<int>(t) * stride_w) +
                   static_cast<Acc>(dx[t]);
    const Acc modulation = kMasked ? static_cast<Acc>(m[t]) : Acc(1);
    const BilinearSample<Acc> s = make_sample<Acc>(py, px, height, width);
    TapSample<Acc>& tap = taps[t * stride];
    for (int c = 0; c < 4; ++c) {
      tap.pixel[c] = (s.valid >> c) & 1u ? s.offset[c] : outside;
      tap.weight[c] = s.weight[c] * modulation;
    }
    if (kPositions) positions[t * stride] = TapPosition<Acc>{s.ly, s.lx, modulation};
  }
}

/*!
 * \brief Samples of every tile pixel for every deformable group and tap, pixel-major at
 *        [t * dg * K + dgroup * K + k]: the TapSamples, and in backward their TapPositions.
 */
template <bool kDirect, typename T, typename Acc>
void build_samples(const DeformConvGeometry& g, const CpuTilePlan& plan, const T* offset,
                   const T* mask, const ThreadTile& tile, const ThreadBuffers<T, Acc>& own) {
  const index_t P = g.out_plane(), K = g.taps(), rows = g.deformable_groups * K;
  for_image_runs(g, tile, [&](index_t n, index_t p0, index_t t0, index_t run) {
    const T* offset_n = image_offset(g, offset, n);
    const T* mask_n = image_mask(g, mask, n);
    const int32_t outside = outside_pixel<kDirect>(g, plan, n - tile.n0);
    // A tap row at a time, so that each offset (and mask) plane is read straight through the
    // run (tap-major over the whole run was 5-12% faster on 4 deformable groups than output row
    // by output row across all 3 * dg * K planes, which the prefetchers cannot all follow); within
    // it output row by output row, where the offsets of a tap are contiguous.
    for (index_t row = 0; row < rows; ++row) {  // row = dgroup * K + k
      const index_t k = row % K, i = k / g.kernel_w, j = k - i * g.kernel_w;
      for (index_t p = p0; p < p0 + run;) {
        const index_t ho = p / g.out_w, wo = p - ho * g.out_w;
        const index_t count = std::min(g.out_w - wo, p0 + run - p), t = t0 + (p - p0);
        const T* dy = offset_n + 2 * row * P + p;
        const T* m = mask_n ? mask_n + row * P + p : nullptr;
        TapSample<Acc>* taps = own.taps + t * rows + row;
        TapPosition<Acc>* positions = own.positions ? own.positions + t * rows + row : nullptr;
        // One loop per case: a test inside would keep it from vectorising.
        if (m && positions)
          build_row_samples<true, true>(g, ho, wo, i, j, dy, dy + P, m, count, outside, rows,
                                        taps, positions);
        else if (m)
          build_row_samples<true, false>(g, ho, wo, i, j, dy, dy + P, m, count, outside, rows,
                                         taps, positions);
        else if (positions)
          build_row_samples<false, true>(g, ho, wo, i, j, dy, dy + P, m, count, outside, rows,
                                         taps, positions);
        else
          build_row_samples<false, false>(g, ho, wo, i, j, dy, dy + P, m, count, outside, rows,
                                          taps, positions);
        p += count;
      }
    }
  });
}

/*! \brief The pixel-major image (or image gradient) of tile pixel t within a block's copies. */
template <typename U>
U* image_of(const DeformConvGeometry& g, const ThreadTile& tile, U* images, index_t t) {
  return images + ((tile.first + t) / g.out_plane()) * g.in_plane() * g.channels;
}

/*!
 * \brief Element (pixel, channel c) of an image: pixel-major copies hold it at pixel * C + c,
 *        the NCHW input (kDirect) at c * H * W + pixel.
 */
template <bool kDirect>
index_t element_of(const DeformConvGeometry& g, index_t pixel, index_t c) {
  return kDirect ? c * g.in_plane() + pixel : pixel * g.channels + c;
}

/*!
 * \brief Value of corner i of a sample on channel c of an image: direct, 0 for a corner off the
 *        map (pixel -1); with copies the zero pixel gives that 0 without a test.
 */
template <bool kDirect, typename T, typename Acc>
Acc corner_at(const DeformConvGeometry& g, const T* image, const TapSample<Acc>& s, int i,
              index_t c) {
  if (kDirect && s.pixel[i] < 0) return Acc(0);
  return static_cast<Acc>(image[element_of<kDirect>(g, s.pixel[i], c)]);
}

/*! \brief colT[t, grp, k, c] = the modulated bilinear value of image(t)[c] at sample (dgroup(c), k). */
template <bool kDirect, typename T, typename Acc>
void im2col(const DeformConvGeometry& g, const ChannelRuns& runs, const ThreadTile& tile,
            const T* images, const ThreadBuffers<T, Acc>& own) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t rows = g.deformable_groups * K;
  for (index_t t = 0; t < tile.count; ++t) {
    const T* image = image_of(g, tile, images, t);
    const TapSample<Acc>* taps = own.taps + t * rows;
    T* col_t = own.col + t * C * K;
    for (const ChannelRun& run : runs)
      for (index_t k = 0; k < K; ++k) {
        const TapSample<Acc> s = taps[run.dgroup * K + k];  // a local copy stays in registers
        T* __restrict__ out = col_t + run.col_offset + k * cg - run.c0;
        DCNV2_MX_INDEPENDENT_ITERATIONS  // the column tile never overlaps the images
        for (index_t c = run.c0; c < run.c1; ++c) {
          Acc v = s.weight[0] * corner_at<kDirect>(g, image, s, 0, c);
          for (int i = 1; i < 4; ++i) v += s.weight[i] * corner_at<kDirect>(g, image, s, i, c);
          out[c] = static_cast<T>(v);
        }
      }
  }
}

/*!
 * \brief Reorders each of the tile's pixel rows at `rows` (CK apart) between the sampling
 *        loops' (G, K, C/G) and the weight's (G, C/G, K): to_channel_major, or back.
 */
template <typename T, typename Acc>
void reorder_pixel_rows(const DeformConvGeometry& g, const ThreadTile& tile,
                        const ThreadBuffers<T, Acc>& own, T* rows, bool to_channel_major) {
  const index_t K = g.taps(), cg = g.channels_per_group(), rows_g = g.col_rows_per_group();
  const index_t CK = g.channels * K;
  // (from rows, from columns) of each group's matrix.
  const index_t from_rows = to_channel_major ? K : cg, from_cols = to_channel_major ? cg : K;
  for (index_t t = 0; t < tile.count; ++t) {
    T* row = rows + t * CK;
    std::memcpy(own.pixel_row, row, sizeof(T) * static_cast<size_t>(CK));
    for (int grp = 0; grp < g.groups; ++grp)
      transpose_2d<false>(own.pixel_row + grp * rows_g, from_rows, from_cols, from_cols,
                          row + grp * rows_g, from_rows);
  }
}

/*!
 * \brief out[n, f, p] = W x colT[t]^T + bias for every tile pixel and filters [f0, f1) of each
 *        group, from the tile's columns `col` (CK apart) through `pixel_out` (F apart). `weight`
 *        is the operator's (F, C/G, K) for a channel-major call, else the forward's
 *        (G, K, C/G, F/G).
 */
template <typename T>
bool forward_gemm(const DeformConvGeometry& g, const CpuTilePlan& plan, const ThreadTile& tile,
                  index_t f0, index_t f1, const T* weight, const T* col, T* pixel_out,
                  const T* bias, T* out) {
  const index_t P = g.out_plane(), CK = g.channels * g.taps(), F = g.filters;
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  if (f1 <= f0) return true;
  bool ok = true;
  for (int grp = 0; grp < g.groups; ++grp) {
    const index_t first = grp * fg + f0;  // the group's first filter of the range
    const T* w = plan.channel_major ? weight + first * rows_g : weight + grp * rows_g * fg + f0;
    ok &= cpu::gemm(false, plan.channel_major, tile.count, f1 - f0, rows_g, T(1),
                    col + grp * rows_g, CK, w, plan.channel_major ? rows_g : fg, T(0),
                    pixel_out + first, F);
  }
  for_image_runs(g, tile, [&](index_t n, index_t p, index_t t, index_t run) {
    for (int grp = 0; grp < g.groups; ++grp) {
      const index_t first = grp * fg + f0;
      T* out_n = out + (n * F + first) * P + p;
      transpose_2d<false>(pixel_out + t * F + first, run, f1 - f0, F, out_n, P);
      if (bias)
        for (index_t f = 0; f < f1 - f0; ++f)
          for (index_t i = 0; i < run; ++i) out_n[f * P + i] += bias[first + f];
    }
  });
  return ok;
}

/*!
 * \brief Columns [r0, r1) of each group's rows of the weight gradient `dst` (F, rows per group)
 *        += dout x colT over the tile's pixels (columns `col`, CK apart); = where *started is
 *        false (the first pixels), which it then sets: the first GEMM overwrites instead of
 *        adding to zeros (zeroing a 512 x 4608 part took 5% of a forward+backward with 7 x 7
 *        maps).
 */
template <typename T>
bool weight_grad_gemm(const DeformConvGeometry& g, const ThreadTile& tile, index_t r0, index_t r1,
                      const T* col, const T* out_grad, T* dst, bool* started) {
  const index_t P = g.out_plane(), CK = g.channels * g.taps();
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  if (r1 <= r0) return true;
  bool ok = true;
  for_image_runs(g, tile, [&](index_t n, index_t p, index_t t, index_t run) {
    const T beta = *started ? T(1) : T(0);
    for (int grp = 0; grp < g.groups; ++grp)
      ok &= cpu::gemm(false, false, fg, r1 - r0, run, T(1),
                      out_grad + (n * g.filters + grp * fg) * P + p, P,
                      col + t * CK + grp * rows_g + r0, CK, beta,
                      dst + grp * fg * rows_g + r0, rows_g);
    *started = true;
  });
  return ok;
}

/*!
 * \brief pixel_out (tile pixels, F) = the tile's output gradient, pixel-major: oneDNN's sgemm
 *        reading it transposed straight from the NCHW gradient ran at 0.4 its speed when the
 *        rows were a power of two apart (32 x 32 or 64 x 64 planes: cache-set conflicts), and as
 *        fast otherwise.
 */
template <typename T>
void out_grad_pixel_major(const DeformConvGeometry& g, const ThreadTile& tile, const T* out_grad,
                          T* pixel_out) {
  const index_t P = g.out_plane(), F = g.filters;
  for_image_runs(g, tile, [&](index_t n, index_t p, index_t t, index_t run) {
    transpose_2d<false>(out_grad + n * F * P + p, F, run, P, pixel_out + t * F, F);
  });
}

/*!
 * \brief Columns [r0, r1) of each group's rows of colT_grad (`col_grad`, CK apart) = dout^T x W
 *        over the tile's pixels, from their output gradient `pixel_out` (F apart). `weight` is
 *        (G, F/G, K, C/G), or the operator's (F, C/G, K) for a channel-major call, whose column
 *        gradient comes out channel-major.
 */
template <typename T>
bool col_grad_gemm(const DeformConvGeometry& g, const ThreadTile& tile, index_t r0, index_t r1,
                   const T* weight, const T* pixel_out, T* col_grad) {
  const index_t CK = g.channels * g.taps(), F = g.filters;
  const index_t fg = g.filters_per_group(), rows_g = g.col_rows_per_group();
  if (r1 <= r0) return true;
  bool ok = true;
  for (int grp = 0; grp < g.groups; ++grp)
    ok &= cpu::gemm(false, false, tile.count, r1 - r0, fg, T(1), pixel_out + grp * fg, F,
                    weight + grp * fg * rows_g + r0, rows_g, T(0),
                    col_grad + grp * rows_g + r0, CK);
  return ok;
}

/*!
 * \brief What backward takes from the tile's column gradient sample by sample: the offset and
 *        mask gradients that are not null, sums over the channels of each deformable group of the
 *        column gradient times the sample's position derivatives and value; kScatter (image
 *        copies), the scatter of the column gradient into this thread's pixel-major image
 *        gradient `image_grads`, in the same pass, while the sample's column gradient is in L1
 *        (res_c3: 0.86 the time of a second pass, in perf's samples). Direct calls scatter in
 *        rounds (col2im).
 */
template <bool kDirect, bool kScatter, typename T, typename Acc>
void sample_grads(const DeformConvGeometry& g, const CpuTilePlan& plan, const ChannelRuns& runs,
                  const ThreadTile& tile, const T* images, const ThreadBuffers<T, Acc>& own,
                  T* offset_grad, T* mask_grad, T* image_grads) {
  static_assert(!(kDirect && kScatter), "direct calls scatter in rounds (col2im)");
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group(), P = g.out_plane();
  const index_t rows = g.deformable_groups * K;
  // Without them (scatter only) the images need not even be there: no weight gradient either.
  const bool positions = offset_grad || mask_grad;
  for (index_t t = 0; t < tile.count; ++t) {
    const index_t f = tile.first + t, image_index = f / P, n = tile.n0 + image_index;
    const index_t p = f - image_index * P;
    const int32_t outside = outside_pixel<kDirect>(g, plan, image_index);
    const T* image = image_of(g, tile, images, t);
    T* image_grad = kScatter ? image_of(g, tile, image_grads, t) : nullptr;
    const T* dcol_t = own.col_grad + t * C * K;
    for (index_t row = 0; row < rows; ++row) {  // row = dgroup * K + k
      const index_t dgroup = row / K, k = row - dgroup * K;
      const TapSample<Acc> s = own.taps[t * rows + row];
      // The value and both slopes are linear in the cell's terms (cell_terms), so the channel
      // sums are taken of the four terms times the column gradient and blended once per
      // sample: eight operations per channel instead of eleven. One partial sum per channel
      // lane, added up at the end (sum_lanes4): a single running sum would keep the compiler
      // from vectorising over channels.
      Acc lanes[4][kLanes] = {};
      // A sample off the map has no corner on it: nothing to scatter, and gradients 0 (not
      // 0 * dcol).
      const bool on_map = s.pixel[0] != outside || s.pixel[1] != outside ||
                          s.pixel[2] != outside || s.pixel[3] != outside;
      if (on_map)
        for (const ChannelRun* run = runs.first_of(dgroup); run != runs.last_of(dgroup); ++run) {
          const T* __restrict__ dcol = dcol_t + run->col_offset + k * cg - run->c0;
          if (positions) {
            auto add = [&](index_t c, int lane) {
              const Acc d = static_cast<Acc>(dcol[c]);
              Acc corners[4], terms[4];
              for (int i = 0; i < 4; ++i) corners[i] = corner_at<kDirect>(g, image, s, i, c);
              cell_terms(corners, terms);
              for (int i = 0; i < 4; ++i) lanes[i][lane] += d * terms[i];
            };
            index_t c = run->c0;
            for (; c + kLanes <= run->c1; c += kLanes)
              for (int lane = 0; lane < kLanes; ++lane) add(c + lane, lane);
            for (int lane = 0; c < run->c1; ++c, ++lane) add(c, lane);
          }
          // Corner by corner: the corners of a sample are distinct pixels, so each pass is one
          // plain vector update, and each element gets its terms in (tap, corner) order.
          if (kScatter)
            for (int i = 0; i < 4; ++i) {
              if (s.pixel[i] == outside) continue;
              T* __restrict__ corner = image_grad + s.pixel[i] * C;
              DCNV2_MX_INDEPENDENT_ITERATIONS  // nor the image gradient the column gradient
              for (index_t c = run->c0; c < run->c1; ++c)
                corner[c] += static_cast<T>(s.weight[i] * static_cast<Acc>(dcol[c]));
            }
        }
      if (!positions) continue;
      const TapPosition<Acc> q = own.positions[t * rows + row];
      Acc term_sums[4], value, dv_dy, dv_dx;
      sum_lanes4(lanes, term_sums);
      blend_cell_terms(term_sums, q.ly, q.lx, &value, &dv_dy, &dv_dx);
      if (offset_grad) {
        T* grad_y = offset_grad + (n * g.offset_channels() + dgroup * 2 * K + 2 * k) * P + p;
        grad_y[0] = static_cast<T>(dv_dy * q.m);
        grad_y[P] = static_cast<T>(dv_dx * q.m);
      }
      if (mask_grad)
        mask_grad[(n * g.mask_channels() + row) * P + p] = static_cast<T>(value);
    }
  }
}

/*!
 * \brief data_grad += the scatter of the column gradient of `tile` (whose samples and column
 *        gradient are in `src`) over its samples, for channels [c_begin, c_end) of the NCHW data
 *        gradient of the block: direct calls, whose threads each scatter every thread's tiles
 *        into their own channels (with image copies, sample_grads scatters).
 */
template <typename T, typename Acc>
void col2im(const DeformConvGeometry& g, const CpuTilePlan& plan, const ChannelRuns& runs,
            const ThreadTile& tile, const ThreadBuffers<T, Acc>& src, T* data_grad,
            index_t c_begin, index_t c_end) {
  const index_t K = g.taps(), C = g.channels, cg = g.channels_per_group();
  const index_t rows = g.deformable_groups * K, HW = g.in_plane();
  const int32_t outside = outside_pixel<true>(g, plan, 0);
  for (index_t t = 0; t < tile.count; ++t) {
    T* image_grad = image_of(g, tile, data_grad, t);
    const T* dcol_t = src.col_grad + t * C * K;
    for (const ChannelRun& run : runs) {
      const index_t c0 = std::max(run.c0, c_begin), c1 = std::min(run.c1, c_end);
      if (c0 >= c1) continue;
      for (index_t k = 0; k < K; ++k) {
        const TapSample<Acc> s = src.taps[t * rows + run.dgroup * K + k];
        const T* __restrict__ dcol = dcol_t + run.col_offset + k * cg - run.c0;
        // Corner by corner, each element's terms in (tap, corner) order, as with image copies.
        for (int i = 0; i < 4; ++i) {
          if (s.pixel[i] == outside) continue;
          T* __restrict__ corner = image_grad + s.pixel[i];
          for (index_t c = c0; c < c1; ++c)
            corner[c * HW] += static_cast<T>(s.weight[i] * static_cast<Acc>(dcol[c]));
        }
      }
    }
  }
}

/*!
 * \brief Calls body(tile) for this thread's share of the pixels of images [n0, n1), in tiles
 *        of at most plan.tile pixels (call from every thread of the region).
 */
template <typename Body>
void for_own_tiles(const DeformConvGeometry& g, const CpuTilePlan& plan, index_t n0, index_t n1,
                   Body&& body) {
  index_t begin, end;
  thread_share((n1 - n0) * g.out_plane(), &begin, &end);
  for (index_t first = begin; first < end; first += plan.tile)
    body(ThreadTile{n0, first, std::min(plan.tile, end - first)});
}

/*!
 * \brief ThreadTile `round` of thread `thread`'s share (of `threads`) of the pixels of images
 *        [n0, n1): empty (count 0) past the end of the share. Every thread can name every
 *        thread's tile, which the direct data gradient needs.
 */
inline ThreadTile thread_tile(const DeformConvGeometry& g, const CpuTilePlan& plan, index_t n0,
                        index_t n1, int thread, int threads, index_t round) {
  index_t begin, end;
  share_of((n1 - n0) * g.out_plane(), thread, threads, &begin, &end);
  const index_t first = begin + round * plan.tile;
  return ThreadTile{n0, first, std::max<index_t>(0, std::min(plan.tile, end - first))};
}

/*! \brief Rounds of tiles of the largest thread share of images [n0, n1). */
inline index_t tile_rounds(const DeformConvGeometry& g, const CpuTilePlan& plan, index_t n0,
                           index_t n1, int threads) {
  const index_t largest_share = ((n1 - n0) * g.out_plane() + threads - 1) / threads;
  return (largest_share + plan.tile - 1) / plan.tile;
}

/*! \brief Calls body(n0, n1) for the blocks of images of a call, in order. */
template <typename Body>
void for_blocks(const DeformConvGeometry& g, const CpuTilePlan& plan, Body&& body) {
  for (index_t n0 = 0; n0 < g.batch; n0 += plan.images)
    body(n0, std::min(g.batch, n0 + plan.images));
}

/*! \brief Thrown after a parallel region in which the GEMM library refused its arguments. */
void check_gemms(bool ok) {
  if (!ok) throw std::logic_error("the GEMM library rejected its arguments (internal error)");
}


/*!
 * \brief Thread `thread`'s share (of `threads`) of the pixels of team tile `tile`, and in
 *        `*share_buffers` its buffers with col (and col_grad, which takes its buffer) and
 *        pixel_out at its rows of the shared team_col and team_out.
 */
template <typename T, typename Acc>
ThreadTile team_share(const DeformConvGeometry& g, const CpuBuffers<T, Acc>& buf,
                      const ThreadTile& tile, int thread, int threads,
                      ThreadBuffers<T, Acc>* share_buffers) {
  index_t begin, end;
  share_of(tile.count, thread, threads, &begin, &end);
  *share_buffers = buf.threads[thread];
  share_buffers->col = share_buffers->col_grad = buf.team_col + begin * g.channels * g.taps();
  share_buffers->pixel_out = buf.team_out + begin * g.filters;
  return ThreadTile{tile.n0, tile.first + begin, end - begin};
}

/*!
 * \brief Channel-major forward of images [n0, n1) (call from every thread of the region): team
 *        tiles of plan.threads * plan.tile pixels, each sampled by the threads in shares of its
 *        pixels and then multiplied by each thread's share of every group's filters. With few
 *        pixels per filter the GEMMs stream the weight rather than the columns; so each thread
 *        reads only its filters' rows of it (2 x 512 x 7 x 7 -> 512: 0.90-0.93 the forward time
 *        of each thread multiplying its own pixels by every filter).
 */
template <bool kDirect, typename T, typename Acc>
bool forward_team_tiles(const DeformConvGeometry& g, const CpuTilePlan& plan,
                        const ChannelRuns& runs, const CpuBuffers<T, Acc>& buf,
                        const DeformConvForwardArgs<T>& a, const T* images, index_t n0,
                        index_t n1) {
  const int team = omp_get_num_threads(), me = omp_get_thread_num();
  const index_t pixels = (n1 - n0) * g.out_plane(), team_tile = plan.tile * team;
  index_t f0, f1;
  share_of(g.filters_per_group(), me, team, &f0, &f1);
  bool ok = true;
  for (index_t first = 0; first < pixels; first += team_tile) {
    const ThreadTile tile{n0, first, std::min(team_tile, pixels - first)};
    ThreadBuffers<T, Acc> mine;
    const ThreadTile part = team_share(g, buf, tile, me, team, &mine);
    if (part.count > 0) {
      build_samples<kDirect, T, Acc>(g, plan, a.offset, a.mask, part, mine);
      im2col<kDirect, T, Acc>(g, runs, part, images, mine);
      reorder_pixel_rows(g, part, mine, mine.col, true);
    }
#pragma omp barrier  // the team tile's columns are complete
    ok = forward_gemm(g, plan, tile, f0, f1, a.weight, buf.team_col, buf.team_out, a.bias,
                      a.out) && ok;
#pragma omp barrier  // every thread has read the columns before they are refilled
  }
  return ok;
}

/*! \brief Forward of a call planned with (kDirect false) or without image copies. */
template <bool kDirect, typename T>
void forward_blocks(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                    const CpuTilePlan& plan, Scratch scratch) {
  using Acc = typename AccType<T>::type;
  const CpuBuffers<T, Acc> buf(g, plan, scratch, false);
  const ChannelRuns runs(g);
  const index_t C = g.channels, HW = g.in_plane();
  bool ok = true;
#pragma omp parallel num_threads(plan.threads) reduction(&& : ok)
  {
    const ThreadBuffers<T, Acc>& own = buf.threads[omp_get_thread_num()];
    if (!plan.channel_major) team_weight_by_tap(g, a.weight, buf.weight);
    for_blocks(g, plan, [&](index_t n0, index_t n1) {
      if (n0 > 0) {
#pragma omp barrier  // every thread is done with the previous block's images
      }
      if (!kDirect) team_transpose(a.data + n0 * C * HW, n1 - n0, C, HW, buf.images);
#pragma omp barrier  // the images and the weight are ready
      const T* images = kDirect ? a.data + n0 * C * HW : buf.images;
      if (plan.channel_major) {
        // Called whatever `ok` holds: every thread must reach the barriers inside.
        ok = forward_team_tiles<kDirect, T, Acc>(g, plan, runs, buf, a, images, n0, n1) && ok;
        return;
      }
      for_own_tiles(g, plan, n0, n1, [&](const ThreadTile& tile) {
        build_samples<kDirect, T, Acc>(g, plan, a.offset, a.mask, tile, own);
        im2col<kDirect, T, Acc>(g, runs, tile, images, own);
        ok = forward_gemm(g, plan, tile, 0, g.filters_per_group(), buf.weight, own.col,
                          own.pixel_out, a.bias, a.out) && ok;
      });
    });
  }
  check_gemms(ok);
}

/*! \brief Backward of a call planned with (kDirect false) or without image copies. */
template <bool kDirect, typename T>
void backward_blocks(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                     const CpuTilePlan& plan, Scratch scratch) {
  using Acc = typename AccType<T>::type;
  const CpuBuffers<T, Acc> buf(g, plan, scratch, true);
  const ChannelRuns runs(g);
  const index_t P = g.out_plane(), C = g.channels, HW = g.in_plane();
  const index_t rows_g = g.col_rows_per_group();
  const bool need_col_grad = a.data_grad || a.offset_grad || a.mask_grad;
  const bool need_images = a.weight_grad || a.offset_grad || a.mask_grad;
  bool ok = true;
#pragma omp parallel num_threads(plan.threads) reduction(&& : ok)
  {
    const int team = omp_get_num_threads(), me = omp_get_thread_num();
    const ThreadBuffers<T, Acc>& own = buf.threads[me];
    if (!plan.channel_major)
      team_transpose(a.in.weight, g.filters, g.channels_per_group(), g.taps(), buf.weight);
    // A channel-major call's threads each take a share [r0, r1) of every group's column rows in
    // its GEMMs, and write their weight gradient columns straight into the operator's.
    index_t r0 = 0, r1 = rows_g;
    if (plan.channel_major) share_of(rows_g, me, team, &r0, &r1);
    bool weight_grad_started = false;  // the weight gradient holds a sum (see weight_grad_gemm)
    if (kDirect && a.data_grad) {
#pragma omp for schedule(static) nowait
      for (index_t plane = 0; plane < g.batch * C; ++plane)
        std::memset(a.data_grad + plane * HW, 0, sizeof(T) * static_cast<size_t>(HW));
    }
    // The offset and mask gradients of a tile whose samples and column gradient are in `bufs`
    // and, with image copies, the scatter into this thread's image gradient.
    auto input_grads = [&](const ThreadTile& tile, const ThreadBuffers<T, Acc>& bufs,
                           const T* images) {
      if constexpr (!kDirect) {
        if (a.data_grad)
          return sample_grads<false, true, T, Acc>(g, plan, runs, tile, images, bufs,
                                                   a.offset_grad, a.mask_grad, own.image_grads);
      }
      if (a.offset_grad || a.mask_grad)
        sample_grads<kDirect, false, T, Acc>(g, plan, runs, tile, images, bufs, a.offset_grad,
                                             a.mask_grad, nullptr);
    };
    // Everything of one of this thread's tiles but a direct call's scatter (tap-major).
    auto tile_grads = [&](const ThreadTile& tile, const T* images) {
      build_samples<kDirect, T, Acc>(g, plan, a.in.offset, a.in.mask, tile, own);
      // The weight gradient first: the column gradient takes the columns' buffer.
      if (a.weight_grad) {
        im2col<kDirect, T, Acc>(g, runs, tile, images, own);
        ok = weight_grad_gemm(g, tile, 0, rows_g, own.col, a.out_grad, own.weight_grad,
                              &weight_grad_started) && ok;
      }
      if (need_col_grad) {
        out_grad_pixel_major(g, tile, a.out_grad, own.pixel_out);
        ok = col_grad_gemm(g, tile, 0, rows_g, buf.weight, own.pixel_out, own.col_grad) && ok;
        input_grads(tile, own, images);
      }
    };
    // Channel-major: the team tiles of forward_team_tiles over images [n0, n1). Each thread
    // samples its share of a tile's pixels, the GEMMs then split the column rows, and each thread
    // takes its pixels' column gradient back: offset and mask gradients, and the scatter into its
    // image gradient, or direct (data_grad not null) every pixel's for channels [c_begin, c_end).
    auto team_tiles = [&](index_t n0, index_t n1, const T* images, T* data_grad, index_t c_begin,
                          index_t c_end) {
      const index_t pixels = (n1 - n0) * P, team_tile = plan.tile * team;
      for (index_t first = 0; first < pixels; first += team_tile) {
        const ThreadTile tile{n0, first, std::min(team_tile, pixels - first)};
        ThreadBuffers<T, Acc> mine;
        const ThreadTile part = team_share(g, buf, tile, me, team, &mine);
        if (part.count > 0) {
          build_samples<kDirect, T, Acc>(g, plan, a.in.offset, a.in.mask, part, mine);
          if (a.weight_grad) {
            im2col<kDirect, T, Acc>(g, runs, part, images, mine);
            reorder_pixel_rows(g, part, mine, mine.col, true);
          }
          if (need_col_grad) out_grad_pixel_major(g, part, a.out_grad, mine.pixel_out);
        }
#pragma omp barrier  // the tile's columns and output gradient are complete
        // This thread's column rows only: its weight gradient GEMM has read them before its
        // column gradient GEMM overwrites them.
        if (a.weight_grad)
          ok = weight_grad_gemm(g, tile, r0, r1, buf.team_col, a.out_grad, a.weight_grad,
                                &weight_grad_started) && ok;
        if (need_col_grad) {
          ok = col_grad_gemm(g, tile, r0, r1, a.in.weight, buf.team_out, buf.team_col) && ok;
#pragma omp barrier  // the tile's column gradient is complete
          if (part.count > 0) {
            reorder_pixel_rows(g, part, mine, mine.col_grad, false);
            input_grads(part, mine, images);
          }
          if (data_grad) {
#pragma omp barrier  // every share's column gradient is in the sampling loops' order again
            for (int i = 0; i < team; ++i) {
              ThreadBuffers<T, Acc> theirs;
              const ThreadTile their_part = team_share(g, buf, tile, i, team, &theirs);
              if (their_part.count > 0)
                col2im<T, Acc>(g, plan, runs, their_part, theirs, data_grad, c_begin, c_end);
            }
          }
        }
#pragma omp barrier  // nobody refills the tile's buffers before every thread is done with them
      }
    };
    for_blocks(g, plan, [&](index_t n0, index_t n1) {
      if (n0 > 0) {
#pragma omp barrier  // every thread is done with the previous block's images and gradients
      }
      if (!kDirect && need_images)
        team_transpose(a.in.data + n0 * C * HW, n1 - n0, C, HW, buf.images);
      if (!kDirect && a.data_grad)
        std::memset(own.image_grads, 0, sizeof(T) * static_cast<size_t>((n1 - n0) * C * HW));
#pragma omp barrier  // the images and the weight are ready (direct: the data gradient zeroed)
      if (!kDirect) {
        if (plan.channel_major)
          team_tiles(n0, n1, buf.images, nullptr, 0, C);
        else
          for_own_tiles(g, plan, n0, n1,
                        [&](const ThreadTile& tile) { tile_grads(tile, buf.images); });
        if (a.data_grad) {
#pragma omp barrier  // every thread's image gradients are complete
          team_transpose_sum<T>([&](int i) -> const T* { return buf.threads[i].image_grads; },
                                team, n1 - n0, HW, C, a.data_grad + n0 * C * HW);
        }
        return;
      }
      const T* images = a.in.data + n0 * C * HW;
      T* data_grad = a.data_grad ? a.data_grad + n0 * C * HW : nullptr;
      index_t c_begin, c_end;
      share_of(C, me, team, &c_begin, &c_end);
      if (plan.channel_major) {
        team_tiles(n0, n1, images, data_grad, c_begin, c_end);
        return;
      }
      const index_t rounds = tile_rounds(g, plan, n0, n1, team);
      for (index_t round = 0; round < rounds; ++round) {
        const ThreadTile tile = thread_tile(g, plan, n0, n1, me, team, round);
        if (tile.count > 0) tile_grads(tile, images);
        if (!data_grad || !need_col_grad) continue;
#pragma omp barrier  // every thread's column gradient of this round is ready
        for (int i = 0; i < team; ++i) {
          const ThreadTile theirs = thread_tile(g, plan, n0, n1, i, team, round);
          if (theirs.count > 0)
            col2im<T, Acc>(g, plan, runs, theirs, buf.threads[i], data_grad, c_begin, c_end);
        }
#pragma omp barrier  // nobody refills its buffers before every thread has scattered them
      }
    });
    if (a.weight_grad && plan.channel_major) {
      if (!weight_grad_started)  // no pixels: this thread's columns are zeros
        for (index_t f = 0; f < g.filters; ++f)
          std::fill(a.weight_grad + f * rows_g + r0, a.weight_grad + f * rows_g + r1, T(0));
    } else if (a.weight_grad) {
      if (!weight_grad_started)  // a thread without pixels: its part is zeros
        std::memset(own.weight_grad, 0, sizeof(T) * static_cast<size_t>(g.filters * rows_g));
#pragma omp barrier  // every thread's weight gradient is complete
      // Back to the operator's layout (F, C/G, K), summing the threads' parts in order.
      team_transpose_sum<T>([&](int i) -> const T* { return buf.threads[i].weight_grad; }, team,
                            g.filters, g.taps(), g.channels_per_group(), a.weight_grad);
    }
    if (a.bias_grad) {
#pragma omp for schedule(static) nowait
      for (index_t f = 0; f < g.filters; ++f) {
        // One partial sum per lane, as in the offset gradients: a single running sum is a chain
        // of dependent scalar adds.
        Acc lanes[kLanes] = {};
        for (index_t n = 0; n < g.batch; ++n) {
          const T* row = a.out_grad + (n * g.filters + f) * P;
          index_t p = 0;
          for (; p + kLanes <= P; p += kLanes)
            for (int lane = 0; lane < kLanes; ++lane)
              lanes[lane] += static_cast<Acc>(row[p + lane]);
          for (int lane = 0; p < P; ++p, ++lane) lanes[lane] += static_cast<Acc>(row[p]);
        }
        a.bias_grad[f] = static_cast<T>(sum_lanes(lanes));
      }
    }
  }
  check_gemms(ok);
}

}  // namespace

template <typename T>
CpuTilePlan plan_deform_conv_cpu(const DeformConvGeometry& g, bool backward, size_t budget_bytes,
                                 size_t reserved_bytes) {
  using Acc = typename AccType<T>::type;
  // No cap at MXNet's 2 GiB allocation: the CPU host allocates a larger block itself.
  const size_t budget = budget_bytes > reserved_bytes ? budget_bytes - reserved_bytes : 0;
  const size_t image = static_cast<size_t>(g.channels * g.in_plane()) * sizeof(T);
  const size_t col_per_pixel = static_cast<size_t>(g.channels * g.taps()) * sizeof(T);
  const index_t forward_tile =
      std::max(kMinTilePixels, static_cast<index_t>(kThreadTileBytes / col_per_pixel) + 1);
  // Backward's weight-gradient GEMM reads and writes this thread's F x C*K part once per tile:
  // tiles of up to F pixels keep that traffic within the GEMM's own, up to twice the forward's
  // tile, which the column buffer shared with the column gradient pays for (512 filters:
  // 0.92 the forward+backward time; fewer: no difference).
  const index_t preferred_tile =
      backward ? std::max(forward_tile, std::min(2 * forward_tile, g.filters)) : forward_tile;
  auto bytes = [&](const CpuTilePlan& plan) {
    return CpuBuffers<T, Acc>(g, plan, Scratch{nullptr, 0}, backward).bytes;
  };
  // The largest tile up to the preferred one that fits, or false if not even one pixel does.
  auto fit_tile = [&](CpuTilePlan* plan) {
    plan->tile = 1;
    if (bytes(*plan) > budget) return false;
    const index_t share = (plan->images * g.out_plane() + plan->threads - 1) / plan->threads;
    index_t lo = 1, hi = std::min(preferred_tile, share);
    while (lo < hi) {
      plan->tile = (lo + hi + 1) / 2;
      if (bytes(*plan) <= budget)
        lo = plan->tile;
      else
        hi = plan->tile - 1;
    }
    plan->tile = lo;
    plan->scratch_bytes = bytes(*plan);
    return true;
  };
  // With image copies: most threads first, then the most images per block up to kBlockBytes of
  // copies (backward holds one more copy per thread), then the largest tile.
  const bool channel_major = g.batch * g.out_plane() * kChannelMajorFiltersPerPixel <= g.filters;
  for (int threads = cpu::threads(); threads >= 1; --threads) {
    const size_t copies = backward ? 1 + threads : 1;
    index_t images = std::min<index_t>(
        g.batch, std::max<index_t>(1, static_cast<index_t>(kBlockBytes / (copies * image))));
    for (; images >= 1; images /= 2) {
      CpuTilePlan plan{1, images, threads, 0, true, channel_major};
      if (fit_tile(&plan)) return plan;
    }
  }
  // Direct, when not even one thread's copies fit: the whole batch is one block (it costs no
  // memory), most threads first.
  CpuTilePlan direct{1, g.batch, cpu::threads(), 0, false, channel_major};
  for (; direct.threads >= 1; --direct.threads)
    if (fit_tile(&direct)) return direct;
  direct.threads = 1;
  direct.tile = 1;
  throw_workspace_too_small(budget_bytes, reserved_bytes + bytes(direct));
}

template <typename T>
void deform_conv_forward_cpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const CpuTilePlan& plan, Scratch scratch) {
  if (plan.image_copies)
    forward_blocks<false>(g, a, plan, scratch);
  else
    forward_blocks<true>(g, a, plan, scratch);
}

template <typename T>
void deform_conv_backward_cpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              const CpuTilePlan& plan, Scratch scratch) {
  if (plan.image_copies)
    backward_blocks<false>(g, a, plan, scratch);
  else
    backward_blocks<true>(g, a, plan, scratch);
}

DCNV2_MX_INSTANTIATE_CONV_KERNELS(float)
DCNV2_MX_INSTANTIATE_CONV_KERNELS(double)

}  // namespace DCNV2_MX_ISA_NAMESPACE
}  // namespace dcnv2_mx
