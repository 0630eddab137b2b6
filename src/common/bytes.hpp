// Little-endian byte and bit I/O. Readers never trust their input: every read is bounds-checked
// and a failed read latches `ok() == false` instead of touching memory out of range.
#pragma once
#include <algorithm>
#include <cstdint>
#include <bit>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace bigsmall::detail {

class ByteWriter {
 public:
  std::vector<uint8_t>& buf() { return buf_; }
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { put(&v, 2); }
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void bytes(const void* p, size_t n) { put(p, n); }
  void str16(const std::string& s) { u16(static_cast<uint16_t>(s.size())); bytes(s.data(), s.size()); }
  size_t size() const { return buf_.size(); }

 private:
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool ok() const { return ok_; }
  size_t remaining() const { return n_ - pos_; }
  uint8_t u8() { uint8_t v = 0; get(&v, 1); return v; }
  uint16_t u16() { uint16_t v = 0; get(&v, 2); return v; }
  uint32_t u32() { uint32_t v = 0; get(&v, 4); return v; }
  uint64_t u64() { uint64_t v = 0; get(&v, 8); return v; }
  const uint8_t* take(size_t n) {
    if (!ok_ || n > remaining()) { ok_ = false; return nullptr; }
    const uint8_t* r = p_ + pos_;
    pos_ += n;
    return r;
  }
  std::string str16() {
    const uint16_t len = u16();
    const uint8_t* s = take(len);
    return s ? std::string(reinterpret_cast<const char*>(s), len) : std::string();
  }

 private:
  void get(void* out, size_t n) {
    const uint8_t* s = take(n);
    if (s) std::memcpy(out, s, n);
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// A reusable byte buffer whose bytes are not initialized when it grows: coded chunks are
// written over in full, and std::vector's zero fill before that cost 2-5% of compression.
class ByteBuffer {
 public:
  const uint8_t* data() const { return p_.get() + begin_; }
  uint8_t* data() { return p_.get() + begin_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }
  bool empty() const { return size_ == 0; }
  // Size n with room for n + slack bytes; the contents are not kept.
  uint8_t* reset(size_t n, size_t slack = 0) {
    if (n + slack > cap_) {
#if defined(__SANITIZE_ADDRESS__)
      cap_ = n + slack;  // exact, so that AddressSanitizer sees a write past the slack
#else
      cap_ = n + slack + (n + slack) / 8;  // chunks of one slot vary a little in size
#endif
      p_ = std::make_unique_for_overwrite<uint8_t[]>(cap_);
    }
    begin_ = 0;
    size_ = n;
    return p_.get();
  }
  void shrink(size_t n) { size_ = std::min(size_, n); }
  // Narrows the contents to [begin, begin + n) of those reset() gave: for contents laid out from
  // the end backwards (an encoded chunk), whose start is known last.
  void narrow(size_t begin, size_t n) {
    begin_ += std::min(begin, size_);
    size_ = std::min(n, size_ - std::min(begin, size_));
  }
  void assign(const uint8_t* src, size_t n) {
    uint8_t* d = reset(n);
    if (n) std::memcpy(d, src, n);
  }
  void release() {
    p_.reset();
    begin_ = size_ = cap_ = 0;
  }

 private:
  std::unique_ptr<uint8_t[]> p_;
  size_t begin_ = 0, size_ = 0, cap_ = 0;
};

// LSB-first bit stream used for the compact table encoding.
class BitWriter {
 public:
  void put(uint64_t v, int nbits) {
    while (nbits > 0) {
      if ((nbits_ & 7) == 0) buf_.push_back(0);
      const int used = static_cast<int>(nbits_ & 7);
      const int take = std::min(8 - used, nbits);
      buf_.back() |= static_cast<uint8_t>((v & ((1u << take) - 1)) << used);
      v >>= take;
      nbits -= take;
      nbits_ += static_cast<size_t>(take);
    }
  }
  // Exp-Golomb of order k: small values cost few bits, any 32-bit value fits.
  void ue(uint32_t v, int k = 0) {
    const uint64_t w = (static_cast<uint64_t>(v) >> k) + 1;
    int len = 0;
    while ((w >> (len + 1)) != 0) ++len;
    put(0, len);
    put(1, 1);
    put(w & ((uint64_t{1} << len) - 1), len);
    put(v & ((uint64_t{1} << k) - 1), k);
  }
  size_t bits() const { return nbits_; }
  std::vector<uint8_t>& buf() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
  size_t nbits_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* p, size_t nbytes) : p_(p), nbits_(nbytes * 8) {}
  bool ok() const { return ok_; }
  // Reading past the end fails (ok() turns false) and returns 0. Every decoder reads its tables
  // this way: whole fields at a time, not bit by bit.
  uint64_t get(int nbits) {
    if (nbits == 0) return 0;
    if (pos_ + static_cast<size_t>(nbits) > nbits_) {
      ok_ = false;
      return 0;
    }
    if (nbits > 56) {
      const uint64_t lo = get(32);
      return lo | (get(nbits - 32) << 32);
    }
    const uint64_t v = peek() & ((uint64_t{1} << nbits) - 1);
    pos_ += static_cast<size_t>(nbits);
    return v;
  }
  // Exp-Golomb of order k (at most 32 leading zeros).
  uint32_t ue(int k = 0) {
    const uint64_t ahead = peek();
    const int zeros = ahead ? std::countr_zero(ahead) : 64;
    if (zeros > 32 || pos_ + static_cast<size_t>(zeros) >= nbits_) {
      ok_ = false;  // no 1 within 33 bits, or the code runs past the end
      return 0;
    }
    // Short codes (nearly all of a table's) come out of the word already read.
    const int total = 2 * zeros + 1 + k;
    if (total <= 57 && pos_ + static_cast<size_t>(total) <= nbits_) {
      pos_ += static_cast<size_t>(total);
      const uint64_t body = ahead >> (zeros + 1);
      const uint64_t w = (uint64_t{1} << zeros) | (body & ((uint64_t{1} << zeros) - 1));
      const uint64_t v = ((w - 1) << k) | ((body >> zeros) & ((uint64_t{1} << k) - 1));
      if (v > UINT32_MAX) {
        ok_ = false;
        return 0;
      }
      return static_cast<uint32_t>(v);
    }
    pos_ += static_cast<size_t>(zeros) + 1;
    const uint64_t w = (uint64_t{1} << zeros) | get(zeros);
    const uint64_t v = ((w - 1) << k) | get(k);
    if (!ok_ || v > UINT32_MAX) {
      ok_ = false;
      return 0;
    }
    return static_cast<uint32_t>(v);
  }
  size_t bytes_used() const { return (pos_ + 7) / 8; }
  // True when the bits after the last one read, up to the byte boundary, are zero.
  bool padding_is_zero() const {
    if ((pos_ & 7) == 0) return true;
    return (p_[pos_ >> 3] >> (pos_ & 7)) == 0;
  }

 private:
  // The next 57 or more bits from pos_ (fewer near the end, zero past it), without moving.
  uint64_t peek() const {
    const size_t byte = pos_ >> 3, nbytes = nbits_ >> 3;
    uint64_t w = 0;
    if (byte + 8 <= nbytes) {
      std::memcpy(&w, p_ + byte, 8);
    } else {
      for (size_t b = byte; b < nbytes; ++b) w |= static_cast<uint64_t>(p_[b]) << (8 * (b - byte));
    }
    return w >> (pos_ & 7);
  }
  const uint8_t* p_;
  size_t nbits_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace bigsmall::detail
