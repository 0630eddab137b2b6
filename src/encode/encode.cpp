#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>

#include "common/checksum.hpp"
#include "common/cpu.hpp"
#include "common/guard.hpp"
#include "common/scratch.hpp"
#include "common/thread_pool.hpp"
#include "encode/encoder.hpp"
#include "encode/simd_enc.hpp"
#include "entropy/model.hpp"

namespace bigsmall::detail {
namespace {

constexpr int kFloatChunkLog2 = 16;  // 64Ki elements: enough chunks for threads and GPU blocks
constexpr int kZstdChunkLog2 = 20;   // zstd needs long windows to find repeats

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

int ceil_log2(uint64_t v) { return v <= 1 ? 0 : static_cast<int>(std::bit_width(v - 1)); }

// Lanes: 32 for large tensors (GPU warps, SIMD); fewer for small ones, whose 4-byte final
// states would otherwise be a visible share of the output. A chunk's lanes share one word
// pointer, so a chunk of few lanes decodes as one long dependency chain: 16 lanes from 2048
// units (one 512-bit register) and 4 from 256 (the narrowest SIMD kernel) decode
// efficientpose.bf16 1.06x and stories260k.bf16 1.36x as fast as one lane per 1024 units did,
// for 0.07% and 0.39% larger files (BENCHMARKS.md, twentieth session's A/B table).
constexpr int kMaxLanesLog2 = 5;
std::atomic<bool> lanes_by_size_only{false};  // tests: the rule of the encoders before it
int choose_lanes_log2(uint64_t units) {
  if (lanes_by_size_only.load(std::memory_order_relaxed)) {
    int l = 0;
    while (l < kMaxLanesLog2 && (units >> (l + 1)) >= 1024) ++l;
    return l == 1 ? 2 : l;
  }
  if (units >= (uint64_t{1024} << kMaxLanesLog2)) return kMaxLanesLog2;
  if (units >= 2048) return 4;
  return units >= 256 ? 2 : 0;
}

constexpr size_t kMergeCandidates = 1;  // k values (best screened first) that get the greedy merge
// A few bits above the mantissa width keep the rounding loss negligible (well under 0.01 bit
// per symbol) while the decoder builds small lookup tables.
int mant_precision_for(int k) { return std::min(kMaxMantPrecision, k + 3); }

// Estimated bits of one mantissa context: a table of its own, or uniform coding.
struct GroupCost {
  double bits = 0;
  bool uniform = true;
};

GroupCost mantissa_group_cost(const uint64_t* counts, uint64_t n, int k) {
  GroupCost g;
  g.bits = static_cast<double>(n) * k;
  if (k == 0 || n == 0) return g;
  const double bits = estimate_table_bits(counts, 1u << k, mant_precision_for(k)) + 2;
  if (bits < g.bits) {
    g.bits = bits;
    g.uniform = false;
  }
  return g;
}

// Consecutive rows (ordered by exponent, then sign) sharing one mantissa table. Greedy: merge
// the neighbouring pair whose shared table saves the most bits, while any saves bits.
struct Grouping {
  std::vector<uint32_t> first;     // first row of each group, ascending; a group ends where the next starts
  std::vector<uint8_t> uniform;    // group codes its mantissa uniformly (no table)
  std::vector<uint64_t> counts;    // per group, 2^k counts
  std::vector<uint64_t> n;         // per group, elements
  double bits = 0;
};

Grouping group_rows(const uint64_t* row_counts, const uint64_t* row_n, size_t rows, int k) {
  const size_t w = size_t{1} << k;
  std::vector<uint64_t> acc(row_counts, row_counts + rows * w);  // group g's counts live at its first row
  std::vector<uint64_t> gn(row_n, row_n + rows);
  std::vector<GroupCost> cost(rows), pair_cost(rows);
  std::vector<double> saving(rows, -1);
  std::vector<int64_t> next(rows), prev(rows);
  std::vector<uint64_t> scratch(w);
  for (size_t r = 0; r < rows; ++r) {
    cost[r] = mantissa_group_cost(&acc[r * w], gn[r], k);
    next[r] = r + 1 < rows ? static_cast<int64_t>(r + 1) : -1;
    prev[r] = static_cast<int64_t>(r) - 1;
  }
  auto evaluate = [&](size_t g) {
    if (next[g] < 0) {
      saving[g] = -1;
      return;
    }
    const size_t h = static_cast<size_t>(next[g]);
    for (size_t j = 0; j < w; ++j) scratch[j] = acc[g * w + j] + acc[h * w + j];
    pair_cost[g] = mantissa_group_cost(scratch.data(), gn[g] + gn[h], k);
    saving[g] = cost[g].bits + cost[h].bits - pair_cost[g].bits;
  };
  for (size_t r = 0; r < rows; ++r) evaluate(r);
  std::vector<uint8_t> alive(rows, 1);
  for (;;) {
    size_t best = rows;
    for (size_t g = 0; g < rows; ++g)
      if (alive[g] && saving[g] > 0 && (best == rows || saving[g] > saving[best])) best = g;
    if (best == rows) break;
    const size_t h = static_cast<size_t>(next[best]);
    for (size_t j = 0; j < w; ++j) acc[best * w + j] += acc[h * w + j];
    gn[best] += gn[h];
    cost[best] = pair_cost[best];
    alive[h] = 0;
    next[best] = next[h];
    if (next[h] >= 0) prev[static_cast<size_t>(next[h])] = static_cast<int64_t>(best);
    evaluate(best);
    if (prev[best] >= 0) evaluate(static_cast<size_t>(prev[best]));
  }
  Grouping out;
  for (size_t g = 0; g < rows; ++g) {
    if (!alive[g]) continue;
    out.first.push_back(static_cast<uint32_t>(g));
    out.uniform.push_back(cost[g].uniform);
    out.counts.insert(out.counts.end(), acc.begin() + static_cast<long>(g * w), acc.begin() + static_cast<long>((g + 1) * w));
    out.n.push_back(gn[g]);
    out.bits += cost[g].bits;
  }
  return out;
}

}  // namespace

struct EncoderState {
  FloatModel fm;
  BytesModel bm;
  std::vector<EncSymbol> se_enc;
  // All mantissa tables side by side ([0] = uniform); m_base[se] is where se's table starts.
  std::vector<EncSymbol> m_flat;
  std::vector<uint32_t> m_base;
  std::vector<std::vector<EncSymbol>> plane_enc;
  std::vector<int> plane_prec;
  // SIMD encoder tables (see simd_enc.hpp), built when the CPU has the AVX-512 encoder.
  bool simd = false;
  bool pext = false;  // raw mantissa bits packed by pext (pack_raw_bits_bmi2)
  std::vector<uint64_t> se_pairs, m_pairs;  // SimdEncTables
};

namespace {

// floor(2^32 / freq), 2^32 - 1 for freq 1 (the SIMD encoder's quotient is then corrected).
uint64_t simd_rcp(uint32_t freq) {
  return freq <= 1 ? 0xFFFFFFFFu : (uint64_t{1} << 32) / freq;
}

double entropy_bits(const uint64_t* c, size_t n) {
  double total = 0, acc = 0;
  for (size_t i = 0; i < n; ++i)
    if (c[i]) {
      const double v = static_cast<double>(c[i]);
      total += v;
      acc += v * std::log2(v);
    }
  return total > 0 ? total * std::log2(total) - acc : 0;
}

std::atomic<uint64_t> key_slab_elements{uint64_t{1} << 31};

// Distinct (sign, exponent, top mantissa bits) keys of a tensor with their counts, gathered in
// one pass over the data into dense per-thread bins plus one pass that empties them: over the
// data for small tensors (so that a tensor of a few hundred weights does not pay for 64Ki bins),
// over the bins for large ones. The joint floor's mantissa term needs the counts of a key and
// of its sign twin together, so both are taken at once.
struct KeyStats {
  std::vector<uint32_t> keys;
  std::vector<uint64_t> counts;
  double twin_xlogx = 0;  // sum over (key, twin) pairs of c log2 c, c = the pair's total count
};

template <typename T>
T count_keys(const uint8_t* data, uint64_t n, int shift, uint32_t* bins) {
  T all = 0;  // the OR of every element, for the mantissa bits below the keys
  for (uint64_t i = 0; i < n; ++i) {
    const T v = load<T>(data + i * sizeof(T));
    all |= v;
    ++bins[v >> shift];
  }
  return all;
}

// c · log2(c) from a table for the counts most keys have: a large tensor has tens of thousands
// of distinct keys, and a libm call for each was a visible part of planning.
// Built when the library is loaded (~40 us), not lazily: a lazy static's guard, caught half taken
// by a fork in another thread's first compression, would hang the child.
struct XlogxTable {
  double v[kXlogxTable];
  XlogxTable() {
    v[0] = 0;
    for (uint32_t i = 1; i < kXlogxTable; ++i) v[i] = i * std::log2(static_cast<double>(i));
  }
};
const XlogxTable g_xlogx;
const double* xlogx_table() { return g_xlogx.v; }

double xlogx(uint64_t c) {
  if (c < kXlogxTable) return xlogx_table()[c];
  const double v = static_cast<double>(c);
  return v * std::log2(v);
}

// Sum over key pairs (k, k | sign_bit) of xlogx(count + twin count), in 16 partial sums (k mod
// 16) added in a fixed order: the portable form of twin_xlogx_avx512, which must match it to the bit.
template <typename C>
double twin_xlogx_dense(const C* bins, uint32_t sign_bit) {
  if constexpr (std::is_same_v<C, uint32_t>)
    if (cpu_has_avx512_vbmi()) return twin_xlogx_avx512(bins, sign_bit, xlogx_table());
  double part[16] = {};
  for (uint32_t k = 0; k < sign_bit; ++k) part[k % 16] += xlogx(uint64_t{bins[k]} + bins[k + sign_bit]);
  return sum16(part);
}

// Empties the bins of the listed keys into ks, each key with its sign twin: branch-free (whether
// a key or its twin is present, or the pair was taken already, is a coin toss per key). A pair
// taken already adds xlogx(0) = 0.
void take_pairs(uint32_t* bins, const uint32_t* seen, uint64_t m, uint32_t sign_bit, KeyStats* ks) {
  ks->keys.resize(2 * m);
  ks->counts.resize(2 * m);
  uint32_t* keys = ks->keys.data();
  uint64_t* counts = ks->counts.data();
  size_t j = 0;
  double twin = 0;
  for (uint64_t i = 0; i < m; ++i) {
    const uint32_t k = seen[i] & ~sign_bit, t = k | sign_bit;
    const uint64_t c = bins[k], c2 = bins[t];
    keys[j] = k;
    counts[j] = c;
    j += c != 0;
    keys[j] = t;
    counts[j] = c2;
    j += c2 != 0;
    bins[k] = bins[t] = 0;
    twin += xlogx(c + c2);
  }
  ks->keys.resize(j);
  ks->counts.resize(j);
  ks->twin_xlogx = twin;
}

// Per-thread scratch of the planner. Bins stay all zero between calls. Past a 16-bit dtype's
// needs they are released after use, so that one F64 tensor does not leave megabytes on every
// thread of a long-lived process.
struct KeyScratch {
  std::vector<uint32_t> bins, seen;
  std::vector<uint64_t> wide;  // totals of tensors counted in slabs
  static constexpr size_t kKept = size_t{1} << 17;
  void trim() {
    if (bins.size() > kKept) std::vector<uint32_t>().swap(bins);
    if (seen.size() > kKept) std::vector<uint32_t>().swap(seen);
    std::vector<uint64_t>().swap(wide);
  }
};

// The counts of every key of a large tensor, left in the bins (all zero again after dense_rows).
struct DenseKeys {
  const uint32_t* bins = nullptr;  // one of the two
  const uint64_t* wide = nullptr;
  bool active() const { return bins || wide; }
};

KeyScratch& key_scratch() { return thread_scratch<KeyScratch>(); }

// Small tensors: the distinct keys with their counts in ks, the bins left empty. Large ones (at
// least half as many elements as keys): the counts left in the bins for the dense pass
// (DenseKeys, emptied by dense_rows or, should planning throw, by DenseGuard), where emptying
// them key by key cost more than the rest of planning.
// A tensor this large, planned while no other tensor is (it fills a batch alone), has its keys
// counted by every thread: the count is most of its planning (0.3 s of 0.4 per GiB of BF16).
constexpr uint64_t kSplitCount = uint64_t{1} << 24;
std::atomic<uint64_t> split_count_elements{kSplitCount};  // or smaller in tests

// count_keys over n elements into the calling thread's bins, by the threads of the pool: each
// counts slices into its own bins, which are then added to the caller's and emptied.
template <typename T>
T count_keys_split(const uint8_t* data, uint64_t n, int shift, size_t nbins, ThreadPool& pool) {
  const size_t parts = 4 * static_cast<size_t>(pool.size());  // small enough that threads end together
  const uint64_t per = (n + parts - 1) / parts;
  std::vector<T> ors(parts, 0);
  std::vector<uint32_t*> used(parts, nullptr);  // the bins each slice went into
  try {
    pool.parallel_for(parts, [&](size_t p) {
      std::vector<uint32_t>& b = key_scratch().bins;
      if (b.size() < nbins) b.resize(nbins, 0);
      used[p] = b.data();
      const uint64_t begin = std::min(n, p * per), end = std::min(n, begin + per);
      ors[p] = count_keys<T>(data + begin * sizeof(T), end - begin, shift, b.data());
    });
  } catch (...) {
    for (uint32_t* b : used)  // bins stay all zero between calls, on every thread
      if (b) std::memset(b, 0, nbins * sizeof(uint32_t));
    throw;
  }
  uint32_t* const mine = key_scratch().bins.data();
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  for (uint32_t* b : used) {
    if (b == mine) continue;
    for (size_t k = 0; k < nbins; ++k) mine[k] += b[k];
    std::memset(b, 0, nbins * sizeof(uint32_t));  // another thread's bins, idle now: zero again
  }
  T all = 0;
  for (T o : ors) all |= o;
  return all;
}

template <typename T>
DenseKeys gather_keys(const uint8_t* data, uint64_t n, int shift, int key_bits, KeyStats* ks, T* or_all,
                      ThreadPool* pool) {
  KeyScratch& scratch = key_scratch();
  std::vector<uint32_t>& bins = scratch.bins;
  const size_t nbins = size_t{1} << key_bits;
  if (bins.size() < nbins) bins.resize(nbins, 0);
  const uint32_t sign_bit = 1u << (key_bits - 1);
  ks->keys.clear();
  ks->counts.clear();
  ks->twin_xlogx = 0;
  // 32-bit bins: a tensor of more than 2^31 elements is counted in slabs into 64-bit totals.
  const uint64_t slab = key_slab_elements.load(std::memory_order_relaxed);
  if (2 * n < nbins) {
    // Each key is listed when its bin first goes up (a branch-free append), so that emptying
    // the bins visits the distinct keys only.
    std::vector<uint32_t>& seen = scratch.seen;
    if (seen.size() < n) seen.resize(n);
    uint32_t* b = bins.data();
    uint64_t m = 0;
    T all = 0;
    for (uint64_t i = 0; i < n; ++i) {
      const T v = load<T>(data + i * sizeof(T));
      all |= v;
      const uint32_t k = static_cast<uint32_t>(v >> shift);
      seen[m] = k;
      m += b[k]++ == 0;
    }
    *or_all = all;
    take_pairs(b, seen.data(), m, sign_bit, ks);
    scratch.trim();
    return {};
  }
  if (n <= slab) {
    if (pool && pool->size() > 1 && n >= split_count_elements.load(std::memory_order_relaxed)) {
      *or_all = count_keys_split<T>(data, n, shift, nbins, *pool);
    } else {
      *or_all = count_keys<T>(data, n, shift, bins.data());
    }
    return {bins.data(), nullptr};
  }
  std::vector<uint64_t>& wide = scratch.wide;
  wide.assign(nbins, 0);
  *or_all = 0;
  for (uint64_t i = 0; i < n; i += slab) {
    *or_all |= count_keys<T>(data + i * sizeof(T), std::min(slab, n - i), shift, bins.data());
    for (size_t k = 0; k < nbins; ++k) {
      wide[k] += bins[k];
      bins[k] = 0;
    }
  }
  return {nullptr, wide.data()};
}

// se_hist and the OR of the present mantissa keys, from dense bins (blocks of 2^kfull keys per
// sign+exponent value).
template <typename C>
void dense_se_stats(const C* bins, uint32_t A, int kfull, uint64_t* se_hist, uint32_t* mor_hi) {
  const uint32_t w = 1u << kfull;
  uint32_t mor = 0;
  for (uint32_t se = 0; se < A; ++se) {
    const C* b = bins + size_t{se} * w;
    uint64_t sum = 0;
    uint32_t o = 0;
    for (uint32_t m = 0; m < w; ++m) {
      sum += b[m];
      o |= b[m] ? m : 0;
    }
    se_hist[se] = sum;
    mor |= o;
  }
  *mor_hi = mor;
}

// Each row's counts of its top kmax mantissa bits, from its block of dense bins, which is then
// emptied (the blocks of absent rows are empty already).
template <typename C>
void dense_rows(C* bins, const std::vector<uint32_t>& rows, int kfull, int kmax, uint64_t* at) {
  const uint32_t w = 1u << kfull, g = 1u << (kfull - kmax);
  for (size_t r = 0; r < rows.size(); ++r) {
    C* b = bins + size_t{rows[r]} * w;
    uint64_t* dst = at + (r << kmax);
    for (uint32_t j = 0; j < (1u << kmax); ++j) {
      uint64_t sum = 0;
      for (uint32_t t = 0; t < g; ++t) sum += b[j * g + t];
      dst[j] = sum;
    }
    std::memset(b, 0, size_t{w} * sizeof(C));
  }
}

// The width k of the conditioned mantissa field and the grouping of rows that share a table: a
// cheap screen (every row on its own table) over a few widths picks the ones that get the greedy
// merge. at[k] holds every row's counts of its top k mantissa bits.
std::pair<Grouping, int> choose_grouping(const std::vector<std::vector<uint64_t>>& at, const std::vector<uint64_t>& row_n,
                                         int kmax, uint64_t n, int m_eff) {
  const size_t rows = row_n.size();
  std::vector<int> cand;
  for (int k : {kmax, kmax - 1, kmax - 2, kmax - 4, 0})
    if (k >= 0 && std::find(cand.begin(), cand.end(), k) == cand.end()) cand.push_back(k);
  std::vector<std::pair<double, int>> screened;
  for (int k : cand) {
    double bits = static_cast<double>(n) * (m_eff - k);
    for (size_t r = 0; r < rows; ++r) bits += mantissa_group_cost(&at[k][r << k], row_n[r], k).bits;
    screened.push_back({bits, k});
  }
  std::sort(screened.begin(), screened.end());
  double best_bits = INFINITY;
  Grouping best;
  int best_k = 0;
  for (size_t c = 0; c < std::min<size_t>(kMergeCandidates, screened.size()); ++c) {
    const int k = screened[c].second;
    Grouping g = group_rows(at[k].data(), row_n.data(), rows, k);
    const double bits = g.bits + static_cast<double>(n) * (m_eff - k);
    if (bits < best_bits) {
      best_bits = bits;
      best = std::move(g);
      best_k = k;
    }
  }
  return {std::move(best), best_k};
}

// Exact tables for the chosen groups (fm->hi_bits wide, at fm->mant_precision); a group whose
// exact table loses to uniform coding drops it. Returns the mantissa's coded bits.
double mantissa_tables(const Grouping& best, const std::vector<uint32_t>& rows, uint32_t A, uint64_t n, int m_eff,
                       FloatModel* fm) {
  const int k = fm->hi_bits;
  fm->mant.clear();
  fm->ctx.assign(A, 0);
  double mant_bits = static_cast<double>(n) * (m_eff - k);
  const size_t w = size_t{1} << k;
  for (size_t g = 0; g < best.first.size(); ++g) {
    const uint64_t* counts = &best.counts[g * w];
    FreqTable t;
    double bits = INFINITY;
    if (!best.uniform[g] && normalize(counts, static_cast<uint32_t>(w), fm->mant_precision, &t)) {
      bits = coded_bits(counts, t) + static_cast<double>(table_bits(t)) + 2;
    }
    const double uniform_bits = static_cast<double>(best.n[g]) * k;
    const size_t end = g + 1 < best.first.size() ? best.first[g + 1] : rows.size();
    if (bits < uniform_bits) {
      fm->mant.push_back(std::move(t));
      for (size_t r = best.first[g]; r < end; ++r) fm->ctx[rows[r]] = static_cast<uint16_t>(fm->mant.size());
      mant_bits += bits;
    } else {
      mant_bits += uniform_bits;
    }
  }
  // Decoders bound table memory by the data (max_table_slots); stay inside it.
  if (((uint64_t{fm->mant.size()} + 1) << fm->mant_precision) > max_table_slots(n)) {
    fm->mant.clear();
    std::fill(fm->ctx.begin(), fm->ctx.end(), 0);
    mant_bits = static_cast<double>(n) * m_eff;
  }
  return mant_bits;
}

template <typename T>
double plan_float(const uint8_t* data, uint64_t n, const DTypeInfo& info, FloatModel* fm, double* floor_bits,
                  ThreadPool* pool) {
  const int eb = info.exponent_bits, mb = info.mantissa_bits;
  const uint32_t A = 1u << (1 + eb);
  // The joint model conditions the whole mantissa on the exponent for widths up to 10 bits and
  // the top 8 bits of wider ones (as the corpus MANIFEST's floors do).
  const int kfull = std::min(mb, mb <= 10 ? 10 : 8);
  const int shift = mb - kfull;
  KeyStats& ks = thread_scratch<KeyStats>();
  T or_all = 0;
  const DenseKeys dense = gather_keys<T>(data, n, shift, 1 + eb + kfull, &ks, &or_all, pool);
  // Bins must be all zero between calls: if anything below throws (allocation) before dense_rows
  // empties them, empty them all.
  struct DenseGuard {
    bool armed;
    ~DenseGuard() {
      if (!armed) return;
      std::fill(key_scratch().bins.begin(), key_scratch().bins.end(), 0u);
      key_scratch().trim();
    }
  } guard{dense.active()};

  std::vector<uint64_t> se_hist(A, 0);
  uint32_t mor_hi = 0;
  const uint32_t kmask = (1u << kfull) - 1;
  double twin_xlogx = ks.twin_xlogx;
  if (dense.bins) {
    dense_se_stats(dense.bins, A, kfull, se_hist.data(), &mor_hi);
    twin_xlogx = twin_xlogx_dense(dense.bins, 1u << (eb + kfull));
  } else if (dense.wide) {
    dense_se_stats(dense.wide, A, kfull, se_hist.data(), &mor_hi);
    twin_xlogx = twin_xlogx_dense(dense.wide, 1u << (eb + kfull));
  } else {
    for (size_t i = 0; i < ks.keys.size(); ++i) {
      se_hist[ks.keys[i] >> kfull] += ks.counts[i];
      mor_hi |= ks.keys[i] & kmask;
    }
  }
  const T mor = static_cast<T>(static_cast<T>(mor_hi) << shift) |
                (shift ? static_cast<T>(or_all & static_cast<T>((T{1} << shift) - 1)) : T{0});
  const int z = mor == 0 ? mb : std::countr_zero(mor);
  const int m_eff = mb - z;
  const int k_floor = std::min(m_eff, kfull);
  // A context's table of 2^k mantissa values cannot pay for itself on a tensor of few weights;
  // capping k at n/8 values keeps planning in proportion to the tensor.
  const int k_data = std::max(0, static_cast<int>(std::bit_width(n)) - 4);
  const int kmax = std::min(k_floor, k_data);

  // The joint floor (as in the corpus MANIFEST): H(sign, exponent) + H(mantissa top bits | exponent)
  // + the remaining mantissa bits raw. Both signs of an exponent share the mantissa term (the
  // bits below m_eff are zero, so the top k_floor bits carry the same information as all kfull).
  {
    double nlogn = 0;
    for (uint32_t e = 0; e < A / 2; ++e) {
      const double ne = static_cast<double>(se_hist[e] + se_hist[e | (A / 2)]);
      if (ne > 0) nlogn += ne * std::log2(ne);
    }
    *floor_bits = entropy_bits(se_hist.data(), A) + static_cast<double>(n) * (m_eff - k_floor) +
                  (k_floor > 0 ? nlogn - twin_xlogx : 0);
  }

  // Rows: present symbols ordered by exponent, then sign, so that neighbours have similar mantissas.
  std::vector<uint32_t> rows;
  for (uint32_t e = 0; e < A / 2; ++e)
    for (uint32_t s = 0; s < 2; ++s)
      if (se_hist[(s << eb) | e]) rows.push_back((s << eb) | e);
  std::vector<int32_t> row_of(A, -1);
  for (size_t r = 0; r < rows.size(); ++r) row_of[rows[r]] = static_cast<int32_t>(r);
  // at[k]: every row's counts of its top k mantissa bits (rows << k entries; the vectors may be
  // longer), each width folded from the next wider. Kept per thread: fresh for every tensor, an
  // F16 tensor's counts (rows x 2^10 x 8 bytes) were zeroed and page-faulted in each time.
  auto& at = thread_scratch<std::vector<std::vector<uint64_t>>, struct RowMantissaCounts>();
  if (at.size() < static_cast<size_t>(kmax) + 1) at.resize(static_cast<size_t>(kmax) + 1);
  for (int k = kmax; k >= 0; --k)
    if (at[k].size() < (rows.size() << k)) at[k].resize(rows.size() << k);
  if (dense.bins) {
    dense_rows(key_scratch().bins.data(), rows, kfull, kmax, at[kmax].data());  // writes every entry
    key_scratch().trim();
    guard.armed = false;
  } else if (dense.wide) {
    dense_rows(key_scratch().wide.data(), rows, kfull, kmax, at[kmax].data());
    key_scratch().trim();
    guard.armed = false;
  } else {
    std::fill_n(at[kmax].begin(), rows.size() << kmax, uint64_t{0});
    for (size_t i = 0; i < ks.keys.size(); ++i)
      at[kmax][(static_cast<size_t>(row_of[ks.keys[i] >> kfull]) << kmax) + ((ks.keys[i] & kmask) >> (kfull - kmax))] +=
          ks.counts[i];
  }
  for (int k = kmax - 1; k >= 0; --k) {
    const uint64_t* wide = at[k + 1].data();
    uint64_t* narrow = at[k].data();
    for (size_t j = 0; j < (rows.size() << k); ++j) narrow[j] = wide[2 * j] + wide[2 * j + 1];
  }

  FreqTable se;
  const uint32_t present = static_cast<uint32_t>(rows.size());
  const double se_bits = best_table(se_hist.data(), A, std::max(1, ceil_log2(present)), 12, &se);
  std::vector<uint64_t> row_n(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) row_n[r] = se_hist[rows[r]];
  auto [best, best_k] = choose_grouping(at, row_n, kmax, n, m_eff);

  fm->exp_bits = eb;
  fm->man_bits = mb;
  fm->hi_bits = best_k;
  fm->raw_bits = m_eff - best_k;
  fm->zero_bits = z;
  fm->mant_precision = mant_precision_for(best_k);
  fm->se = std::move(se);
  const double mant_bits = mantissa_tables(best, rows, A, n, m_eff, fm);
  if (ks.keys.capacity() > KeyScratch::kKept) ks = KeyStats{};  // as KeyScratch::trim
  // F64's 4096 rows x 2^8 counts: not kept on every thread of a long-lived process.
  if (at[kmax].capacity() > KeyScratch::kKept * 2) std::vector<std::vector<uint64_t>>().swap(at);
  return se_bits + mant_bits;
}

// Adds each byte position's histogram of the elements to hist (unit x 256): byte positions known
// at compile time (not a modulo per byte), and four sets of counts taking turns, so that runs of
// one byte value (the exponent byte of most weights) do not chain increments of one counter.
template <uint32_t kUnit>
void count_planes(const uint8_t* data, uint64_t n_units, uint64_t* hist) {
  constexpr uint32_t kSets = 4;
  std::vector<uint64_t> part(size_t{kSets} * kUnit * 256, 0);
  uint64_t i = 0;
  for (; i + kSets <= n_units; i += kSets)
    for (uint32_t s = 0; s < kSets; ++s)
      for (uint32_t j = 0; j < kUnit; ++j) ++part[(s * kUnit + j) * 256 + data[(i + s) * kUnit + j]];
  for (; i < n_units; ++i)
    for (uint32_t j = 0; j < kUnit; ++j) ++part[j * 256 + data[i * kUnit + j]];
  for (uint32_t s = 0; s < kSets; ++s)
    for (size_t v = 0; v < size_t{kUnit} * 256; ++v) hist[v] += part[s * kUnit * 256 + v];
}

// The bytes coder's bits (tables included) and its model in bm. Where the planes' estimated cost
// (estimate_table_bits, as candidate groupings are screened) is over 2% above `bound`, the bits
// of a coder it would have to beat, that estimate (above bound, so never chosen) and no model:
// exact tables for planes that lose cost more than the counting (F16 files: the bytes coder is
// planned for half their tensors and chosen for one).
double plan_bytes(const uint8_t* data, uint64_t nbytes, uint32_t unit, double bound, BytesModel* bm) {
  std::vector<uint64_t> hist(size_t{unit} * 256, 0);
  const uint64_t n_units = nbytes / unit;
  switch (unit) {
    case 1: count_planes<1>(data, n_units, hist.data()); break;
    case 2: count_planes<2>(data, n_units, hist.data()); break;
    case 4: count_planes<4>(data, n_units, hist.data()); break;
    case 8: count_planes<8>(data, n_units, hist.data()); break;
    default:
      for (uint64_t i = 0; i < n_units * unit; ++i) ++hist[(i % unit) * 256 + data[i]];
      break;
  }
  for (uint64_t i = n_units * unit; i < nbytes; ++i) ++hist[(i % unit) * 256 + data[i]];  // none: whole elements
  std::vector<int> lo(unit);
  double estimate = 0;
  for (uint32_t j = 0; j < unit; ++j) {
    const uint64_t* h = hist.data() + size_t{j} * 256;
    uint32_t present = 0;
    for (uint32_t v = 0; v < 256; ++v) present += h[v] != 0;
    lo[j] = std::max(1, ceil_log2(present));
    double plane = INFINITY;
    for (int p = lo[j]; p <= 12; ++p) plane = std::min(plane, estimate_table_bits(h, 256, p));
    estimate += plane;
  }
  if (estimate > 1.02 * bound) return estimate;
  double bits = 0;
  bm->planes.resize(unit);
  for (uint32_t j = 0; j < unit; ++j) bits += best_table(hist.data() + size_t{j} * 256, 256, lo[j], 12, &bm->planes[j]);
  return bits;
}

}  // namespace

Status check_zstd_level(int level) {
  if (level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel()) return Status::success();
  return Status(Error::kInvalidArgument, "zstd_level " + std::to_string(level) + " is outside zstd's levels (" +
                                             std::to_string(ZSTD_minCLevel()) + " to " + std::to_string(ZSTD_maxCLevel()) + ")");
}

namespace {

// Compression contexts kept per thread: ZSTD_compress would allocate and initialize a fresh one
// on every call, which costs more than compressing a small tensor. The level-1 probes and the
// real levels get a context each, so that neither keeps resizing the other's workspace.
size_t zstd_compress(void* dst, size_t cap, const void* src, size_t len, int level) {
  struct Ctx {
    ZSTD_CCtx* p = ZSTD_createCCtx();
    ~Ctx() { ZSTD_freeCCtx(p); }
  };
  ZSTD_CCtx* c = level <= 1 ? thread_scratch<Ctx, struct ZstdProbeContext>().p : thread_scratch<Ctx, struct ZstdContext>().p;
  if (c == nullptr) return ZSTD_compress(dst, cap, src, len, level);
  const size_t r = ZSTD_compressCCtx(c, dst, cap, src, len, level);
  // zstd's levels are not monotonic: a chunk can come out a few bytes larger at 19 than at 9.
  // A higher level than the default (--best) must never give a larger file than the default.
  constexpr int kDefault = EncodeOptions{}.zstd_level;
  if (level <= kDefault || ZSTD_isError(r)) return r;
  auto& other = thread_scratch<std::vector<uint8_t>, struct ZstdDefaultLevelOutput>();
  other.resize(std::max(other.size(), cap));
  const size_t d = ZSTD_compressCCtx(c, other.data(), cap, src, len, kDefault);
  if (ZSTD_isError(d) || d >= r) return r;
  std::memcpy(dst, other.data(), d);
  return d;
}

// zstd's size on (a sample of) the tensor, scaled to the whole tensor, in bits: level 1 on four
// pieces spread over the tensor (or the whole tensor if it is at most four pieces), enough to
// see zeros, repeats and few distinct values, cheap next to coding.
constexpr int kZstdRepeatsOnly = -1;  // negative levels leave literals uncompressed

double zstd_estimate(const uint8_t* data, uint64_t nbytes, uint64_t piece, int level) {
  auto& out = thread_scratch<std::vector<uint8_t>, struct ZstdEstimateOutput>();
  uint64_t in_total = 0, out_total = 0;
  auto probe = [&](const uint8_t* p, uint64_t len) {
    out.resize(ZSTD_compressBound(len));
    const size_t r = zstd_compress(out.data(), out.size(), p, len, level);
    in_total += len;
    out_total += ZSTD_isError(r) ? len : r;
  };
  if (nbytes <= 4 * piece) {
    probe(data, nbytes);
  } else {
    for (uint64_t i = 0; i < 4; ++i) probe(data + (nbytes - piece) / 3 * i, piece);
  }
  return 8.0 * static_cast<double>(out_total) * static_cast<double>(nbytes) / static_cast<double>(in_total);
}

// Interleaved rANS encoder. Words are written backwards from the end of a buffer, so that when
// the chunk is done they already stand in the order the decoder reads them; the renormalization
// is branch-free (the word is always stored, the pointer only moves when it is needed).
struct RansEncoder {
  uint32_t x[kLanesMax];
  uint16_t* p;  // next word goes to p[-1]

  inline void put(uint32_t lane, const EncSymbol& s, int precision) {
    uint32_t v = x[lane];
    const uint32_t emit = static_cast<uint64_t>(v) >= (static_cast<uint64_t>(s.freq) << (32 - precision));
    p[-1] = static_cast<uint16_t>(v);
    p -= emit;
    v >>= emit << 4;
    // rcp_shift >= 32: a constant 32-bit shift of the 128-bit product, then a cheap 64-bit one.
    const uint64_t top = static_cast<uint64_t>((static_cast<u128>(v) * s.rcp) >> 32);
    const uint32_t q = static_cast<uint32_t>(top >> (s.rcp_shift - 32));
    x[lane] = (q << precision) + (v - q * s.freq) + s.cum;
  }
};

// Scratch words for one chunk: one word per symbol at most, plus the slot p[-1] may touch.
uint16_t* word_buffer(uint64_t symbols, uint16_t** end) {
  auto& buf = thread_scratch<std::vector<uint16_t>, struct ChunkWords>();
  if (buf.size() < symbols + 1) buf.resize(symbols + 1);
  *end = buf.data() + symbols + 1;
  return buf.data();
}

// A coded chunk is its lanes' final states, the raw bit plane, then the words. The raw plane is
// packed straight into its place first, its writer's 8-byte overrun landing where the words go.
constexpr size_t kRawSlack = 8;

uint8_t* start_chunk(ByteBuffer* out, uint32_t lanes, uint64_t raw_bytes, uint64_t nwords) {
  return out->reset(lanes * 4 + raw_bytes + nwords * 2, kRawSlack) + lanes * 4;
}

void put_states(ByteBuffer* out, const uint32_t* states, uint32_t lanes) { std::memcpy(out->data(), states, lanes * 4); }

// Raw fields (bits z .. z + rb of each element) packed LSB-first, element i at bit i * rb; writes
// up to 8 bytes past raw_plane_bytes(n, rb).
template <typename T>
void pack_raw_plane(const uint8_t* src, uint64_t n, int z, int rb, bool pext, uint8_t* o) {
  if (pext) {
    pack_raw_bits_bmi2(src, n, sizeof(T), z, rb, o);
    return;
  }
  // Fields go through a 64-bit accumulator and leave it 32 bits at a time: read-modify-write
  // of overlapping bytes would stall on store forwarding.
  const uint64_t rmask = (uint64_t{1} << rb) - 1;
  uint64_t acc = 0;
  int have = 0;
  auto push = [&](uint64_t v, int bits) {  // bits <= 32, have < 32: never overflows 64 bits
    acc |= v << have;
    have += bits;
    if (have >= 32) {
      const uint32_t w = static_cast<uint32_t>(acc);
      std::memcpy(o, &w, 4);
      o += 4;
      acc >>= 32;
      have -= 32;
    }
  };
  auto field = [&](uint64_t i) { return (static_cast<uint64_t>(load<T>(src + i * sizeof(T))) >> z) & rmask; };
  uint64_t i = 0;
  if (rb <= 16) {
    // As many fields as fit in 32 bits go in at once: their shifts are constants, so the
    // only serial step is one push per group instead of one per element.
    const int group = 32 / rb;
    for (; i + static_cast<uint64_t>(group) <= n; i += static_cast<uint64_t>(group)) {
      uint64_t v = 0;
      for (int j = 0; j < group; ++j) v |= field(i + static_cast<uint64_t>(j)) << (j * rb);
      push(v, group * rb);
    }
  }
  for (; i < n; ++i) {
    const uint64_t v = field(i);
    if (rb <= 32) {
      push(v, rb);
    } else {
      push(v & 0xFFFFFFFFu, 32);
      push(v >> 32, rb - 32);
    }
  }
  std::memcpy(o, &acc, 8);
}

template <typename T>
void encode_float_chunk(const EncoderState& st, const uint8_t* src, uint64_t n, uint32_t lanes, ByteBuffer* out) {
  const FloatModel& m = st.fm;
  const int mb = m.man_bits, k = m.hi_bits, rb = m.raw_bits, z = m.zero_bits;
  const int se_prec = m.se.precision, m_prec = m.mant_precision;
  const T kmask = static_cast<T>((T{1} << k) - 1);
  const EncSymbol* se_enc = st.se_enc.data();
  const EncSymbol* m_enc = st.m_flat.data();
  const uint32_t* m_base = st.m_base.data();
  RansEncoder enc{{}, nullptr};  // p: set by either path below
  std::fill(enc.x, enc.x + kLanesMax, kRansL);
  auto encode_round = [&](uint64_t r) {
    const uint32_t active = static_cast<uint32_t>(std::min<uint64_t>(lanes, n - r * lanes));
    const uint8_t* row = src + r * lanes * sizeof(T);
    // With no mantissa bits coded (k = 0) the mantissa step is a put of freq 2^P: x unchanged.
    if (k > 0) {
      for (uint32_t l = active; l-- > 0;) {
        const T w = load<T>(row + l * sizeof(T));
        const uint32_t se = static_cast<uint32_t>(w >> mb);
        enc.put(l, m_enc[m_base[se] + static_cast<uint32_t>((w >> (rb + z)) & kmask)], m_prec);
      }
    }
    for (uint32_t l = active; l-- > 0;) {
      const T w = load<T>(row + l * sizeof(T));
      enc.put(l, se_enc[static_cast<uint32_t>(w >> mb)], se_prec);
    }
  };
  const uint64_t rounds = (n + lanes - 1) / lanes;
  const uint64_t full = n / lanes;
  const uint64_t raw_bytes = rb > 0 ? raw_plane_bytes(n, rb) : 0;
  if (st.simd && (sizeof(T) == 2 || sizeof(T) == 4) && (lanes == 8 || lanes == 16 || lanes == 32) && full > 0) {
    // The chunk is laid out backwards in `out`, with no copy: words from its end down (the
    // partial last round first, as coding runs backwards, then the full rounds by SIMD), then
    // the raw plane and the states below the last word; the chunk is narrowed to start there.
    const size_t head = lanes * 4 + raw_bytes;
    const size_t word_room = 2 * (2 * n + 1);  // + 1: the scalar put stores p[-1] before deciding
    uint8_t* base = out->reset(head + word_room + 1 + kRawSlack);
    // Words aligned for uint16_t whatever the raw plane's size; kRawSlack spare bytes after them.
    uint8_t* const end_byte = base + head + word_room + ((reinterpret_cast<uintptr_t>(base) + head + word_room) & 1);
    uint16_t* const words_end = reinterpret_cast<uint16_t*>(end_byte);
    enc.p = words_end;
    if (rounds > full) encode_round(full);
    const SimdEncTables t{st.se_pairs.data(), se_prec, st.m_pairs.data(), m_prec, mb, rb + z, static_cast<int>(kmask), k};
    enc.p -= encode_float_rounds_avx512(t, src, full, static_cast<int>(lanes), sizeof(T), enc.x, enc.p);
    uint8_t* const words = reinterpret_cast<uint8_t*>(enc.p);
    if (rb > 0) {
      // The packer writes up to kRawSlack bytes past the plane: over the first words, kept aside.
      uint8_t kept[kRawSlack];
      std::memcpy(kept, words, kRawSlack);
      pack_raw_plane<T>(src, n, z, rb, st.pext, words - raw_bytes);
      std::memcpy(words, kept, kRawSlack);
    }
    uint8_t* const chunk = words - head;
    out->narrow(static_cast<size_t>(chunk - base), static_cast<size_t>(end_byte - chunk));
  } else {
    uint16_t* end;
    word_buffer(2 * n, &end);
    enc.p = end;
    for (uint64_t r = rounds; r-- > 0;) encode_round(r);
    const uint64_t nwords = static_cast<uint64_t>(end - enc.p);
    uint8_t* raw = start_chunk(out, lanes, raw_bytes, nwords);
    if (rb > 0) pack_raw_plane<T>(src, n, z, rb, st.pext, raw);
    if (nwords) std::memcpy(raw + raw_bytes, enc.p, nwords * 2);
  }
  put_states(out, enc.x, lanes);
}

void encode_bytes_chunk(const EncoderState& st, const uint8_t* src, uint64_t n_units, uint32_t unit,
                        uint32_t lanes, ByteBuffer* out) {
  uint16_t* end;
  word_buffer(n_units * unit, &end);
  RansEncoder enc{{}, end};
  std::fill(enc.x, enc.x + kLanesMax, kRansL);
  const uint64_t rounds = (n_units + lanes - 1) / lanes;
  for (uint64_t r = rounds; r-- > 0;) {
    const uint32_t active = static_cast<uint32_t>(std::min<uint64_t>(lanes, n_units - r * lanes));
    for (uint32_t j = unit; j-- > 0;)
      for (uint32_t l = active; l-- > 0;)
        enc.put(l, st.plane_enc[j][src[(r * lanes + l) * unit + j]], st.plane_prec[j]);
  }
  const uint64_t nwords = static_cast<uint64_t>(end - enc.p);
  uint8_t* words = start_chunk(out, lanes, 0, nwords);
  if (nwords) std::memcpy(words, enc.p, nwords * 2);
  put_states(out, enc.x, lanes);
}

}  // namespace

TensorEncoder::TensorEncoder(TensorEncoder&&) noexcept = default;
TensorEncoder& TensorEncoder::operator=(TensorEncoder&&) noexcept = default;
TensorEncoder::~TensorEncoder() = default;

TensorEncoder TensorEncoder::plan(DType dtype, const uint8_t* data, uint64_t nbytes, const EncodeOptions& opts,
                                  ThreadPool* pool) {
  TensorEncoder te;
  te.data_ = data;
  te.state_ = std::make_unique<EncoderState>();
  TensorCoding& c = te.coding_;
  c.dtype = dtype;
  c.nbytes = nbytes;
  c.codec = Codec::kStore;
  c.chunk_log2 = kFloatChunkLog2;
  c.lanes_log2 = 0;
  c.checksum = xxh3_64(data, nbytes);
  te.estimated_bits_ = 8.0 * static_cast<double>(nbytes);
  te.floor_bits_ = te.estimated_bits_;
  // Up to 16 bytes no coder can win: a coded chunk alone costs 13 bytes of header and state,
  // before any model. Planning such tensors (biases and scalars, half of some files' tensors)
  // cost more than coding the rest of the file.
  if (nbytes <= 16) return te;

  const uint32_t unit = c.unit_bytes();
  const uint64_t units = nbytes / unit;
  const int lanes_log2 = choose_lanes_log2(units);
  const double chunk_overhead =
      8.0 * static_cast<double>(((units >> kFloatChunkLog2) + 1) * ((4u << lanes_log2) + 9));
  EncoderState& st = *te.state_;
  const DTypeInfo& info = dtype_info(dtype);

  double float_bits = INFINITY;
  if (info.exponent_bits) {
    switch (info.bits) {
      case 8: float_bits = plan_float<uint8_t>(data, units, info, &st.fm, &te.floor_bits_, pool); break;
      case 16: float_bits = plan_float<uint16_t>(data, units, info, &st.fm, &te.floor_bits_, pool); break;
      case 32: float_bits = plan_float<uint32_t>(data, units, info, &st.fm, &te.floor_bits_, pool); break;
      case 64: float_bits = plan_float<uint64_t>(data, units, info, &st.fm, &te.floor_bits_, pool); break;
      default: break;
    }
    float_bits += chunk_overhead;
  }
  double bytes_bits = INFINITY;
  if (!(float_bits < 0.92 * te.estimated_bits_)) {
    const double bound = std::min(float_bits, te.estimated_bits_) - chunk_overhead;
    bytes_bits = plan_bytes(data, nbytes, unit, bound, &st.bm) + chunk_overhead;
  }
  // A fast zstd probe flags tensors with repeated structure; only when it comes close to the
  // entropy coder is the real level tried (level 1 misses long-range repeats that level 19 finds,
  // e.g. an STFT basis: 0.80 at level 1, 0.23 at level 19). The trial compresses the first zstd
  // chunk: exact for a tensor of one chunk (and kept as that chunk); for larger tensors, where it
  // stands for the rest, zstd must win by a clear margin. Planning stays bounded, so compression
  // of a large tensor keeps scaling over threads.
  double zstd_bits = INFINITY;
  double zstd_margin = 0.97;
  // The level asked for at every size: --best capped at 9 above 8 MiB left the large repeated
  // tensors (embeddings, position tables) where it matters most at the default's size.
  const int zstd_level = opts.zstd_level;
  if (opts.allow_zstd) {
    // zstd can only beat the entropy coders through repeats (its literals are order-0 bytes).
    // Its fastest level stores literals raw and only looks for repeats, at ~7 GB/s: when that
    // finds under 2% to remove, the level-1 probe (~0.45 GB/s) is skipped. Both look at the
    // same sample, so repeats up to 256 KiB apart are seen.
    const double others = std::min({float_bits, bytes_bits, te.estimated_bits_});
    constexpr uint64_t kPiece = 256 << 10;
    double probe = INFINITY;
    if (zstd_estimate(data, nbytes, kPiece, kZstdRepeatsOnly) < 0.98 * 8.0 * static_cast<double>(nbytes))
      probe = zstd_estimate(data, nbytes, kPiece, 1) + 200.0;
    if (probe < 1.03 * others) {
      const uint64_t first = std::min<uint64_t>(nbytes, (uint64_t{1} << kZstdChunkLog2) * unit);
      std::vector<uint8_t> trial(ZSTD_compressBound(first));
      // Where the first chunk stands for the rest, a higher level (--best) decides as the default
      // would: its trial could pass the margin where the default's does not, and then its later
      // chunks came out larger than the entropy coder's (an 8 MiB tensor 3.3% larger). Its chunks,
      // each no larger than at the default level, then keep the tensor no larger.
      const int trial_level = first == nbytes ? zstd_level : std::min(zstd_level, EncodeOptions{}.zstd_level);
      const size_t r = zstd_compress(trial.data(), trial.size(), data, first, trial_level);
      if (!ZSTD_isError(r)) {
        zstd_bits = 8.0 * static_cast<double>(r) * static_cast<double>(nbytes) / static_cast<double>(first) + 200.0;
        if (first == nbytes) {
          trial.resize(r);
          te.zstd_single_ = std::move(trial);
        } else {
          zstd_margin = 0.9;
        }
      }
    }
  }

  double best = te.estimated_bits_;
  if (!(zstd_bits < zstd_margin * std::min({float_bits, bytes_bits, te.estimated_bits_}))) te.zstd_single_.clear();
  if (float_bits < best) { best = float_bits; c.codec = Codec::kFloat; }
  if (bytes_bits < best) { best = bytes_bits; c.codec = Codec::kBytes; }
  // zstd's sample estimate is rough and it decodes slower: it must win clearly.
  if (zstd_bits < zstd_margin * best) { best = zstd_bits; c.codec = Codec::kZstd; }
  te.estimated_bits_ = best;

  BitWriter bw;
  switch (c.codec) {
    case Codec::kFloat: {
      c.lanes_log2 = static_cast<uint8_t>(lanes_log2);
      write_float_model(st.fm, bw);
      st.se_enc = make_encoder(st.fm.se);
      st.m_flat = make_encoder(st.fm.uniform_mant());
      for (const auto& t : st.fm.mant) {
        const auto e = make_encoder(t);
        st.m_flat.insert(st.m_flat.end(), e.begin(), e.end());
      }
      st.m_base.resize(st.fm.ctx.size());
      for (size_t s = 0; s < st.fm.ctx.size(); ++s) st.m_base[s] = st.fm.ctx[s] * (1u << st.fm.hi_bits);
      st.pext = cpu_has_avx512_vbmi();
      // The SIMD encoder's se entry packs freq, cum and the mantissa context (SimdEncTables).
      // Large tensors of weights of mixed scales can have more than 127 contexts (222 in a
      // 32 Mi-weight BF16 tensor drawn from a whole model's weights): the SIMD coder takes up to
      // 255 (context 0 is the uniform table).
      st.simd = st.pext && (info.bits == 16 || info.bits == 32) && lanes_log2 >= 3 && st.fm.se.precision <= 12 &&
                st.fm.mant.size() <= 255;
      if (st.simd) {
        st.se_pairs.resize(st.se_enc.size());
        for (size_t s = 0; s < st.se_enc.size(); ++s) {
          const EncSymbol& e = st.se_enc[s];
          const uint32_t fcx = e.freq == 0 ? 0 : (e.freq - 1u) | (uint32_t{e.cum} << 12) | (uint32_t{st.fm.ctx[s]} << 24);
          st.se_pairs[s] = fcx | simd_rcp(e.freq) << 32;
        }
        st.m_pairs.resize(st.m_flat.size());
        for (size_t s = 0; s < st.m_flat.size(); ++s) {
          const EncSymbol& e = st.m_flat[s];
          st.m_pairs[s] = (e.freq | (uint32_t{e.cum} << 16)) | simd_rcp(e.freq) << 32;
        }
      }
      break;
    }
    case Codec::kBytes:
      c.lanes_log2 = static_cast<uint8_t>(lanes_log2);
      write_bytes_model(st.bm, bw);
      for (const auto& t : st.bm.planes) {
        st.plane_enc.push_back(make_encoder(t));
        st.plane_prec.push_back(t.precision);
      }
      break;
    case Codec::kZstd:
      c.chunk_log2 = kZstdChunkLog2;
      te.zstd_level_ = zstd_level;
      break;
    case Codec::kStore:
      c.chunk_log2 = kZstdChunkLog2;
      break;
  }
  te.model_ = std::move(bw.buf());
  c.model_size = static_cast<uint32_t>(te.model_.size());
  return te;
}

TensorEncoder::CodedChunk TensorEncoder::encode_chunk(size_t i, ByteBuffer* out) const {
  const TensorCoding& c = coding_;
  const uint8_t* src = data_ + c.chunk_out_offset(i);
  const uint64_t size = c.chunk_out_size(i);
  const uint32_t unit = c.unit_bytes();
  const uint32_t lanes = 1u << c.lanes_log2;
  out->shrink(0);
  switch (c.codec) {
    case Codec::kFloat:
      switch (unit) {
        case 1: encode_float_chunk<uint8_t>(*state_, src, size, lanes, out); break;
        case 2: encode_float_chunk<uint16_t>(*state_, src, size / 2, lanes, out); break;
        case 4: encode_float_chunk<uint32_t>(*state_, src, size / 4, lanes, out); break;
        case 8: encode_float_chunk<uint64_t>(*state_, src, size / 8, lanes, out); break;
        default: break;
      }
      break;
    case Codec::kBytes:
      encode_bytes_chunk(*state_, src, size / unit, unit, lanes, out);
      break;
    case Codec::kZstd: {
      if (!zstd_single_.empty()) {
        out->assign(zstd_single_.data(), zstd_single_.size());
        break;
      }
      const size_t cap = ZSTD_compressBound(size);
      const size_t r = zstd_compress(out->reset(cap), cap, src, size, zstd_level_);
      out->shrink(ZSTD_isError(r) ? cap : r);  // an error leaves it too large: stored below
      break;
    }
    case Codec::kStore:
      break;
  }
  ChunkMode mode = ChunkMode::kCoded;
  if (c.codec == Codec::kStore || out->size() >= size) {
    out->assign(src, size);
    mode = ChunkMode::kStored;
  }
  return {mode, static_cast<uint32_t>(out->size()), xxh3_32(out->data(), out->size())};
}

void set_lanes_by_size_only_for_testing(bool on) { lanes_by_size_only.store(on, std::memory_order_relaxed); }

void set_split_count_for_testing(uint64_t elements) {
  split_count_elements.store(elements ? elements : kSplitCount, std::memory_order_relaxed);
}

void set_key_slab_for_testing(uint64_t elements) {
  key_slab_elements.store(elements ? elements : uint64_t{1} << 31, std::memory_order_relaxed);
}

uint64_t TensorEncoder::finish(const std::vector<CodedChunk>& coded) {
  uint64_t offset = model_.size();
  coding_.chunks.resize(coded.size());
  for (size_t i = 0; i < coded.size(); ++i) {
    ChunkRef& ref = coding_.chunks[i];
    ref.offset = offset;
    ref.size = coded[i].size;
    ref.checksum = coded[i].checksum;
    ref.mode = coded[i].mode;
    offset += coded[i].size;
  }
  return offset;
}

}  // namespace bigsmall::detail

namespace bigsmall {

Result<EncodedTensor> encode_tensor(DType dtype, const uint8_t* data, uint64_t nbytes, const EncodeOptions& opts) {
  return detail::guarded(std::string(), [&]() -> Result<EncodedTensor> {
    if (!dtype_valid(dtype)) return Status(Error::kUnknownDtype, "unknown dtype");
    if (nbytes % dtype_unit_bytes(dtype) != 0)
      return Status(Error::kInvalidArgument, "tensor size is not a whole number of elements");
    if (nbytes > 0 && data == nullptr) return Status(Error::kInvalidArgument, "null data");
    BIGSMALL_RETURN_IF_ERROR(detail::check_zstd_level(opts.zstd_level));
    detail::ThreadPool pool(detail::threads_for(opts.threads, 1 + nbytes / detail::kEncodeBytesPerThread, nbytes,
                                                detail::kEncodeBytesPerThread));
    auto te = detail::TensorEncoder::plan(dtype, data, nbytes, opts, &pool);
    const size_t n = te.chunk_count();
    std::vector<detail::ByteBuffer> chunks(n);
    std::vector<detail::TensorEncoder::CodedChunk> coded(n);
    pool.parallel_for(n, [&](size_t i) { coded[i] = te.encode_chunk(i, &chunks[i]); });
    EncodedTensor out;
    out.payload.reserve(te.finish(coded));
    out.payload.assign(te.model_blob().begin(), te.model_blob().end());
    for (const auto& c : chunks) out.payload.insert(out.payload.end(), c.data(), c.data() + c.size());
    out.coding = te.coding();
    return out;
  });
}

}  // namespace bigsmall
