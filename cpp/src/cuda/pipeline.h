// The working-precision pipeline of one lane (C = float or double): staging
// and conversion on the device, the decomposition (Gram64 or a direct
// cuSOLVER SVD, with the float64 gesvd fallback), the sign rule, the measures
// by cuBLAS and the downloads. Internal to cuda_backend.cpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/check.h"
#include "cuda/cuda_backend.h"
#include "cuda/kernels.h"
#include "cuda/lane.h"
#include "cuda/plan.h"
#include "cuda/solver.h"
#include "detail/int_range.h"
#include "postsvd/error.h"
#include "postsvd/measures.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

using detail::as_int;

inline int64_t short_side(const TensorView& v) { return std::min(v.rows, v.cols); }

inline std::string shape_of(const TensorView& v) {
  std::ostringstream out;
  out << "[" << v.rows << ", " << v.cols << "]";
  return out.str();
}

// The working-precision pipeline for one lane; C = float or double.
template <class C>
class Pipeline {
 public:
  // `precision`: the working precision; quantized views dequantize in it (float32 rounds q * scale
  // once, as to_matrix<float> does, even where the method computes in float64).
  Pipeline(Lane& lane, SvdMethod method, Precision precision, double orth_tolerance)
      : lane_(lane), method_(method), precision_(precision), tolerance_(orth_tolerance) {}

  // Copies the bytes staging_of(v) names (the stored span, then a quantized
  // view's scales) into pinned staging, then to the device on the copy
  // stream; `slot` 0 goes first in the raw buffer, 1 after it.
  void stage(const TensorView& v, int slot) {
    const std::size_t offset = slot == 0 ? 0 : next_offset_;
    const Staging staging = staging_of(v);
    char* host = lane_.staging.get<char>() + offset;
    std::memcpy(host, static_cast<const char*>(v.data) + staging.first, static_cast<std::size_t>(staging.bytes));
    if (staging.scale_bytes > 0)
      std::memcpy(host + staging.scale_offset, static_cast<const char*>(v.scales.data) + staging.scale_first,
                  static_cast<std::size_t>(staging.scale_bytes));
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(lane_.raw.get<char>() + offset, host, staging.total, cudaMemcpyHostToDevice,
                                     lane_.copy_stream));
    POSTSVD_CUDA_TRY(cudaEventRecord(lane_.staged[slot], lane_.copy_stream));
    raw_offset_[slot] = offset;
    next_offset_ = offset + align_up(staging.total);
  }

  // Converts staged matrix `slot` into lane.work; transposed = W^T [n, m]. Quantized views are
  // dequantized here, in the working precision.
  void convert(const TensorView& v, int slot, bool transposed) {
    POSTSVD_CUDA_TRY(cudaStreamWaitEvent(lane_.stream, lane_.staged[slot], 0));
    const char* stored = lane_.raw.get<char>() + raw_offset_[slot];
    unsigned long long* first_bad = lane_.device_scalars()->first_bad + slot;
    const TensorView w = transposed ? v.transposed() : v;
    convert_view<C>(stored, w.dtype, staged_base_offset(v), w.rows, w.cols, layout_of(w),
                    device_scales(v, stored, precision_), lane_.work.get<C>(), first_bad, lane_.stream);
  }

  // First pass of a decomposition: u[slot], v[slot], s[slot] of lane.work (converted from v).
  void decompose(const TensorView& v, int slot) {
    if (method_ == SvdMethod::Gram64) {
      convert(v, slot, false);
      gram(v, slot);
    } else {
      convert(v, slot, v.rows < v.cols);
      direct(v, slot, method_);
    }
  }

  // Warm first pass (Gram64 only): slot `slot` of `v` from the eig-side factor of slot `from`
  // (V_s, [k, k]; the base of the same pair, already queued on this stream): G' = V_s^T G V_s is
  // nearly diagonal for a close pair, syevj converges on it in a few sweeps, then V = V_s Z and
  // the other side by GEMM and column norms, with Gram's orthogonality check.
  void decompose_warm(const TensorView& v, int slot, int from) {
    POSTSVD_CHECK(method_ == SvdMethod::Gram64, BackendError, "internal: the warm start needs the gram64 method");
    convert(v, slot, false);
    warm_gram(v, slot, from);
    warm_[slot] = true;
  }

  // Sweeps the last warm syevj ran (after finish_round).
  int64_t warm_sweeps() const {
    int sweeps = 0;
    POSTSVD_CUSOLVER_TRY(cusolverDnXsyevjGetSweeps(lane_.solver, lane_.warm_jacobi, &sweeps));
    return sweeps;
  }

  // After finish_round: throws on NaN/Inf and devInfo; a warm slot whose syevj did not converge
  // is redone cold (Gram); failed Gram decompositions are redone with gesvd. Returns the number
  // of fallbacks taken; `redone` (when not null) marks the slots redone.
  int settle(const TensorView* const* views, int count, bool* redone_slots = nullptr) {
    LaneScalars round = *lane_.readback();  // the fallback rounds below overwrite the readback
    LaneScalars* r = &round;
    for (int i = 0; i < count; ++i) {
      if (r->first_bad[i] != kNoBadElement) {
        const TensorView& v = *views[i];
        const int64_t index = static_cast<int64_t>(r->first_bad[i]);
        POSTSVD_THROW(InvalidArgument, tensor_label(v) << " " << shape_of(v) << ": element (" << index % v.rows << ", "
                                                  << index / v.rows << ") is NaN or Inf (or overflows the working precision)");
      }
    }
    lane_.check_infos();
    int redone = 0;
    if (method_ != SvdMethod::Gram64) return 0;
    for (int i = 0; i < count; ++i) {
      if (redone_slots != nullptr) redone_slots[i] = false;
      if (warm_[i] && r->warm_info[i] != 0) {  // not close enough: the cold Gram path
        POSTSVD_CHECK(r->warm_info[i] > 0, BackendError,
                      "cusolverDnDsyevj failed on '" << views[i]->name << "': devInfo = " << r->warm_info[i]
                                                     << " (invalid parameter)");
        lane_.reset_scalars();
        convert(*views[i], i, false);
        gram(*views[i], i);
        lane_.finish_round();
        lane_.check_infos();
        r->orth[i] = lane_.readback()->orth[i];
        if (redone_slots != nullptr) redone_slots[i] = true;
        ++redone;
      }
      if (!(r->orth[i] <= tolerance_)) {
        if (redone_slots != nullptr) redone_slots[i] = true;
        lane_.reset_scalars();
        convert(*views[i], i, views[i]->rows < views[i]->cols);
        direct(*views[i], i, SvdMethod::Gesvd);
        lane_.finish_round();
        lane_.check_infos();
        ++redone;
      }
    }
    return redone;
  }

  void sign_rule(const TensorView& v, int slot) {
    const int64_t k = short_side(v);
    apply_sign_rule<C>(lane_.u[slot].get<C>(), v.rows, v.rows, lane_.v[slot].get<C>(), v.cols, v.cols, k, lane_.stream);
  }

  // Q1, Q2, I_orth, NF and the vectors into lane.results: sigma_base, sigma_post, iorth_diag ([k] each),
  // then the intruder cosines ([intruder_vectors(intruders, k)], max_i |Q(i, j)| of Q2 or Q1 as `intruders` says);
  // returns after the device-to-host copy is queued.
  void measure(const Shape& shape, const IntruderOptions& intruders) {
    const int64_t m = shape.m, n = shape.n, k = shape.k();
    C* q1 = square(0);
    C* q2 = square(1);
    C* iorth = square(2);
    const C one = 1, zero = 0;
    const int ik = as_int(k, "k");
    POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, as_int(m, "rows"), &one, lane_.u[0].get<C>(),
                                     as_int(m, "ld"), lane_.u[1].get<C>(), as_int(m, "ld"), &zero, q1, ik));
    POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, as_int(n, "cols"), &one, lane_.v[0].get<C>(),
                                     as_int(n, "ld"), lane_.v[1].get<C>(), as_int(n, "ld"), &zero, q2, ik));
    POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, ik, &one, q1, ik, q2, ik, &zero, iorth, ik));
    squared_deviation_from_identity<C>(iorth, k, k, &lane_.device_scalars()->nf_squared, lane_.stream);
    double* results = lane_.results.get<double>();
    gather_to_double<C>(lane_.s[0].get<C>(), k, 1, results, lane_.stream);
    gather_to_double<C>(lane_.s[1].get<C>(), k, 1, results + k, lane_.stream);
    gather_to_double<C>(iorth, k, k + 1, results + 2 * k, lane_.stream);
    const int64_t examined = intruder_vectors(intruders, k);
    column_max_abs<C>(intruders.side == IntruderSide::Output ? q2 : q1, k, examined, k, results + 3 * k, lane_.stream);
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(lane_.host_results.get(), results,
                                     static_cast<std::size_t>(3 * k + examined) * sizeof(double),
                                     cudaMemcpyDeviceToHost, lane_.stream));
  }

  // square(2) = Q1[:kk, :kk]^T Q2[:kk, :kk], [kk, kk] with leading dimension kk.
  void truncated_iorth(int64_t k, int64_t kk) {
    const C one = 1, zero = 0;
    const int ikk = as_int(kk, "leading_k"), ik = as_int(k, "k");
    POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ikk, ikk, ikk, &one, square(0), ik, square(1), ik,
                                     &zero, square(2), ikk));
  }

  // The leading [kk, kk] block of square(which) (leading dimension k) as a host Matrix<double>.
  Matrix<double> leading_block(int which, int64_t k, int64_t kk) {
    std::vector<C> host(static_cast<std::size_t>(kk * kk));
    POSTSVD_CUDA_TRY(cudaMemcpy2DAsync(host.data(), static_cast<std::size_t>(kk) * sizeof(C), square(which),
                                       static_cast<std::size_t>(k) * sizeof(C), static_cast<std::size_t>(kk) * sizeof(C),
                                       static_cast<std::size_t>(kk), cudaMemcpyDeviceToHost, lane_.stream));
    POSTSVD_CUDA_TRY(cudaStreamSynchronize(lane_.stream));
    Matrix<double> out(kk, kk);
    for (int64_t i = 0; i < kk * kk; ++i) out.data()[i] = static_cast<double>(host[static_cast<std::size_t>(i)]);
    return out;
  }

  // Copies u/s/v of `slot` to the host in precision T.
  template <class T>
  Decomposition<T> download(const TensorView& v, int slot) {
    const int64_t m = v.rows, n = v.cols, k = short_side(v);
    std::vector<C> u(static_cast<std::size_t>(m * k)), vv(static_cast<std::size_t>(n * k)), s(static_cast<std::size_t>(k));
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(u.data(), lane_.u[slot].get(), u.size() * sizeof(C), cudaMemcpyDeviceToHost, lane_.stream));
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(vv.data(), lane_.v[slot].get(), vv.size() * sizeof(C), cudaMemcpyDeviceToHost, lane_.stream));
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(s.data(), lane_.s[slot].get(), s.size() * sizeof(C), cudaMemcpyDeviceToHost, lane_.stream));
    POSTSVD_CUDA_TRY(cudaStreamSynchronize(lane_.stream));
    Decomposition<T> d;
    d.U = Matrix<T>(m, k);
    d.V = Matrix<T>(n, k);
    std::transform(u.begin(), u.end(), d.U.data(), [](C x) { return static_cast<T>(x); });
    std::transform(vv.begin(), vv.end(), d.V.data(), [](C x) { return static_cast<T>(x); });
    d.S.resize(static_cast<std::size_t>(k));
    std::transform(s.begin(), s.end(), d.S.begin(), [](C x) { return static_cast<T>(x); });
    for (std::size_t j = 1; j < d.S.size(); ++j) d.S[j] = std::min(d.S[j], d.S[j - 1]);  // rounding-level ties
    return d;
  }

 private:
  C* square(int which) {
    return reinterpret_cast<C*>(lane_.square.get<char>() + static_cast<std::size_t>(which) * (lane_.square.bytes() / 3));
  }

  // target [k, k] = W^T W (tall) or W W^T (wide), W = lane.work.
  void short_side_gram(const TensorView& v, C* target) {
    const int64_t m = v.rows, n = v.cols, k = short_side(v);
    const C one = 1, zero = 0;
    const C* w = lane_.work.get<C>();
    const bool tall = m >= n;
    const int ik = as_int(k, "k"), il = as_int(tall ? m : n, "rows"), im = as_int(m, "rows");
    if (tall)  // G = W^T W  [n, n]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, il, &one, w, im, w, im, &zero, target, ik));
    else  // G = W W^T  [m, m]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_N, CUBLAS_OP_T, ik, ik, il, &one, w, im, w, im, &zero, target, ik));
  }

  // float64 Gram of the short side, syevd, the long side by GEMM and column norms.
  void gram(const TensorView& v, int slot) {
    const int64_t m = v.rows, n = v.cols, k = short_side(v);
    const bool tall = m >= n;
    // eig side [k, k] (V when tall, U when wide), gemm side [long, k] (other_side).
    C* eig = tall ? lane_.v[slot].get<C>() : lane_.u[slot].get<C>();
    const int ik = as_int(k, "k");
    short_side_gram(v, eig);
    C* sigma = lane_.s[slot].get<C>();
    const int lwork = as_int(static_cast<int64_t>(lane_.solver_ws.bytes() / sizeof(C)), "lwork");
    if constexpr (sizeof(C) == sizeof(double)) {
      POSTSVD_CUSOLVER_TRY(Blas<C>::syevd(lane_.solver, ik, eig, ik, sigma, lane_.solver_ws.get<C>(), lwork,
                                          POSTSVD_INFO(lane_, "cusolverDnDsyevd", v.name)));
    } else {
      POSTSVD_CUSOLVER_TRY(Blas<C>::syevd(lane_.solver, ik, eig, ik, sigma, lane_.solver_ws.get<C>(), lwork,
                                          POSTSVD_INFO(lane_, "cusolverDnSsyevd", v.name)));
    }
    reverse_columns<C>(eig, k, k, k, sigma, lane_.stream);  // descending
    other_side(v, slot);
  }

  // The warm start of gram(): G' = S^T G S with S the eig side of slot `from`, syevj, eig = S Z.
  void warm_gram(const TensorView& v, int slot, int from) {
    if constexpr (sizeof(C) != sizeof(double)) {
      POSTSVD_THROW(BackendError, "internal: the warm start runs in float64 (gram64)");
    } else {
      const int64_t k = short_side(v);
      const C one = 1, zero = 0;
      const bool tall = v.rows >= v.cols;
      C* eig = tall ? lane_.v[slot].get<C>() : lane_.u[slot].get<C>();
      const C* start = tall ? lane_.v[from].get<C>() : lane_.u[from].get<C>();  // [k, k]
      const int ik = as_int(k, "k");
      C* gram_matrix = square(0);
      C* rotated = square(1);
      short_side_gram(v, gram_matrix);
      // G' = S^T (G S): eig holds G S for a moment.
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_N, CUBLAS_OP_N, ik, ik, ik, &one, gram_matrix, ik, start, ik, &zero, eig, ik));
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, ik, &one, start, ik, eig, ik, &zero, rotated, ik));
      C* sigma = lane_.s[slot].get<C>();
      const int lwork = as_int(static_cast<int64_t>(lane_.solver_ws.bytes() / sizeof(C)), "lwork");
      POSTSVD_CUSOLVER_TRY(Blas<C>::syevj(lane_.solver, ik, rotated, ik, sigma, lane_.solver_ws.get<C>(), lwork,
                                          lane_.device_scalars()->warm_info + slot, lane_.warm_jacobi));
      // eig = S Z, then descending as gram() does.
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_N, CUBLAS_OP_N, ik, ik, ik, &one, start, ik, rotated, ik, &zero, eig, ik));
      reverse_columns<C>(eig, k, k, k, sigma, lane_.stream);
      other_side(v, slot);
    }
  }

  // U = W V (tall) or V = W^T U (wide), column norms as sigma, and the orthogonality check of that side.
  void other_side(const TensorView& v, int slot) {
    const int64_t m = v.rows, n = v.cols, k = short_side(v);
    const C one = 1, zero = 0;
    const C* w = lane_.work.get<C>();
    const bool tall = m >= n;
    C* eig = tall ? lane_.v[slot].get<C>() : lane_.u[slot].get<C>();
    C* other = tall ? lane_.u[slot].get<C>() : lane_.v[slot].get<C>();
    const int64_t long_side = tall ? m : n;
    const int ik = as_int(k, "k"), il = as_int(long_side, "rows"), im = as_int(m, "rows");
    C* sigma = lane_.s[slot].get<C>();
    if (tall)  // U = W V  [m, k]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_N, CUBLAS_OP_N, im, ik, ik, &one, w, im, eig, ik, &zero, other, im));
    else  // V = W^T U  [n, k]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, il, ik, im, &one, w, im, eig, ik, &zero, other, il));
    normalize_columns<C>(other, long_side, k, long_side, sigma, lane_.stream);  // sigma = column norms
    // Loss of orthogonality of the GEMM side decides the fallback.
    C* check = square(1);
    POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, il, &one, other, il, other, il, &zero, check, ik));
    max_deviation_from_identity<C>(check, k, k, &lane_.device_scalars()->orth[slot], lane_.stream);
  }

  // A cuSOLVER SVD of lane.work in the tall orientation ([max(m,n), k], converted transposed when wide).
  void direct(const TensorView& v, int slot, SvdMethod method) {
    const bool wide = v.rows < v.cols;
    const int64_t tall = std::max(v.rows, v.cols), k = short_side(v);
    C* a = lane_.work.get<C>();
    C* u_tall = wide ? lane_.v[slot].get<C>() : lane_.u[slot].get<C>();  // [tall, k]
    C* v_tall = wide ? lane_.u[slot].get<C>() : lane_.v[slot].get<C>();  // [k, k]
    C* sigma = lane_.s[slot].get<C>();
    const cudaDataType_t type = Blas<C>::kType;
    switch (method) {
      case SvdMethod::Gesvd: {
        C* vt = square(0);  // [k, k]
        POSTSVD_CUSOLVER_TRY(cusolverDnXgesvd(lane_.solver, lane_.solver_params, 'S', 'S', tall, k, type, a, tall, type, sigma,
                                              type, u_tall, tall, type, vt, k, type, lane_.solver_ws.get(),
                                              lane_.solver_ws.bytes(), lane_.host_ws.data(), lane_.host_ws.size(),
                                              POSTSVD_INFO(lane_, "cusolverDnXgesvd", v.name)));
        const C one = 1, zero = 0;
        const int ik = as_int(k, "k");
        POSTSVD_CUBLAS_TRY(Blas<C>::geam(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, &one, vt, ik, &zero, vt, ik, v_tall, ik));
        break;
      }
      case SvdMethod::Gesvdj: {
        const int lwork = as_int(static_cast<int64_t>(lane_.solver_ws.bytes() / sizeof(C)), "lwork");
        POSTSVD_CUSOLVER_TRY(Blas<C>::gesvdj(lane_.solver, as_int(tall, "rows"), as_int(k, "cols"), a, as_int(tall, "ld"), sigma,
                                             u_tall, as_int(tall, "ld"), v_tall, as_int(k, "ld"), lane_.solver_ws.get<C>(), lwork,
                                             POSTSVD_INFO(lane_, "cusolverDn<t>gesvdj", v.name), lane_.jacobi));
        break;
      }
      case SvdMethod::Gesvdp: {
        double err_sigma = 0;
        POSTSVD_CUSOLVER_TRY(cusolverDnXgesvdp(lane_.solver, lane_.solver_params, CUSOLVER_EIG_MODE_VECTOR, 1, tall, k, type, a,
                                               tall, type, sigma, type, u_tall, tall, type, v_tall, k, type,
                                               lane_.solver_ws.get(), lane_.solver_ws.bytes(), lane_.host_ws.data(),
                                               lane_.host_ws.size(), POSTSVD_INFO(lane_, "cusolverDnXgesvdp", v.name),
                                               &err_sigma));
        break;
      }
      case SvdMethod::Gram64:
        POSTSVD_THROW(BackendError, "internal: direct() called with gram64");
    }
  }

  Lane& lane_;
  SvdMethod method_;
  Precision precision_;
  double tolerance_;
  bool warm_[2] = {false, false};
  std::size_t raw_offset_[2] = {0, 0};
  std::size_t next_offset_ = 0;
};

}  // namespace cuda
}  // namespace postsvd
