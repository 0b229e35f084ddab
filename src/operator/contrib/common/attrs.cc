#include "attrs.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace dcnv2_mx {

// MXNet has a call's attributes read many times (parsing, shape and type inference, compute,
// and under autograd each again for the gradient), so reading valid ones takes no string
// streams and few copies (text is viewed where it can be, numbers copied to short strings for
// strtoll), and messages are built only to be thrown.

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

/*! \brief Parses an integer; one beyond the range of long long reads as that type's limit. */
bool parse_int(std::string_view text, long long* value) {
  const std::string digits(trim(text));  // strtoll reads a terminated string
  if (digits.empty()) return false;
  char* end = nullptr;
  const long long v = std::strtoll(digits.c_str(), &end, 10);  // saturates: out of every range
  if (end == digits.c_str()) return false;
  // Python may print an integer-valued number as "3L" (old) or "3.0" from float arithmetic.
  const std::string_view rest = trim(end);
  if (!rest.empty() && rest != "L" && rest != ".0") return false;
  *value = v;
  return true;
}

std::string expected_ints(size_t arity) {
  if (arity == 0) return "an integer";
  return "a tuple of " + std::to_string(arity) + " integers, e.g. (3, 3)";
}

}  // namespace

const std::string* AttrReader::find(const char* key, bool required, size_t arity) {
  if (known_.empty()) known_.reserve(16);  // every parameter of an operator, in one allocation
  known_.push_back(key);
  for (const auto& kv : attrs_)  // a handful of attributes: a scan needs no key string
    if (kv.first == key) return &kv.second;
  if (required)
    fail("parameter '" + std::string(key) + "' is required (expected " + expected_ints(arity) +
         ")");
  return nullptr;
}

int AttrReader::parse_in_range(const char* key, const std::string& raw, std::string_view item,
                               size_t arity, IntRange range) const {
  long long v = 0;
  if (!parse_int(item, &v))
    fail("parameter '" + std::string(key) + "' = '" + raw + "': expected " + expected_ints(arity));
  if (v < range.min || v > range.max) {
    std::string msg = "parameter '" + std::string(key) + "' must be " +
                      (v < range.min ? ">= " + std::to_string(range.min)
                                     : "<= " + std::to_string(range.max));
    if (range.note) msg += std::string(" (") + range.note + ")";
    msg += ", got " + std::string(trim(item));
    if (v > range.max && range.max == INT_MAX) msg += " (parameters are 32-bit integers)";
    fail(msg);
  }
  return static_cast<int>(v);
}

std::vector<int> AttrReader::int_tuple(const char* key, size_t arity, bool required,
                                       std::vector<int> fallback, IntRange range) {
  const std::string* raw = find(key, required, arity);
  if (raw == nullptr) return fallback;
  std::string_view body = trim(*raw);
  if (!body.empty() && (body.front() == '(' || body.front() == '[')) body.remove_prefix(1);
  if (!body.empty() && (body.back() == ')' || body.back() == ']')) body.remove_suffix(1);
  std::vector<int> values;
  values.reserve(arity);
  while (true) {
    const size_t comma = body.find(',');
    const std::string_view item = body.substr(0, comma);
    if (!trim(item).empty())  // "(3,)"
      values.push_back(parse_in_range(key, *raw, item, arity, range));
    if (comma == std::string_view::npos) break;
    body.remove_prefix(comma + 1);
  }
  if (values.size() == 1 && arity > 1) values.assign(arity, values[0]);
  if (values.size() != arity)
    fail("parameter '" + std::string(key) + "' = '" + *raw + "': expected " +
         expected_ints(arity));
  return values;
}

int AttrReader::integer(const char* key, bool required, int fallback, IntRange range) {
  const std::string* raw = find(key, required, 0);
  if (raw == nullptr) return fallback;
  return parse_in_range(key, *raw, *raw, 0, range);
}

float AttrReader::real(const char* key, float fallback) {
  const std::string* raw = find(key, false, 0);
  if (raw == nullptr) return fallback;
  const std::string t(trim(*raw));
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || !trim(end).empty() || !std::isfinite(v))
    fail("parameter '" + std::string(key) + "' = '" + *raw + "': expected a finite number");
  return static_cast<float>(v);
}

bool AttrReader::boolean(const char* key, bool fallback) {
  const std::string* raw = find(key, false, 0);
  if (raw == nullptr) return fallback;
  std::string t(trim(*raw));
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "1") return true;
  if (t == "false" || t == "0") return false;
  fail("parameter '" + std::string(key) + "' = '" + *raw + "': expected True or False");
}

std::string AttrReader::text(const char* key, const std::string& fallback) {
  const std::string* raw = find(key, false, 0);
  if (raw == nullptr) return fallback;
  std::string_view t = trim(*raw);
  if (t.size() >= 2 && (t.front() == '\'' || t.front() == '"') && t.back() == t.front())
    t = t.substr(1, t.size() - 2);
  return std::string(t);
}

void AttrReader::reject_unknown() const {
  for (const auto& kv : attrs_) {
    // MXNet's own hidden attributes (__lr_mult__, __profiler_scope__, ...) are not ours to check.
    if (kv.first.rfind("__", 0) == 0) continue;
    if (std::find(known_.begin(), known_.end(), kv.first) == known_.end()) {
      std::string names;
      for (const char* k : known_) names += (names.empty() ? "" : ", ") + std::string(k);
      fail("unknown parameter '" + kv.first + "' (accepted: " + names + ")");
    }
  }
}

void AttrReader::fail(const std::string& message) const {
  throw std::invalid_argument(op_ + ": " + message);
}

}  // namespace dcnv2_mx
