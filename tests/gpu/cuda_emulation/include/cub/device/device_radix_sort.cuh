/*!
 * \file device_radix_sort.cuh
 * \brief cub::DeviceRadixSort::SortPairs on double buffers, emulated on the host: a stable sort
 *        of (key, value) pairs on key bits [begin_bit, end_bit) only, into the alternate
 *        buffers (the selector flips, so callers must read Current()). The temporary storage
 *        it asks for grows with the item count and is overwritten on every sort, so scratch
 *        that overlaps other buffers shows.
 */
#ifndef DCNV2_MX_EMULATED_CUB_DEVICE_RADIX_SORT_CUH_
#define DCNV2_MX_EMULATED_CUB_DEVICE_RADIX_SORT_CUH_

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../../cuda_runtime_api.h"

namespace cub {

template <typename T>
struct DoubleBuffer {
  T* d_buffers[2];
  int selector = 0;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate} {}
  T* Current() const { return d_buffers[selector]; }
  T* Alternate() const { return d_buffers[selector ^ 1]; }
};

struct DeviceRadixSort {
  template <typename Key, typename Value>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               DoubleBuffer<Key>& d_keys, DoubleBuffer<Value>& d_values,
                               int num_items, int begin_bit = 0,
                               int end_bit = sizeof(Key) * 8, cudaStream_t stream = 0) {
    namespace emu = cuda_emulation;
    const size_t needed = 1024 + static_cast<size_t>(std::max(num_items, 0)) / 16;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = needed;
      return cudaSuccess;
    }
    if (!emu::stream_ok(stream, "cub::DeviceRadixSort::SortPairs"))
      return emu::state().last_error;
    if (temp_storage_bytes < needed || num_items < 0 || begin_bit < 0 || end_bit <= begin_bit ||
        end_bit > static_cast<int>(sizeof(Key) * 8))
      return emu::fail(cudaErrorInvalidValue, "cub::DeviceRadixSort::SortPairs arguments");
    std::memset(d_temp_storage, 0xA5, needed);
    const Key mask = end_bit - begin_bit == static_cast<int>(sizeof(Key) * 8)
                         ? ~Key(0)
                         : static_cast<Key>((Key(1) << (end_bit - begin_bit)) - 1);
    const Key* keys = d_keys.Current();
    auto digit = [&](int i) { return static_cast<Key>((keys[i] >> begin_bit) & mask); };
    std::vector<int> order(num_items);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return digit(a) < digit(b); });
    for (int i = 0; i < num_items; ++i) {
      d_keys.Alternate()[i] = keys[order[i]];
      d_values.Alternate()[i] = d_values.Current()[order[i]];
    }
    d_keys.selector ^= 1;
    d_values.selector ^= 1;
    return cudaSuccess;
  }
};

}  // namespace cub

#endif  // DCNV2_MX_EMULATED_CUB_DEVICE_RADIX_SORT_CUH_
