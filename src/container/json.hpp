// A small strict JSON reader (RFC 8259) for safetensors headers and the directory index, with
// depth and size limits so hostile headers cannot exhaust the stack or memory.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = Kind::kNull;
  bool b = false;
  double num = 0;
  bool is_uint = false;   // integer literal that fits in uint64 exactly
  uint64_t u = 0;
  std::string str;
  std::vector<Json> arr;
  // Object members in the file's order (two vectors: a vector of pairs would need Json complete).
  std::vector<std::string> keys;
  std::vector<Json> values;

  const Json* get(std::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &values[i];
    return nullptr;
  }
};

// Strings must be well-formed UTF-8, as in any JSON text; bigsmall's own directory index is read
// with raw_bytes: the file names it records are the operating system's bytes, which need not be.
Result<Json> parse_json(std::string_view text, bool raw_bytes = false);
std::string json_quote(std::string_view s);
// Same kind and same value, members in the same order (numbers compared as parsed).
bool json_equal(const Json& a, const Json& b);

}  // namespace bigsmall::detail
