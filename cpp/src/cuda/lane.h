// A worker lane of the CUDA backend: a device, a compute and a copy stream,
// cuBLAS / cuSOLVER handles and the buffers one pair needs, plus the small
// per-round results (NaN/Inf position, orthogonality, NF, devInfo) that the
// host reads back once per round. Internal to cuda_backend.cpp and its parts.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/buffers.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

constexpr int kInfoSlots = 64;
// The warm start's syevj on V_s^T G V_s (float64): converged to working accuracy, and a pair
// that needs more sweeps than the CPU's block Jacobi bound (8) is not close: cold Gram instead.
constexpr double kWarmTolerance = 1e-14;
constexpr int kWarmMaxSweeps = 8;

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
  int warm_info[2];  // syevj of the warm start: 0, or n + 1 when it did not converge within its sweeps
  double nf_squared;
  int info[kInfoSlots];
};

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
  syevjInfo_t warm_jacobi = nullptr;  // syevj of the warm start (tolerance, sweep bound, sweeps run)

  PinnedBuffer staging;       // stored bytes of base and post
  PinnedBuffer host_scalars;  // LaneScalars
  PinnedBuffer host_results;  // sigma_base, sigma_post, iorth_diag, intruder cosines
  DeviceBuffer raw;           // the same bytes on the device
  DeviceBuffer work;          // the matrix in the working precision
  DeviceBuffer u[2], v[2], s[2];
  DeviceBuffer square;        // 3 [k, k]: Gram / check / Q1, Q2, I_orth
  DeviceBuffer solver_ws;
  DeviceBuffer scalars;       // LaneScalars
  DeviceBuffer results;       // [4k] doubles
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
    POSTSVD_CUSOLVER_TRY(cusolverDnCreateSyevjInfo(&warm_jacobi));
    POSTSVD_CUSOLVER_TRY(cusolverDnXsyevjSetTolerance(warm_jacobi, kWarmTolerance));
    POSTSVD_CUSOLVER_TRY(cusolverDnXsyevjSetMaxSweeps(warm_jacobi, kWarmMaxSweeps));
    scalars.reserve(sizeof(LaneScalars), "per-lane scalars");
    host_scalars.reserve(sizeof(LaneScalars), "per-lane scalars (host)");
  }
  ~Lane() {
    // At process exit the runtime may be gone before this lane; the driver frees everything then.
    const cudaError_t set = cudaSetDevice(device);
    if (set == cudaErrorCudartUnloading) return;
    if (set != cudaSuccess) report_failure("CUDA", cudaGetErrorName(set), "cudaSetDevice(device)", __FILE__, __LINE__);
    if (stream) POSTSVD_CUDA_REPORT(cudaStreamSynchronize(stream));
    if (copy_stream) POSTSVD_CUDA_REPORT(cudaStreamSynchronize(copy_stream));
    if (warm_jacobi) POSTSVD_CUSOLVER_REPORT(cusolverDnDestroySyevjInfo(warm_jacobi));
    if (jacobi) POSTSVD_CUSOLVER_REPORT(cusolverDnDestroyGesvdjInfo(jacobi));
    if (solver_params) POSTSVD_CUSOLVER_REPORT(cusolverDnDestroyParams(solver_params));
    if (solver) POSTSVD_CUSOLVER_REPORT(cusolverDnDestroy(solver));
    if (blas) POSTSVD_CUBLAS_REPORT(cublasDestroy(blas));
    for (auto& e : staged)
      if (e) POSTSVD_CUDA_REPORT(cudaEventDestroy(e));
    if (copy_stream) POSTSVD_CUDA_REPORT(cudaStreamDestroy(copy_stream));
    if (stream) POSTSVD_CUDA_REPORT(cudaStreamDestroy(stream));
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

}  // namespace cuda
}  // namespace postsvd
