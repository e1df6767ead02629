// The CUDA backend: stored bytes go to the device (pinned staging, a copy
// stream), are converted there by kernels.cu into the working precision,
// decomposed with cuSOLVER and measured with cuBLAS; only sigma vectors and
// small results come back. Worker lanes (a host thread, two streams, handles
// and buffers each; several per GPU, one set per GPU listed) take pairs from
// a shared counter, so one pair's transfer and host work overlap another's
// compute. Method choice and measurements: benchmarks/RESULTS_GPU.md.
#include "cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/cuda_util.h"
#include "cuda/host_dequantize.h"
#include "cuda/kernels.h"
#include "cuda/solver.h"
#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_<unknown>";
  }
}

const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<other>";
  }
}

const char* method_name(SvdMethod method) {
  switch (method) {
    case SvdMethod::Gram64: return "gram64";
    case SvdMethod::Gesvd: return "gesvd";
    case SvdMethod::Gesvdj: return "gesvdj";
    case SvdMethod::Gesvdp: return "gesvdp";
  }
  return "?";
}

SvdMethod parse_method(const std::string& name) {
  for (SvdMethod m : {SvdMethod::Gram64, SvdMethod::Gesvd, SvdMethod::Gesvdj, SvdMethod::Gesvdp})
    if (name == method_name(m)) return m;
  POSTSVD_THROW(InvalidArgument, "unknown CUDA SVD method '" << name << "'; expected gram64, gesvd, gesvdj or gesvdp");
}

namespace {

constexpr std::size_t kAlign = 256;
constexpr int kInfoSlots = 64;

std::size_t align_up(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

int64_t short_side(const TensorView& v) { return std::min(v.rows, v.cols); }

std::string shape_of(const TensorView& v) {
  std::ostringstream out;
  out << "[" << v.rows << ", " << v.cols << "]";
  return out.str();
}

void check_view(const TensorView& v, const std::string& role) {
  POSTSVD_CHECK(v.data != nullptr, InvalidArgument, role << " '" << v.name << "': view has no data (null pointer)");
  POSTSVD_CHECK(v.rows > 0 && v.cols > 0, InvalidArgument,
                role << " '" << v.name << "': expected a non-empty matrix, got shape " << shape_of(v));
  POSTSVD_CHECK(is_float_dtype(v.dtype) || needs_host_dequantization(v), InvalidArgument,
                role << " '" << v.name << "': expected dtype BF16, F16, F32, F64, F8_E4M3 or F8_E5M2 (or a quantized "
                     << "view), got " << dtype_name(v.dtype));
}

// Where a devInfo slot came from, for the error message.
struct InfoSlot {
  const char* call;
  std::string tensor;
  const char* file;
  int line;
};

// Small results a lane reads back once per decomposition round.
struct LaneScalars {
  unsigned long long first_bad[2];
  double orth[2];
  double nf_squared;
  int info[kInfoSlots];
};

struct Shape {
  int64_t m = 0;  // rows (in)
  int64_t n = 0;  // cols (out)
  int64_t k() const { return std::min(m, n); }
};

}  // namespace

// One worker: its device, streams, handles and buffers.
struct Lane {
  int device = 0;
  int index = 0;
  cudaStream_t stream = nullptr;       // compute
  cudaStream_t copy_stream = nullptr;  // host -> device transfers
  cudaEvent_t staged[2] = {nullptr, nullptr};
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  cusolverDnParams_t solver_params = nullptr;
  gesvdjInfo_t jacobi = nullptr;

  PinnedBuffer staging;       // stored bytes of base and post
  PinnedBuffer host_scalars;  // LaneScalars
  PinnedBuffer host_results;  // sigma_base, sigma_post, iorth_diag
  DeviceBuffer raw;           // the same bytes on the device
  DeviceBuffer work;          // the matrix in the working precision
  DeviceBuffer u[2], v[2], s[2];
  DeviceBuffer square;        // 3 [k, k]: Gram / check / Q1, Q2, I_orth
  DeviceBuffer solver_ws;
  DeviceBuffer scalars;       // LaneScalars
  DeviceBuffer results;       // [3k] doubles
  std::vector<char> host_ws;
  std::vector<InfoSlot> slots;

  int64_t fallbacks = 0;

  Lane(int device_id, int lane_index) : device(device_id), index(lane_index) {
    POSTSVD_CUDA_TRY(cudaSetDevice(device));
    POSTSVD_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    POSTSVD_CUDA_TRY(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
    for (auto& e : staged) POSTSVD_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    POSTSVD_CUBLAS_TRY(cublasCreate(&blas));
    POSTSVD_CUBLAS_TRY(cublasSetStream(blas, stream));
    POSTSVD_CUSOLVER_TRY(cusolverDnCreate(&solver));
    POSTSVD_CUSOLVER_TRY(cusolverDnSetStream(solver, stream));
    POSTSVD_CUSOLVER_TRY(cusolverDnCreateParams(&solver_params));
    POSTSVD_CUSOLVER_TRY(cusolverDnCreateGesvdjInfo(&jacobi));
    scalars.reserve(sizeof(LaneScalars), "per-lane scalars");
    host_scalars.reserve(sizeof(LaneScalars), "per-lane scalars (host)");
  }
  ~Lane() {
    cudaSetDevice(device);
    if (stream) cudaStreamSynchronize(stream);
    if (copy_stream) cudaStreamSynchronize(copy_stream);
    if (jacobi) cusolverDnDestroyGesvdjInfo(jacobi);
    if (solver_params) cusolverDnDestroyParams(solver_params);
    if (solver) cusolverDnDestroy(solver);
    if (blas) cublasDestroy(blas);
    for (auto& e : staged)
      if (e) cudaEventDestroy(e);
    if (copy_stream) cudaStreamDestroy(copy_stream);
    if (stream) cudaStreamDestroy(stream);
  }
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;

  std::size_t held_bytes() const {
    std::size_t total = raw.bytes() + work.bytes() + square.bytes() + solver_ws.bytes() + results.bytes();
    for (int i = 0; i < 2; ++i) total += u[i].bytes() + v[i].bytes() + s[i].bytes();
    return total;
  }
  void release_big() {
    raw.release();
    work.release();
    square.release();
    solver_ws.release();
    results.release();
    for (int i = 0; i < 2; ++i) {
      u[i].release();
      v[i].release();
      s[i].release();
    }
  }
  LaneScalars* device_scalars() { return scalars.get<LaneScalars>(); }
  LaneScalars* readback() { return host_scalars.get<LaneScalars>(); }

  // Resets the per-round scalars (first_bad to the sentinel, the rest to zero).
  void reset_scalars() {
    LaneScalars init{};
    init.first_bad[0] = init.first_bad[1] = kNoBadElement;
    *readback() = init;
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(device_scalars(), readback(), sizeof(LaneScalars), cudaMemcpyHostToDevice, stream));
    slots.clear();
  }
  int* info_slot(const char* call, const std::string& tensor, const char* file, int line) {
    POSTSVD_CHECK(slots.size() < static_cast<std::size_t>(kInfoSlots), BackendError, "too many devInfo slots in one round");
    slots.push_back({call, tensor, file, line});
    return device_scalars()->info + (slots.size() - 1);
  }
  // Waits for the round, brings the scalars back and throws on a failed devInfo.
  void finish_round() {
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(readback(), device_scalars(), sizeof(LaneScalars), cudaMemcpyDeviceToHost, stream));
    POSTSVD_CUDA_TRY(cudaStreamSynchronize(stream));
  }
  void check_infos() const {
    const LaneScalars* r = const_cast<Lane*>(this)->readback();
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (r->info[i] != 0)
        POSTSVD_THROW(BackendError, slots[i].call << " failed on '" << slots[i].tensor << "': devInfo = " << r->info[i]
                                                  << (r->info[i] < 0 ? " (invalid parameter)" : " (did not converge)")
                                                  << " at " << slots[i].file << ":" << slots[i].line);
    }
  }
};

#define POSTSVD_INFO(lane, call_name, tensor) (lane).info_slot(call_name, tensor, __FILE__, __LINE__)

namespace {

// Bytes a lane holds for one pair of `shape` with stored spans `raw_bytes`.
struct LanePlan {
  std::size_t raw = 0, work = 0, u = 0, v = 0, s = 0, square = 0, solver_ws = 0, host_ws = 0, results = 0;
  std::size_t total() const { return raw + work + 2 * (u + v + s) + square + solver_ws + results; }
};

std::size_t direct_workspace(Lane& lane, SvdMethod method, cudaDataType_t type, std::size_t elem, int64_t tall, int64_t k,
                             std::size_t* host_bytes) {
  // The direct methods always see the tall orientation [tall, k].
  std::size_t device_bytes = 0;
  std::size_t host = 0;
  switch (method) {
    case SvdMethod::Gesvd:
      POSTSVD_CUSOLVER_TRY(cusolverDnXgesvd_bufferSize(lane.solver, lane.solver_params, 'S', 'S', tall, k, type, nullptr,
                                                       tall, type, nullptr, type, nullptr, tall, type, nullptr, k, type,
                                                       &device_bytes, &host));
      break;
    case SvdMethod::Gesvdp:
      POSTSVD_CUSOLVER_TRY(cusolverDnXgesvdp_bufferSize(lane.solver, lane.solver_params, CUSOLVER_EIG_MODE_VECTOR, 1, tall,
                                                        k, type, nullptr, tall, type, nullptr, type, nullptr, tall, type,
                                                        nullptr, k, type, &device_bytes, &host));
      break;
    case SvdMethod::Gesvdj: {
      int lwork = 0;
      if (elem == sizeof(float))
        POSTSVD_CUSOLVER_TRY(Blas<float>::gesvdj_buffer(lane.solver, as_int(tall, "rows"), as_int(k, "cols"), lane.jacobi, &lwork));
      else
        POSTSVD_CUSOLVER_TRY(Blas<double>::gesvdj_buffer(lane.solver, as_int(tall, "rows"), as_int(k, "cols"), lane.jacobi, &lwork));
      device_bytes = static_cast<std::size_t>(lwork) * elem;
      break;
    }
    case SvdMethod::Gram64: {
      int lwork = 0;
      POSTSVD_CUSOLVER_TRY(Blas<double>::syevd_buffer(lane.solver, as_int(k, "k"), &lwork));
      device_bytes = static_cast<std::size_t>(lwork) * sizeof(double);
      break;
    }
  }
  *host_bytes = std::max(*host_bytes, host);
  return device_bytes;
}

std::size_t compute_elem(SvdMethod method, Precision precision) {
  if (method == SvdMethod::Gram64 || precision == Precision::F64) return sizeof(double);
  return sizeof(float);
}

LanePlan plan_for(Lane& lane, const Shape& shape, std::size_t raw_bytes, SvdMethod method, Precision precision) {
  const std::size_t e = compute_elem(method, precision);
  const int64_t k = shape.k();
  const int64_t tall = std::max(shape.m, shape.n);
  LanePlan p;
  p.raw = raw_bytes;
  p.work = align_up(static_cast<std::size_t>(shape.m * shape.n) * e);
  p.u = align_up(static_cast<std::size_t>(shape.m * k) * e);
  p.v = align_up(static_cast<std::size_t>(shape.n * k) * e);
  p.s = align_up(static_cast<std::size_t>(k) * e);
  p.square = 3 * align_up(static_cast<std::size_t>(k * k) * e);
  p.results = align_up(static_cast<std::size_t>(3 * k) * sizeof(double));
  const cudaDataType_t type = e == sizeof(double) ? CUDA_R_64F : CUDA_R_32F;
  p.solver_ws = direct_workspace(lane, method, type, e, tall, k, &p.host_ws);
  if (method == SvdMethod::Gram64)  // the float64 gesvd fallback
    p.solver_ws = std::max(p.solver_ws, direct_workspace(lane, SvdMethod::Gesvd, CUDA_R_64F, sizeof(double), tall, k, &p.host_ws));
  p.solver_ws = align_up(p.solver_ws);
  return p;
}

void reserve_plan(Lane& lane, const LanePlan& p) {
  lane.raw.reserve(p.raw, "stored weights");
  lane.work.reserve(p.work, "working matrix");
  for (int i = 0; i < 2; ++i) {
    lane.u[i].reserve(p.u, "U");
    lane.v[i].reserve(p.v, "V");
    lane.s[i].reserve(p.s, "sigma");
  }
  lane.square.reserve(p.square, "k x k products");
  lane.solver_ws.reserve(std::max<std::size_t>(p.solver_ws, kAlign), "solver workspace");
  lane.results.reserve(p.results, "results");
  lane.host_results.reserve(p.results, "results (host)");
  if (lane.host_ws.size() < p.host_ws) lane.host_ws.resize(p.host_ws);
}

std::size_t span_bytes(const TensorView& v) {
  const auto span = v.byte_span();
  return static_cast<std::size_t>(span.second - span.first);
}

// The working-precision pipeline for one lane; C = float or double.
template <class C>
class Pipeline {
 public:
  Pipeline(Lane& lane, SvdMethod method, double orth_tolerance) : lane_(lane), method_(method), tolerance_(orth_tolerance) {}

  // Copies the stored bytes of `v` into pinned staging, then to the device on
  // the copy stream; `slot` 0 goes first in the raw buffer, 1 after it.
  void stage(const TensorView& v, int slot) {
    const auto span = v.byte_span();
    const std::size_t bytes = static_cast<std::size_t>(span.second - span.first);
    const std::size_t offset = slot == 0 ? 0 : next_offset_;
    std::memcpy(lane_.staging.get<char>() + offset, static_cast<const char*>(v.data) + span.first, bytes);
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(lane_.raw.get<char>() + offset, lane_.staging.get<char>() + offset, bytes,
                                     cudaMemcpyHostToDevice, lane_.copy_stream));
    POSTSVD_CUDA_TRY(cudaEventRecord(lane_.staged[slot], lane_.copy_stream));
    raw_offset_[slot] = offset;
    next_offset_ = offset + align_up(bytes);
  }

  // Converts staged matrix `slot` into lane.work; transposed = W^T [n, m].
  void convert(const TensorView& v, int slot, bool transposed) {
    POSTSVD_CUDA_TRY(cudaStreamWaitEvent(lane_.stream, lane_.staged[slot], 0));
    const auto span = v.byte_span();
    const int64_t elem = static_cast<int64_t>(dtype_size(v.dtype));
    const int64_t base_offset = -span.first / elem;  // element (0, 0) inside the staged bytes
    const char* stored = lane_.raw.get<char>() + raw_offset_[slot];
    unsigned long long* first_bad = lane_.device_scalars()->first_bad + slot;
    if (!transposed)
      convert_view<C>(stored, v.dtype, base_offset, v.rows, v.cols, v.row_stride, v.col_stride, lane_.work.get<C>(), first_bad, lane_.stream);
    else
      convert_view<C>(stored, v.dtype, base_offset, v.cols, v.rows, v.col_stride, v.row_stride, lane_.work.get<C>(), first_bad, lane_.stream);
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

  // After finish_round: throws on NaN/Inf and devInfo; redoes failed Gram decompositions with gesvd.
  // Returns the number of fallbacks taken.
  int settle(const TensorView* const* views, int count) {
    const LaneScalars round = *lane_.readback();  // the fallback rounds below overwrite the readback
    const LaneScalars* r = &round;
    for (int i = 0; i < count; ++i) {
      if (r->first_bad[i] != kNoBadElement) {
        const TensorView& v = *views[i];
        const int64_t index = static_cast<int64_t>(r->first_bad[i]);
        POSTSVD_THROW(InvalidArgument, "tensor '" << v.name << "' " << shape_of(v) << ": element (" << index % v.rows << ", "
                                                  << index / v.rows << ") is NaN or Inf (or overflows the working precision)");
      }
    }
    lane_.check_infos();
    int redone = 0;
    if (method_ != SvdMethod::Gram64) return 0;
    for (int i = 0; i < count; ++i) {
      if (!(r->orth[i] <= tolerance_)) {
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

  // Q1, Q2, I_orth, NF and the vectors into lane.results; returns after the device-to-host copy is queued.
  void measure(const Shape& shape) {
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
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(lane_.host_results.get(), results, static_cast<std::size_t>(3 * k) * sizeof(double),
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

  // float64 Gram of the short side, syevd, the long side by GEMM and column norms.
  void gram(const TensorView& v, int slot) {
    const int64_t m = v.rows, n = v.cols, k = short_side(v);
    const C one = 1, zero = 0;
    const C* w = lane_.work.get<C>();
    const bool tall = m >= n;
    // eig side [k, k] (V when tall, U when wide), gemm side [long, k].
    C* eig = tall ? lane_.v[slot].get<C>() : lane_.u[slot].get<C>();
    C* other = tall ? lane_.u[slot].get<C>() : lane_.v[slot].get<C>();
    const int64_t long_side = tall ? m : n;
    const int ik = as_int(k, "k"), il = as_int(long_side, "rows"), im = as_int(m, "rows");
    if (tall)  // G = W^T W  [n, n]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_T, CUBLAS_OP_N, ik, ik, il, &one, w, im, w, im, &zero, eig, ik));
    else  // G = W W^T  [m, m]
      POSTSVD_CUBLAS_TRY(Blas<C>::gemm(lane_.blas, CUBLAS_OP_N, CUBLAS_OP_T, ik, ik, il, &one, w, im, w, im, &zero, eig, ik));
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
  double tolerance_;
  std::size_t raw_offset_[2] = {0, 0};
  std::size_t next_offset_ = 0;
};

}  // namespace

class CudaBackendImpl final : public CudaBackend {
 public:
  CudaBackendImpl(const BackendOptions& options, const CudaConfig& config) : options_(options), config_(config) {
    const int count = cuda_device_count_impl();
    POSTSVD_CHECK(count > 0, BackendError, "device=cuda: no CUDA device is available (cudaGetDeviceCount reports none)");
    devices_ = options.device_ids.empty() ? std::vector<int>{0} : options.device_ids;
    for (int id : devices_)
      POSTSVD_CHECK(id >= 0 && id < count, InvalidArgument,
                    "device_ids: CUDA device " << id << " does not exist; expected ids in [0, " << count << ")");
    POSTSVD_CHECK(config.lanes_per_device >= 1, InvalidArgument,
                  "lanes_per_device: expected >= 1, got " << config.lanes_per_device);
    for (int d : devices_)
      for (int i = 0; i < config.lanes_per_device; ++i) lanes_.push_back(std::make_unique<Lane>(d, i));
    for (int d : devices_) {
      cudaDeviceProp prop{};
      POSTSVD_CUDA_TRY(cudaGetDeviceProperties(&prop, d));
      if (!device_names_.empty()) device_names_ += ", ";
      device_names_ += "cuda:" + std::to_string(d) + " (" + prop.name + ")";
    }
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return device_names_ + ", " + method_name(config_.method) + ", " + std::to_string(config_.lanes_per_device) +
           " lanes per device";
  }
  const CudaConfig& config() const override { return config_; }
  CudaStats last_stats() const override {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    return stats_;
  }

  Decomposition<float> decompose_f32(const TensorView& w) override { return decompose_one<float>(w, Precision::F32); }
  Decomposition<double> decompose_f64(const TensorView& w) override { return decompose_one<double>(w, Precision::F64); }

  std::vector<PairMeasures> compare(const std::vector<PairInput>& pairs, const MeasureOptions& options) override {
    check_compare_arguments(pairs, options);
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      check_view(pairs[i].base, "pair " + std::to_string(i) + " base");
      check_view(pairs[i].post, "pair " + std::to_string(i) + " post");
    }
    std::vector<PairMeasures> out(pairs.size());
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_ = CudaStats{};
    }
    if (pairs.empty()) return out;

    // Plan: each buffer sized for the largest need over the distinct shapes (U is largest for a
    // tall pair, V for a wide one, the k x k products for the largest k); the budget fixes how
    // many lanes run per device.
    LanePlan plan;
    std::vector<std::pair<int64_t, int64_t>> seen;
    for (const auto& p : pairs) {
      plan.raw = std::max(plan.raw, align_up(staged_bytes(p.base, options.precision)) +
                                        align_up(staged_bytes(p.post, options.precision)));
      const std::pair<int64_t, int64_t> key{p.base.rows, p.base.cols};
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
      seen.push_back(key);
      const LanePlan q = plan_for(*lanes_.front(), Shape{key.first, key.second}, 0, config_.method, options.precision);
      plan.work = std::max(plan.work, q.work);
      plan.u = std::max(plan.u, q.u);
      plan.v = std::max(plan.v, q.v);
      plan.s = std::max(plan.s, q.s);
      plan.square = std::max(plan.square, q.square);
      plan.solver_ws = std::max(plan.solver_ws, q.solver_ws);
      plan.host_ws = std::max(plan.host_ws, q.host_ws);
      plan.results = std::max(plan.results, q.results);
    }
    const int lanes_per_device = lanes_within_budget(plan, pairs.size());
    std::vector<Lane*> active;
    for (auto& lane : lanes_) {
      if (lane->index < lanes_per_device) active.push_back(lane.get());
      // Idle lanes, and lanes holding more than this call needs, give their memory back (budget).
      if (lane->index >= lanes_per_device || lane->held_bytes() > plan.total()) {
        POSTSVD_CUDA_TRY(cudaSetDevice(lane->device));
        lane->release_big();
      }
    }
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.lanes_used = static_cast<int>(active.size());
      stats_.bytes_per_lane = plan.total();
    }

    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&](Lane* lane) {
      try {
        POSTSVD_CUDA_TRY(cudaSetDevice(lane->device));
        reserve_plan(*lane, plan);
        lane->staging.reserve(plan.raw, "pinned staging");
        while (!failed.load()) {
          const std::size_t i = next.fetch_add(1);
          if (i >= pairs.size()) break;
          out[i] = run_pair(*lane, pairs[i], options);
        }
      } catch (...) {
        failed.store(true);
        cudaStreamSynchronize(lane->stream);
        cudaStreamSynchronize(lane->copy_stream);
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    };
    if (active.size() == 1) {
      worker(active.front());
    } else {
      std::vector<std::thread> threads;
      threads.reserve(active.size());
      for (Lane* lane : active) threads.emplace_back(worker, lane);
      for (auto& t : threads) t.join();
    }
    if (first_error) std::rethrow_exception(first_error);
    return out;
  }

 private:
  int lanes_within_budget(const LanePlan& plan, std::size_t pairs) {
    const std::size_t need = plan.total();
    int fit = config_.lanes_per_device;
    for (int d : devices_) {
      POSTSVD_CUDA_TRY(cudaSetDevice(d));
      std::size_t free_bytes = 0, total_bytes = 0;
      POSTSVD_CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
      std::size_t ours = 0;
      for (auto& lane : lanes_)
        if (lane->device == d) ours += lane->held_bytes();
      const std::size_t budget = options_.memory_budget_bytes != 0
                                     ? options_.memory_budget_bytes
                                     : static_cast<std::size_t>(0.9 * static_cast<double>(free_bytes + ours));
      const int lanes = static_cast<int>(std::min<std::size_t>(budget / std::max<std::size_t>(need, 1), 1 << 20));
      POSTSVD_CHECK(lanes >= 1, BackendError,
                    "cuda:" << d << ": the largest pair needs " << need << " bytes of GPU memory, but the budget is "
                            << budget << " bytes (memory_budget_bytes = " << options_.memory_budget_bytes
                            << ", free = " << free_bytes << ")");
      fit = std::min(fit, lanes);
    }
    const std::size_t per_device_pairs = (pairs + devices_.size() - 1) / devices_.size();
    return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(fit), per_device_pairs)));
  }

  double tolerance(Precision p) const { return p == Precision::F32 ? config_.orth_tolerance_f32 : config_.orth_tolerance_f64; }

  template <class C>
  PairMeasures run_pair_typed(Lane& lane, const PairInput& pair, const MeasureOptions& options) {
    Pipeline<C> pipe(lane, config_.method, tolerance(options.precision));
    const TensorView* views[2] = {&pair.base, &pair.post};
    const Shape shape{pair.base.rows, pair.base.cols};
    const int64_t k = shape.k();
    lane.reset_scalars();
    // The host copies the post matrix into staging while the device works on the base.
    pipe.stage(pair.base, 0);
    pipe.decompose(pair.base, 0);
    pipe.stage(pair.post, 1);
    pipe.decompose(pair.post, 1);
    lane.finish_round();
    const int redone = pipe.settle(views, 2);
    lane.reset_scalars();
    pipe.sign_rule(pair.base, 0);
    pipe.sign_rule(pair.post, 1);
    pipe.measure(shape);
    lane.finish_round();
    const double* host = lane.host_results.get<double>();
    PairMeasures m;
    m.rows = shape.m;
    m.cols = shape.n;
    m.k = k;
    m.sigma_base.assign(host, host + k);
    m.sigma_post.assign(host + k, host + 2 * k);
    for (int64_t j = 1; j < k; ++j) {  // rounding-level ties from column norms
      m.sigma_base[j] = std::min(m.sigma_base[j], m.sigma_base[j - 1]);
      m.sigma_post[j] = std::min(m.sigma_post[j], m.sigma_post[j - 1]);
    }
    m.iorth_diag.assign(host + 2 * k, host + 3 * k);
    m.scaling.resize(static_cast<std::size_t>(k));
    for (int64_t j = 0; j < k; ++j) m.scaling[j] = m.sigma_post[j] / m.sigma_base[j];
    m.scaling_stats = scaling_statistics(m.scaling);
    m.nf = std::sqrt(lane.readback()->nf_squared) / static_cast<double>(k);
    std::size_t back = static_cast<std::size_t>(3 * k) * sizeof(double);
    if (options.full_matrices) {
      const int64_t kk = options.leading_k > 0 ? std::min(options.leading_k, k) : k;
      m.q1 = pipe.leading_block(0, k, kk);
      m.q2 = pipe.leading_block(1, k, kk);
      if (kk == k) {
        m.iorth = pipe.leading_block(2, k, kk);
      } else {  // I_orth of the truncated factors, Q1_kk^T Q2_kk (as measures_from)
        pipe.truncated_iorth(k, kk);
        m.iorth = pipe.leading_block(2, kk, kk);
      }
      m.sim_u = Matrix<double>(kk, kk);
      m.sim_v = Matrix<double>(kk, kk);
      for (int64_t i = 0; i < kk * kk; ++i) {
        m.sim_u.data()[i] = std::fabs(m.q1.data()[i]);
        m.sim_v.data()[i] = std::fabs(m.q2.data()[i]);
      }
      back += static_cast<std::size_t>(3 * kk * kk) * sizeof(C);
    }
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.pairs += 1;
    stats_.decompositions += 2 + redone;
    stats_.gram_fallbacks += redone;
    stats_.bytes_to_device += span_bytes(pair.base) + span_bytes(pair.post);
    stats_.bytes_to_host += back;
    return m;
  }

  PairMeasures run_pair(Lane& lane, const PairInput& stored, const MeasureOptions& options) {
    const HostDequantized base(stored.base, options.precision), post(stored.post, options.precision);
    const PairInput pair{base.view(), post.view()};
    if (compute_elem(config_.method, options.precision) == sizeof(double)) return run_pair_typed<double>(lane, pair, options);
    return run_pair_typed<float>(lane, pair, options);
  }

  template <class T, class C>
  Decomposition<T> decompose_typed(Lane& lane, const TensorView& w, Precision precision) {
    Pipeline<C> pipe(lane, config_.method, tolerance(precision));
    const TensorView* views[1] = {&w};
    lane.reset_scalars();
    pipe.stage(w, 0);
    pipe.decompose(w, 0);
    lane.finish_round();
    pipe.settle(views, 1);
    pipe.sign_rule(w, 0);
    return pipe.template download<T>(w, 0);
  }

  template <class T>
  Decomposition<T> decompose_one(const TensorView& stored, Precision precision) {
    check_view(stored, "matrix");
    const HostDequantized dequantized(stored, precision);
    const TensorView& w = dequantized.view();
    std::lock_guard<std::mutex> lock(decompose_mutex_);
    Lane& lane = *lanes_.front();
    POSTSVD_CUDA_TRY(cudaSetDevice(lane.device));
    const Shape shape{w.rows, w.cols};
    const std::size_t raw = align_up(span_bytes(w));
    LanePlan plan = plan_for(lane, shape, raw, config_.method, precision);
    reserve_plan(lane, plan);
    lane.staging.reserve(raw, "pinned staging");
    try {
      if (compute_elem(config_.method, precision) == sizeof(double)) return decompose_typed<T, double>(lane, w, precision);
      return decompose_typed<T, float>(lane, w, precision);
    } catch (...) {
      cudaStreamSynchronize(lane.stream);
      cudaStreamSynchronize(lane.copy_stream);
      throw;
    }
  }

  BackendOptions options_;
  CudaConfig config_;
  std::vector<int> devices_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::string device_names_;
  mutable std::mutex stats_mutex_;
  std::mutex decompose_mutex_;
  CudaStats stats_;
};

std::unique_ptr<CudaBackend> make_cuda_backend_with(const BackendOptions& options, const CudaConfig& config) {
  return std::make_unique<CudaBackendImpl>(options, config);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return cuda::make_cuda_backend_with(options, cuda::CudaConfig{});
}

int cuda_device_count_impl() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string cuda_build_info() {
  std::ostringstream out;
  out << "CUDA " << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10 << " (build)";
  int runtime = 0, driver = 0;
  if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) out << ", runtime " << runtime / 1000 << "." << (runtime % 1000) / 10;
  if (cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0) out << ", driver " << driver / 1000 << "." << (driver % 1000) / 10;
  else out << ", no CUDA driver";
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS && cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    out << ", cuBLAS " << major << "." << minor << "." << patch;
  if (cusolverGetProperty(MAJOR_VERSION, &major) == CUSOLVER_STATUS_SUCCESS && cusolverGetProperty(MINOR_VERSION, &minor) == CUSOLVER_STATUS_SUCCESS &&
      cusolverGetProperty(PATCH_LEVEL, &patch) == CUSOLVER_STATUS_SUCCESS)
    out << ", cuSOLVER " << major << "." << minor << "." << patch;
  const int count = cuda_device_count_impl();
  out << ", " << count << " device" << (count == 1 ? "" : "s");
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
      out << (d == 0 ? ": " : "; ") << "cuda:" << d << " " << prop.name << " (sm_" << prop.major << prop.minor << ", "
          << prop.totalGlobalMem / (1024 * 1024) << " MiB)";
  }
  (void)cudaGetLastError();
  return out.str();
}

}  // namespace postsvd
