#include "attrs.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace dcnv2_mx {

namespace {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

/*! \brief Parses an integer; one beyond the range of long long reads as that type's limit. */
bool parse_int(const std::string& text, long long* value) {
  const std::string t = trim(text);
  if (t.empty()) return false;
  char* end = nullptr;
  const long long v = std::strtoll(t.c_str(), &end, 10);  // saturates: out of every range
  // Python may print an integer-valued number as "3L" (old) or "3.0" from float arithmetic.
  std::string rest = trim(end);
  if (rest == "L" || rest == ".0") rest.clear();
  if (!rest.empty()) return false;
  *value = v;
  return true;
}

}  // namespace

const std::string* AttrReader::find(const std::string& key, bool required, const char* expected) {
  known_.push_back(key);
  auto it = attrs_.find(key);
  if (it == attrs_.end()) {
    if (required) fail("parameter '" + key + "' is required (expected " + expected + ")");
    return nullptr;
  }
  return &it->second;
}

int AttrReader::parse_in_range(const std::string& key, const std::string& raw,
                               const std::string& item, const std::string& expected,
                               IntRange range) const {
  long long v = 0;
  if (!parse_int(item, &v)) fail("parameter '" + key + "' = '" + raw + "': expected " + expected);
  if (v < range.min || v > range.max) {
    std::ostringstream msg;
    msg << "parameter '" << key << "' must be ";
    if (v < range.min)
      msg << ">= " << range.min;
    else
      msg << "<= " << range.max;
    if (range.note) msg << " (" << range.note << ")";
    msg << ", got " << trim(item);
    if (v > range.max && range.max == INT_MAX) msg << " (parameters are 32-bit integers)";
    fail(msg.str());
  }
  return static_cast<int>(v);
}

std::vector<int> AttrReader::int_tuple(const std::string& key, size_t arity, bool required,
                                       std::vector<int> fallback, IntRange range) {
  std::ostringstream expected;
  expected << "a tuple of " << arity << " integers, e.g. (3, 3)";
  const std::string* raw = find(key, required, expected.str().c_str());
  if (raw == nullptr) return fallback;
  std::string body = trim(*raw);
  if (!body.empty() && (body.front() == '(' || body.front() == '[')) body = body.substr(1);
  if (!body.empty() && (body.back() == ')' || body.back() == ']')) body.pop_back();
  std::vector<int> values;
  std::stringstream ss(body);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (trim(item).empty()) continue;  // "(3,)"
    values.push_back(parse_in_range(key, *raw, item, expected.str(), range));
  }
  if (values.size() == 1 && arity > 1) values.assign(arity, values[0]);
  if (values.size() != arity)
    fail("parameter '" + key + "' = '" + *raw + "': expected " + expected.str());
  return values;
}

int AttrReader::integer(const std::string& key, bool required, int fallback, IntRange range) {
  const std::string* raw = find(key, required, "an integer");
  if (raw == nullptr) return fallback;
  return parse_in_range(key, *raw, *raw, "an integer", range);
}

float AttrReader::real(const std::string& key, float fallback) {
  const std::string* raw = find(key, false, "a number");
  if (raw == nullptr) return fallback;
  const std::string t = trim(*raw);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || !trim(end).empty() || !std::isfinite(v))
    fail("parameter '" + key + "' = '" + *raw + "': expected a finite number");
  return static_cast<float>(v);
}

bool AttrReader::boolean(const std::string& key, bool fallback) {
  const std::string* raw = find(key, false, "True or False");
  if (raw == nullptr) return fallback;
  std::string t = trim(*raw);
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "1") return true;
  if (t == "false" || t == "0") return false;
  fail("parameter '" + key + "' = '" + *raw + "': expected True or False");
}

std::string AttrReader::text(const std::string& key, const std::string& fallback) {
  const std::string* raw = find(key, false, "a string");
  if (raw == nullptr) return fallback;
  std::string t = trim(*raw);
  if (t.size() >= 2 && (t.front() == '\'' || t.front() == '"') && t.back() == t.front())
    t = t.substr(1, t.size() - 2);
  return t;
}

void AttrReader::reject_unknown() const {
  for (const auto& kv : attrs_) {
    // MXNet's own hidden attributes (__lr_mult__, __profiler_scope__, ...) are not ours to check.
    if (kv.first.rfind("__", 0) == 0) continue;
    if (std::find(known_.begin(), known_.end(), kv.first) == known_.end()) {
      std::string names;
      for (const auto& k : known_) names += (names.empty() ? "" : ", ") + k;
      fail("unknown parameter '" + kv.first + "' (accepted: " + names + ")");
    }
  }
}

void AttrReader::fail(const std::string& message) const {
  throw std::invalid_argument(op_ + ": " + message);
}

}  // namespace dcnv2_mx
