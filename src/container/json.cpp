#include "container/json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "bigsmall/utf8.hpp"

namespace bigsmall::detail {
namespace {

constexpr int kMaxDepth = 64;

class Parser {
 public:
  Parser(std::string_view s, bool raw_bytes) : s_(s), raw_bytes_(raw_bytes) {}

  Status parse(Json* out) {
    ws();
    BS_RETURN_IF_ERROR(value(out, 0));
    ws();
    if (i_ != s_.size()) return err("trailing characters");
    return Status::ok();
  }

 private:
  Status err(const std::string& what) const {
    return Status(Error::kNotSafetensors, "invalid JSON at byte " + std::to_string(i_) + ": " + what);
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  Status value(Json* v, int depth) {
    if (depth > kMaxDepth) return err("nesting too deep");
    // Each node costs far more memory than its text; a header of dense tiny arrays could
    // otherwise need gigabytes. Real safetensors headers use 6 or more bytes per node.
    if (++nodes_ > budget_) return err("too many values for the header's size");
    if (i_ >= s_.size()) return err("unexpected end");
    const char c = s_[i_];
    if (c == '{') return object(v, depth);
    if (c == '[') return array(v, depth);
    if (c == '"') { v->kind = Json::Kind::kString; return string(&v->str); }
    if (lit("true")) { v->kind = Json::Kind::kBool; v->b = true; return Status::ok(); }
    if (lit("false")) { v->kind = Json::Kind::kBool; return Status::ok(); }
    if (lit("null")) { v->kind = Json::Kind::kNull; return Status::ok(); }
    return number(v);
  }
  Status object(Json* v, int depth) {
    v->kind = Json::Kind::kObject;
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == '}') { ++i_; return Status::ok(); }
    for (;;) {
      ws();
      if (i_ >= s_.size() || s_[i_] != '"') return err("expected a key");
      std::string key;
      BS_RETURN_IF_ERROR(string(&key));
      ws();
      if (i_ >= s_.size() || s_[i_] != ':') return err("expected ':'");
      ++i_;
      ws();
      Json child;
      BS_RETURN_IF_ERROR(value(&child, depth + 1));
      v->keys.push_back(std::move(key));
      v->values.push_back(std::move(child));
      ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return Status::ok(); }
      return err("expected ',' or '}'");
    }
  }
  Status array(Json* v, int depth) {
    v->kind = Json::Kind::kArray;
    ++i_;
    ws();
    if (i_ < s_.size() && s_[i_] == ']') { ++i_; return Status::ok(); }
    for (;;) {
      ws();
      Json child;
      BS_RETURN_IF_ERROR(value(&child, depth + 1));
      v->arr.push_back(std::move(child));
      ws();
      if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return Status::ok(); }
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
  Status string(std::string* out) {
    ++i_;  // opening quote
    while (i_ < s_.size()) {
      const char c = s_[i_++];
      if (c == '"') return Status::ok();
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
  Status number(Json* v) {
    const size_t start = i_;
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    bool digits = false, integral = true;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') { ++i_; digits = true; }
    if (i_ < s_.size() && s_[i_] == '.') {
      integral = false;
      ++i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      integral = false;
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    }
    if (!digits) return err("unexpected character");
    const std::string text(s_.substr(start, i_ - start));
    v->kind = Json::Kind::kNumber;
    v->num = std::strtod(text.c_str(), nullptr);
    if (integral && text[0] != '-' && text.size() <= 20) {
      uint64_t u = 0;
      bool overflow = false;
      for (char ch : text) {
        const uint64_t d = static_cast<uint64_t>(ch - '0');
        if (u > (UINT64_MAX - d) / 10) { overflow = true; break; }
        u = u * 10 + d;
      }
      v->is_uint = !overflow;
      v->u = u;
    }
    return Status::ok();
  }

  std::string_view s_;
  bool raw_bytes_;
  size_t i_ = 0;
  size_t nodes_ = 0;
  size_t budget_ = s_.size() / 4 + 4096;
};

}  // namespace

bool json_equal(const Json& a, const Json& b) {
  if (a.kind != b.kind || a.b != b.b || a.is_uint != b.is_uint || a.u != b.u || a.str != b.str) return false;
  if (a.kind == Json::Kind::kNumber && !a.is_uint && !(a.num == b.num)) return false;
  if (a.arr.size() != b.arr.size() || a.keys != b.keys) return false;
  for (size_t i = 0; i < a.arr.size(); ++i)
    if (!json_equal(a.arr[i], b.arr[i])) return false;
  for (size_t i = 0; i < a.values.size(); ++i)
    if (!json_equal(a.values[i], b.values[i])) return false;
  return true;
}

Result<Json> parse_json(std::string_view text, bool raw_bytes) {
  Json j;
  Parser p(text, raw_bytes);
  BS_RETURN_IF_ERROR(p.parse(&j));
  return j;
}

std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
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
