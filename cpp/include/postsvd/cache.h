// Saved decompositions shared by comparisons and constructions: the factor
// cache, and a comparison that takes its decompositions through it. This is
// the one data path's reuse point: `postsvd compare --cache DIR` followed by
// `postsvd construct ... --cache DIR` decomposes every matrix once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/backend.h"
#include "postsvd/measures.h"
#include "postsvd/types.h"

namespace postsvd {

/// Saved decompositions, content-addressed: the key is a hash of the matrix's
/// stored bytes, its shape and layout, and the precision, so a decomposition
/// is reused for the same matrix whatever folder it came from. One file per
/// matrix: <key>.svd (little-endian: magic "PSVDFAC2", int64 rows, cols, k,
/// int32 element size, then U [rows, k], S [k], V [cols, k], column-major,
/// then a 128-bit checksum of dims and payload). load() checks the dims
/// against the file's size before allocating and the checksum after reading;
/// a corrupt entry is reported through postsvd::warn and recomputed, never used.
/// Entries of format 1 (no checksum) are recomputed and replaced.
class FactorCache {
 public:
  explicit FactorCache(std::string folder);  // creates the folder if needed
  const std::string& folder() const { return folder_; }
  static std::string key(const TensorView& view, Precision precision);
  template <class T>
  bool load(const std::string& key, Decomposition<T>& out) const;
  template <class T>
  void store(const std::string& key, const Decomposition<T>& d) const;

 private:
  std::string folder_;
};

/// backend.decompose_*, through the cache when given (nullptr = none).
/// `loaded` (when not null) is set to whether the cache answered.
template <class T>
Decomposition<T> decompose_cached(Backend& backend, FactorCache* cache, const TensorView& view, bool* loaded = nullptr);

/// How a cached pair decomposes a missing post matrix.
struct WarmStart {
  /// Start the post from the base's factors (backend.decompose_warm_*; cold when not close).
  bool enabled = false;
  /// When set (data != nullptr) and its factors are in the cache, the post starts from them
  /// instead (the previous checkpoint of a training run).
  TensorView from;
  /// Receives the post's Jacobi sweeps (-1 = cold or loaded), when not null.
  int64_t* sweeps = nullptr;
};

/// A pair's two decompositions through the cache (nullptr = none): loaded where
/// there. A missing post starts from the base's factors with `warm.enabled`
/// (after the base); otherwise, where both are missing, they are computed
/// together by backend.decompose_pair_* (side by side on a two-core CPU).
/// `loaded_base` / `loaded_post` (when not null) say which the cache answered.
template <class T>
std::pair<Decomposition<T>, Decomposition<T>> decompose_pair_cached(Backend& backend, FactorCache* cache,
                                                                    const TensorView& base, const TensorView& post,
                                                                    bool* loaded_base = nullptr,
                                                                    bool* loaded_post = nullptr,
                                                                    const WarmStart& warm = WarmStart{});

/// How many decompositions a cached call computed and how many it loaded.
struct CacheCounts {
  int64_t computed = 0;
  int64_t loaded = 0;
};

/// Backend::compare through the cache: each pair's two decompositions are
/// loaded from `cache` or computed by `backend` (and stored; a missing post
/// warm-started from the base, or from `warm_from[i]` when given and cached,
/// with options.warm_start), then measured with measures_from. Same results as backend.compare within the backend's
/// accuracy; slower on a cold cache (full factors leave the backend and go to
/// disk), and it skips every decomposition already there. `counts` (when not
/// null) receives the totals of this call.
std::vector<PairMeasures> compare_cached(Backend& backend, FactorCache& cache, const std::vector<PairInput>& pairs,
                                         const MeasureOptions& options, CacheCounts* counts = nullptr,
                                         const std::vector<TensorView>& warm_from = {});

}  // namespace postsvd
