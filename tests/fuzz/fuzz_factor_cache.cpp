// libFuzzer: one factor-cache entry, loaded in float32 and float64. A load
// either returns a consistent decomposition or false (recompute); it never
// allocates what the file cannot hold.
#include <cstdlib>

#include "fuzz_util.h"
#include "postsvd/cache.h"
#include "postsvd/error.h"

template <class T>
void load_and_check(const postsvd::FactorCache& cache) {
  postsvd::Decomposition<T> d;
  if (!cache.load("entry", d)) return;
  const auto k = static_cast<int64_t>(d.S.size());
  if (d.U.cols() != k || d.V.cols() != k || k != std::min(d.U.rows(), d.V.rows())) std::abort();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static const postsvd::FactorCache cache((postsvd_fuzz::scratch() / "cache").string());
  postsvd_fuzz::write_file(std::filesystem::path(cache.folder()) / "entry.svd", data, size);
  try {
    load_and_check<float>(cache);
    load_and_check<double>(cache);
  } catch (const postsvd::Error&) {
  }
  return 0;
}
