// Constructions 9-16 and Eq. 13 (see constructions.h and docs/measures.md).
#include "postsvd/constructions.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>
#include <type_traits>

#include "detail/int_range.h"
#include "detail/lapack.h"
#include "postsvd/architecture.h"
#include "postsvd/warnings.h"
#include "postsvd/writer.h"

namespace postsvd {

namespace fs = std::filesystem;
using detail::as_int;
using detail::lapack_int;

// ---------------------------------------------------------------------------
// Names.

Construction parse_construction(int number) {
  switch (number) {
    case 9: case 10: case 11: case 12: case 14: case 15: case 16:
      return static_cast<Construction>(number);
    default:
      POSTSVD_THROW(InvalidArgument, "unknown construction " << number
                                         << "; expected one of 9, 10, 11, 12, 14, 15, 16 (the paper's numbering)");
  }
}

const char* construction_name(Construction construction) {
  switch (construction) {
    case Construction::ReplaceScaled: return "replace-singular-values-scaled";
    case Construction::AblateOutput: return "ablate-output-rotation";
    case Construction::RestoreOutput: return "restore-output-rotation";
    case Construction::RestoreFromRef: return "restore-output-rotation-from-ref";
    case Construction::Replace: return "replace-singular-values";
    case Construction::AblateInput: return "ablate-input-rotation";
    case Construction::RestoreInput: return "restore-input-rotation";
  }
  return "?";
}

const char* construction_formula(Construction construction) {
  switch (construction) {
    case Construction::ReplaceScaled: return "U_post (alpha' S_base) V_post^T";
    case Construction::AblateOutput: return "U_post S_post V_base^T";
    case Construction::RestoreOutput: return "U_post S_post (V_base Q1)^T, Q1 = U_base^T U_post";
    case Construction::RestoreFromRef: return "U_post S_post (V_ref Q')^T, Q' = U_ref^T U_post";
    case Construction::Replace: return "U_post S_base V_post^T";
    case Construction::AblateInput: return "U_base S_post V_post^T";
    case Construction::RestoreInput: return "(U_base Q2) S_post V_post^T, Q2 = V_base^T V_post";
  }
  return "?";
}

bool construction_needs_ref(Construction construction) { return construction == Construction::RestoreFromRef; }
bool construction_uses_alpha(Construction construction) { return construction == Construction::ReplaceScaled; }

double table4_alpha(double pooled_mean_scaling) { return std::round(pooled_mean_scaling * 10.0) / 10.0; }

// ---------------------------------------------------------------------------
// Small dense helpers (column-major).

namespace {

// C [m, n] = op(A) op(B).
template <class T>
Matrix<T> multiply(const Matrix<T>& a, bool transpose_a, const Matrix<T>& b, bool transpose_b) {
  const int64_t m = transpose_a ? a.cols() : a.rows();
  const int64_t inner = transpose_a ? a.rows() : a.cols();
  const int64_t n = transpose_b ? b.rows() : b.cols();
  const int64_t inner_b = transpose_b ? b.cols() : b.rows();
  POSTSVD_CHECK(inner == inner_b, InvalidArgument,
                "multiply: inner dimensions differ: " << inner << " vs " << inner_b);
  Matrix<T> c(m, n);
  if (m == 0 || n == 0) return c;
  if (inner == 0) {
    std::fill(c.data(), c.data() + c.size(), T(0));
    return c;
  }
  detail::gemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', as_int(m, "rows"), as_int(n, "cols"),
               as_int(inner, "inner"), T(1), a.data(), as_int(std::max<int64_t>(1, a.rows()), "lda"), b.data(),
               as_int(std::max<int64_t>(1, b.rows()), "ldb"), T(0), c.data(), as_int(std::max<int64_t>(1, m), "ldc"));
  return c;
}

template <class T>
Matrix<double> to_double(const Matrix<T>& a) {
  Matrix<double> out(a.rows(), a.cols());
  for (int64_t i = 0; i < a.size(); ++i) out.data()[i] = static_cast<double>(a.data()[i]);
  return out;
}

// ||G - I||_F for a Gram matrix G = A^T A.
double distance_to_identity(const Matrix<double>& gram) {
  double sum = 0;
  for (int64_t c = 0; c < gram.cols(); ++c)
    for (int64_t r = 0; r < gram.rows(); ++r) {
      const double d = gram(r, c) - (r == c ? 1.0 : 0.0);
      sum += d * d;
    }
  return std::sqrt(sum);
}

// U V^T of the SVD of square `a`.
Matrix<double> polar_by_svd(const Matrix<double>& a) {
  const lapack_int n = as_int(a.rows(), "k");
  Matrix<double> work_a = a.clone();
  Matrix<double> u(n, n), vt(n, n);
  std::vector<double> s(static_cast<std::size_t>(n));
  std::vector<lapack_int> iwork(static_cast<std::size_t>(8 * std::max<lapack_int>(1, n)));
  lapack_int info = 0;
  double query = 0;
  detail::gesdd('S', n, n, work_a.data(), std::max<lapack_int>(1, n), s.data(), u.data(), std::max<lapack_int>(1, n),
                vt.data(), std::max<lapack_int>(1, n), &query, -1, iwork.data(), &info);
  POSTSVD_CHECK(info == 0, BackendError, "polar factor: dgesdd workspace query failed, info = " << info);
  std::vector<double> work(static_cast<std::size_t>(detail::workspace_size(query)));
  detail::gesdd('S', n, n, work_a.data(), std::max<lapack_int>(1, n), s.data(), u.data(), std::max<lapack_int>(1, n),
                vt.data(), std::max<lapack_int>(1, n), work.data(), static_cast<lapack_int>(work.size()), iwork.data(),
                &info);
  POSTSVD_CHECK(info == 0, BackendError,
                "polar factor of a [" << n << ", " << n << "] matrix: dgesdd failed, info = " << info
                                      << (info > 0 ? " (did not converge)" : " (illegal argument)"));
  return multiply(u, false, vt, false);
}

}  // namespace

namespace {

// Polar factor of `a` given its Gram matrix a^T a (so callers that also need
// ||a^T a - I|| pay for it once). Newton-Schulz X <- X (3 I - X^T X) / 2
// converges quadratically to the polar factor when ||X^T X - I||_2 < 1: it is
// started only well inside that, else (or when it stalls) the SVD decides.
Matrix<double> polar_from_gram(const Matrix<double>& a, Matrix<double> gram) {
  const int64_t k = a.rows();
  double error = distance_to_identity(gram);
  if (!(error < 0.5)) return polar_by_svd(a);
  const double tolerance = 64.0 * std::numeric_limits<double>::epsilon() * static_cast<double>(k);
  Matrix<double> x = a.clone();
  for (int step = 0; step < 40 && error > tolerance; ++step) {
    const Matrix<double> xg = multiply(x, false, gram, false);
    for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = 1.5 * x.data()[i] - 0.5 * xg.data()[i];
    gram = multiply(x, true, x, false);
    const double next = distance_to_identity(gram);
    if (!(next < error)) {  // rounding floor reached
      error = std::min(error, next);
      break;
    }
    error = next;
  }
  if (!(error <= std::max(tolerance, 1e-10))) return polar_by_svd(a);
  return x;
}

}  // namespace

Matrix<double> polar_factor(const Matrix<double>& a) {
  POSTSVD_CHECK(a.rows() == a.cols(), InvalidArgument,
                "polar_factor: expected a square matrix, got [" << a.rows() << ", " << a.cols() << "]");
  if (a.rows() == 0) return Matrix<double>(0, 0);
  return polar_from_gram(a, multiply(a, true, a, false));
}

std::vector<double> rotation_angles_deg(const Matrix<double>& rotation) {
  POSTSVD_CHECK(rotation.rows() == rotation.cols(), InvalidArgument,
                "rotation_angles_deg: expected a square matrix, got [" << rotation.rows() << ", " << rotation.cols()
                                                                       << "]");
  const lapack_int n = as_int(rotation.rows(), "k");
  if (n == 0) return {};
  Matrix<double> sym(n, n);  // (M + M^T) / 2: eigenvalues cos(theta), one per eigenvalue of M
  for (lapack_int c = 0; c < n; ++c)
    for (lapack_int r = 0; r < n; ++r) sym(r, c) = 0.5 * (rotation(r, c) + rotation(c, r));
  std::vector<double> values(static_cast<std::size_t>(n));
  const char jobz = 'N', uplo = 'U';
  lapack_int info = 0, lwork = -1, liwork = -1, iquery = 0;
  double query = 0;
  POSTSVD_BLAS_NAME(dsyevd_)(&jobz, &uplo, &n, sym.data(), &n, values.data(), &query, &lwork, &iquery, &liwork, &info,
                             1, 1);
  POSTSVD_CHECK(info == 0, BackendError, "rotation angles: dsyevd workspace query failed, info = " << info);
  lwork = detail::workspace_size(query);
  liwork = std::max<lapack_int>(1, iquery);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  std::vector<lapack_int> iwork(static_cast<std::size_t>(liwork));
  POSTSVD_BLAS_NAME(dsyevd_)(&jobz, &uplo, &n, sym.data(), &n, values.data(), work.data(), &lwork, iwork.data(),
                             &liwork, &info, 1, 1);
  POSTSVD_CHECK(info == 0, BackendError,
                "rotation angles of a [" << n << ", " << n << "] matrix: dsyevd failed, info = " << info);
  std::vector<double> angles(values.size());
  const double to_deg = 180.0 / M_PI;
  for (std::size_t i = 0; i < values.size(); ++i)
    angles[i] = std::acos(std::clamp(values[i], -1.0, 1.0)) * to_deg;
  std::sort(angles.begin(), angles.end());
  return angles;
}

namespace {

AngleSummary summarize(const std::vector<double>& angles) {
  AngleSummary s;
  if (angles.empty()) return s;
  s.mean_deg = std::accumulate(angles.begin(), angles.end(), 0.0) / static_cast<double>(angles.size());
  s.max_deg = *std::max_element(angles.begin(), angles.end());
  return s;
}

}  // namespace

SharedRotation shared_rotation(const Matrix<double>& q1, const Matrix<double>& q2, bool keep_matrices) {
  POSTSVD_CHECK(q1.rows() == q1.cols() && q2.rows() == q2.cols() && q1.rows() == q2.rows(), InvalidArgument,
                "shared_rotation: expected Q1 and Q2 square of the same size [k, k], got ["
                    << q1.rows() << ", " << q1.cols() << "] and [" << q2.rows() << ", " << q2.cols() << "]");
  for (const Matrix<double>* m : {&q1, &q2})
    for (int64_t i = 0; i < m->size(); ++i)
      POSTSVD_CHECK(std::isfinite(m->data()[i]), InvalidArgument,
                    "shared_rotation: " << (m == &q1 ? "Q1" : "Q2") << " has a non-finite entry at flat index " << i);
  SharedRotation out;
  const int64_t k = q1.rows();
  out.k = k;
  if (k == 0) return out;
  Matrix<double> gram1 = multiply(q1, true, q1, false);
  Matrix<double> gram2 = multiply(q2, true, q2, false);
  out.defect1 = distance_to_identity(gram1) / static_cast<double>(k);
  out.defect2 = distance_to_identity(gram2) / static_cast<double>(k);
  const Matrix<double> p1 = polar_from_gram(q1, std::move(gram1));
  const Matrix<double> p2 = polar_from_gram(q2, std::move(gram2));
  // polar(P1 + P2) = polar((P1 + P2) / 2), and the mean is nearly orthogonal when the residual
  // rotation P1^T P2 is small (singular values cos(theta_i / 2)): Newton-Schulz then converges in
  // a few GEMMs instead of the k x k SVD that the unscaled sum (singular values ~2) always needed.
  Matrix<double> mean = p1.clone();
  for (int64_t i = 0; i < mean.size(); ++i) mean.data()[i] = 0.5 * (mean.data()[i] + p2.data()[i]);
  Matrix<double> q = polar_factor(mean);
  const Matrix<double> r1 = multiply(q, true, p1, false);  // polar(dQ1)
  const Matrix<double> r2 = multiply(q, true, p2, false);  // polar(dQ2)
  out.residual1 = summarize(rotation_angles_deg(r1));
  // At the geodesic midpoint r2 = r1^T (same angles): skip the second eigenproblem then.
  double asymmetry = 0;
  for (int64_t c = 0; c < k; ++c)
    for (int64_t r = 0; r < k; ++r) asymmetry = std::max(asymmetry, std::fabs(r2(r, c) - r1(c, r)));
  out.residual2 = asymmetry <= 1e-12 ? out.residual1 : summarize(rotation_angles_deg(r2));
  if (keep_matrices) {
    out.shared = summarize(rotation_angles_deg(q));
    out.dq1 = multiply(q, true, q1, false);
    out.dq2 = multiply(q, true, q2, false);
    out.q = std::move(q);
  }
  return out;
}

namespace {

template <class T>
void check_same_shape(const Decomposition<T>& a, const Decomposition<T>& b, const char* name_a, const char* name_b) {
  POSTSVD_CHECK(a.U.rows() == b.U.rows() && a.V.rows() == b.V.rows() && a.U.cols() == b.U.cols() &&
                    a.V.cols() == b.V.cols() && a.S.size() == b.S.size() &&
                    static_cast<int64_t>(a.S.size()) == a.U.cols() && a.U.cols() == a.V.cols(),
                InvalidArgument,
                "decompositions of " << name_a << " and " << name_b << " differ in shape: " << name_a << " U ["
                                     << a.U.rows() << ", " << a.U.cols() << "], S [" << a.S.size() << "], V ["
                                     << a.V.rows() << ", " << a.V.cols() << "]; " << name_b << " U [" << b.U.rows()
                                     << ", " << b.U.cols() << "], S [" << b.S.size() << "], V [" << b.V.rows() << ", "
                                     << b.V.cols() << "]");
}

// A diag(s) B^T, A [in, k], B [out, k].
template <class T>
Matrix<T> compose(const Matrix<T>& a, const std::vector<T>& s, const Matrix<T>& b) {
  Matrix<T> scaled = a.clone();
  const int64_t rows = a.rows();
  for (int64_t j = 0; j < a.cols(); ++j) {
    T* column = scaled.data() + j * rows;
    for (int64_t i = 0; i < rows; ++i) column[i] *= s[static_cast<std::size_t>(j)];
  }
  return multiply(scaled, false, b, true);
}

}  // namespace

template <class T>
Matrix<T> construct_weight(Construction construction, const Decomposition<T>& base, const Decomposition<T>& post,
                           const Decomposition<T>* ref, double alpha) {
  check_same_shape(base, post, "base", "post");
  switch (construction) {
    case Construction::ReplaceScaled:
    case Construction::Replace: {
      const double factor = construction == Construction::Replace ? 1.0 : alpha;
      POSTSVD_CHECK(std::isfinite(factor) && factor > 0, InvalidArgument,
                    "construction 9: alpha' must be finite and > 0, got " << factor);
      std::vector<T> s(base.S.size());
      for (std::size_t j = 0; j < s.size(); ++j) s[j] = static_cast<T>(factor * static_cast<double>(base.S[j]));
      return compose(post.U, s, post.V);
    }
    case Construction::AblateOutput:
      return compose(post.U, post.S, base.V);
    case Construction::RestoreOutput: {
      const Matrix<T> q1 = multiply(base.U, true, post.U, false);  // [k, k]
      return compose(post.U, post.S, multiply(base.V, false, q1, false));
    }
    case Construction::RestoreFromRef: {
      POSTSVD_CHECK(ref != nullptr, InvalidArgument,
                    "construction 12 needs the decomposition of a reference post model (ref), got none");
      check_same_shape(*ref, post, "ref", "post");
      const Matrix<T> q_ref = multiply(ref->U, true, post.U, false);  // Q' [k, k]
      return compose(post.U, post.S, multiply(ref->V, false, q_ref, false));
    }
    case Construction::AblateInput:
      return compose(base.U, post.S, post.V);
    case Construction::RestoreInput: {
      const Matrix<T> q2 = multiply(base.V, true, post.V, false);  // [k, k]
      return compose(multiply(base.U, false, q2, false), post.S, post.V);
    }
  }
  POSTSVD_THROW(InvalidArgument, "unknown construction " << static_cast<int>(construction));
}

template <class T>
SharedRotation shared_rotation(const Decomposition<T>& base, const Decomposition<T>& post, bool keep_matrices) {
  check_same_shape(base, post, "base", "post");
  const Matrix<double> q1 = multiply(to_double(base.U), true, to_double(post.U), false);
  const Matrix<double> q2 = multiply(to_double(base.V), true, to_double(post.V), false);
  return shared_rotation(q1, q2, keep_matrices);
}

template Matrix<float> construct_weight<float>(Construction, const Decomposition<float>&, const Decomposition<float>&,
                                               const Decomposition<float>*, double);
template Matrix<double> construct_weight<double>(Construction, const Decomposition<double>&,
                                                 const Decomposition<double>&, const Decomposition<double>*, double);
template SharedRotation shared_rotation<float>(const Decomposition<float>&, const Decomposition<float>&, bool);
template SharedRotation shared_rotation<double>(const Decomposition<double>&, const Decomposition<double>&, bool);

// ---------------------------------------------------------------------------
// Whole checkpoints.

namespace {

struct Opened {
  Checkpoint checkpoint;
  Architecture architecture;
  explicit Opened(const std::string& folder) : checkpoint(folder), architecture(detect_architecture(checkpoint)) {
    for (const std::string& message : architecture.warnings) warn(message);
  }
  // A post model of `base`: a model folder, or an adapter folder applied to `base`.
  Opened(const std::string& folder, const std::string& base, const AdapterOptions& adapter)
      : checkpoint(open_post_model(folder, base, adapter)), architecture(detect_architecture(checkpoint)) {}
};

// An adapter post model writes W + ΔW for the projections only: one that changes other tensors is refused.
void check_constructible(const Checkpoint& post, const Architecture& arch) {
  const Adapter* adapter = post.adapter();
  if (adapter == nullptr) return;
  const AdapterSummary& summary = adapter->summary();
  POSTSVD_CHECK(summary.skipped.empty(), InvalidArgument,
                summary.weights_file << ": tensor '" << summary.skipped.front().first << "' is "
                                     << summary.skipped.front().second << "; a construction writes the merged "
                                     << "projections only, so it would lose that change: merge the adapter with peft "
                                     << "(merge_and_unload) and construct from the merged folder");
  for (const std::string& replaced : summary.replaced_tensors) {
    const bool projection = std::any_of(arch.matrices.begin(), arch.matrices.end(),
                                        [&](const MatrixSource& s) { return s.tensor == replaced; });
    POSTSVD_CHECK(projection, InvalidArgument,
                  summary.weights_file << ": modules_to_save replaces '" << replaced << "', which is not a projection; "
                                       << "a construction writes the merged projections only: merge the adapter with "
                                       << "peft (merge_and_unload) and construct from the merged folder");
  }
}


// The post model's matrices selected by layers and kinds (validated).
std::vector<const MatrixSource*> select_matrices(const Architecture& arch, const std::vector<int>& layers,
                                                 const std::vector<std::string>& kinds, const std::string& folder) {
  std::set<int> layer_set;
  for (int layer : layers) {
    POSTSVD_CHECK(layer >= 0 && layer < arch.num_layers, InvalidArgument,
                  "layer " << layer << " does not exist: " << folder << " has " << arch.num_layers
                           << " layers (0 to " << arch.num_layers - 1 << ")");
    layer_set.insert(layer);
  }
  std::set<Kind> kind_set;
  for (const std::string& name : kinds) kind_set.insert(parse_kind(name));
  std::set<Kind> present;
  for (const MatrixSource& s : arch.matrices) present.insert(s.kind);
  for (Kind kind : kind_set) {
    if (present.count(kind) == 0) {
      std::ostringstream have;
      for (Kind p : present) have << (have.tellp() > 0 ? ", " : "") << kind_name(p);
      POSTSVD_THROW(InvalidArgument, "kind '" << kind_name(kind) << "' does not exist in " << folder << " (model_type "
                                              << arch.model_type << "; it has " << have.str() << ")");
    }
  }
  std::vector<const MatrixSource*> out;
  for (const MatrixSource& s : arch.matrices) {
    if (!layer_set.empty() && layer_set.count(s.layer) == 0) continue;
    if (!kind_set.empty() && kind_set.count(s.kind) == 0) continue;
    out.push_back(&s);
  }
  POSTSVD_CHECK(!out.empty(), InvalidArgument, "no matrix selected in " << folder);
  return out;
}

const MatrixSource& counterpart(const Architecture& arch, const MatrixSource& s, const std::string& folder) {
  for (const MatrixSource& c : arch.matrices)
    if (c.layer == s.layer && c.kind == s.kind && c.expert == s.expert) return c;
  POSTSVD_THROW(BadCheckpoint, folder << ": no matrix for " << source_label(s) << " (tensor '" << s.tensor << "')");
}

template <class T>
std::vector<T> singular_values_only(const TensorView& view) {
  Matrix<T> a = to_matrix<T>(view);
  const lapack_int m = as_int(a.rows(), "rows"), n = as_int(a.cols(), "cols");
  const lapack_int k = std::min(m, n);
  std::vector<T> s(static_cast<std::size_t>(k));
  if (k == 0) return s;
  std::vector<lapack_int> iwork(static_cast<std::size_t>(8 * k));
  lapack_int info = 0;
  T query = 0, dummy = 0;
  detail::gesdd('N', m, n, a.data(), m, s.data(), &dummy, 1, &dummy, 1, &query, -1, iwork.data(), &info);
  POSTSVD_CHECK(info == 0, BackendError, tensor_label(view) << ": gesdd workspace query failed, info = " << info);
  std::vector<T> work(static_cast<std::size_t>(detail::workspace_size(query)));
  detail::gesdd('N', m, n, a.data(), m, s.data(), &dummy, 1, &dummy, 1, work.data(),
                static_cast<lapack_int>(work.size()), iwork.data(), &info);
  POSTSVD_CHECK(info == 0, BackendError,
                tensor_label(view) << ": singular values of [" << m << ", " << n << "]: gesdd failed, info = " << info);
  return s;
}

template <class T>
std::vector<T> singular_values(Backend& backend, FactorCache* cache, const TensorView& view) {
  if (cache == nullptr && backend.device() == Device::CPU) return singular_values_only<T>(view);
  return decompose_cached<T>(backend, cache, view).S;
}

template <class T>
AlphaChoice default_alpha_impl(const std::string& base, const std::string& post, const std::vector<int>& layers,
                               const std::vector<std::string>& kinds, const BackendOptions& options,
                               const std::string& factor_cache, const AdapterOptions& adapter) {
  Opened b(base), p(post, base, adapter);
  check_same_architecture(b.checkpoint, b.architecture, p.checkpoint, p.architecture);
  const auto selected = select_matrices(p.architecture, layers, kinds, post);
  auto backend = make_backend(options);
  std::unique_ptr<FactorCache> cache = factor_cache.empty() ? nullptr : std::make_unique<FactorCache>(factor_cache);
  std::map<std::string, std::pair<double, int64_t>> sums;  // kind -> (sum, count) of top-90 % ratios
  for (const MatrixSource* s : selected) {
    const MatrixSource& sb = counterpart(b.architecture, *s, base);
    const std::vector<T> sigma_base = singular_values<T>(*backend, cache.get(), view_of(b.checkpoint, sb));
    const std::vector<T> sigma_post = singular_values<T>(*backend, cache.get(), view_of(p.checkpoint, *s));
    const std::size_t k = sigma_base.size();
    const std::size_t top = static_cast<std::size_t>(std::ceil(0.9 * static_cast<double>(k)));
    auto& acc = sums[kind_name(s->kind)];
    for (std::size_t j = 0; j < top && j < k; ++j) {
      acc.first += static_cast<double>(sigma_post[j]) / static_cast<double>(sigma_base[j]);
      acc.second += 1;
    }
  }
  AlphaChoice choice;
  for (const auto& item : sums) {
    const double mean = item.second.first / static_cast<double>(item.second.second);
    choice.pooled_mean[item.first] = mean;
    choice.alpha[item.first] = table4_alpha(mean);
  }
  return choice;
}

// What made a construction's new weights, for the writer's error when one does not fit the stored dtype:
// the argument to change (alpha' of construction 9; otherwise the models whose singular values it uses).
std::string produced_by(Construction construction, const ConstructionRequest& request, const std::string& kind,
                        double alpha) {
  std::ostringstream text;
  text << "construction " << static_cast<int>(construction) << " (" << construction_formula(construction) << ")";
  if (construction_uses_alpha(construction)) {
    text << " with alpha' = " << alpha << " for kind '" << kind << "' (argument alpha); a smaller alpha' keeps the "
         << "weights in range";
  } else if (construction == Construction::Replace) {
    text << ": the singular values of the base model " << request.base << " are too large for the post model's dtype";
  } else {
    text << ": the post model " << request.post << " rotated by the "
         << (construction == Construction::RestoreFromRef ? "reference model " + request.ref : "base model " + request.base)
         << " has entries too large for its dtype";
  }
  return text.str();
}

template <class T>
ConstructionReport construct_impl(const ConstructionRequest& request, Construction construction,
                                  const ProgressCallback& progress) {
  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  Opened b(request.base), p(request.post, request.base, request.adapter);
  check_same_architecture(b.checkpoint, b.architecture, p.checkpoint, p.architecture);
  check_constructible(p.checkpoint, p.architecture);
  std::unique_ptr<Opened> r;
  if (construction_needs_ref(construction)) {
    r = std::make_unique<Opened>(request.ref, request.base, request.adapter);
    check_same_architecture(r->checkpoint, r->architecture, p.checkpoint, p.architecture);
  }
  const auto selected = select_matrices(p.architecture, request.layers, request.kinds, request.post);
  if (construction_uses_alpha(construction)) {
    for (const MatrixSource* s : selected) {
      const auto found = request.alpha.find(kind_name(s->kind));
      POSTSVD_CHECK(found != request.alpha.end(), InvalidArgument,
                    "construction 9: no alpha' for kind '" << kind_name(s->kind) << "'");
      POSTSVD_CHECK(std::isfinite(found->second) && found->second > 0, InvalidArgument,
                    "construction 9: alpha' for kind '" << kind_name(s->kind) << "' must be finite and > 0, got "
                                                        << found->second);
    }
  }
  auto backend = make_backend(request.backend);
  std::unique_ptr<FactorCache> cache =
      request.factor_cache.empty() ? nullptr : std::make_unique<FactorCache>(request.factor_cache);

  ConstructionReport report;
  report.backend_name = backend->name();
  auto t0 = clock::now();
  CheckpointWriter writer(p.checkpoint, request.out_folder);
  report.seconds_write += seconds_since(t0);

  const int64_t total = static_cast<int64_t>(selected.size());
  int64_t done = 0;
  for (const MatrixSource* s : selected) {
    if (progress) progress(done, total, source_label(*s));
    const MatrixSource& sb = counterpart(b.architecture, *s, request.base);
    ConstructionRow row;
    row.layer = s->layer;
    row.kind = kind_name(s->kind);
    row.expert = s->expert;
    row.tensor = s->tensor;
    row.rows = s->in_features;
    row.cols = s->out_features;
    row.alpha = construction_uses_alpha(construction) ? request.alpha.at(row.kind) : 1.0;

    t0 = clock::now();
    const TensorView post_view = view_of(p.checkpoint, *s);
    bool loaded_base = false, loaded_post = false, loaded_ref = true;
    WarmStart warm;
    warm.enabled = use_warm_start(*backend, request.warm_start, post_view.rows, post_view.cols, request.precision);
    const auto both = decompose_pair_cached<T>(*backend, cache.get(), view_of(b.checkpoint, sb), post_view, &loaded_base,
                                               &loaded_post, warm);
    const Decomposition<T>& dec_base = both.first;
    const Decomposition<T>& dec_post = both.second;
    Decomposition<T> dec_ref;
    if (r) {
      const MatrixSource& sr = counterpart(r->architecture, *s, request.ref);
      dec_ref = decompose_cached<T>(*backend, cache.get(), view_of(r->checkpoint, sr), &loaded_ref);
    }
    for (bool loaded : {loaded_base, loaded_post}) ++(loaded ? report.decompositions_loaded : report.decompositions_computed);
    if (r) ++(loaded_ref ? report.decompositions_loaded : report.decompositions_computed);
    row.decompositions_from_cache = loaded_base && loaded_post && loaded_ref;
    report.seconds_decompose += seconds_since(t0);

    t0 = clock::now();
    const Matrix<T> w = construct_weight(construction, dec_base, dec_post, r ? &dec_ref : nullptr, row.alpha);
    {
      const Matrix<T> stored = to_matrix<T>(post_view);
      double diff = 0, norm = 0;
      for (int64_t i = 0; i < w.size(); ++i) {
        const double d = static_cast<double>(w.data()[i]) - static_cast<double>(stored.data()[i]);
        diff += d * d;
        norm += static_cast<double>(stored.data()[i]) * static_cast<double>(stored.data()[i]);
      }
      row.relative_change = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    }
    if (request.rotations) row.rotation = shared_rotation(dec_base, dec_post, false);
    report.seconds_construct += seconds_since(t0);

    t0 = clock::now();
    writer.write(*s, w, produced_by(construction, request, row.kind, row.alpha));
    report.seconds_write += seconds_since(t0);
    report.rows.push_back(std::move(row));
    ++done;
  }
  if (p.checkpoint.adapter() != nullptr) {
    // The projections an adapter changes that the construction left: W + ΔW, as the merged model holds them.
    const Adapter& adapter = *p.checkpoint.adapter();
    std::set<const MatrixSource*> written(selected.begin(), selected.end());
    t0 = clock::now();
    for (const MatrixSource& s : p.architecture.matrices) {
      if (written.count(&s) != 0 || (!adapter.delta(s) && adapter.replacement(s.tensor) == nullptr)) continue;
      writer.write(s, to_matrix<T>(view_of(p.checkpoint, s)));
    }
    report.seconds_write += seconds_since(t0);
  }
  t0 = clock::now();
  report.written_files = writer.finish();
  report.seconds_write += seconds_since(t0);
  if (progress) progress(total, total, "written");
  return report;
}

}  // namespace

AlphaChoice default_alpha(const std::string& base, const std::string& post, const std::vector<int>& layers,
                          const std::vector<std::string>& kinds, Precision precision, const BackendOptions& backend,
                          const std::string& factor_cache, const AdapterOptions& adapter) {
  if (precision == Precision::F64) {
    return default_alpha_impl<double>(base, post, layers, kinds, backend, factor_cache, adapter);
  }
  return default_alpha_impl<float>(base, post, layers, kinds, backend, factor_cache, adapter);
}

ConstructionReport construct_checkpoint(const ConstructionRequest& request, const ProgressCallback& progress) {
  const Construction construction = parse_construction(request.number);
  POSTSVD_CHECK(!construction_needs_ref(construction) || !request.ref.empty(), InvalidArgument,
                "construction 12 needs a reference post model (ref): another post model of the same base");
  std::error_code ec;
  POSTSVD_CHECK(!request.out_folder.empty() && fs::is_directory(request.out_folder, ec), InvalidArgument,
                "construct_checkpoint: output folder '" << request.out_folder << "' does not exist");
  if (request.precision == Precision::F64) return construct_impl<double>(request, construction, progress);
  return construct_impl<float>(request, construction, progress);
}

}  // namespace postsvd
