// The paper's per-matrix measures (Section 4), exactly as docs/measures.md pins them:
//   scaling = sigma_post / sigma_base (SVSM column, Eq. 4), statistics over j < ceil(0.9 k),
//   Q1 = U_A^T U_B, Q2 = V_A^T V_B (Eq. 6), I_orth = Q1^T Q2, NF = ||I_orth - I||_F / k (Eq. 7).
// Products run in the factors' precision with BLAS ?gemm; outputs are double.
//
// Zero base singular values: the ratios follow IEEE (x / 0 = inf, 0 / 0 = nan)
// and are kept, in the SVSM column and in the statistics, so a rank-deficient
// base matrix shows as an inf / nan mean instead of being hidden or aborting
// a whole model comparison for one degenerate layer.
//
// Leading-k matrices (full_matrices): Q1_kk = U_A[:, :kk]^T U_B[:, :kk] (the
// leading block of Q1), Q2_kk likewise, and I_orth_kk = Q1_kk^T Q2_kk, which is
// the I_orth of the truncated factors (not the leading block of the full
// I_orth unless kk = k).
//
// Intruder dimensions (Shuttleworth et al. 2024, Algorithm 1): for the leading min(k_i, k) post
// singular vectors on the chosen side, the largest |cosine| with every base singular vector is the
// largest |entry| of that column of Q2 (output side) or Q1 (input side), the matrices NF already
// needs; an intruder is a vector whose largest |cosine| is below epsilon.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "detail/lapack.h"
#include "postsvd/error.h"
#include "postsvd/measures.h"

namespace postsvd {
namespace {

struct Moments {
  double mean = 0;
  double std = 0;
};

/// Mean and population std (ddof = 0), two passes for accuracy.
template <class Values>
Moments moments_of(const Values& values, int64_t count) {
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += values(i);
  const double mean = sum / static_cast<double>(count);
  double squares = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double deviation = values(i) - mean;
    squares += deviation * deviation;
  }
  return {mean, std::sqrt(squares / static_cast<double>(count))};
}

template <class T>
std::string factor_shapes(const Decomposition<T>& d) {
  std::ostringstream text;
  text << "U [" << d.U.rows() << ", " << d.U.cols() << "], S [" << d.S.size() << "], V [" << d.V.rows() << ", "
       << d.V.cols() << "]";
  return text.str();
}

template <class T>
bool consistent(const Decomposition<T>& d) {
  const auto k = static_cast<int64_t>(d.S.size());
  return k > 0 && d.U.cols() == k && d.V.cols() == k && k == std::min(d.U.rows(), d.V.rows());
}

/// C [rows(op A), cols(op B)] = A^T B for column-major A [depth, a_cols] (lda), B [depth, b_cols] (ldb).
template <class T>
Matrix<T> transpose_times(const T* a, int64_t lda, int64_t a_cols, const T* b, int64_t ldb, int64_t b_cols,
                          int64_t depth) {
  Matrix<T> c(a_cols, b_cols);
  detail::gemm('T', 'N', static_cast<detail::lapack_int>(a_cols), static_cast<detail::lapack_int>(b_cols),
               static_cast<detail::lapack_int>(depth), T(1), a, static_cast<detail::lapack_int>(lda), b,
               static_cast<detail::lapack_int>(ldb), T(0), c.data(), static_cast<detail::lapack_int>(a_cols));
  return c;
}

/// Leading [kk, kk] block of a column-major matrix, widened to double.
template <class T>
Matrix<double> leading_block(const Matrix<T>& m, int64_t kk) {
  Matrix<double> out(kk, kk);
  for (int64_t c = 0; c < kk; ++c) {
    for (int64_t r = 0; r < kk; ++r) out(r, c) = static_cast<double>(m(r, c));
  }
  return out;
}

/// max_i |m(i, j)| for each column j < count of a column-major [rows, cols] matrix.
template <class T>
std::vector<double> column_max_abs(const Matrix<T>& m, int64_t count) {
  std::vector<double> out(static_cast<std::size_t>(count));
  for (int64_t j = 0; j < count; ++j) {
    double largest = 0;
    for (int64_t i = 0; i < m.rows(); ++i) largest = std::max(largest, std::abs(static_cast<double>(m(i, j))));
    out[static_cast<std::size_t>(j)] = largest;
  }
  return out;
}

Matrix<double> absolute(const Matrix<double>& m) {
  Matrix<double> out(m.rows(), m.cols());
  for (int64_t i = 0; i < m.size(); ++i) out.data()[i] = std::abs(m.data()[i]);
  return out;
}

}  // namespace

int64_t count_intruders(const std::vector<double>& cosines, double epsilon) {
  int64_t count = 0;
  for (double c : cosines) count += c < epsilon ? 1 : 0;
  return count;
}

int64_t intruder_vectors(const IntruderOptions& options, int64_t k) { return std::min(options.k, k); }

void check_intruder_options(const IntruderOptions& options) {
  POSTSVD_CHECK(options.k >= 1, InvalidArgument,
                "intruder_k: expected >= 1 (the leading post singular vectors examined), got " << options.k);
  POSTSVD_CHECK(options.epsilon >= 0.0 && options.epsilon <= 1.0, InvalidArgument,
                "intruder_epsilon: expected a |cosine| threshold in [0, 1], got " << options.epsilon);
}

const char* intruder_side_name(IntruderSide side) { return side == IntruderSide::Output ? "output" : "input"; }

const std::vector<IntruderSide>& intruder_sides() {
  static const std::vector<IntruderSide> sides = {IntruderSide::Output, IntruderSide::Input};
  return sides;
}

IntruderSide parse_intruder_side(const std::string& name, const std::string& argument) {
  std::string expected;
  for (IntruderSide side : intruder_sides()) {
    if (name == intruder_side_name(side)) return side;
    expected += std::string(expected.empty() ? "'" : ", '") + intruder_side_name(side) + "'";
  }
  POSTSVD_THROW(InvalidArgument, argument << ": expected one of " << expected << ", got '" << name << "'");
}

int64_t scaling_top_count(int64_t k) {
  if (k < 0) POSTSVD_THROW(InvalidArgument, "scaling_top_count: expected k >= 0, got " << k);
  return (9 * k + 9) / 10;  // ceil(9 k / 10)
}

ScalingStats scaling_statistics(const std::vector<double>& scaling) {
  if (scaling.empty()) {
    POSTSVD_THROW(InvalidArgument, "scaling_statistics: expected at least one scaling factor, got an empty column");
  }
  const int64_t count = scaling_top_count(static_cast<int64_t>(scaling.size()));
  const Moments m = moments_of([&](int64_t i) { return scaling[static_cast<std::size_t>(i)]; }, count);
  return {m.mean, m.std, count};
}

ScalingStats pooled_scaling_statistics(const std::vector<std::vector<double>>& columns) {
  std::vector<double> pooled;
  for (std::size_t c = 0; c < columns.size(); ++c) {
    if (columns[c].empty()) {
      POSTSVD_THROW(InvalidArgument, "pooled_scaling_statistics: column " << c << " is empty; expected k >= 1 ratios");
    }
    const int64_t count = scaling_top_count(static_cast<int64_t>(columns[c].size()));
    pooled.insert(pooled.end(), columns[c].begin(), columns[c].begin() + count);
  }
  if (pooled.empty()) {
    POSTSVD_THROW(InvalidArgument, "pooled_scaling_statistics: expected at least one column, got none");
  }
  const Moments m = moments_of([&](int64_t i) { return pooled[static_cast<std::size_t>(i)]; },
                               static_cast<int64_t>(pooled.size()));
  return {m.mean, m.std, static_cast<int64_t>(pooled.size())};
}

template <class T>
PairMeasures measures_from(const Decomposition<T>& base, const Decomposition<T>& post, const MeasureOptions& options) {
  if (!consistent(base) || !consistent(post) || base.U.rows() != post.U.rows() || base.V.rows() != post.V.rows()) {
    POSTSVD_THROW(InvalidArgument, "measures_from: expected two reduced SVDs of one shape [m, n] (U [m, k], S [k], "
                                   "V [n, k], k = min(m, n) >= 1), got base "
                                       << factor_shapes(base) << " and post " << factor_shapes(post));
  }
  if (options.leading_k < 0) {
    POSTSVD_THROW(InvalidArgument, "measures_from: leading_k: expected >= 0 (0 = all), got " << options.leading_k);
  }
  check_intruder_options(options.intruders);
  const int64_t m = base.U.rows();
  const int64_t n = base.V.rows();
  const int64_t k = static_cast<int64_t>(base.S.size());
  if (m > INT_MAX || n > INT_MAX) {
    POSTSVD_THROW(InvalidArgument, "measures_from: shape [" << m << ", " << n << "] exceeds BLAS's 32-bit limit");
  }

  PairMeasures out;
  out.rows = m;
  out.cols = n;
  out.k = k;
  out.sigma_base.assign(base.S.begin(), base.S.end());
  out.sigma_post.assign(post.S.begin(), post.S.end());
  out.scaling.resize(static_cast<std::size_t>(k));
  for (std::size_t j = 0; j < out.scaling.size(); ++j) out.scaling[j] = out.sigma_post[j] / out.sigma_base[j];
  out.scaling_stats = scaling_statistics(out.scaling);

  const Matrix<T> q1 = transpose_times(base.U.data(), m, k, post.U.data(), m, k, m);  // [k, k]
  const Matrix<T> q2 = transpose_times(base.V.data(), n, k, post.V.data(), n, k, n);  // [k, k]
  const Matrix<T> iorth = transpose_times(q1.data(), k, k, q2.data(), k, k, k);      // [k, k]

  double squares = 0;
  out.iorth_diag.resize(static_cast<std::size_t>(k));
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t r = 0; r < k; ++r) {
      const double deviation = static_cast<double>(iorth(r, c)) - (r == c ? 1.0 : 0.0);
      squares += deviation * deviation;
    }
    out.iorth_diag[static_cast<std::size_t>(c)] = static_cast<double>(iorth(c, c));
  }
  out.nf = std::sqrt(squares) / static_cast<double>(k);
  out.intruder_cosines =
      column_max_abs(options.intruders.side == IntruderSide::Output ? q2 : q1, intruder_vectors(options.intruders, k));
  out.intruders = count_intruders(out.intruder_cosines, options.intruders.epsilon);

  if (options.full_matrices) {
    const int64_t kk = options.leading_k > 0 ? std::min(options.leading_k, k) : k;
    out.q1 = leading_block(q1, kk);
    out.q2 = leading_block(q2, kk);
    if (kk == k) {
      out.iorth = leading_block(iorth, kk);
    } else {
      const Matrix<T> truncated = transpose_times(q1.data(), k, kk, q2.data(), k, kk, kk);  // Q1_kk^T Q2_kk
      out.iorth = leading_block(truncated, kk);
    }
    out.sim_u = absolute(out.q1);
    out.sim_v = absolute(out.q2);
  }
  return out;
}

template PairMeasures measures_from<float>(const Decomposition<float>&, const Decomposition<float>&,
                                           const MeasureOptions&);
template PairMeasures measures_from<double>(const Decomposition<double>&, const Decomposition<double>&,
                                            const MeasureOptions&);

template <class T>
void apply_sign_rule(Decomposition<T>& d) {
  const int64_t k = static_cast<int64_t>(d.S.size());
  if (d.U.cols() != k || d.V.cols() != k) {
    POSTSVD_THROW(InvalidArgument, "apply_sign_rule: expected U [m, k], S [k], V [n, k], got " << factor_shapes(d));
  }
  const int64_t m = d.U.rows();
  const int64_t n = d.V.rows();
  for (int64_t j = 0; j < k; ++j) {
    // The first entry of largest magnitude decides (ties: lowest row, like numpy.argmax).
    T* u = d.U.data() + j * m;
    int64_t largest = 0;
    for (int64_t i = 1; i < m; ++i) {
      if (std::abs(u[i]) > std::abs(u[largest])) largest = i;
    }
    if (u[largest] < T(0)) {
      for (int64_t i = 0; i < m; ++i) u[i] = -u[i];
      T* v = d.V.data() + j * n;
      for (int64_t i = 0; i < n; ++i) v[i] = -v[i];
    }
  }
}

template void apply_sign_rule<float>(Decomposition<float>&);
template void apply_sign_rule<double>(Decomposition<double>&);

}  // namespace postsvd
