// A small strict JSON reader (RFC 8259) for safetensors headers and the directory index, with
// depth and size limits so hostile headers cannot exhaust the stack or memory.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bigsmall/status.hpp"

namespace bigsmall::detail {

class JsonDoc;

// A value inside a JsonDoc (which must outlive it). The document is one flat array of 16-byte
// nodes in text order plus one buffer of decoded strings, so a header of dense tiny values
// costs a few bytes per byte of text: a tree of std::string/std::vector nodes cost ~50, and a
// 9 KB .bs file could hold a kept header that parsed into 4.8 GB.
class JsonValue {
 public:
  enum class Kind : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const;
  bool boolean() const;
  bool is_uint() const;  // an integer literal that fits uint64 exactly
  uint64_t uint() const;
  double number() const;
  std::string_view str() const;  // strings only; empty for other kinds
  size_t size() const;           // elements of an array, members of an object; 0 otherwise
  // The first member named key (objects only). Linear: callers look up a few fixed keys.
  std::optional<JsonValue> get(std::string_view key) const;

  // Elements of an array, or members (key, value) of an object, in the text's order.
  class Iterator {
   public:
    JsonValue operator*() const { return {doc_, i_}; }
    std::pair<std::string_view, JsonValue> member() const;  // objects: key at i_, value after it
    Iterator& operator++();
    bool operator!=(const Iterator& o) const { return i_ != o.i_; }

   private:
    friend class JsonValue;
    Iterator(const JsonDoc* doc, size_t i, bool object) : doc_(doc), i_(i), object_(object) {}
    const JsonDoc* doc_;
    size_t i_;
    bool object_;
  };
  Iterator begin() const;
  Iterator end() const;
  std::vector<JsonValue> elements() const;                              // arrays
  std::vector<std::pair<std::string_view, JsonValue>> members() const;  // objects

 private:
  friend class JsonDoc;
  JsonValue(const JsonDoc* doc, size_t i) : doc_(doc), i_(i) {}
  const JsonDoc* doc_;
  size_t i_;
};

class JsonDoc {
 public:
  JsonValue root() const { return {this, 0}; }
  // Heap bytes the document holds (the bound hostile headers are tested against).
  size_t memory_bytes() const { return nodes_.capacity() * sizeof(Node) + strings_.capacity(); }

 private:
  friend class JsonValue;
  friend class JsonParser;
  struct Node {
    JsonValue::Kind kind;
    uint8_t flags;   // bit 0: boolean true; bit 1: integer that fits uint64
    uint32_t count;  // string: length in bytes; array: elements; object: members
    uint64_t x;      // string: offset in strings_; number: the uint64 or the double's bits;
                     // array, object: index of the node after the whole value
  };
  static_assert(sizeof(Node) == 16);
  size_t next(size_t i) const {
    const Node& n = nodes_[i];
    return n.kind == JsonValue::Kind::kArray || n.kind == JsonValue::Kind::kObject ? n.x : i + 1;
  }
  std::vector<Node> nodes_;
  std::string strings_;
};

enum class JsonStrings {
  kUtf8,      // well-formed UTF-8, as in any JSON text
  kAnyBytes,  // kept safetensors headers: earlier writers passed other bytes through, and stored
              // an escaped lone surrogate as its three-byte encoding
  kFileNames, // bigsmall.index.json: as kAnyBytes (earlier writers wrote names' bytes raw), and
              // \udc80..\udcff stand for the single bytes 0x80..0xff of a name that is not UTF-8
              // (Python's surrogateescape, which json.load and os.fsencode undo)
};
Result<JsonDoc> parse_json(std::string_view text, JsonStrings strings = JsonStrings::kUtf8);
// A JSON string of s; with file_name, bytes that are not UTF-8 are written as \udc80..\udcff, so
// that the text stays UTF-8 whatever bytes a file name has.
std::string json_quote(std::string_view s, bool file_name = false);
// Same kind and same value, members in the same order (numbers compared as parsed).
bool json_equal(JsonValue a, JsonValue b);
// A key an object gives more than once (this parser reads its first value, json.loads its last).
std::optional<std::string> first_duplicate_key(JsonValue object);

}  // namespace bigsmall::detail
