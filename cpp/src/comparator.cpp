#include "postsvd/comparator.h"

#include <cmath>

#include "postsvd/error.h"
#include "postsvd/warnings.h"

namespace postsvd {

Comparator::Comparator(const std::string& base_folder, const std::string& post_folder, const BackendOptions& backend,
                       Precision precision, const std::string& factor_cache, const AdapterOptions& adapter)
    : precision_(precision),
      adapter_(adapter),
      base_(base_folder),
      post_(open_post_model(post_folder, base_folder, adapter)),
      arch_base_(detect_architecture(base_)),
      arch_post_(detect_architecture(post_)) {
  check_same_architecture(base_, arch_base_, post_, arch_post_);
  for (const Architecture* arch : {&arch_base_, &arch_post_}) {
    for (const std::string& message : arch->warnings) warn(message);
  }
  backend_ = make_backend(backend);
  if (!factor_cache.empty()) cache_ = std::make_unique<FactorCache>(factor_cache);
}

void Comparator::set_intruder_options(const IntruderOptions& options) {
  check_intruder_options(options);
  intruders_ = options;
}

void Comparator::set_warm_from(const std::string& folder) {
  if (folder.empty()) {
    warm_from_.reset();
    arch_warm_from_ = Architecture{};
    return;
  }
  auto checkpoint = std::make_unique<Checkpoint>(open_post_model(folder, base_.folder(), adapter_));
  Architecture arch = detect_architecture(*checkpoint);
  check_same_architecture(base_, arch_base_, *checkpoint, arch);
  warm_from_ = std::move(checkpoint);
  arch_warm_from_ = std::move(arch);
}

std::vector<PairMeasures> Comparator::compare(const std::vector<int64_t>& indices, bool full_matrices,
                                              int64_t leading_k) {
  const auto count = static_cast<int64_t>(arch_base_.matrices.size());
  std::vector<PairInput> pairs;
  std::vector<TensorView> warm_from;
  pairs.reserve(indices.size());
  for (int64_t index : indices) {
    POSTSVD_CHECK(index >= 0 && index < count, InvalidArgument,
                  "indices: expected matrix indices in [0, " << count << "), got " << index);
    const auto i = static_cast<std::size_t>(index);
    pairs.push_back({view_of(base_, arch_base_.matrices[i]), view_of(post_, arch_post_.matrices[i])});
    if (warm_from_) warm_from.push_back(view_of(*warm_from_, arch_warm_from_.matrices[i]));
  }
  MeasureOptions options;
  options.precision = precision_;
  options.full_matrices = full_matrices;
  options.leading_k = leading_k;
  options.warm_start = warm_start_;
  options.intruders = intruders_;
  std::vector<PairMeasures> result;
  if (!cache_) {
    result = backend_->compare(pairs, options);
  } else {
    CacheCounts counts;
    result = compare_cached(*backend_, *cache_, pairs, options, &counts, warm_from);
    counts_.computed += counts.computed;
    counts_.loaded += counts.loaded;
  }
  // Every backend: a singular value past the working precision (finite weights
  // of huge norm) is an error naming the tensor, never an inf in the results.
  for (std::size_t i = 0; i < result.size(); ++i) {
    for (const auto* sigma : {&result[i].sigma_base, &result[i].sigma_post}) {
      for (double value : *sigma) {
        POSTSVD_CHECK(std::isfinite(value), InvalidArgument,
                      tensor_label(sigma == &result[i].sigma_base ? pairs[i].base : pairs[i].post)
                                 << ": a singular value overflowed the working precision ("
                                 << precision_name(precision_) << "): the weights' norm is too large"
                                 << (precision_ == Precision::F32 ? "; compare in float64 (dtype='float64')" : ""));
      }
    }
  }
  return result;
}

}  // namespace postsvd
