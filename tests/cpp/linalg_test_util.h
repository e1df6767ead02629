// Helpers shared by the SVD and measures tests: random orthogonal factors by
// Householder QR in double, matrices with a known spectrum, and stored copies
// in the layouts checkpoints use (nn.Linear [out, in], GPT-2 Conv1D [in, out]).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "postsvd/types.h"

namespace postsvd_test {

using postsvd::Matrix;

/// Per-precision tolerances of the CPU backend (relative to the largest sigma).
template <class T>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double orthogonality = 2e-5;   // max |U^T U - I|
  static constexpr double reconstruction = 2e-5;  // ||W - U S V^T||_F / ||W||_F
  static constexpr double sigma = 2e-5;           // |sigma_j - s_j| / s_0
  static constexpr double measure = 5e-5;         // scaling, NF, I_orth entries
};
template <>
struct Tolerance<double> {
  static constexpr double orthogonality = 1e-12;
  static constexpr double reconstruction = 1e-12;
  static constexpr double sigma = 1e-12;
  static constexpr double measure = 1e-11;
};

inline Matrix<double> gaussian(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  Matrix<double> m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

/// [rows, cols] with orthonormal columns (rows >= cols): the Q of a Householder
/// QR of a Gaussian matrix, columns signed so that R's diagonal is positive (Haar).
inline Matrix<double> random_orthonormal(int64_t rows, int64_t cols, std::mt19937_64& rng) {
  Matrix<double> a = gaussian(rows, cols, rng);
  std::vector<std::vector<double>> reflectors;  // v_j, acting on rows j..rows-1
  std::vector<double> r_diagonal;
  for (int64_t j = 0; j < cols; ++j) {
    double norm = 0;
    for (int64_t i = j; i < rows; ++i) norm += a(i, j) * a(i, j);
    norm = std::sqrt(norm);
    const double alpha = a(j, j) > 0 ? -norm : norm;  // H a_j = alpha e_j
    std::vector<double> v(static_cast<std::size_t>(rows - j));
    for (int64_t i = j; i < rows; ++i) v[static_cast<std::size_t>(i - j)] = a(i, j);
    v[0] -= alpha;
    double v_norm2 = 0;
    for (double x : v) v_norm2 += x * x;
    if (v_norm2 > 0) {
      for (int64_t c = j; c < cols; ++c) {
        double dot = 0;
        for (int64_t i = j; i < rows; ++i) dot += v[static_cast<std::size_t>(i - j)] * a(i, c);
        const double f = 2 * dot / v_norm2;
        for (int64_t i = j; i < rows; ++i) a(i, c) -= f * v[static_cast<std::size_t>(i - j)];
      }
    }
    reflectors.push_back(std::move(v));
    r_diagonal.push_back(a(j, j));
  }
  // Q = H_0 H_1 ... H_{cols-1} [I; 0], applied from the last reflector.
  Matrix<double> q(rows, cols);
  for (int64_t j = 0; j < cols; ++j) q(j, j) = 1;
  for (int64_t j = cols - 1; j >= 0; --j) {
    const std::vector<double>& v = reflectors[static_cast<std::size_t>(j)];
    double v_norm2 = 0;
    for (double x : v) v_norm2 += x * x;
    if (v_norm2 == 0) continue;
    for (int64_t c = 0; c < cols; ++c) {
      double dot = 0;
      for (int64_t i = j; i < rows; ++i) dot += v[static_cast<std::size_t>(i - j)] * q(i, c);
      const double f = 2 * dot / v_norm2;
      for (int64_t i = j; i < rows; ++i) q(i, c) -= f * v[static_cast<std::size_t>(i - j)];
    }
  }
  for (int64_t j = 0; j < cols; ++j) {
    if (r_diagonal[static_cast<std::size_t>(j)] < 0) {
      for (int64_t i = 0; i < rows; ++i) q(i, j) = -q(i, j);
    }
  }
  return q;
}

/// C = op(A) op(B) in double, plainly (the test's independent reference).
inline Matrix<double> multiply(const Matrix<double>& a, bool transpose_a, const Matrix<double>& b, bool transpose_b) {
  const int64_t m = transpose_a ? a.cols() : a.rows();
  const int64_t inner = transpose_a ? a.rows() : a.cols();
  const int64_t n = transpose_b ? b.rows() : b.cols();
  EXPECT_EQ(inner, transpose_b ? b.cols() : b.rows());
  Matrix<double> c(m, n);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t p = 0; p < inner; ++p) {
      const double bv = transpose_b ? b(j, p) : b(p, j);
      for (int64_t i = 0; i < m; ++i) c(i, j) += (transpose_a ? a(p, i) : a(i, p)) * bv;
    }
  }
  return c;
}

/// U diag(s) V^T.
inline Matrix<double> compose(const Matrix<double>& u, const std::vector<double>& s, const Matrix<double>& v) {
  Matrix<double> scaled = u.clone();
  for (int64_t j = 0; j < scaled.cols(); ++j) {
    for (int64_t i = 0; i < scaled.rows(); ++i) scaled(i, j) *= s[static_cast<std::size_t>(j)];
  }
  return multiply(scaled, false, v, true);
}

/// A descending, LLM-like spectrum with distinct values: s_j = scale * decay^j.
inline std::vector<double> decaying_spectrum(int64_t k, double scale = 10.0, double decay = 0.93) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (int64_t j = 0; j < k; ++j) s[static_cast<std::size_t>(j)] = scale * std::pow(decay, static_cast<double>(j));
  return s;
}

/// Weights stored as a checkpoint would hold them, plus a paper-orientation view.
template <class T>
struct StoredWeights {
  std::vector<T> storage;
  postsvd::TensorView view;
};

template <class T>
postsvd::DType dtype_of() {
  return std::is_same<T, float>::value ? postsvd::DType::F32 : postsvd::DType::F64;
}

/// nn.Linear layout: W_hf [out, in] row-major, i.e. W [in, out] column-major.
template <class T>
StoredWeights<T> store_linear(const Matrix<double>& w, const std::string& name) {
  StoredWeights<T> stored;
  stored.storage.resize(static_cast<std::size_t>(w.size()));
  for (int64_t i = 0; i < w.size(); ++i) stored.storage[static_cast<std::size_t>(i)] = static_cast<T>(w.data()[i]);
  stored.view = postsvd::TensorView{stored.storage.data(), dtype_of<T>(), w.rows(), w.cols(), 1, w.rows(), name};
  return stored;
}

/// GPT-2 Conv1D layout: W [in, out] row-major.
template <class T>
StoredWeights<T> store_conv1d(const Matrix<double>& w, const std::string& name) {
  StoredWeights<T> stored;
  stored.storage.resize(static_cast<std::size_t>(w.size()));
  for (int64_t r = 0; r < w.rows(); ++r) {
    for (int64_t c = 0; c < w.cols(); ++c) stored.storage[static_cast<std::size_t>(r * w.cols() + c)] = static_cast<T>(w(r, c));
  }
  stored.view = postsvd::TensorView{stored.storage.data(), dtype_of<T>(), w.rows(), w.cols(), w.cols(), 1, name};
  return stored;
}

/// Widens any owning matrix to double.
template <class T>
Matrix<double> to_double(const Matrix<T>& m) {
  Matrix<double> out(m.rows(), m.cols());
  for (int64_t i = 0; i < m.size(); ++i) out.data()[i] = static_cast<double>(m.data()[i]);
  return out;
}

inline double frobenius(const Matrix<double>& m) {
  double sum = 0;
  for (int64_t i = 0; i < m.size(); ++i) sum += m.data()[i] * m.data()[i];
  return std::sqrt(sum);
}

/// max |A^T A - I| for A with orthonormal columns.
inline double orthogonality_error(const Matrix<double>& a) {
  const Matrix<double> gram = multiply(a, true, a, false);
  double worst = 0;
  for (int64_t c = 0; c < gram.cols(); ++c) {
    for (int64_t r = 0; r < gram.rows(); ++r) worst = std::max(worst, std::abs(gram(r, c) - (r == c ? 1.0 : 0.0)));
  }
  return worst;
}

/// Checks one decomposition of `w` (paper orientation) against its known spectrum.
template <class T>
void expect_valid_svd(const postsvd::Decomposition<T>& d, const Matrix<double>& w, const std::vector<double>& spectrum) {
  using Tol = Tolerance<T>;
  const int64_t m = w.rows();
  const int64_t n = w.cols();
  const int64_t k = std::min(m, n);
  ASSERT_EQ(d.U.rows(), m);
  ASSERT_EQ(d.U.cols(), k);
  ASSERT_EQ(d.V.rows(), n);
  ASSERT_EQ(d.V.cols(), k);
  ASSERT_EQ(static_cast<int64_t>(d.S.size()), k);
  const double s0 = spectrum[0];
  for (int64_t j = 0; j < k; ++j) {
    EXPECT_NEAR(d.S[j], spectrum[j], Tol::sigma * s0) << "sigma " << j;
    if (j > 0) EXPECT_GE(d.S[j - 1], d.S[j]) << "not descending at " << j;
  }
  const Matrix<double> u = to_double(d.U);
  const Matrix<double> v = to_double(d.V);
  EXPECT_LE(orthogonality_error(u), Tol::orthogonality) << "U^T U != I";
  EXPECT_LE(orthogonality_error(v), Tol::orthogonality) << "V^T V != I";
  std::vector<double> s(d.S.begin(), d.S.end());
  const Matrix<double> rebuilt = compose(u, s, v);
  Matrix<double> difference = rebuilt.clone();
  for (int64_t i = 0; i < difference.size(); ++i) difference.data()[i] -= w.data()[i];
  EXPECT_LE(frobenius(difference), Tol::reconstruction * frobenius(w)) << "W != U S V^T";
  // Sign rule: the largest-|.| entry of each U column is positive.
  for (int64_t j = 0; j < k; ++j) {
    int64_t largest = 0;
    for (int64_t i = 1; i < m; ++i) {
      if (std::abs(u(i, j)) > std::abs(u(largest, j))) largest = i;
    }
    EXPECT_GT(u(largest, j), 0.0) << "sign rule broken in column " << j;
  }
}

/// A^T.
inline Matrix<double> transposed(const Matrix<double>& a) {
  Matrix<double> t(a.cols(), a.rows());
  for (int64_t j = 0; j < a.cols(); ++j) {
    for (int64_t i = 0; i < a.rows(); ++i) t(j, i) = a(i, j);
  }
  return t;
}

/// A rotation [k, k] near the identity: Givens rotations of each adjacent pair of axes by angles
/// drawn from [-angle, angle].
inline Matrix<double> small_rotation(int64_t k, double angle, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> draw(-angle, angle);
  Matrix<double> r(k, k);
  for (int64_t i = 0; i < k; ++i) r(i, i) = 1.0;
  for (int64_t p = 0; p + 1 < k; ++p) {
    const double t = draw(rng), c = std::cos(t), s = std::sin(t);
    for (int64_t i = 0; i < k; ++i) {  // columns p and p + 1 of R G
      const double x = r(i, p), y = r(i, p + 1);
      r(i, p) = c * x - s * y;
      r(i, p + 1) = s * x + c * y;
    }
  }
  return r;
}

/// A pair with a known intruder count (docs/measures.md, "Intruder dimensions"), paper orientation:
/// base W = U0 S V0^T [m, n] with m < n, post = W + sum_i s_i u_(m-1-i) b_i^T where the b_i are
/// orthonormal and orthogonal to every base right singular vector (the longer, output side has room)
/// and s_i exceeds sigma_1. The top `added` output-side post singular vectors are then intruders
/// (largest |cosine| with the base's about sigma_(m-1-i) / s_i), the following ones stay close to base
/// vectors. With `input`, the transposed pair: [n, m], the intruders on the input side.
struct IntruderPair {
  Matrix<double> base, post;
};

inline IntruderPair intruder_pair(int64_t m, int64_t n, int64_t added, bool input, std::mt19937_64& rng) {
  EXPECT_LE(m + added, n);
  const Matrix<double> u0 = random_orthonormal(m, m, rng);
  const Matrix<double> v_all = random_orthonormal(n, m + added, rng);  // V0, then the b_i
  Matrix<double> v0(n, m);
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t i = 0; i < n; ++i) v0(i, j) = v_all(i, j);
  }
  const std::vector<double> spectrum = decaying_spectrum(m, 8.0, 0.9);
  IntruderPair pair{compose(u0, spectrum, v0), {}};
  pair.post = pair.base.clone();
  for (int64_t a = 0; a < added; ++a) {
    const double strength = 20.0 + 5.0 * static_cast<double>(a);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t i = 0; i < m; ++i) pair.post(i, j) += strength * u0(i, m - 1 - a) * v_all(j, m + a);
    }
  }
  if (input) pair = {transposed(pair.base), transposed(pair.post)};
  return pair;
}

}  // namespace postsvd_test
