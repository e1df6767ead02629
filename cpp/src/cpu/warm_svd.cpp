// Warm-started SVD on the CPU (see warm_svd.h). Everything runs in float64,
// as the CUDA Gram path does: the Gram matrix squares the condition number,
// and float64 keeps sigma >= 1e-3 sigma_max within 1e-10 relative.
#include "cpu/warm_svd.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "cpu/cpu_backend.h"
#include "detail/lapack.h"
#include "postsvd/error.h"

namespace postsvd::cpu {
namespace {

using detail::lapack_int;

/// Factors of the tall matrix X [p, q] = Ux diag(S) Vx^T (not yet sorted or signed).
struct TallFactors {
  Matrix<double> Ux;  // [p, q]
  std::vector<double> S;
  Matrix<double> Vx;  // [q, q]
  int64_t sweeps = 0;
};

lapack_int as_lapack(int64_t value) { return static_cast<lapack_int>(value); }

/// c [rows, cols] = op(a) op(b), float64.
Matrix<double> product(char ta, char tb, const Matrix<double>& a, const Matrix<double>& b) {
  const int64_t rows = ta == 'N' ? a.rows() : a.cols();
  const int64_t inner = ta == 'N' ? a.cols() : a.rows();
  const int64_t cols = tb == 'N' ? b.cols() : b.rows();
  Matrix<double> c(rows, cols);
  detail::gemm(ta, tb, as_lapack(rows), as_lapack(cols), as_lapack(inner), 1.0, a.data(), as_lapack(a.rows()),
               b.data(), as_lapack(b.rows()), 0.0, c.data(), as_lapack(rows));
  return c;
}

/// x^T x [q, q] by ?syrk, both triangles filled.
Matrix<double> gram(const Matrix<double>& x) {
  const int64_t q = x.cols();
  Matrix<double> g(q, q);
  detail::syrk('L', 'T', as_lapack(q), as_lapack(x.rows()), 1.0, x.data(), as_lapack(x.rows()), 0.0, g.data(),
               as_lapack(q));
  for (int64_t c = 0; c < q; ++c)
    for (int64_t r = c + 1; r < q; ++r) g(c, r) = g(r, c);
  return g;
}

double offdiagonal_ratio(const Matrix<double>& g) {
  double off = 0, all = 0;
  for (int64_t c = 0; c < g.cols(); ++c) {
    for (int64_t r = 0; r < g.rows(); ++r) {
      const double x2 = g(r, c) * g(r, c);
      all += x2;
      if (r != c) off += x2;
    }
  }
  return all > 0 ? std::sqrt(off / all) : 0.0;
}

/// The block Jacobi on g [q, q] (symmetric, float64), rotations accumulated in z.
class BlockJacobi {
 public:
  BlockJacobi(Matrix<double>& g, Matrix<double>& z, const WarmSettings& settings) : g_(g), z_(z), settings_(settings) {
    const int64_t q = g.rows();
    double largest = 0;
    for (int64_t i = 0; i < q; ++i) largest = std::max(largest, std::abs(g(i, i)));
    // Below a few ulps of the largest entry an off-diagonal is rounding noise: rotating it changes nothing.
    noise_floor_ = 8 * std::numeric_limits<double>::epsilon() * largest;
  }

  /// Sweeps until one rotates nothing; returns the sweeps that rotated, or nullopt past max_sweeps.
  std::optional<int64_t> run() {
    const int64_t q = g_.rows();
    const int64_t b = std::max<int64_t>(1, settings_.block);
    const int64_t blocks = (q + b - 1) / b;
    for (int64_t sweep = 0; sweep <= settings_.max_sweeps; ++sweep) {
      bool rotated = false;
      if (blocks == 1) {
        rotated = rotate_if_needed(range(0, q));
      } else {
        for (int64_t i = 0; i < blocks; ++i) {
          for (int64_t j = i + 1; j < blocks; ++j) {
            std::vector<int64_t> index = range(i * b, std::min(q, (i + 1) * b));
            const std::vector<int64_t> second = range(j * b, std::min(q, (j + 1) * b));
            index.insert(index.end(), second.begin(), second.end());
            rotated = rotate_if_needed(index) || rotated;
          }
        }
      }
      if (!rotated) return sweep;
    }
    return std::nullopt;
  }

 private:
  static std::vector<int64_t> range(int64_t first, int64_t last) {
    std::vector<int64_t> out(static_cast<std::size_t>(last - first));
    std::iota(out.begin(), out.end(), first);
    return out;
  }

  bool converged(const std::vector<int64_t>& index) const {
    for (std::size_t a = 0; a < index.size(); ++a) {
      for (std::size_t c = a + 1; c < index.size(); ++c) {
        const double off = std::abs(g_(index[c], index[a]));
        const double scale = std::sqrt(std::abs(g_(index[a], index[a]) * g_(index[c], index[c])));
        if (off > noise_floor_ && off > settings_.jacobi_tolerance * scale) return false;
      }
    }
    return true;
  }

  /// Diagonalizes g[index, index] with one ?syev and applies it: eigenvalues descending along
  /// `index` (a sorting Jacobi: the diagonal stays in the base's descending order).
  bool rotate_if_needed(const std::vector<int64_t>& index) {
    if (converged(index)) return false;
    const int64_t q = g_.rows();
    const auto s = static_cast<int64_t>(index.size());
    Matrix<double> block(s, s);
    for (int64_t c = 0; c < s; ++c)
      for (int64_t r = 0; r < s; ++r) block(r, c) = g_(index[r], index[c]);
    std::vector<double> values(static_cast<std::size_t>(s));
    lapack_int info = 0, iquery = 0;
    double query = 0;
    detail::syevd('V', 'L', as_lapack(s), block.data(), as_lapack(s), values.data(), &query, -1, &iquery, -1, &info);
    work_.resize(static_cast<std::size_t>(std::max<lapack_int>(1, detail::workspace_size(query))));
    iwork_.resize(static_cast<std::size_t>(std::max<lapack_int>(1, iquery)));
    detail::syevd('V', 'L', as_lapack(s), block.data(), as_lapack(s), values.data(), work_.data(),
                  as_lapack(static_cast<int64_t>(work_.size())), iwork_.data(),
                  as_lapack(static_cast<int64_t>(iwork_.size())), &info);
    POSTSVD_CHECK(info == 0, BackendError,
                  "dsyevd failed on a [" << s << ", " << s << "] block of the warm start: info = " << info);
    Matrix<double> rotation(s, s);  // columns in descending eigenvalue order
    for (int64_t c = 0; c < s; ++c)
      std::copy(&block(0, s - 1 - c), &block(0, s - 1 - c) + s, &rotation(0, c));
    apply(g_, index, rotation);
    apply(z_, index, rotation);
    // g = R^T g R: the columns were replaced above; mirror them into the rows, exact diagonal block.
    for (int64_t c = 0; c < s; ++c) {
      for (int64_t r = 0; r < q; ++r) g_(index[c], r) = g_(r, index[c]);
    }
    for (int64_t c = 0; c < s; ++c) {
      for (int64_t r = 0; r < s; ++r) g_(index[r], index[c]) = r == c ? values[static_cast<std::size_t>(s - 1 - c)] : 0.0;
    }
    return true;
  }

  /// m[:, index] = m[:, index] rotation.
  void apply(Matrix<double>& m, const std::vector<int64_t>& index, const Matrix<double>& rotation) {
    const int64_t rows = m.rows();
    const auto s = static_cast<int64_t>(index.size());
    Matrix<double> columns(rows, s);
    for (int64_t c = 0; c < s; ++c) std::copy(&m(0, index[c]), &m(0, index[c]) + rows, &columns(0, c));
    const Matrix<double> rotated = product('N', 'N', columns, rotation);
    for (int64_t c = 0; c < s; ++c) std::copy(&rotated(0, c), &rotated(0, c) + rows, &m(0, index[c]));
  }

  Matrix<double>& g_;
  Matrix<double>& z_;
  const WarmSettings& settings_;
  double noise_floor_ = 0;
  std::vector<double> work_;
  std::vector<lapack_int> iwork_;
};

/// Column norms of u become sigma, the columns unit vectors; false on a zero or non-finite norm.
bool normalize_columns(Matrix<double>& u, std::vector<double>& sigma) {
  sigma.assign(static_cast<std::size_t>(u.cols()), 0.0);
  for (int64_t c = 0; c < u.cols(); ++c) {
    double sum = 0;
    for (int64_t r = 0; r < u.rows(); ++r) sum += u(r, c) * u(r, c);
    const double norm = std::sqrt(sum);
    if (!(norm > 0) || !std::isfinite(norm)) return false;
    for (int64_t r = 0; r < u.rows(); ++r) u(r, c) /= norm;
    sigma[static_cast<std::size_t>(c)] = norm;
  }
  return true;
}

double orthogonality_loss(const Matrix<double>& u) {
  const Matrix<double> check = gram(u);
  double worst = 0;
  for (int64_t c = 0; c < check.cols(); ++c)
    for (int64_t r = 0; r < check.rows(); ++r) worst = std::max(worst, std::abs(check(r, c) - (r == c ? 1.0 : 0.0)));
  return std::isfinite(worst) ? worst : std::numeric_limits<double>::infinity();
}

/// One Newton-Schulz step, v <- v (3 I - v^T v) / 2: a float32 start is orthogonal only to ~1e-7,
/// and G' = V_s^T G V_s is then a congruence, not a similarity, whose eigenvectors move by
/// ~1e-7 / (relative gap) between close singular values; after the step, ~1e-14.
void reorthogonalize(Matrix<double>& v) {
  Matrix<double> correction = gram(v);
  for (int64_t i = 0; i < correction.size(); ++i) correction.data()[i] *= -0.5;
  for (int64_t i = 0; i < correction.rows(); ++i) correction(i, i) += 1.5;
  v = product('N', 'N', v, correction);
}

/// G-route when the matrix is much taller than wide (one p q^2 product fewer), else the A-route:
///   A-route: A = X V_s, G' = A^T A, U = A Z;   G-route: G' = V_s^T (X^T X) V_s, U = X (V_s Z).
std::optional<TallFactors> block_jacobi(Matrix<double>& x, const Matrix<double>& vs, const WarmSettings& settings,
                                        WarmReport& report) {
  const int64_t p = x.rows(), q = x.cols();
  const bool gram_route = p > 3 * q;
  Matrix<double> a;
  Matrix<double> g;
  if (gram_route) {
    const Matrix<double> xtx = gram(x);
    g = product('T', 'N', vs, product('N', 'N', xtx, vs));
  } else {
    a = product('N', 'N', x, vs);
    x = Matrix<double>();
    g = gram(a);
  }
  report.initial_off = offdiagonal_ratio(g);
  if (!(report.initial_off <= settings.max_initial_off)) return std::nullopt;
  Matrix<double> z(q, q);
  for (int64_t i = 0; i < q; ++i) z(i, i) = 1.0;
  const std::optional<int64_t> sweeps = BlockJacobi(g, z, settings).run();
  if (!sweeps) return std::nullopt;
  TallFactors out;
  out.sweeps = *sweeps;
  out.Vx = product('N', 'N', vs, z);
  out.Ux = gram_route ? product('N', 'N', x, out.Vx) : product('N', 'N', a, z);
  if (!normalize_columns(out.Ux, out.S)) return std::nullopt;
  return out;
}

/// LAPACK dgesvj on A = X V_s with V = V_s (JOBV = 'A': its rotations applied to V_s).
std::optional<TallFactors> one_sided_jacobi(Matrix<double>& x, const Matrix<double>& vs, WarmReport& report) {
  const int64_t p = x.rows(), q = x.cols();
  TallFactors out;
  out.Ux = product('N', 'N', x, vs);
  x = Matrix<double>();
  report.initial_off = offdiagonal_ratio(gram(out.Ux));
  out.Vx = vs.clone();
  out.S.assign(static_cast<std::size_t>(q), 0.0);
  std::vector<double> work(static_cast<std::size_t>(std::max<int64_t>(6, p + q)));
  lapack_int info = 0;
  detail::gesvj('G', 'U', 'A', as_lapack(p), as_lapack(q), out.Ux.data(), as_lapack(p), out.S.data(), as_lapack(q),
                out.Vx.data(), as_lapack(q), work.data(), as_lapack(static_cast<int64_t>(work.size())), &info);
  POSTSVD_CHECK(info >= 0, BackendError, "dgesvj: argument " << -info << " had an illegal value");
  if (info > 0) return std::nullopt;  // no convergence in 30 sweeps
  for (double& sigma : out.S) sigma *= work[0];  // SCALE: sigma = scale * SVA
  out.sweeps = static_cast<int64_t>(work[3]);
  return out;
}

std::string shape_text(int64_t rows, int64_t cols) {
  std::ostringstream text;
  text << "[" << rows << ", " << cols << "]";
  return text.str();
}

template <class T>
void check_start(const TensorView& view, const Decomposition<T>& start) {
  const int64_t k = std::min(view.rows, view.cols);
  POSTSVD_CHECK(start.U.rows() == view.rows && start.U.cols() == k && start.V.rows() == view.cols &&
                    start.V.cols() == k && static_cast<int64_t>(start.S.size()) == k,
                InvalidArgument,
                "warm start of " << tensor_label(view) << " " << shape_text(view.rows, view.cols)
                                         << ": expected start factors U " << shape_text(view.rows, k) << ", V "
                                         << shape_text(view.cols, k) << ", got U "
                                         << shape_text(start.U.rows(), start.U.cols()) << ", V "
                                         << shape_text(start.V.rows(), start.V.cols()));
}

}  // namespace

template <>
WarmSettings default_warm_settings<float>() {
  return WarmSettings{};
}

template <>
WarmSettings default_warm_settings<double>() {
  WarmSettings settings;
  settings.jacobi_tolerance = 1e-13;
  settings.orth_tolerance = 1e-10;
  return settings;
}

template <class T>
Decomposition<T> warm_svd(const TensorView& view, const Decomposition<T>& start, const WarmSettings& settings,
                          WarmReport* report) {
  check_start(view, start);
  POSTSVD_CHECK(view.rows <= INT_MAX && view.cols <= INT_MAX, InvalidArgument,
                "warm start: " << tensor_label(view) << " of shape " << shape_text(view.rows, view.cols)
                                       << " exceeds LAPACK's 32-bit dimension limit");
  WarmReport local;
  const bool use_transpose = view.rows < view.cols;
  const TensorView tall_view = use_transpose ? view.transposed() : view;
  const Matrix<T>& start_right = use_transpose ? start.U : start.V;  // [q, q]
  std::optional<TallFactors> tall;
  {
    Matrix<double> x = to_matrix<double>(tall_view);  // NaN / Inf: InvalidArgument naming the tensor
    check_norm_fits<T>(x, view);
    Matrix<double> vs(start_right.rows(), start_right.cols());
    std::transform(start_right.data(), start_right.data() + start_right.size(), vs.data(),
                   [](T value) { return static_cast<double>(value); });
    if (sizeof(T) < sizeof(double)) reorthogonalize(vs);
    tall = settings.method == WarmMethod::Gesvj ? one_sided_jacobi(x, vs, local) : block_jacobi(x, vs, settings, local);
  }
  if (tall && !(orthogonality_loss(tall->Ux) <= settings.orth_tolerance)) tall.reset();
  if (!tall) {
    local.fell_back = true;
    local.sweeps = -1;
    if (report != nullptr) *report = local;
    return reduced_svd<T>(view);
  }
  local.sweeps = tall->sweeps;
  if (report != nullptr) *report = local;

  // Descending sigma (the sorting Jacobi nearly keeps it; column norms may swap ties).
  const auto q = static_cast<int64_t>(tall->S.size());
  std::vector<int64_t> order(static_cast<std::size_t>(q));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
    return tall->S[static_cast<std::size_t>(i)] > tall->S[static_cast<std::size_t>(j)];
  });
  Matrix<T> ux(tall->Ux.rows(), q), vx(q, q);
  std::vector<T> sigma(static_cast<std::size_t>(q));
  for (int64_t c = 0; c < q; ++c) {
    const int64_t from = order[static_cast<std::size_t>(c)];
    sigma[static_cast<std::size_t>(c)] = static_cast<T>(tall->S[static_cast<std::size_t>(from)]);
    std::transform(&tall->Ux(0, from), &tall->Ux(0, from) + ux.rows(), &ux(0, c), [](double v) { return static_cast<T>(v); });
    std::transform(&tall->Vx(0, from), &tall->Vx(0, from) + q, &vx(0, c), [](double v) { return static_cast<T>(v); });
  }
  Decomposition<T> d;
  d.S = std::move(sigma);
  d.U = use_transpose ? std::move(vx) : std::move(ux);
  d.V = use_transpose ? std::move(ux) : std::move(vx);
  apply_sign_rule(d);
  return d;
}

template Decomposition<float> warm_svd<float>(const TensorView&, const Decomposition<float>&, const WarmSettings&,
                                              WarmReport*);
template Decomposition<double> warm_svd<double>(const TensorView&, const Decomposition<double>&, const WarmSettings&,
                                                WarmReport*);

}  // namespace postsvd::cpu
