/*!
 * \file cuda_emulation.h
 * \brief A host emulation of the part of CUDA that the library's kernels use, so that the CUDA
 *        sources (compiled as C++ with DCNV2_MX_CUDA_EMULATION) run on a CPU in CI.
 *
 * What it checks that a plain port would not:
 *  - grids are capped at kMaxBlocks blocks, so that every grid-stride loop of a test problem
 *    strides, at a stride that is not a power of two;
 *  - a launch runs every thread of the grid in a shuffled order that changes from launch to
 *    launch: a kernel whose result depends on the order of its threads (a read of another
 *    thread's write) gives different or wrong results; atomics round differently from run to
 *    run, as on a GPU;
 *  - built with DCNV2_MX_CUDA_EMULATION_WORKERS > 1, a launch splits that order over as many
 *    host threads, so that ThreadSanitizer reports two GPU threads that touch the same element
 *    without atomics (a race on a GPU); atomicAdd is a real atomic;
 *  - launch configurations outside CUDA's limits become a sticky launch error;
 *  - every launch, memset, cuBLAS and CUB call must use the stream the caller named with
 *    dcnv2_emulation_expect_stream (the default stream is refused);
 *  - a sort leaves its result in either buffer and overwrites the other, as CUB may;
 *  - float16 has no arithmetic of its own (see __half);
 *  - only device 0 exists.
 * What it cannot check: everything runs synchronously on host memory, so a host read of device
 * memory, a host pointer passed to a kernel or a missing synchronisation goes unnoticed, and
 * streams are only compared, not ordered; the GPU's memory model beyond races within a launch;
 * the real cuBLAS and CUB; device code generation, float16 intrinsics, and speed.
 *
 * Device pointers are host pointers. The fake CUDA headers in include/ include this one.
 */
#ifndef DCNV2_MX_CUDA_EMULATION_H_
#define DCNV2_MX_CUDA_EMULATION_H_

#if !defined(DCNV2_MX_CUDA_EMULATION)
#error "cuda_emulation.h replaces CUDA only in builds with DCNV2_MX_CUDA_EMULATION"
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if !defined(DCNV2_MX_CUDA_EMULATION_WORKERS)
#define DCNV2_MX_CUDA_EMULATION_WORKERS 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}  // NOLINT
};

// The indices of the emulated GPU thread that the calling host thread is running.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

/*!
 * \brief IEEE binary16 with the conversions of CUDA's __half (round to nearest even). Its
 *        arithmetic and comparisons are deleted: through the conversion to float they would
 *        compute in float, where device code computes in half precision; the kernels convert
 *        to their float32 accumulator first.
 */
struct __half {
  _Float16 value;
  __half() = default;
  __half(float f) : value(static_cast<_Float16>(f)) {}    // NOLINT: implicit, as CUDA's
  __half(double d) : value(static_cast<_Float16>(d)) {}   // NOLINT
  __half(int i) : value(static_cast<_Float16>(i)) {}      // NOLINT
  operator float() const { return static_cast<float>(value); }  // NOLINT
};
static_assert(sizeof(__half) == 2, "__half must be binary16 (NumPy's float16)");
__half operator+(__half, __half) = delete;
__half operator-(__half, __half) = delete;
__half operator*(__half, __half) = delete;
__half operator/(__half, __half) = delete;
__half operator-(__half) = delete;
bool operator<(__half, __half) = delete;
bool operator>(__half, __half) = delete;
bool operator<=(__half, __half) = delete;
bool operator>=(__half, __half) = delete;
bool operator==(__half, __half) = delete;
bool operator!=(__half, __half) = delete;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace cuda_emulation {

/*! \brief Most blocks of an emulated launch (the library asks for up to 4096): with 3 blocks of
 *         256 threads, a launch over more than 768 items runs its grid-stride loops more than
 *         once. Kernels launched through cudaLaunchKernel cover their items with grid-stride
 *         loops, so a smaller grid changes how often they stride, not what they compute. */
constexpr unsigned kMaxBlocks = 3;

/*! \brief The emulator's state (one device, used by one call at a time). */
struct State {
  cudaStream_t expected_stream = nullptr;  //!< the only stream work may be queued on
  cudaError_t launch_error = cudaSuccess;  //!< sticky: what cudaGetLastError reports
  cudaError_t problem_code = cudaSuccess;  //!< the error of the last failure...
  std::string problem;                     //!< ...and what went wrong, for messages
  uint64_t launches = 0;  //!< launches so far, which also seeds each launch's thread order
  uint64_t sorts = 0;     //!< sorts so far, which decides where each one leaves its result
};

inline State& state() {
  static State s;
  return s;
}

/*! \brief Records a failure of a call that returns `err` (cudaGetErrorString explains it). */
inline cudaError_t fail(cudaError_t err, const std::string& problem) {
  state().problem_code = err;
  state().problem = problem;
  return err;
}

/*! \brief Whether work may be queued on `stream`; records the failure if not. */
inline bool stream_ok(cudaStream_t stream, const char* what) {
  const cudaStream_t expected = state().expected_stream;
  if (stream != nullptr && stream == expected) return true;
  fail(cudaErrorInvalidResourceHandle,
       std::string(what) + (stream == nullptr ? " on the default stream"
                                              : " on a stream other than the caller's"));
  return false;
}

/*! \brief The order in which a launch runs its `threads` threads: a permutation that differs
 *         from launch to launch (a linear congruential walk over a power-of-two range). */
inline std::vector<uint64_t> thread_order(uint64_t threads, uint64_t launch) {
  uint64_t range = 1;
  while (range < threads) range <<= 1;
  // x -> a*x + c (mod 2^k) is a full cycle for a = 1 (mod 4) and odd c.
  const uint64_t a = 4 * (launch % 1021) + 5, c = 2 * (launch % 7919) + 1;
  std::vector<uint64_t> order;
  order.reserve(threads);
  uint64_t x = launch & (range - 1);
  for (uint64_t i = 0; i < range; ++i) {
    x = (a * x + c) & (range - 1);
    if (x < threads) order.push_back(x);
  }
  return order;
}

/*!
 * \brief kernel<<<blocks, threads, 0, stream>>>(): every thread of the grid in a shuffled
 *        order, split into DCNV2_MX_CUDA_EMULATION_WORKERS contiguous parts that run on as many
 *        host threads. Invalid configurations return, and leave as the sticky launch error,
 *        cudaErrorInvalidConfiguration.
 */
template <typename Kernel>
cudaError_t launch(unsigned blocks, unsigned threads, cudaStream_t stream, Kernel kernel) {
  if (blocks == 0 || blocks > 0x7fffffffu || threads == 0 || threads > 1024)
    return state().launch_error =
               fail(cudaErrorInvalidConfiguration, "launch of " + std::to_string(blocks) +
                                                       " blocks of " + std::to_string(threads) +
                                                       " threads");
  if (!stream_ok(stream, "kernel launch")) return state().launch_error = state().problem_code;
  const std::vector<uint64_t> order =
      thread_order(static_cast<uint64_t>(blocks) * threads, state().launches++);
  auto run = [&](size_t begin, size_t end) {
    gridDim = dim3{blocks, 1, 1};
    blockDim = dim3{threads, 1, 1};
    for (size_t i = begin; i < end; ++i) {
      blockIdx = uint3{static_cast<unsigned>(order[i] / threads), 0, 0};
      threadIdx = uint3{static_cast<unsigned>(order[i] % threads), 0, 0};
      kernel();
    }
  };
  const size_t workers = std::min<size_t>(DCNV2_MX_CUDA_EMULATION_WORKERS, order.size());
  if (workers <= 1) {
    run(0, order.size());
    return cudaSuccess;
  }
  std::vector<std::thread> pool;
  for (size_t w = 0; w < workers; ++w)
    pool.emplace_back(run, order.size() * w / workers, order.size() * (w + 1) / workers);
  for (std::thread& worker : pool) worker.join();  // the end of a kernel: all its writes done
  return cudaSuccess;
}

}  // namespace cuda_emulation

/*! \brief Atomic addition (a compare-and-swap loop on the bits, for floating point too). */
template <typename T>
T atomicAdd(T* address, T value) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomicAdd of 4- or 8-byte types");
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED), desired;
  T old;
  do {
    std::memcpy(&old, &expected, sizeof(T));
    const T sum = old + value;
    std::memcpy(&desired, &sum, sizeof(T));
  } while (!__atomic_compare_exchange_n(bits, &expected, desired, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
  return old;
}

#endif  // DCNV2_MX_CUDA_EMULATION_H_
