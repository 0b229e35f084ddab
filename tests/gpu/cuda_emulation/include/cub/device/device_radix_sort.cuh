/*!
 * \file device_radix_sort.cuh
 * \brief cub::DeviceRadixSort::SortPairs on double buffers, emulated on the host: a stable sort
 *        of (key, value) pairs on key bits [begin_bit, end_bit) only. As in CUB, where the
 *        result lands depends on the number of passes: here every other sort leaves it in the
 *        alternate buffers (flipping the selectors) and the others in the current ones, and the
 *        buffers not holding it are overwritten, so a caller must read Current(). The temporary
 *        storage it asks for grows with the item count and is overwritten on every sort, so
 *        scratch that overlaps other buffers shows.
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
      return cudaErrorInvalidResourceHandle;
    if (temp_storage_bytes < needed || num_items < 0 || begin_bit < 0 || end_bit <= begin_bit ||
        end_bit > static_cast<int>(sizeof(Key) * 8))
      return emu::fail(cudaErrorInvalidValue, "cub::DeviceRadixSort::SortPairs arguments");
    std::memset(d_temp_storage, 0xA5, needed);
    const Key mask = end_bit - begin_bit == static_cast<int>(sizeof(Key) * 8)
                         ? ~Key(0)
                         : static_cast<Key>((Key(1) << (end_bit - begin_bit)) - 1);
    const std::vector<Key> keys(d_keys.Current(), d_keys.Current() + num_items);
    const std::vector<Value> values(d_values.Current(), d_values.Current() + num_items);
    auto digit = [&](int i) { return static_cast<Key>((keys[i] >> begin_bit) & mask); };
    std::vector<int> order(num_items);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return digit(a) < digit(b); });
    if (emu::state().sorts++ % 2 == 0) {
      d_keys.selector ^= 1;
      d_values.selector ^= 1;
    }
    std::memset(d_keys.Alternate(), 0xFF, sizeof(Key) * num_items);
    std::memset(d_values.Alternate(), 0xFF, sizeof(Value) * num_items);
    for (int i = 0; i < num_items; ++i) {
      d_keys.Current()[i] = keys[order[i]];
      d_values.Current()[i] = values[order[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub

#endif  // DCNV2_MX_EMULATED_CUB_DEVICE_RADIX_SORT_CUH_
