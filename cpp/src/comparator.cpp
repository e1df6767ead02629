#include "postsvd/comparator.h"

#include "postsvd/error.h"

namespace postsvd {

Comparator::Comparator(const std::string& base_folder, const std::string& post_folder, const BackendOptions& backend,
                       Precision precision, const std::string& factor_cache)
    : precision_(precision),
      base_(base_folder),
      post_(post_folder),
      arch_base_(detect_architecture(base_)),
      arch_post_(detect_architecture(post_)) {
  check_same_architecture(base_, arch_base_, post_, arch_post_);
  backend_ = make_backend(backend);
  if (!factor_cache.empty()) cache_ = std::make_unique<FactorCache>(factor_cache);
}

std::vector<PairMeasures> Comparator::compare(const std::vector<int64_t>& indices, bool full_matrices,
                                              int64_t leading_k) {
  const auto count = static_cast<int64_t>(arch_base_.matrices.size());
  std::vector<PairInput> pairs;
  pairs.reserve(indices.size());
  for (int64_t index : indices) {
    POSTSVD_CHECK(index >= 0 && index < count, InvalidArgument,
                  "indices: expected matrix indices in [0, " << count << "), got " << index);
    const auto i = static_cast<std::size_t>(index);
    pairs.push_back({view_of(base_, arch_base_.matrices[i]), view_of(post_, arch_post_.matrices[i])});
  }
  MeasureOptions options;
  options.precision = precision_;
  options.full_matrices = full_matrices;
  options.leading_k = leading_k;
  if (!cache_) return backend_->compare(pairs, options);
  CacheCounts counts;
  std::vector<PairMeasures> result = compare_cached(*backend_, *cache_, pairs, options, &counts);
  counts_.computed += counts.computed;
  counts_.loaded += counts.loaded;
  return result;
}

}  // namespace postsvd
