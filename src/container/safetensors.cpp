#include "container/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "container/json.hpp"

namespace bigsmall::detail {

namespace {

// A header kept from before duplicate keys were refused: this parser reads a key given twice as
// its first value, json.loads as its last, so the values must agree. (A tensor name given twice
// names two tensors, paired with the index in order: not a conflict.)
// Sorted, not by JsonValue::get per key: a hostile header of k keys must cost k log k, not k^2.
std::optional<std::string> conflicting_duplicate(JsonValue object) {
  // Most objects have no key twice: found by sorting 16-byte views in place, before the pairs
  // (and a stable sort's buffer) are built; a hostile header of tiny keys then costs 3x its text.
  if (!first_duplicate_key(object)) return std::nullopt;
  auto members = object.members();
  std::stable_sort(members.begin(), members.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1, first = 0; i < members.size(); ++i) {
    if (members[i].first != members[first].first) {
      first = i;
      continue;
    }
    if (!json_equal(members[first].second, members[i].second)) return std::string(members[i].first);
  }
  return std::nullopt;
}
}  // namespace

Result<StFile> parse_safetensors(const uint8_t* data, uint64_t size) { return parse_safetensors_header(data, size, size, false); }

Result<StFile> parse_safetensors_header(const uint8_t* data, uint64_t available, uint64_t size, bool raw_names) {
  auto bad = [](const std::string& what) { return Status(Error::kNotSafetensors, "not a safetensors file: " + what); };
  if (available > size) return Status(Error::kInvalidArgument, "more bytes available than the file has");
  if (size == 0) return Status(Error::kTruncated, "empty file, not a safetensors file (an interrupted download?)");
  if (available < 8) return Status(Error::kTruncated, "file too short for a safetensors header");
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeaderBytes) {
    // A text file (config.json, a tokenizer) handed over by mistake: say that, not a number.
    if (std::all_of(data, data + 8, [](uint8_t c) { return (c >= 0x20 && c < 0x7f) || c == '\n' || c == '\r' || c == '\t'; })) {
      // A clone without git-lfs holds pointers where the weights should be.
      constexpr std::string_view kLfs = "version https://git-lfs";
      if (available >= kLfs.size() && std::memcmp(data, kLfs.data(), kLfs.size()) == 0)
        return bad("a Git LFS pointer, not the weights (fetch them with `git lfs pull`)");
      return bad("it starts with text, not with a header length");
    }
    return bad("header length " + std::to_string(n) + " exceeds 100 MB");
  }
  if (n > available - 8)
    return Status(Error::kTruncated, "truncated: header needs " + std::to_string(n) + " bytes, file has " + std::to_string(available - 8));
  StFile f;
  f.header.assign(reinterpret_cast<const char*>(data + 8), n);
  f.data_start = 8 + n;
  f.data_size = size - f.data_start;
  if (n == 0 || f.header[0] != '{') {
    // FORMAT.md keeps headers that start with '{', as every safetensors writer makes them: say
    // why a JSON reader might take what bigsmall does not. safetensors refuses a byte-order mark
    // too; some of its versions read a header after whitespace, which bigsmall does not.
    const auto c = static_cast<unsigned char>(n ? f.header[0] : 0);
    if (f.header.starts_with("\xEF\xBB\xBF")) return bad("header starts with a byte-order mark, not '{'");
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
      return Status(Error::kLimit, "header starts with whitespace, not '{' as safetensors writes it: bigsmall takes only "
                                   "headers that start with '{'");
    return bad("header is not a JSON object");
  }
  auto parsed = parse_json(f.header, raw_names ? JsonStrings::kAnyBytes : JsonStrings::kUtf8);
  if (!parsed) return parsed.status().code() == Error::kLimit ? parsed.status() : bad(parsed.status().message());
  const JsonValue root = parsed->root();
  if (root.kind() != JsonValue::Kind::kObject) return bad("header is not a JSON object");
  // A key given twice means one thing to one reader (the first) and another to the next (the
  // last), so a new input must not have any. Headers kept in .bs files (raw_names) may have
  // them, as earlier versions accepted them and those files must keep decoding, but a key's
  // values must then agree (checked below).
  if (!raw_names) {
    if (const auto dup = first_duplicate_key(root)) return bad("'" + *dup + "' appears twice in the header");
    for (auto it = root.begin(); it != root.end(); ++it)
      if (const auto dup = first_duplicate_key(it.member().second))
        return bad("'" + std::string(it.member().first) + "' has the key '" + *dup + "' twice");
  }
  const std::optional<JsonValue> first_metadata = root.get("__metadata__");
  bool metadata_seen = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string name(it.member().first);
    const JsonValue v = it.member().second;
    if (name == "__metadata__") {
      if (raw_names && std::exchange(metadata_seen, true) && !json_equal(*first_metadata, v))
        return bad("__metadata__ is given twice with different values");
      if (raw_names)
        if (const auto dup = conflicting_duplicate(v)) return bad("__metadata__ gives '" + *dup + "' twice with different values");
      // null is no metadata, as safetensors reads it (writers that serialize an absent map so).
      if (v.kind() == JsonValue::Kind::kNull) continue;
      if (v.kind() != JsonValue::Kind::kObject) return bad("__metadata__ is neither an object nor null");
      for (auto m = v.begin(); m != v.end(); ++m)
        if (m.member().second.kind() != JsonValue::Kind::kString)
          return bad("__metadata__ value of '" + std::string(m.member().first) + "' is not a string");
      if (!f.metadata) {
        // In order; a key given twice (kept headers only, equal values: checked above) once.
        // Linear, as every step here: a header of k keys must not cost k^2.
        f.metadata.emplace();
        f.metadata->reserve(v.size());
        const bool dups = first_duplicate_key(v).has_value();
        std::unordered_set<std::string_view> seen;
        for (auto m = v.begin(); m != v.end(); ++m) {
          const auto [key, value] = m.member();
          if (!dups || seen.insert(key).second) f.metadata->emplace_back(std::string(key), std::string(value.str()));
        }
      }
      continue;
    }
    if (raw_names)
      if (const auto dup = conflicting_duplicate(v)) return bad("'" + name + "' gives '" + *dup + "' twice with different values");
    const auto dt = v.get("dtype");
    const auto shape = v.get("shape");
    const auto offs = v.get("data_offsets");
    if (v.kind() != JsonValue::Kind::kObject || !dt || !shape || !offs || dt->kind() != JsonValue::Kind::kString ||
        shape->kind() != JsonValue::Kind::kArray || offs->kind() != JsonValue::Kind::kArray || offs->size() != 2)
      return bad("tensor '" + name + "' lacks dtype, shape or data_offsets");
    StTensor t;
    t.name = name;
    const auto d = dtype_from_name(dt->str());
    if (!d) return Status(Error::kUnknownDtype, "tensor '" + name + "' has unknown dtype '" + std::string(dt->str()) + "'");
    t.dtype = *d;
    if (shape->size() > 255) return Status(Error::kLimit, "tensor '" + name + "' has more than 255 dimensions");
    uint64_t numel = 1;
    for (const JsonValue s : *shape) {
      if (!s.is_uint()) return bad("tensor '" + name + "' has a bad shape");
      if (s.uint() != 0 && numel > UINT64_MAX / s.uint()) return bad("tensor '" + name + "' shape overflows");
      numel *= s.uint();
      t.shape.push_back(s.uint());
    }
    uint64_t ends[2];
    size_t k = 0;
    for (const JsonValue o : *offs) {
      if (!o.is_uint()) return bad("tensor '" + name + "' has bad data_offsets");
      ends[k++] = o.uint();
    }
    t.begin = ends[0];
    t.end = ends[1];
    if (t.begin > t.end) return bad("tensor '" + name + "' data_offsets are reversed");
    if (t.end > f.data_size && size == UINT64_MAX)  // a stream's header, checked before its data arrives
      return bad("tensor '" + name + "' ends at byte " + std::to_string(t.end) + " of the data, past the end of any file");
    if (t.end > f.data_size)
      // data_start + end may not fit 64 bits: the message counts within the data region.
      return Status(Error::kTruncated, "truncated: tensor '" + name + "' ends at byte " + std::to_string(t.end) +
                                           " of the data, which holds " + std::to_string(f.data_size) + " bytes");
    const auto nbytes = dtype_nbytes(t.dtype, numel);
    if (!nbytes || *nbytes != t.end - t.begin)
      return bad("tensor '" + name + "' occupies " + std::to_string(t.end - t.begin) + " bytes but its shape and dtype need " +
                 (nbytes ? std::to_string(*nbytes) : std::string("more than 2^64")));
    f.tensors.push_back(std::move(t));
  }
  std::stable_sort(f.tensors.begin(), f.tensors.end(), [](const StTensor& a, const StTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& t : f.tensors) {
    if (t.begin < pos && t.begin != t.end) return bad("tensor '" + t.name + "' overlaps another tensor");
    if (t.begin > pos) f.gaps.push_back({pos, t.begin});
    pos = std::max(pos, t.end);
  }
  if (pos < f.data_size) f.gaps.push_back({pos, f.data_size});
  return f;
}

std::string make_safetensors_header(const std::vector<TensorView>& tensors, const std::optional<Metadata>& metadata,
                                    std::vector<uint64_t>* offsets) {
  std::string h = "{";
  if (metadata) {
    h += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata->size(); ++i) {
      if (i) h += ",";
      h += json_quote((*metadata)[i].first) + ":" + json_quote((*metadata)[i].second);
    }
    h += "}";
  }
  uint64_t off = 0;
  offsets->clear();
  for (const auto& t : tensors) {
    if (h.size() > 1) h += ",";
    h += json_quote(t.name) + ":{\"dtype\":\"" + std::string(dtype_info(t.dtype).safetensors_name) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t.shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.nbytes) + "]}";
    offsets->push_back(off);
    off += t.nbytes;
  }
  h += "}";
  // safetensors pads the header with spaces so that the data region starts 8-byte aligned.
  while ((h.size() + 8) % 8 != 0) h += ' ';
  return h;
}

}  // namespace bigsmall::detail
