// The factor cache (content-addressed files of U, S, V) and compare_cached.
#include "postsvd/cache.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <utility>

#include "postsvd/error.h"
#include "postsvd/limits.h"
#include "postsvd/quantization.h"
#include "postsvd/warnings.h"

namespace postsvd {

namespace fs = std::filesystem;

namespace {

// This machine's name, reduced to [A-Za-z0-9.-]: two nodes may run processes with the same pid.
std::string host_tag() {
  char name[256] = {0};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "host";
  std::string tag;
  for (const char* c = name; *c != '\0' && tag.size() < 64; ++c) {
    const bool plain = (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                       *c == '.' || *c == '-';
    tag += plain ? *c : '_';
  }
  return tag.empty() ? std::string("host") : tag;
}

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Two independent 64-bit lanes over the bytes (8 at a time, then the tail).
std::pair<uint64_t, uint64_t> hash_bytes(const unsigned char* p, uint64_t n, uint64_t seed) {
  uint64_t h1 = 0x243f6a8885a308d3ULL ^ seed, h2 = 0x13198a2e03707344ULL ^ mix64(seed);
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h1 = (h1 ^ w) * 0x9e3779b97f4a7c15ULL;
    h1 = (h1 << 31) | (h1 >> 33);
    h2 = (h2 + w) * 0xbf58476d1ce4e5b9ULL;
    h2 ^= h2 >> 29;
  }
  uint64_t last = 0;
  for (uint64_t j = 0; i + j < n; ++j) last |= static_cast<uint64_t>(p[i + j]) << (8 * j);
  h1 = mix64(h1 ^ last ^ n);
  h2 = mix64(h2 + last + (n << 1));
  return {h1, h2};
}

// Format 2 adds the payload checksum; entries of format 1 (no checksum) are recomputed.
constexpr char kFactorMagic[8] = {'P', 'S', 'V', 'D', 'F', 'A', 'C', '2'};
constexpr char kFactorMagicPrefix[7] = {'P', 'S', 'V', 'D', 'F', 'A', 'C'};
constexpr uint64_t kFactorHeaderBytes = 8 + 3 * sizeof(int64_t) + sizeof(int32_t);
constexpr uint64_t kFactorChecksumBytes = 2 * sizeof(uint64_t);

// Checksum of an entry: its dims and element size, then U, S and V, chained.
template <class T>
std::pair<uint64_t, uint64_t> payload_checksum(const Decomposition<T>& d) {
  std::pair<uint64_t, uint64_t> h{mix64(static_cast<uint64_t>(d.U.rows()) + 0x51),
                                  mix64(static_cast<uint64_t>(d.V.rows()) ^ (sizeof(T) << 40))};
  const std::pair<const void*, uint64_t> parts[3] = {{d.U.data(), d.U.size() * sizeof(T)},
                                                     {d.S.data(), d.S.size() * sizeof(T)},
                                                     {d.V.data(), d.V.size() * sizeof(T)}};
  for (const auto& part : parts) {
    h = hash_bytes(static_cast<const unsigned char*>(part.first), part.second, mix64(h.first) ^ h.second);
  }
  return h;
}

// Bytes of an entry with these dims, or 0 when they are out of range or overflow.
uint64_t factor_file_bytes(int64_t rows, int64_t cols, int64_t k, uint64_t element) {
  if (rows < 0 || cols < 0 || rows > limits::kMaxFactorDim || cols > limits::kMaxFactorDim ||
      k != std::min(rows, cols)) {
    return 0;
  }
  uint64_t u = 0, v = 0, total = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(rows), static_cast<uint64_t>(k), &u) ||
      __builtin_mul_overflow(static_cast<uint64_t>(cols), static_cast<uint64_t>(k), &v) ||
      __builtin_add_overflow(u, v, &total) || __builtin_add_overflow(total, static_cast<uint64_t>(k), &total) ||
      __builtin_mul_overflow(total, element, &total) ||
      __builtin_add_overflow(total, kFactorHeaderBytes + kFactorChecksumBytes, &total)) {
    return 0;
  }
  return total;
}

template <class T>
constexpr Precision precision_of() {
  return std::is_same<T, float>::value ? Precision::F32 : Precision::F64;
}

template <class T>
Decomposition<T> decompose_now(Backend& backend, const TensorView& view) {
  if constexpr (std::is_same<T, float>::value) {
    return backend.decompose_f32(view);
  } else {
    return backend.decompose_f64(view);
  }
}

// A cached decomposition of `view`'s shape under `key`, or false.
template <class T>
bool load_for(const FactorCache& cache, const std::string& key, const TensorView& view, Decomposition<T>& out) {
  return cache.load(key, out) && out.U.rows() == view.rows && out.V.rows() == view.cols;
}

}  // namespace

FactorCache::FactorCache(std::string folder) : folder_(std::move(folder)) {
  std::error_code ec;
  fs::create_directories(folder_, ec);
  POSTSVD_CHECK(fs::is_directory(folder_, ec), InvalidArgument,
                "factor cache: cannot create the folder '" << folder_ << "'" << (ec ? ": " + ec.message() : ""));
}

std::string FactorCache::key(const TensorView& view, Precision precision) {
  const auto span = view.byte_span();
  const unsigned char* first = static_cast<const unsigned char*>(view.data) + span.first;
  uint64_t seed = mix64(static_cast<uint64_t>(view.rows) * 0x100000001b3ULL ^
                        mix64(static_cast<uint64_t>(view.cols)) ^ mix64(static_cast<uint64_t>(view.row_stride) + 7) ^
                        mix64(static_cast<uint64_t>(view.col_stride) + 13) ^
                        mix64(static_cast<uint64_t>(view.dtype) + 101) ^
                        mix64(static_cast<uint64_t>(span.first) + 1009));
  // Grouped views (per-head parts) only: keys of ungrouped views stay as they were.
  if (view.row_group > 0 || view.col_group > 0) {
    seed ^= mix64(static_cast<uint64_t>(view.row_group) + 10007) ^ mix64(static_cast<uint64_t>(view.row_group_skip) + 100003) ^
            mix64(static_cast<uint64_t>(view.col_group) + 1000003) ^ mix64(static_cast<uint64_t>(view.col_group_skip) + 10000019);
  }
  auto h = hash_bytes(first, static_cast<uint64_t>(span.second - span.first), seed);
  if (view.quantized()) {
    // The same FP8 bytes with other scales are another matrix: the scales and their geometry join the key.
    const ViewScales& s = view.scales;
    const auto scale_span = scale_byte_span(view);
    const uint64_t scale_seed = mix64(h.first ^ mix64(static_cast<uint64_t>(s.scheme) + 31) ^
                                      mix64(static_cast<uint64_t>(s.dtype) + 37) ^
                                      mix64(static_cast<uint64_t>(s.block_rows) * 41 + static_cast<uint64_t>(s.block_cols)) ^
                                      mix64(static_cast<uint64_t>(s.first) * 43 + static_cast<uint64_t>(s.stored_cols)) ^
                                      mix64(static_cast<uint64_t>(s.grid_cols) + 47) ^
                                      mix64(static_cast<uint64_t>(scale_span.first) + 53));
    const auto hs = hash_bytes(static_cast<const unsigned char*>(s.data) + scale_span.first,
                               static_cast<uint64_t>(scale_span.second - scale_span.first), scale_seed);
    h = {mix64(h.first ^ hs.first), mix64(h.second + hs.second)};
  }
  if (view.delta) {
    // An adapter's W + ΔW is another matrix than W: its factors, scale and magnitude join the key.
    const LowRankDelta& d = *view.delta;
    uint64_t scale_bits = 0;
    std::memcpy(&scale_bits, &d.scale, sizeof(scale_bits));
    uint64_t seed_delta = mix64(h.first ^ mix64(scale_bits + 59) ^ mix64(static_cast<uint64_t>(d.magnitude_per_row) + 61));
    for (const TensorView* part : {&d.left, &d.right, &d.magnitude}) {
      if (part->data == nullptr) continue;
      const auto part_span = part->byte_span();
      seed_delta = mix64(seed_delta ^ mix64(static_cast<uint64_t>(part->rows) * 67 + static_cast<uint64_t>(part->cols)) ^
                         mix64(static_cast<uint64_t>(part->row_stride) * 71 + static_cast<uint64_t>(part->col_stride)) ^
                         mix64(static_cast<uint64_t>(part->dtype) + 73));
      const auto hp = hash_bytes(static_cast<const unsigned char*>(part->data) + part_span.first,
                                 static_cast<uint64_t>(part_span.second - part_span.first), seed_delta);
      h = {mix64(h.first ^ hp.first), mix64(h.second + hp.second)};
      seed_delta = hp.second;
    }
  }
  char text[40];
  std::snprintf(text, sizeof(text), "%016llx%016llx", static_cast<unsigned long long>(h.first),
                static_cast<unsigned long long>(h.second));
  return std::string(text) + (precision == Precision::F32 ? ".f32" : ".f64");
}

template <class T>
bool FactorCache::load(const std::string& key, Decomposition<T>& out) const {
  const fs::path path = fs::path(folder_) / (key + ".svd");
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  // Every check before the allocation: the dims must fit the file, whatever the header claims.
  auto corrupt = [&path](const std::string& why) {
    warn("factor cache: " + path.string() + ": " + why + "; recomputing the decomposition");
    return false;
  };
  in.seekg(0, std::ios::end);
  const auto file_bytes = static_cast<uint64_t>(std::max<std::streamoff>(0, in.tellg()));
  in.seekg(0, std::ios::beg);
  char magic[8];
  int64_t dims[3];
  int32_t element = 0;
  in.read(magic, 8);
  if (!in) return corrupt("shorter than its 8-byte magic");
  if (std::memcmp(magic, kFactorMagicPrefix, sizeof(kFactorMagicPrefix)) == 0 && magic[7] < kFactorMagic[7]) {
    return false;  // an older format (no checksum): recompute and replace, nothing is wrong with it
  }
  if (std::memcmp(magic, kFactorMagic, 8) != 0) return corrupt("not a factor-cache entry (bad magic)");
  in.read(reinterpret_cast<char*>(dims), sizeof(dims));
  in.read(reinterpret_cast<char*>(&element), sizeof(element));
  if (!in) return corrupt("truncated header");
  if (element != static_cast<int32_t>(sizeof(T))) {
    return corrupt("element size " + std::to_string(element) + ", expected " + std::to_string(sizeof(T)));
  }
  const int64_t rows = dims[0], cols = dims[1], k = dims[2];
  const uint64_t expected_bytes = factor_file_bytes(rows, cols, k, sizeof(T));
  if (expected_bytes == 0) {
    return corrupt("impossible dimensions [" + std::to_string(rows) + ", " + std::to_string(cols) + "], k " +
                   std::to_string(k));
  }
  if (expected_bytes != file_bytes) {
    return corrupt("dimensions [" + std::to_string(rows) + ", " + std::to_string(cols) + "] need " +
                   std::to_string(expected_bytes) + " bytes but the file has " + std::to_string(file_bytes));
  }
  Decomposition<T> d;
  d.U = Matrix<T>(rows, k);
  d.S.resize(static_cast<std::size_t>(k));
  d.V = Matrix<T>(cols, k);
  uint64_t stored[2] = {0, 0};
  in.read(reinterpret_cast<char*>(d.U.data()), static_cast<std::streamsize>(d.U.size() * sizeof(T)));
  in.read(reinterpret_cast<char*>(d.S.data()), static_cast<std::streamsize>(d.S.size() * sizeof(T)));
  in.read(reinterpret_cast<char*>(d.V.data()), static_cast<std::streamsize>(d.V.size() * sizeof(T)));
  in.read(reinterpret_cast<char*>(stored), sizeof(stored));
  if (!in) return corrupt("truncated while reading");
  const auto checksum = payload_checksum(d);
  if (checksum.first != stored[0] || checksum.second != stored[1]) return corrupt("checksum mismatch (corrupt data)");
  out = std::move(d);
  return true;
}

template <class T>
void FactorCache::store(const std::string& key, const Decomposition<T>& d) const {
  const fs::path final_path = fs::path(folder_) / (key + ".svd");
  // Unique per host, process and call: threads, processes or nodes (a cache on shared storage) storing the
  // same key never share a temporary file; the rename publishes one complete entry, the last one wins.
  static std::atomic<uint64_t> serial{0};
  const fs::path temp_path = fs::path(folder_) / (key + ".svd.tmp" + host_tag() + "." + std::to_string(::getpid()) +
                                                  "." + std::to_string(serial.fetch_add(1)));
  {
    std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
    POSTSVD_CHECK(out.good(), Error, "factor cache: cannot write " << temp_path.string());
    const int64_t dims[3] = {d.U.rows(), d.V.rows(), d.U.cols()};
    const int32_t element = static_cast<int32_t>(sizeof(T));
    out.write(kFactorMagic, 8);
    out.write(reinterpret_cast<const char*>(dims), sizeof(dims));
    out.write(reinterpret_cast<const char*>(&element), sizeof(element));
    out.write(reinterpret_cast<const char*>(d.U.data()), static_cast<std::streamsize>(d.U.size() * sizeof(T)));
    out.write(reinterpret_cast<const char*>(d.S.data()), static_cast<std::streamsize>(d.S.size() * sizeof(T)));
    out.write(reinterpret_cast<const char*>(d.V.data()), static_cast<std::streamsize>(d.V.size() * sizeof(T)));
    const auto checksum = payload_checksum(d);
    const uint64_t stored[2] = {checksum.first, checksum.second};
    out.write(reinterpret_cast<const char*>(stored), sizeof(stored));
    out.close();
    if (!out.good()) {
      std::error_code ec;
      fs::remove(temp_path, ec);
      POSTSVD_THROW(Error, "factor cache: write failed for " << temp_path.string() << " (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(temp_path, final_path, ec);
  POSTSVD_CHECK(!ec, Error, "factor cache: cannot rename " << temp_path.string() << ": " << ec.message());
}

template <class T>
Decomposition<T> decompose_cached(Backend& backend, FactorCache* cache, const TensorView& view, bool* loaded) {
  if (loaded != nullptr) *loaded = false;
  std::string key;
  if (cache != nullptr) {
    key = FactorCache::key(view, precision_of<T>());
    Decomposition<T> d;
    if (load_for(*cache, key, view, d)) {
      if (loaded != nullptr) *loaded = true;
      return d;
    }
  }
  Decomposition<T> d = decompose_now<T>(backend, view);
  if (cache != nullptr) cache->store(key, d);
  return d;
}

template bool FactorCache::load<float>(const std::string&, Decomposition<float>&) const;
template bool FactorCache::load<double>(const std::string&, Decomposition<double>&) const;
template void FactorCache::store<float>(const std::string&, const Decomposition<float>&) const;
template void FactorCache::store<double>(const std::string&, const Decomposition<double>&) const;
template Decomposition<float> decompose_cached<float>(Backend&, FactorCache*, const TensorView&, bool*);
template Decomposition<double> decompose_cached<double>(Backend&, FactorCache*, const TensorView&, bool*);

template <class T>
Decomposition<T> decompose_warm_now(Backend& backend, const TensorView& view, const Decomposition<T>& start,
                                    int64_t* sweeps) {
  WarmReport report;
  Decomposition<T> d;
  if constexpr (std::is_same<T, float>::value) {
    d = backend.decompose_warm_f32(view, start, &report);
  } else {
    d = backend.decompose_warm_f64(view, start, &report);
  }
  if (sweeps != nullptr) *sweeps = report.sweeps;
  return d;
}

template <class T>
std::pair<Decomposition<T>, Decomposition<T>> decompose_pair_cached(Backend& backend, FactorCache* cache,
                                                                    const TensorView& base, const TensorView& post,
                                                                    bool* loaded_base, bool* loaded_post,
                                                                    const WarmStart& warm) {
  if (warm.sweeps != nullptr) *warm.sweeps = -1;
  std::pair<Decomposition<T>, Decomposition<T>> out;
  bool have_base = false, have_post = false;
  std::string key_base, key_post;
  if (cache != nullptr) {
    key_base = FactorCache::key(base, precision_of<T>());
    key_post = FactorCache::key(post, precision_of<T>());
    have_base = load_for(*cache, key_base, base, out.first);
    have_post = load_for(*cache, key_post, post, out.second);
  }
  if (!have_post && warm.enabled) {
    // The previous checkpoint's factors when cached, else the base's (loaded or computed first).
    Decomposition<T> previous;
    const bool have_previous = cache != nullptr && warm.from.data != nullptr &&
                               load_for(*cache, FactorCache::key(warm.from, precision_of<T>()), post, previous);
    if (!have_base) out.first = decompose_now<T>(backend, base);
    out.second = decompose_warm_now<T>(backend, post, have_previous ? previous : out.first, warm.sweeps);
  } else if (!have_base && !have_post) {
    if constexpr (std::is_same<T, float>::value) {
      out = backend.decompose_pair_f32(base, post);
    } else {
      out = backend.decompose_pair_f64(base, post);
    }
  } else if (!have_base) {
    out.first = decompose_now<T>(backend, base);
  } else if (!have_post) {
    out.second = decompose_now<T>(backend, post);
  }
  if (cache != nullptr) {
    if (!have_base) cache->store(key_base, out.first);
    if (!have_post && key_post != key_base) cache->store(key_post, out.second);
  }
  if (loaded_base != nullptr) *loaded_base = have_base;
  if (loaded_post != nullptr) *loaded_post = have_post;
  return out;
}

template std::pair<Decomposition<float>, Decomposition<float>> decompose_pair_cached<float>(
    Backend&, FactorCache*, const TensorView&, const TensorView&, bool*, bool*, const WarmStart&);
template std::pair<Decomposition<double>, Decomposition<double>> decompose_pair_cached<double>(
    Backend&, FactorCache*, const TensorView&, const TensorView&, bool*, bool*, const WarmStart&);

namespace {

template <class T>
PairMeasures measure_cached(Backend& backend, FactorCache& cache, const PairInput& pair, const MeasureOptions& options,
                            CacheCounts& counts, const TensorView& warm_from) {
  bool loaded_base = false, loaded_post = false;
  int64_t sweeps = -1;
  WarmStart warm;
  warm.enabled = use_warm_start(backend, options.warm_start, pair.post.rows, pair.post.cols, options.precision);
  warm.from = warm_from;
  warm.sweeps = &sweeps;
  const auto both =
      decompose_pair_cached<T>(backend, &cache, pair.base, pair.post, &loaded_base, &loaded_post, warm);
  counts.loaded += int64_t{loaded_base} + int64_t{loaded_post};
  counts.computed += int64_t{!loaded_base} + int64_t{!loaded_post};
  PairMeasures measures = measures_from(both.first, both.second, options);
  measures.warm_sweeps = sweeps;
  return measures;
}

}  // namespace

std::vector<PairMeasures> compare_cached(Backend& backend, FactorCache& cache, const std::vector<PairInput>& pairs,
                                         const MeasureOptions& options, CacheCounts* counts,
                                         const std::vector<TensorView>& warm_from) {
  check_compare_arguments(pairs, options);
  POSTSVD_CHECK(warm_from.empty() || warm_from.size() == pairs.size(), InvalidArgument,
                "compare_cached: warm_from: expected none or one view per pair (" << pairs.size() << "), got "
                                                                                  << warm_from.size());
  CacheCounts total;
  std::vector<PairMeasures> out;
  out.reserve(pairs.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const TensorView from = warm_from.empty() ? TensorView{} : warm_from[i];
    out.push_back(options.precision == Precision::F64
                      ? measure_cached<double>(backend, cache, pairs[i], options, total, from)
                      : measure_cached<float>(backend, cache, pairs[i], options, total, from));
  }
  if (counts != nullptr) *counts = total;
  return out;
}

}  // namespace postsvd
