// Two checkpoints of one architecture and the backend that compares their
// projection pairs: the C++ front of the data path checkpoints -> matrix pairs
// -> decompositions -> measures. Owns the memory maps; pairs are decomposed in
// the batches the caller asks for (a layer at a time keeps memory bounded).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "postsvd/adapter.h"
#include "postsvd/architecture.h"
#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/measures.h"

namespace postsvd {

class Comparator {
 public:
  /// Opens both folders, maps their architectures and checks that they match
  /// (BadCheckpoint naming the first difference), then creates the backend.
  /// `factor_cache` = "" for none; otherwise decompositions go through it. A PEFT
  /// adapter folder as the post model applies to the base (adapter.h, `adapter`).
  Comparator(const std::string& base_folder, const std::string& post_folder, const BackendOptions& backend,
             Precision precision = Precision::F32, const std::string& factor_cache = "",
             const AdapterOptions& adapter = {});

  const Checkpoint& base() const { return base_; }
  const Checkpoint& post() const { return post_; }
  /// The base model's architecture (the post model's matches it).
  const Architecture& architecture() const { return arch_base_; }
  Precision precision() const { return precision_; }
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }

  /// Measures of the pairs at `indices` (into architecture().matrices), in that
  /// order. `full_matrices` adds sim_U, sim_V, Q1, Q2 and I_orth of the leading
  /// `leading_k` vectors (0 = all). InvalidArgument for an index out of range.
  std::vector<PairMeasures> compare(const std::vector<int64_t>& indices, bool full_matrices = false,
                                    int64_t leading_k = 0);

  /// When post matrices start from the base's factors (Backend::decompose_warm_*, cold when a pair
  /// is not close); Auto by default. With a factor cache, set_warm_from(folder) makes them start from
  /// that checkpoint's cached factors instead (the previous checkpoint of a training run).
  void set_warm_start(WarmStartMode mode) { warm_start_ = mode; }
  WarmStartMode warm_start() const { return warm_start_; }
  /// The intruder count of every pair compared from now on (k, epsilon, side; checked here).
  void set_intruder_options(const IntruderOptions& options);
  const IntruderOptions& intruder_options() const { return intruders_; }

  /// "" = from the base. The folder must hold the same architecture (BadCheckpoint otherwise);
  /// an adapter folder applies to the base, as the post model does.
  void set_warm_from(const std::string& folder);

  /// The factor cache folder ("" = none) and what it answered so far.
  std::string factor_cache() const { return cache_ ? cache_->folder() : std::string(); }
  const CacheCounts& cache_counts() const { return counts_; }

 private:
  Precision precision_;
  AdapterOptions adapter_;
  Checkpoint base_;
  Checkpoint post_;
  Architecture arch_base_;
  Architecture arch_post_;
  std::unique_ptr<FactorCache> cache_;
  WarmStartMode warm_start_ = WarmStartMode::Auto;
  IntruderOptions intruders_;
  std::unique_ptr<Checkpoint> warm_from_;
  Architecture arch_warm_from_;
  CacheCounts counts_;
  std::unique_ptr<Backend> backend_;
};

}  // namespace postsvd
