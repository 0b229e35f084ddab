#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "deformable_conv_kernel.h"

namespace dcnv2_mx {

size_t scratch_budget(size_t budget_bytes) {
  // MXNet's allocator takes an int: one block must stay under 2 GiB.
  return std::min(budget_bytes, static_cast<size_t>(INT_MAX) - 8 * 64);
}

void throw_workspace_too_small(size_t budget_bytes, size_t needed_bytes) {
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

TilePlan plan_tiles(const DeformConvGeometry& g, size_t elem_size, size_t sample_bytes,
                    bool backward, size_t budget_bytes, index_t preferred_tile,
                    size_t fixed_bytes, size_t pixel_bytes) {
  const size_t samples_per_pixel = static_cast<size_t>(g.deformable_groups * g.taps());
  const size_t col_per_pixel = static_cast<size_t>(g.channels * g.taps()) * elem_size;
  const size_t per_pixel =
      samples_per_pixel * sample_bytes + col_per_pixel * (backward ? 2 : 1) + pixel_bytes;
  const size_t budget = scratch_budget(budget_bytes);
  index_t tile = std::min<index_t>(g.out_plane(), std::max<index_t>(preferred_tile, 1));
  if (fixed_bytes < budget)
    tile = std::min<index_t>(tile, static_cast<index_t>((budget - fixed_bytes) / per_pixel));
  else
    tile = 0;
  if (tile < 1) throw_workspace_too_small(budget_bytes, fixed_bytes + per_pixel);
  const size_t t = static_cast<size_t>(tile);
  TilePlan plan;
  plan.tile = tile;
  // Room for aligning the base and each of at most eight sub-buffers to 64 bytes.
  plan.scratch_bytes = fixed_bytes + per_pixel * t + 8 * 64;
  return plan;
}

}  // namespace dcnv2_mx
