// CPU backend: reduced SVD with LAPACK ?gesdd, measures with BLAS ?gemm.
#include "cpu/cpu_backend.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <exception>
#include <future>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "cpu/warm_svd.h"
#include "detail/lapack.h"
#include "postsvd/error.h"

namespace postsvd::cpu {
namespace {

using detail::lapack_int;

template <class T>
const char* lapack_prefix() {
  return sizeof(T) == sizeof(float) ? "s" : "d";
}

std::string shape_text(int64_t rows, int64_t cols) {
  std::ostringstream text;
  text << "[" << rows << ", " << cols << "]";
  return text.str();
}

/// dst [cols, rows] = src^T, src [rows, cols] column-major with leading dimension ld; blocked for the cache.
template <class T>
void transpose_into(const T* src, int64_t rows, int64_t cols, int64_t ld, T* dst) {
  constexpr int64_t block = 64;
  for (int64_t c0 = 0; c0 < cols; c0 += block) {
    const int64_t c1 = std::min(cols, c0 + block);
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t r1 = std::min(rows, r0 + block);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c + r * cols] = src[r + c * ld];
      }
    }
  }
}

/// Factors of a tall matrix X [p, q], p >= q: X = Ux diag(S) VTx, Ux [p, q], VTx [q, q].
template <class T>
struct TallSvd {
  Matrix<T> Ux;
  std::vector<T> S;
  Matrix<T> VTx;
};

template <class T>
[[noreturn]] void throw_lapack_failure(const char* routine, lapack_int info, const TensorView& view, bool transposed_input) {
  std::ostringstream text;
  text << lapack_prefix<T>() << routine << " failed on " << tensor_label(view) << " of shape "
       << shape_text(view.rows, view.cols) << (transposed_input ? " (decomposed as its transpose)" : "")
       << ": info = " << info;
  if (info < 0) {
    text << " (argument " << -info << " had an illegal value; this is a bug in postsvd)";
  } else {
    text << " (the SVD did not converge)";
  }
  throw BackendError(text.str());
}

lapack_int checked_workspace(double padded_size, const TensorView& view) {
  if (padded_size > static_cast<double>(INT_MAX)) {
    POSTSVD_THROW(BackendError, "LAPACK workspace for " << tensor_label(view) << " of shape "
                                    << shape_text(view.rows, view.cols) << " exceeds the 32-bit LAPACK limit");
  }
  return static_cast<lapack_int>(padded_size);
}

}  // namespace

/// Finite weights can still give infinite singular values: sigma_1 <= ||W||_F,
/// and past the working precision's largest value LAPACK returns inf. Checked
/// here (scaled, so the norm itself cannot overflow) before any work.
template <class T, class Stored>
void check_norm_fits(const Matrix<Stored>& x, const TensorView& original) {
  double largest = 0;
  for (int64_t i = 0; i < x.size(); ++i) largest = std::max(largest, std::abs(static_cast<double>(x.data()[i])));
  if (largest == 0) return;
  double sum = 0;
  const double inverse = 1.0 / largest;
  for (int64_t i = 0; i < x.size(); ++i) {
    const double scaled = static_cast<double>(x.data()[i]) * inverse;
    sum += scaled * scaled;
  }
  const double norm = largest * std::sqrt(sum);
  if (!(norm <= static_cast<double>(std::numeric_limits<T>::max()))) {
    POSTSVD_THROW(InvalidArgument, tensor_label(original) << " of shape " << shape_text(original.rows, original.cols)
                                              << ": Frobenius norm " << norm << " exceeds the largest "
                                              << (sizeof(T) == 4 ? "float32" : "float64") << " value "
                                              << std::numeric_limits<T>::max()
                                              << ", so its singular values would overflow to inf"
                                              << (sizeof(T) == 4 ? "; compare in float64 (dtype='float64')" : ""));
  }
}

template void check_norm_fits<float, double>(const Matrix<double>&, const TensorView&);
template void check_norm_fits<double, double>(const Matrix<double>&, const TensorView&);

namespace {

/// ?gesvd (QR iteration) on a fresh copy: the fallback when ?gesdd does not converge.
template <class T>
TallSvd<T> tall_svd_qr_iteration(const TensorView& tall_view, const TensorView& original, bool transposed_input) {
  Matrix<T> x = to_matrix<T>(tall_view);
  const auto p = static_cast<lapack_int>(x.rows());
  const auto q = static_cast<lapack_int>(x.cols());
  TallSvd<T> out{Matrix<T>(p, q), std::vector<T>(static_cast<std::size_t>(q)), Matrix<T>(q, q)};
  T query = 0;
  lapack_int info = 0;
  detail::gesvd('S', 'S', p, q, x.data(), p, out.S.data(), out.Ux.data(), p, out.VTx.data(), q, &query, -1, &info);
  if (info != 0) throw_lapack_failure<T>("gesvd", info, original, transposed_input);
  const lapack_int lwork = checked_workspace(static_cast<double>(detail::workspace_size(query)), original);
  std::vector<T> work(static_cast<std::size_t>(lwork));
  detail::gesvd('S', 'S', p, q, x.data(), p, out.S.data(), out.Ux.data(), p, out.VTx.data(), q, work.data(), lwork,
                &info);
  if (info != 0) throw_lapack_failure<T>("gesvd", info, original, transposed_input);
  return out;
}

template <class T>
TallSvd<T> tall_svd(const TensorView& tall_view, const TensorView& original, bool transposed_input) {
  TallSvd<T> out;
  lapack_int info = 0;
  {
    // [p, q]; ?gesdd 'O' overwrites it with U (p >= q), so no second [p, q] array is held.
    Matrix<T> x = to_matrix<T>(tall_view);
    check_norm_fits<T>(x, original);
    const auto p = static_cast<lapack_int>(x.rows());
    const auto q = static_cast<lapack_int>(x.cols());
    out.S.assign(static_cast<std::size_t>(q), T(0));
    out.VTx = Matrix<T>(q, q);
    std::vector<lapack_int> iwork(static_cast<std::size_t>(8) * static_cast<std::size_t>(q));
    T query = 0;
    T unused_u = 0;  // 'O' with p >= q does not reference U
    detail::gesdd('O', p, q, x.data(), p, out.S.data(), &unused_u, 1, out.VTx.data(), q, &query, -1, iwork.data(),
                  &info);
    if (info != 0) throw_lapack_failure<T>("gesdd", info, original, transposed_input);
    const lapack_int lwork = checked_workspace(static_cast<double>(detail::workspace_size(query)), original);
    std::vector<T> work(static_cast<std::size_t>(lwork));
    detail::gesdd('O', p, q, x.data(), p, out.S.data(), &unused_u, 1, out.VTx.data(), q, work.data(), lwork,
                  iwork.data(), &info);
    if (info == 0) out.Ux = std::move(x);
  }
  if (info < 0) throw_lapack_failure<T>("gesdd", info, original, transposed_input);
  if (info > 0) {
    out = TallSvd<T>{};  // release before the fallback allocates its own
    return tall_svd_qr_iteration<T>(tall_view, original, transposed_input);
  }
  return out;
}

}  // namespace

template <class T>
Decomposition<T> reduced_svd(const TensorView& view) {
  if (view.rows <= 0 || view.cols <= 0) {
    POSTSVD_THROW(InvalidArgument, "reduced_svd: " << tensor_label(view) << ": expected a non-empty matrix, got shape "
                                                           << shape_text(view.rows, view.cols));
  }
  if (view.rows > INT_MAX || view.cols > INT_MAX) {
    POSTSVD_THROW(InvalidArgument, "reduced_svd: " << tensor_label(view) << " of shape "
                                                           << shape_text(view.rows, view.cols)
                                                           << " exceeds LAPACK's 32-bit dimension limit");
  }
  // LAPACK's QR path (tall) beats its LQ path (wide): always decompose the tall one.
  const bool use_transpose = view.rows < view.cols;
  const TensorView tall_view = use_transpose ? view.transposed() : view;
  TallSvd<T> tall = tall_svd<T>(tall_view, view, use_transpose);

  const int64_t k = static_cast<int64_t>(tall.S.size());
  Decomposition<T> d;
  d.S = std::move(tall.S);
  if (!use_transpose) {
    // W = Ux S VTx: U = Ux [m, k], V = VTx^T [n, k].
    d.U = std::move(tall.Ux);
    d.V = Matrix<T>(view.cols, k);
    transpose_into(tall.VTx.data(), k, view.cols, k, d.V.data());
  } else {
    // W^T = Ux S VTx, so W = VTx^T S Ux^T: U = VTx^T [m, k], V = Ux [n, k].
    d.U = Matrix<T>(view.rows, k);
    transpose_into(tall.VTx.data(), k, view.rows, k, d.U.data());
    d.V = std::move(tall.Ux);
  }
  apply_sign_rule(d);
  return d;
}


template Decomposition<float> reduced_svd<float>(const TensorView& view);
template Decomposition<double> reduced_svd<double>(const TensorView& view);

void set_blas_threads(int num_threads) {
  if (num_threads < 0) {
    POSTSVD_THROW(InvalidArgument, "num_threads: expected 0 (every core) or a positive count, got " << num_threads);
  }
  if (POSTSVD_BLAS_NAME(openblas_set_num_threads) == nullptr) return;  // reference BLAS: single-threaded
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int wanted = num_threads == 0 ? cores : num_threads;
  // Only on a change: every call may start or park OpenBLAS's worker threads, and
  // this runs twice per pair.
  if (POSTSVD_BLAS_NAME(openblas_get_num_threads) != nullptr && POSTSVD_BLAS_NAME(openblas_get_num_threads)() == wanted) {
    return;
  }
  POSTSVD_BLAS_NAME(openblas_set_num_threads)(wanted);
}

int blas_threads() {
  return POSTSVD_BLAS_NAME(openblas_get_num_threads) != nullptr ? POSTSVD_BLAS_NAME(openblas_get_num_threads)() : 1;
}

std::string blas_description() {
  if (POSTSVD_BLAS_NAME(openblas_get_config) != nullptr) {
    const char* config = POSTSVD_BLAS_NAME(openblas_get_config)();
    if (config != nullptr) return config;
  }
  return "reference BLAS/LAPACK";
}

CpuBackend::CpuBackend(const BackendOptions& options) : num_threads_(options.num_threads) {
  if (options.device != Device::CPU) {
    POSTSVD_THROW(InvalidArgument, "CpuBackend: expected BackendOptions::device == CPU");
  }
  set_blas_threads(num_threads_);
}

std::string CpuBackend::name() const {
  std::ostringstream text;
  const int threads = blas_threads();
  text << "cpu (" << blas_description() << ", " << threads << (threads == 1 ? " thread)" : " threads)");
  return text.str();
}

Decomposition<float> CpuBackend::decompose_f32(const TensorView& w) {
  set_blas_threads(num_threads_);
  return reduced_svd<float>(w);
}

Decomposition<double> CpuBackend::decompose_f64(const TensorView& w) {
  set_blas_threads(num_threads_);
  return reduced_svd<double>(w);
}

namespace {

// The warm start on `threads` BLAS threads with the default settings: the one path of
// decompose_warm_* and of compare's warm pairs.
template <class T>
Decomposition<T> warm_decomposition(const TensorView& w, const Decomposition<T>& start, int threads, WarmReport* report) {
  set_blas_threads(threads);
  return warm_svd<T>(w, start, default_warm_settings<T>(), report);
}

}  // namespace

Decomposition<float> CpuBackend::decompose_warm_f32(const TensorView& w, const Decomposition<float>& start,
                                                    WarmReport* report) {
  return warm_decomposition<float>(w, start, num_threads_, report);
}

Decomposition<double> CpuBackend::decompose_warm_f64(const TensorView& w, const Decomposition<double>& start,
                                                     WarmReport* report) {
  return warm_decomposition<double>(w, start, num_threads_, report);
}

bool CpuBackend::warm_start_pays(int64_t, int64_t, Precision) const {
  // Measured (benchmarks/RESULTS.md, "Warm start"): the block Jacobi's float64 GEMMs cost more than
  // the float32 ?gesdd at every shape from the bundled family's to Qwen2.5-1.5B's.
  return false;
}

namespace {

int resolved_threads(int num_threads) {
  return num_threads > 0 ? num_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

/// Two cores: the two SVDs of a pair run side by side, one BLAS thread each.
/// ?gesdd's bidiagonal reduction is half BLAS-2 and scales poorly over two
/// threads, so two single-threaded SVDs at once beat two 2-thread SVDs in a row.
/// OpenBLAS has one global thread count, so with more cores the pair runs in
/// sequence with every thread; the single-threaded reference LAPACK always pairs.
bool decompose_side_by_side(int num_threads) {
  const int threads = resolved_threads(num_threads);
  return POSTSVD_BLAS_NAME(openblas_set_num_threads) == nullptr ? threads >= 2 : threads == 2;
}

/// Bytes one tall_svd of `view` holds at its peak: the [m, n] copy (U in the end), V^T and
/// ?gesdd 'O''s workspace of about 5 n^2 (m >= n; m, n the longer and shorter side).
template <class T>
double svd_peak_bytes(const TensorView& view) {
  const double m = static_cast<double>(std::max(view.rows, view.cols));
  const double n = static_cast<double>(std::min(view.rows, view.cols));
  return (m * n + 6.0 * n * n) * static_cast<double>(sizeof(T));
}

/// Above this, a pair's two SVDs run in sequence: side by side a Llama-70B MLP pair
/// (28672 x 8192) would hold two workspaces at once (over 6 GB in float32).
constexpr double kSideBySideBytes = 2.0 * 1024 * 1024 * 1024;

template <class T>
std::pair<Decomposition<T>, Decomposition<T>> decompose_both(const TensorView& base_view, const TensorView& post_view,
                                                            int num_threads) {
  set_blas_threads(num_threads);
  if (!decompose_side_by_side(num_threads) ||
      svd_peak_bytes<T>(base_view) + svd_peak_bytes<T>(post_view) > kSideBySideBytes) {
    Decomposition<T> base = reduced_svd<T>(base_view);
    return {std::move(base), reduced_svd<T>(post_view)};
  }
  Decomposition<T> base;
  Decomposition<T> post;
  set_blas_threads(1);
  std::exception_ptr post_error;
  {
    std::future<Decomposition<T>> base_job =
        std::async(std::launch::async, [&base_view] { return reduced_svd<T>(base_view); });
    try {
      post = reduced_svd<T>(post_view);
    } catch (...) {
      post_error = std::current_exception();
    }
    try {
      base = base_job.get();
    } catch (...) {
      set_blas_threads(num_threads);
      throw;  // the base error first: it names the tensor the caller listed first
    }
  }
  set_blas_threads(num_threads);  // the products of measures_from use every thread
  if (post_error) std::rethrow_exception(post_error);
  return {std::move(base), std::move(post)};
}

template <class T>
PairMeasures measure_pair(const CpuBackend& backend, const PairInput& pair, const MeasureOptions& options,
                          int num_threads) {
  // Both factor sets die at the end of this function, before the next pair starts.
  if (!use_warm_start(backend, options.warm_start, pair.post.rows, pair.post.cols, options.precision)) {
    const auto both = decompose_both<T>(pair.base, pair.post, num_threads);
    return measures_from(both.first, both.second, options);
  }
  // The post starts from the base's factors, so it waits for them.
  set_blas_threads(num_threads);
  const Decomposition<T> base = reduced_svd<T>(pair.base);
  WarmReport report;
  const Decomposition<T> post = warm_decomposition<T>(pair.post, base, num_threads, &report);
  PairMeasures measures = measures_from(base, post, options);
  measures.warm_sweeps = report.sweeps;
  return measures;
}

}  // namespace

std::vector<PairMeasures> CpuBackend::compare(const std::vector<PairInput>& pairs, const MeasureOptions& options) {
  set_blas_threads(num_threads_);
  // Check every pair first: a mismatch should not surface after minutes of work.
  check_compare_arguments(pairs, options);
  std::vector<PairMeasures> results;
  results.reserve(pairs.size());
  for (const PairInput& pair : pairs) {
    if (options.precision == Precision::F32) {
      results.push_back(measure_pair<float>(*this, pair, options, num_threads_));
    } else {
      results.push_back(measure_pair<double>(*this, pair, options, num_threads_));
    }
  }
  return results;
}

std::pair<Decomposition<float>, Decomposition<float>> CpuBackend::decompose_pair_f32(const TensorView& base,
                                                                                     const TensorView& post) {
  return decompose_both<float>(base, post, num_threads_);
}

std::pair<Decomposition<double>, Decomposition<double>> CpuBackend::decompose_pair_f64(const TensorView& base,
                                                                                       const TensorView& post) {
  return decompose_both<double>(base, post, num_threads_);
}

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options) { return std::make_unique<CpuBackend>(options); }

}  // namespace postsvd::cpu
