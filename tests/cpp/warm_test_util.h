// Close pairs with a known answer for the warm-start tests (CPU and CUDA): a
// base U0 diag(s) V0^T and a post U0 R_u diag(s') (V0 R_v)^T whose rotations R
// are near the identity, like a post-trained matrix and its base.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "linalg_test_util.h"

namespace postsvd_test {

/// Q of (I + epsilon G), G Gaussian [k, k], by modified Gram-Schmidt: a rotation near I.
inline Matrix<double> near_identity(int64_t k, double epsilon, std::mt19937_64& rng) {
  Matrix<double> a = gaussian(k, k, rng);
  for (int64_t i = 0; i < a.size(); ++i) a.data()[i] *= epsilon;
  for (int64_t i = 0; i < k; ++i) a(i, i) += 1;
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t p = 0; p < j; ++p) {
      double dot = 0;
      for (int64_t i = 0; i < k; ++i) dot += a(i, p) * a(i, j);
      for (int64_t i = 0; i < k; ++i) a(i, j) -= dot * a(i, p);
    }
    double norm = 0;
    for (int64_t i = 0; i < k; ++i) norm += a(i, j) * a(i, j);
    norm = std::sqrt(norm);
    for (int64_t i = 0; i < k; ++i) a(i, j) /= norm;
  }
  return a;
}

/// A base and a post-trained-like post of shape [m, n] with known spectra.
struct ClosePair {
  Matrix<double> base, post;
  std::vector<double> s_base, s_post;
};

/// post = U0 R_u diag(s_post) (V0 R_v)^T with R near I (epsilon) and s_post = s_base * scaling.
inline ClosePair close_pair(int64_t m, int64_t n, double epsilon, uint64_t seed, int64_t zero_tail = 0) {
  std::mt19937_64 rng(seed);
  const int64_t k = std::min(m, n);
  ClosePair pair;
  const Matrix<double> u0 = random_orthonormal(m, k, rng), v0 = random_orthonormal(n, k, rng);
  pair.s_base = decaying_spectrum(k, 10.0, std::pow(1e-2, 1.0 / static_cast<double>(k)));  // sigma_k ~ 1e-2 sigma_1
  pair.s_post = pair.s_base;
  std::uniform_real_distribution<double> scaling(0.9, 1.1);
  for (double& s : pair.s_post) s *= scaling(rng);
  std::sort(pair.s_post.rbegin(), pair.s_post.rend());
  for (int64_t j = k - zero_tail; j < k; ++j) pair.s_post[static_cast<std::size_t>(j)] = 0;
  pair.base = compose(u0, pair.s_base, v0);
  pair.post = compose(multiply(u0, false, near_identity(k, epsilon, rng), false), pair.s_post,
                      multiply(v0, false, near_identity(k, epsilon, rng), false));
  return pair;
}

}  // namespace postsvd_test
