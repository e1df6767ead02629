// Helpers shared by the tests that drive a backend (CPU and CUDA): one call
// for decompose_f32 / decompose_f64, the Precision of a type, a CPU backend.
#pragma once

#include <memory>
#include <type_traits>

#include "postsvd/backend.h"
#include "postsvd/types.h"

namespace postsvd_test {

/// backend.decompose_f32 or decompose_f64, by T.
template <class T>
postsvd::Decomposition<T> decompose(postsvd::Backend& backend, const postsvd::TensorView& view) {
  if constexpr (std::is_same<T, float>::value) {
    return backend.decompose_f32(view);
  } else {
    return backend.decompose_f64(view);
  }
}

/// The working precision of T (float or double).
template <class T>
constexpr postsvd::Precision precision_of() {
  return std::is_same<T, float>::value ? postsvd::Precision::F32 : postsvd::Precision::F64;
}

/// The CPU backend with `threads` BLAS threads (0 = every core).
inline std::unique_ptr<postsvd::Backend> cpu_backend(int threads = 0) {
  postsvd::BackendOptions options;
  options.device = postsvd::Device::CPU;
  options.num_threads = threads;
  return postsvd::make_backend(options);
}

}  // namespace postsvd_test
