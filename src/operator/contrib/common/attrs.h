/*!
 * \file attrs.h
 * \brief Typed reading of operator attributes (MXNet passes every attribute as a string).
 *
 * Every reader throws std::invalid_argument with a message that names the operator, the
 * parameter and the expected value, so that Python users get a clear MXNetError.
 */
#ifndef DCNV2_MX_COMMON_ATTRS_H_
#define DCNV2_MX_COMMON_ATTRS_H_

#include <string>
#include <unordered_map>
#include <vector>

namespace dcnv2_mx {

using AttrMap = std::unordered_map<std::string, std::string>;

/*! \brief Reads the attributes of one operator call and remembers which ones were used. */
class AttrReader {
 public:
  /*! \brief Reads `attrs`, which must outlive the reader (a temporary map is refused). */
  AttrReader(std::string op_name, const AttrMap& attrs) : op_(std::move(op_name)), attrs_(attrs) {}
  AttrReader(std::string op_name, AttrMap&& attrs) = delete;
  /*! \brief A reader of no attributes, for the messages of fail() alone. */
  explicit AttrReader(std::string op_name) : AttrReader(std::move(op_name), no_attrs()) {}

  /*! \brief An integer tuple of exactly `arity` elements (a single integer is repeated). */
  std::vector<int> int_tuple(const std::string& key, size_t arity, bool required,
                             std::vector<int> fallback = {});
  int integer(const std::string& key, bool required, int fallback = 0);
  float real(const std::string& key, float fallback);
  bool boolean(const std::string& key, bool fallback);
  std::string text(const std::string& key, const std::string& fallback);

  /*! \brief Rejects attributes that no reader asked for (catches misspelt parameters). */
  void reject_unknown() const;

  /*! \brief Throws std::invalid_argument prefixed with the operator name. */
  [[noreturn]] void fail(const std::string& message) const;

 private:
  static const AttrMap& no_attrs() {
    static const AttrMap empty;
    return empty;
  }
  const std::string* find(const std::string& key, bool required, const char* expected);

  std::string op_;
  const AttrMap& attrs_;
  std::vector<std::string> known_;
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_ATTRS_H_
