/*!
 * \file attrs.h
 * \brief Typed reading of operator attributes (MXNet passes every attribute as a string).
 *
 * Every reader throws std::invalid_argument with a message that names the operator, the
 * parameter and the expected value, so that Python users get a clear MXNetError.
 */
#ifndef DCNV2_MX_COMMON_ATTRS_H_
#define DCNV2_MX_COMMON_ATTRS_H_

#include <climits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dcnv2_mx {

using AttrMap = std::unordered_map<std::string, std::string>;

/*!
 * \brief The values an integer parameter accepts, [min, max], and what a value at the low end
 *        means when that needs saying (e.g. "0 means pooled_size"). Every integer parameter
 *        has one: the operators store parameters as int, and a value past the range must be an
 *        error rather than wrap around.
 */
struct IntRange {
  long long min = 1;
  long long max = INT_MAX;
  const char* note = nullptr;
};

/*! \brief Reads the attributes of one operator call and remembers which ones were used. */
class AttrReader {
 public:
  /*! \brief Reads `attrs`, which must outlive the reader (a temporary map is refused). */
  AttrReader(std::string op_name, const AttrMap& attrs) : op_(std::move(op_name)), attrs_(attrs) {}
  AttrReader(std::string op_name, AttrMap&& attrs) = delete;
  /*! \brief A reader of no attributes, for the messages of fail() alone. */
  explicit AttrReader(std::string op_name) : AttrReader(std::move(op_name), no_attrs()) {}

  // Every reader takes the parameter's name as a string literal: the reader keeps the pointer
  // until reject_unknown().

  /*!
   * \brief An integer tuple of exactly `arity` elements (a single integer is repeated), each in
   *        `range`.
   */
  std::vector<int> int_tuple(const char* key, size_t arity, bool required,
                             std::vector<int> fallback, IntRange range);
  /*! \brief An integer in `range`. */
  int integer(const char* key, bool required, int fallback, IntRange range);
  float real(const char* key, float fallback);
  bool boolean(const char* key, bool fallback);
  std::string text(const char* key, const std::string& fallback);

  /*! \brief Rejects attributes that no reader asked for (catches misspelt parameters). */
  void reject_unknown() const;

  /*! \brief Throws std::invalid_argument prefixed with the operator name. */
  [[noreturn]] void fail(const std::string& message) const;

 private:
  static const AttrMap& no_attrs() {
    static const AttrMap empty;
    return empty;
  }
  /*!
   * \brief The value of `key`, or nullptr if it is not given; a missing `required` one (only
   *        integers are required) fails naming an integer, or a tuple of `arity` > 0 of them.
   */
  const std::string* find(const char* key, bool required, size_t arity);
  /*!
   * \brief Parses one integer `item` of parameter `key` (given as `raw`; an element of a tuple
   *        of `arity` integers, or the integer itself if `arity` is 0) within `range`.
   */
  int parse_in_range(const char* key, const std::string& raw, std::string_view item,
                     size_t arity, IntRange range) const;

  std::string op_;
  const AttrMap& attrs_;
  std::vector<const char*> known_;  //!< the readers' keys: string literals
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_ATTRS_H_
