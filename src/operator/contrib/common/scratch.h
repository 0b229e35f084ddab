/*!
 * \file scratch.h
 * \brief One call's temporary memory: a single block from the host (MXNet's temporary space
 *        holds one block per call), carved into aligned sub-buffers. The planners of both
 *        devices size the block by carving a null block with the same sequence of takes.
 */
#ifndef DCNV2_MX_COMMON_SCRATCH_H_
#define DCNV2_MX_COMMON_SCRATCH_H_

#include <algorithm>
#include <climits>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace dcnv2_mx {

/*! \brief Temporary memory a call asks of its host: one block of `bytes`. */
struct Scratch {
  void* ptr;
  size_t bytes;
};

/*! \brief Alignment of every scratch sub-buffer: a cache line, and enough for any vector load. */
constexpr size_t kScratchAlignment = 64;

/*! \brief Rounds a byte count up to kScratchAlignment. */
inline size_t align_up(size_t bytes) {
  return (bytes + kScratchAlignment - 1) & ~(kScratchAlignment - 1);
}

/*!
 * \brief The part of a budget one scratch block can have where it must come from MXNet's
 *        allocator, which takes an int: on the GPU. (A CPU call's host allocates a larger block
 *        itself: see call_host in ext_util.h.)
 */
inline size_t scratch_budget(size_t budget_bytes) {
  return std::min(budget_bytes, static_cast<size_t>(INT_MAX));
}

/*!
 * \brief Hands out consecutive aligned sub-buffers of one scratch block. A carver of a null
 *        block only measures: every take() returns null and bytes_needed() tells how large a
 *        block the same sequence of takes needs (with room to align the block's start).
 */
class ScratchCarver {
 public:
  explicit ScratchCarver(Scratch scratch)
      : base_(reinterpret_cast<size_t>(scratch.ptr)), end_(base_ + scratch.bytes),
        next_(base_) {}

  /*! \brief The next `count` elements of U; throws std::logic_error past the block's end. */
  template <typename U>
  U* take(size_t count) {
    const size_t start = align_up(next_);
    next_ = start + count * sizeof(U);
    if (base_ == 0) return nullptr;
    if (next_ > end_)
      throw std::logic_error("scratch block of " + std::to_string(end_ - base_) +
                             " bytes is too small (internal planning error)");
    return reinterpret_cast<U*>(start);
  }

  /*! \brief Bytes of a block that holds every take so far, whatever the block's alignment. */
  size_t bytes_needed() const { return next_ - base_ + kScratchAlignment - 1; }

 private:
  size_t base_, end_, next_;
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_SCRATCH_H_
