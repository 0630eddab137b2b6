#include "entropy/model.hpp"

#include <array>

namespace bigsmall::detail {

void write_float_model(const FloatModel& m, BitWriter& bw) {
  bw.put(static_cast<uint64_t>(m.hi_bits), 4);
  bw.put(static_cast<uint64_t>(m.raw_bits), 6);
  bw.put(static_cast<uint64_t>(m.zero_bits), 6);
  bw.put(static_cast<uint64_t>(m.mant_precision), 4);
  write_table(m.se, bw);
  bw.ue(static_cast<uint32_t>(m.mant.size()));
  for (const auto& t : m.mant) write_table(t, bw);
  for (uint32_t s = 0; s < m.se.alphabet; ++s)
    if (m.se.freq[s]) bw.ue(m.ctx[s]);
}

Status read_float_model(const uint8_t* p, size_t n, DType dtype, uint64_t units, FloatModel* m) {
  auto bad = [] { return Status(Error::kCorrupt, "invalid float model"); };  // made only on failure
  const DTypeInfo& info = dtype_info(dtype);
  if (!info.exponent_bits) return bad();
  BitReader br(p, n);
  m->exp_bits = info.exponent_bits;
  m->man_bits = info.mantissa_bits;
  m->hi_bits = static_cast<int>(br.get(4));
  m->raw_bits = static_cast<int>(br.get(6));
  m->zero_bits = static_cast<int>(br.get(6));
  m->mant_precision = static_cast<int>(br.get(4));
  if (!br.ok() || m->hi_bits > 12 || m->hi_bits + m->raw_bits + m->zero_bits != m->man_bits ||
      m->mant_precision < m->hi_bits || m->mant_precision > kMaxMantPrecision)
    return bad();
  BIGSMALL_RETURN_IF_ERROR(read_table(br, m->se_alphabet(), &m->se));
  const uint32_t ntables = br.ue();
  if (!br.ok() || ntables > m->se_alphabet() || ntables > kMaxAlphabet) return bad();
  if (((uint64_t{ntables} + 1) << m->mant_precision) > max_table_slots(units))
    return Status(Error::kCorrupt, "mantissa tables larger than the tensor they code");
  m->mant.resize(ntables);
  for (auto& t : m->mant) {
    BIGSMALL_RETURN_IF_ERROR(read_table(br, 1u << m->hi_bits, &t));
    if (t.precision != m->mant_precision) return bad();
  }
  m->ctx.assign(m->se_alphabet(), 0);
  std::array<uint8_t, kMaxAlphabet + 1> used{};  // ntables <= the se alphabet <= kMaxAlphabet
  for (uint32_t s = 0; s < m->se.alphabet; ++s) {
    if (!m->se.freq[s]) continue;
    const uint32_t c = br.ue();
    if (!br.ok() || c > ntables) return bad();
    m->ctx[s] = static_cast<uint16_t>(c);
    used[c] = 1;
  }
  // Writers emit only tables some symbol uses; unused ones could only inflate decoder memory.
  for (uint32_t t = 1; t <= ntables; ++t)
    if (!used[t]) return bad();
  if (br.bytes_used() != n || !br.padding_is_zero()) return bad();
  return Status::success();
}

std::optional<FloatModelShape> float_model_shape(const uint8_t* p, size_t n, DType dtype) {
  const DTypeInfo& info = dtype_info(dtype);
  if (!info.exponent_bits) return std::nullopt;
  BitReader br(p, n);
  FloatModelShape m;
  m.hi_bits = static_cast<int>(br.get(4));
  (void)br.get(6 + 6);  // raw_bits, zero_bits
  m.mant_precision = static_cast<int>(br.get(4));
  FreqTable se;
  if (!br.ok() || !read_table(br, 1u << (1 + info.exponent_bits), &se).is_ok()) return std::nullopt;
  m.se_precision = se.precision;
  for (uint32_t f : se.freq) m.present += f != 0;
  m.tables = br.ue();
  if (!br.ok() || m.hi_bits > 12 || m.mant_precision > kMaxMantPrecision || m.tables > se.alphabet) return std::nullopt;
  return m;
}

void write_bytes_model(const BytesModel& m, BitWriter& bw) {
  for (const auto& t : m.planes) write_table(t, bw);
}

Status read_bytes_model(const uint8_t* p, size_t n, uint32_t unit_bytes, uint64_t units, BytesModel* m) {
  BitReader br(p, n);
  m->planes.resize(unit_bytes);
  uint64_t slots = 0;
  for (auto& t : m->planes) {
    BIGSMALL_RETURN_IF_ERROR(read_table(br, 256, &t));
    slots += uint64_t{1} << t.precision;
    if (slots > max_table_slots(units)) return Status(Error::kCorrupt, "byte tables larger than the tensor they code");
  }
  if (br.bytes_used() != n || !br.padding_is_zero()) return Status(Error::kCorrupt, "invalid byte model");
  return Status::success();
}

}  // namespace bigsmall::detail
