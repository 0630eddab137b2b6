#include "entropy/table.hpp"

#include "entropy/estimate.hpp"
#include "common/scratch.hpp"

#include <bit>
#include <algorithm>
#include <cmath>
#include <queue>

namespace bigsmall::detail {

FreqTable FreqTable::uniform(int bits, int precision) {
  FreqTable t;
  t.alphabet = 1u << bits;
  t.precision = precision;
  t.freq.assign(t.alphabet, 1u << (precision - bits));
  t.rebuild_cum();
  return t;
}

void FreqTable::rebuild_cum() {
  cum.resize(alphabet);  // every entry is written below
  uint32_t c = 0;
  for (uint32_t s = 0; s < alphabet; ++s) {
    cum[s] = c;
    c += freq[s];
  }
}

bool normalize(const uint64_t* counts, uint32_t alphabet, int precision, FreqTable* out) {
  const uint32_t target = 1u << precision;
  uint64_t total = 0;
  uint32_t present = 0;
  for (uint32_t s = 0; s < alphabet; ++s) {
    total += counts[s];
    present += counts[s] != 0;
  }
  if (present == 0 || present > target) return false;
  out->alphabet = alphabet;
  out->precision = precision;
  out->freq.assign(alphabet, 0);
  int64_t sum = 0;
  for (uint32_t s = 0; s < alphabet; ++s) {
    if (!counts[s]) continue;
    const double ideal = static_cast<double>(counts[s]) * target / static_cast<double>(total);
    uint32_t f = static_cast<uint32_t>(ideal + 0.5);
    if (f == 0) f = 1;
    out->freq[s] = f;
    sum += f;
  }
  // Fix the sum one unit at a time, always on the symbol where the unit changes the coded size
  // least. Costs are c*log2(f/(f-1)) to take a unit and c*log2((f+1)/f) gained by giving one.
  auto step_cost = [&](uint32_t s, int dir) {
    const double f = out->freq[s];
    return static_cast<double>(counts[s]) * (dir < 0 ? std::log2(f / (f - 1)) : -std::log2((f + 1) / f));
  };
  using Item = std::pair<double, uint32_t>;
  const int dir = sum > target ? -1 : 1;
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (uint32_t s = 0; s < alphabet; ++s)
    if (out->freq[s] && (dir > 0 || out->freq[s] > 1)) heap.push({step_cost(s, dir), s});
  while (sum != target && !heap.empty()) {
    const uint32_t s = heap.top().second;
    heap.pop();
    out->freq[s] += dir;
    sum += dir;
    if (dir > 0 || out->freq[s] > 1) heap.push({step_cost(s, dir), s});
  }
  if (sum != target) return false;
  out->rebuild_cum();
  return true;
}

double coded_bits(const uint64_t* counts, const FreqTable& t) {
  double bits = 0;
  for (uint32_t s = 0; s < t.alphabet; ++s)
    if (counts[s]) bits += static_cast<double>(counts[s]) * (t.precision - std::log2(static_cast<double>(t.freq[s])));
  return bits;
}

// Layout: precision (4 bits), present count - 1 (ue), symbol gaps (ue), then when more than one
// symbol is present: Exp-Golomb order k (4 bits) and zigzag deltas of every frequency but the
// last, which is implied by the sum.
static int best_delta_order(const std::vector<uint32_t>& zig) {
  uint64_t bits[16] = {};
  for (uint32_t z : zig)
    for (int k = 0; k < 16; ++k)
      bits[k] += 2 * static_cast<uint64_t>(std::bit_width((static_cast<uint64_t>(z) >> k) + 1)) - 1 + k;
  int best_k = 0;
  for (int k = 1; k < 16; ++k)
    if (bits[k] < bits[best_k]) best_k = k;
  return best_k;
}

namespace {
// Counts the bits a BitWriter would take, so that planning can price a table without writing it.
struct BitCounter {
  uint64_t n = 0;
  void put(uint64_t, int nbits) { n += static_cast<uint64_t>(nbits); }
  void ue(uint32_t v, int k = 0) {
    n += 2 * static_cast<uint64_t>(std::bit_width((static_cast<uint64_t>(v) >> k) + 1)) - 1 + static_cast<uint64_t>(k);
  }
};

template <class Sink>
struct EmitTableSymbols;
template <class Sink>
struct EmitTableZigzags;

template <class Sink>
void emit_table(const FreqTable& t, Sink& out) {
  // Kept per thread: planning prices thousands of tables.
  auto& syms = thread_scratch<std::vector<uint32_t>, EmitTableSymbols<Sink>>();
  auto& zig = thread_scratch<std::vector<uint32_t>, EmitTableZigzags<Sink>>();
  out.put(static_cast<uint64_t>(t.precision), 4);
  syms.clear();
  for (uint32_t s = 0; s < t.alphabet; ++s)
    if (t.freq[s]) syms.push_back(s);
  out.ue(static_cast<uint32_t>(syms.size() - 1));
  uint32_t prev = 0;
  for (size_t i = 0; i < syms.size(); ++i) {
    out.ue(i == 0 ? syms[i] : syms[i] - prev - 1);
    prev = syms[i];
  }
  if (syms.size() == 1) return;
  zig.clear();
  int64_t last = 0;
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    const int64_t d = static_cast<int64_t>(t.freq[syms[i]]) - last;
    zig.push_back(static_cast<uint32_t>(d >= 0 ? 2 * d : -2 * d - 1));
    last = t.freq[syms[i]];
  }
  const int k = best_delta_order(zig);
  out.put(static_cast<uint64_t>(k), 4);
  for (uint32_t z : zig) out.ue(z, k);
}
}  // namespace

void write_table(const FreqTable& t, BitWriter& bw) { emit_table(t, bw); }

uint64_t table_bits(const FreqTable& t) {
  BitCounter c;
  emit_table(t, c);
  return c.n;
}

Status read_table(BitReader& br, uint32_t alphabet, FreqTable* out) {
  // Made only on failure: a message past the small-string size would cost an allocation for
  // every table of every tensor decoded.
  auto bad = [] { return Status(Error::kCorrupt, "invalid frequency table"); };
  const int precision = static_cast<int>(br.get(4));
  const uint64_t present = uint64_t{br.ue()} + 1;  // 64-bit: ue() may be 2^32 - 1
  if (!br.ok() || precision > kMaxPrecision || present > alphabet || present > (uint64_t{1} << precision)) return bad();
  out->alphabet = alphabet;
  out->precision = precision;
  out->freq.assign(alphabet, 0);
  // The present symbols are listed in cum until rebuild_cum fills it: one allocation fewer.
  out->cum.resize(alphabet);
  uint32_t* syms = out->cum.data();
  uint64_t s = 0;
  for (uint32_t i = 0; i < present; ++i) {
    s += uint64_t{br.ue()} + (i == 0 ? 0 : 1);  // strictly increasing: no symbol twice
    if (!br.ok() || s >= alphabet) return bad();
    syms[i] = static_cast<uint32_t>(s);
  }
  const uint32_t target = 1u << precision;
  if (present == 1) {
    out->freq[syms[0]] = target;
  } else {
    const int k = static_cast<int>(br.get(4));
    int64_t last = 0, sum = 0;
    for (uint32_t i = 0; i + 1 < present; ++i) {
      const uint32_t z = br.ue(k);
      const int64_t d = (z & 1) ? -(static_cast<int64_t>(z) + 1) / 2 : static_cast<int64_t>(z) / 2;
      last += d;
      if (!br.ok() || last < 1 || last >= target) return bad();
      out->freq[syms[i]] = static_cast<uint32_t>(last);
      sum += last;
    }
    if (sum >= target) return bad();
    out->freq[syms[present - 1]] = static_cast<uint32_t>(target - sum);
  }
  out->rebuild_cum();
  return Status::success();
}


static inline double eg_bits(uint64_t v, int k) {
  return static_cast<double>(2 * std::bit_width((v >> k) + 1) - 1 + static_cast<unsigned>(k));
}

namespace {
// log2 of every possible frequency, so that cost estimates need no libm call per symbol.
struct Log2Table {
  float v[(1u << kMaxPrecision) + 1];
  Log2Table() {
    v[0] = 0;
    for (uint32_t i = 1; i <= (1u << kMaxPrecision); ++i) v[i] = static_cast<float>(std::log2(static_cast<double>(i)));
  }
};
}  // namespace

const float* log2_of_freq() {
  static const Log2Table t;
  return t.v;
}

void Present::gather(const uint64_t* counts, uint32_t alphabet) {
  if (estimate_simd_available()) return gather_present_avx512(counts, alphabet, this);
  sym.resize(size_t{alphabet} + 8);
  count.resize(size_t{alphabet} + 8);
  size = 0;
  total = 0;
  for (uint32_t s = 0; s < alphabet; ++s)
    if (counts[s]) {
      sym[size] = s;
      count[size++] = counts[s];
      total += counts[s];
    }
}

EstimateSums estimate_sums(const Present& h, double scale, uint32_t fmax) {
  const float* lg = log2_of_freq();
  if (estimate_simd_available()) return estimate_sums_avx512(h, scale, fmax, lg);
  EstimateSums r;
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t last = 0, prev = ~0u;
  for (uint32_t i = 0; i < h.size; ++i) {
    const uint32_t s = h.sym[i];
    const double cd = static_cast<double>(h.count[i]);
    const uint32_t fi = std::min<uint32_t>(std::max<uint32_t>(1, static_cast<uint32_t>(cd * scale + 0.5)), fmax);
    r.fsum += fi;
    part[i % 8] += cd * static_cast<double>(lg[fi]);
    r.gap_bits += 2 * static_cast<uint64_t>(std::bit_width(s - prev)) - 1;  // Exp-Golomb(0) of s - prev - 1
    r.zig_sum += fi >= last ? 2 * uint64_t{fi - last} : 2 * uint64_t{last - fi} - 1;
    last = fi;
    prev = s;
  }
  r.c_log_f = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  return r;
}

namespace {
// Table + data bits of a histogram at one precision, from one pass over its present symbols.
double estimate_present(const Present& h, int precision) {
  const uint32_t present = h.size;
  if (present == 0 || present > (1u << precision)) return INFINITY;
  const uint32_t fmax = 1u << precision;
  const EstimateSums e = estimate_sums(h, static_cast<double>(fmax) / static_cast<double>(h.total), fmax);
  const double total = static_cast<double>(h.total);
  // Rounding (and the floor of 1) leaves the sum off 2^precision; normalization rescales every
  // frequency by about 2^precision / sum, which costs every coded symbol log2(sum / 2^precision).
  const double data = total * precision - e.c_log_f + total * std::log2(static_cast<double>(e.fsum) / static_cast<double>(fmax));
  double table = 4 + eg_bits(present - 1, 0) + static_cast<double>(e.gap_bits);
  if (present > 1) {
    // Exp-Golomb with k near log2 of the mean delta costs about k + 2 bits per value.
    // floor(log2(mean)) = floor(log2(floor(mean))) for mean >= 1: in integers, no libm call.
    const uint64_t mean = e.zig_sum / present;
    const double k = mean < 1 ? 0 : static_cast<double>(std::bit_width(mean) - 1);
    table += 4 + present * (k + 2);
  }
  return data + table;
}
}  // namespace

double estimate_table_bits(const uint64_t* counts, uint32_t alphabet, int precision) {
  Present& h = thread_scratch<Present, struct EstimateTablePresent>();
  h.gather(counts, alphabet);
  return estimate_present(h, precision);
}

double best_table(const uint64_t* counts, uint32_t alphabet, int lo, int hi, FreqTable* out) {
  // Estimates rank the precisions cheaply; only the two best are normalized and serialized.
  Present& h = thread_scratch<Present, struct BestTablePresent>();
  h.gather(counts, alphabet);
  std::vector<std::pair<double, int>> ranked;
  for (int p = lo; p <= hi; ++p) ranked.push_back({estimate_present(h, p), p});
  std::sort(ranked.begin(), ranked.end());
  double best = INFINITY;
  FreqTable t;
  for (size_t c = 0; c < std::min<size_t>(2, ranked.size()); ++c) {
    if (!normalize(counts, alphabet, ranked[c].second, &t)) continue;
    const double bits = coded_bits(counts, t) + static_cast<double>(table_bits(t));
    if (bits < best) {
      best = bits;
      *out = t;
    }
  }
  return best;
}

void fill_decode_slots(const FreqTable& t, uint32_t* packed, uint16_t* sym) {
  for (uint32_t s = 0; s < t.alphabet; ++s) {
    for (uint32_t j = 0; j < t.freq[s]; ++j) {
      packed[t.cum[s] + j] = (t.freq[s] << 16) | j;
      sym[t.cum[s] + j] = static_cast<uint16_t>(s);
    }
  }
}

void DecodeTable::build(const FreqTable& t) {
  precision = t.precision;
  mask = (1u << precision) - 1;
  packed.resize(size_t{1} << precision);
  sym.resize(size_t{1} << precision);
  fill_decode_slots(t, packed.data(), sym.data());
}

std::vector<EncSymbol> make_encoder(const FreqTable& t) {
  std::vector<EncSymbol> e(t.alphabet);
  for (uint32_t s = 0; s < t.alphabet; ++s) {
    e[s].freq = static_cast<uint16_t>(t.freq[s]);
    e[s].cum = static_cast<uint16_t>(t.cum[s]);
    if (t.freq[s] == 0) continue;
    const uint32_t l = static_cast<uint32_t>(std::bit_width(t.freq[s] - 1));  // ceil(log2 freq)
    const u128 num = static_cast<u128>(1) << (32 + l);
    e[s].rcp = static_cast<uint64_t>((num + t.freq[s] - 1) / t.freq[s]);
    e[s].rcp_shift = static_cast<uint8_t>(32 + l);
  }
  return e;
}

}  // namespace bigsmall::detail
