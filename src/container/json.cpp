#include "container/json.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bigsmall/utf8.hpp"

namespace bigsmall::detail {
namespace {
constexpr int kMaxDepth = 64;

}  // namespace

class JsonParser {
 public:
  JsonParser(std::string_view s, JsonStrings strings, JsonDoc* doc)
      : s_(s), raw_bytes_(strings != JsonStrings::kUtf8), file_names_(strings == JsonStrings::kFileNames), doc_(doc) {}

  Status parse() {
    // Node fields hold string lengths and member counts in 32 bits.
    if (s_.size() > UINT32_MAX) return Status(Error::kLimit, "JSON text larger than 4 GiB");
    ws();
    BIGSMALL_RETURN_IF_ERROR(value(0));
    ws();
    if (i_ != s_.size()) return err("trailing characters");
    return Status::success();
  }

 private:
  using Kind = JsonValue::Kind;
  using Node = JsonDoc::Node;

  Status err(const std::string& what) const {
    return Status(Error::kNotSafetensors, "invalid JSON at byte " + std::to_string(i_) + ": " + what);
  }
  // Valid JSON past bigsmall's own cap (FORMAT.md): not called invalid, and the cap is named.
  Status over_budget() const {
    return Status(Error::kLimit, "header has too many values for its size (bigsmall takes at most " +
                                     std::to_string(budget_) + " keys and values in " + std::to_string(s_.size()) +
                                     " bytes)");
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  size_t push(Kind kind, uint8_t flags = 0, uint32_t count = 0, uint64_t x = 0) {
    doc_->nodes_.push_back(Node{kind, flags, count, x});
    return doc_->nodes_.size() - 1;
  }
  Status value(int depth) {
    if (depth > kMaxDepth) return err("nesting too deep");
    // Even at 16 bytes a node costs more memory than its text. Real safetensors headers use 3.5 or
    // more bytes per node, keys counted (a tensor of rank 8 with a one-letter name: 3.6).
    if (++values_ > budget_) return over_budget();
    if (i_ >= s_.size()) return err("unexpected end");
    const char c = s_[i_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return string();
    if (lit("true")) { push(Kind::kBool, 1); return Status::success(); }
    if (lit("false")) { push(Kind::kBool); return Status::success(); }
    if (lit("null")) { push(Kind::kNull); return Status::success(); }
    return number();
  }
  // Closes the container at node n: its count, and where the value after it starts.
  Status close(size_t n, uint64_t count) {
    if (count > UINT32_MAX) return err("too many members");
    doc_->nodes_[n].count = static_cast<uint32_t>(count);
    doc_->nodes_[n].x = doc_->nodes_.size();
    return Status::success();
  }
  Status object(int depth) {
    const size_t n = push(Kind::kObject);
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == '}') { ++i_; return close(n, 0); }
    for (uint64_t count = 1;; ++count) {
      ws();
      if (i_ >= s_.size() || s_[i_] != '"') return err("expected a key");
      if (++values_ > budget_) return over_budget();  // keys are nodes too
      BIGSMALL_RETURN_IF_ERROR(string());
      ws();
      if (i_ >= s_.size() || s_[i_] != ':') return err("expected ':'");
      ++i_;
      ws();
      BIGSMALL_RETURN_IF_ERROR(value(depth + 1));
      ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return close(n, count); }
      return err("expected ',' or '}'");
    }
  }
  Status array(int depth) {
    const size_t n = push(Kind::kArray);
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == ']') { ++i_; return close(n, 0); }
    for (uint64_t count = 1;; ++count) {
      ws();
      BIGSMALL_RETURN_IF_ERROR(value(depth + 1));
      ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return close(n, count); }
      return err("expected ',' or ']'");
    }
  }
  static void utf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  bool hex4(uint32_t* cp) {
    if (i_ + 4 > s_.size()) return false;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = s_[i_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
      else return false;
    }
    *cp = v;
    return true;
  }
  Status string() {
    std::string* out = &doc_->strings_;
    const size_t begin = out->size();
    ++i_;  // opening quote
    while (i_ < s_.size()) {
      const char c = s_[i_++];
      if (c == '"') {
        push(Kind::kString, 0, static_cast<uint32_t>(out->size() - begin), begin);
        return Status::success();
      }
      if (static_cast<unsigned char>(c) < 0x20) return err("control character in string");
      if (static_cast<unsigned char>(c) >= 0x80 && !raw_bytes_) {  // JSON text is UTF-8 (safetensors checks it too)
        const size_t n = utf8_sequence_length(s_, i_ - 1);
        if (n == 0) return err("string is not valid UTF-8");
        out->append(s_.substr(i_ - 1, n));
        i_ += n - 1;
        continue;
      }
      if (c != '\\') { out->push_back(c); continue; }
      if (i_ >= s_.size()) break;
      const char e = s_[i_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!hex4(&cp)) return err("bad \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            uint32_t lo;
            if (!lit("\\u") || !hex4(&lo) || lo < 0xDC00 || lo >= 0xE000) return err("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC80 && cp < 0xDD00 && file_names_) {
            out->push_back(static_cast<char>(cp - 0xDC00));  // a byte of a name that is not UTF-8
            break;
          } else if (cp >= 0xDC00 && cp < 0xE000 && !raw_bytes_) {
            // A low surrogate alone would become invalid UTF-8. Raw mode keeps the three bytes
            // writers before the UTF-8 rule stored for it, so their names still match.
            return err("bad surrogate pair");
          }
          utf8(cp, out);
          break;
        }
        default: return err("bad escape");
      }
    }
    return err("unterminated string");
  }
  // New input (UTF-8 mode) must be JSON's number grammar, as safetensors' parser requires; text
  // kept in .bs files is read as earlier versions read it, which also took leading zeros and a
  // '.' or exponent without digits after it (FORMAT.md).
  Status number() {
    const size_t start = i_;
    auto digit_run = [&] {
      const size_t from = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ - from;
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    bool integral = true;
    const size_t int_start = i_;
    const size_t int_digits = digit_run();
    const bool strict = !raw_bytes_;
    if (strict && int_digits > 1 && s_[int_start] == '0') return err("number with a leading zero");
    if (i_ < s_.size() && s_[i_] == '.') {
      integral = false;
      ++i_;
      if (digit_run() == 0 && strict) return err("number without digits after '.'");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      integral = false;
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (digit_run() == 0 && strict) return err("number without exponent digits");
    }
    if (int_digits == 0) return err("unexpected character");
    const std::string text(s_.substr(start, i_ - start));
    // Leading zeros are allowed (FORMAT.md), so no length cut: the loop finds overflow itself.
    if (integral && text[0] != '-') {
      uint64_t u = 0;
      bool overflow = false;
      for (char ch : text) {
        const uint64_t d = static_cast<uint64_t>(ch - '0');
        if (u > (UINT64_MAX - d) / 10) { overflow = true; break; }
        u = u * 10 + d;
      }
      // Its double is the same as strtod's: both round the exact integer to nearest.
      if (!overflow) { push(Kind::kNumber, 2, 0, u); return Status::success(); }
    }
    push(Kind::kNumber, 0, 0, std::bit_cast<uint64_t>(std::strtod(text.c_str(), nullptr)));
    return Status::success();
  }

  std::string_view s_;
  bool raw_bytes_;
  bool file_names_;
  JsonDoc* doc_;
  size_t i_ = 0;
  size_t values_ = 0;
  size_t budget_ = s_.size() / 3 + 4096;  // keys and values
};

using Kind = JsonValue::Kind;

Kind JsonValue::kind() const { return doc_->nodes_[i_].kind; }
bool JsonValue::boolean() const { return doc_->nodes_[i_].kind == Kind::kBool && (doc_->nodes_[i_].flags & 1); }
bool JsonValue::is_uint() const { return doc_->nodes_[i_].kind == Kind::kNumber && (doc_->nodes_[i_].flags & 2); }
uint64_t JsonValue::uint() const { return is_uint() ? doc_->nodes_[i_].x : 0; }
double JsonValue::number() const {
  if (kind() != Kind::kNumber) return 0;
  return is_uint() ? static_cast<double>(doc_->nodes_[i_].x) : std::bit_cast<double>(doc_->nodes_[i_].x);
}
std::string_view JsonValue::str() const {
  const auto& n = doc_->nodes_[i_];
  if (n.kind != Kind::kString) return {};
  return std::string_view(doc_->strings_).substr(n.x, n.count);
}
size_t JsonValue::size() const {
  const auto& n = doc_->nodes_[i_];
  return n.kind == Kind::kArray || n.kind == Kind::kObject ? n.count : 0;
}
JsonValue::Iterator JsonValue::begin() const {
  const Kind k = kind();
  if (k != Kind::kArray && k != Kind::kObject) return end();
  return {doc_, i_ + 1, k == Kind::kObject};
}
JsonValue::Iterator JsonValue::end() const { return {doc_, doc_->next(i_), kind() == Kind::kObject}; }
JsonValue::Iterator& JsonValue::Iterator::operator++() {
  i_ = doc_->next(object_ ? i_ + 1 : i_);
  return *this;
}
std::pair<std::string_view, JsonValue> JsonValue::Iterator::member() const {
  return {JsonValue(doc_, i_).str(), JsonValue(doc_, i_ + 1)};
}
std::optional<JsonValue> JsonValue::get(std::string_view key) const {
  if (kind() != Kind::kObject) return std::nullopt;
  for (auto it = begin(); it != end(); ++it)
    if (const auto [k, v] = it.member(); k == key) return v;
  return std::nullopt;
}
std::vector<JsonValue> JsonValue::elements() const {
  std::vector<JsonValue> out;
  if (kind() != Kind::kArray) return out;
  out.reserve(size());
  for (auto it = begin(); it != end(); ++it) out.push_back(*it);
  return out;
}
std::vector<std::pair<std::string_view, JsonValue>> JsonValue::members() const {
  std::vector<std::pair<std::string_view, JsonValue>> out;
  if (kind() != Kind::kObject) return out;
  out.reserve(size());
  for (auto it = begin(); it != end(); ++it) out.push_back(it.member());
  return out;
}

std::optional<std::string> first_duplicate_key(JsonValue object) {
  if (object.kind() != JsonValue::Kind::kObject) return std::nullopt;
  if (object.size() <= 8) {  // a tensor's three keys: compared in place, nothing allocated
    std::string_view keys[8];
    size_t n = 0;
    for (auto m = object.begin(); m != object.end(); ++m) {
      const std::string_view key = m.member().first;
      for (size_t i = 0; i < n; ++i)
        if (keys[i] == key) return std::string(key);
      keys[n++] = key;
    }
    return std::nullopt;
  }
  std::vector<std::string_view> keys;
  keys.reserve(object.size());
  for (const auto& [key, value] : object.members()) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  const auto dup = std::adjacent_find(keys.begin(), keys.end());
  if (dup == keys.end()) return std::nullopt;
  return std::string(*dup);
}

bool json_equal(JsonValue a, JsonValue b) {
  if (a.kind() != b.kind() || a.boolean() != b.boolean() || a.is_uint() != b.is_uint() || a.uint() != b.uint() ||
      a.str() != b.str() || a.size() != b.size())
    return false;
  if (a.kind() == Kind::kNumber && !a.is_uint() && !(a.number() == b.number())) return false;
  const bool object = a.kind() == Kind::kObject;
  for (auto i = a.begin(), j = b.begin(); i != a.end(); ++i, ++j) {
    if (object && i.member().first != j.member().first) return false;
    if (!json_equal(object ? i.member().second : *i, object ? j.member().second : *j)) return false;
  }
  return true;
}

Result<JsonDoc> parse_json(std::string_view text, JsonStrings strings) {
  JsonDoc doc;
  JsonParser p(text, strings, &doc);
  BIGSMALL_RETURN_IF_ERROR(p.parse());
  return doc;
}

std::string json_quote(std::string_view s, bool file_name) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      const size_t n = utf8_sequence_length(s, i);
      if (n > 0) {
        out.append(s.substr(i, n));
        i += n - 1;
      } else if (file_name) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", 0xDC00 + u);
        out += buf;
      } else {
        out.push_back(c);  // callers check UTF-8 where it is required
      }
      continue;
    }
    // serde_json's escapes, so that headers written here are byte-identical to safetensors'.
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\b') out += "\\b";
    else if (c == '\f') out += "\\f";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else out.push_back(c);
  }
  return out + "\"";
}

}  // namespace bigsmall::detail
