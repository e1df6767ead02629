// The CUDA backend (cuSOLVER + cuBLAS) behind postsvd::Backend.
// Internal header: no CUDA type appears here, so the backend factory
// (factory.cpp), the tests and the benchmarks include it from plain C++.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "postsvd/backend.h"

namespace postsvd {
namespace cuda {

/// How one matrix is decomposed on the device.
enum class SvdMethod {
  /// float64 Gram matrix of the short side, syevd, the other side by GEMM
  /// (column norms give sigma); falls back to Gesvd64 where the GEMM side loses
  /// orthogonality (tiny or zero sigma). Works in float64 in both precisions.
  Gram64,
  /// cusolverDnXgesvd in the working precision (the tall orientation).
  Gesvd,
  /// cusolverDn<t>gesvdj (Jacobi) in the working precision.
  Gesvdj,
  /// cusolverDnXgesvdp (polar decomposition) in the working precision.
  Gesvdp,
};

const char* method_name(SvdMethod method);
/// Parses "gram64", "gesvd", "gesvdj", "gesvdp"; throws InvalidArgument otherwise.
SvdMethod parse_method(const std::string& name);

/// Tuning knobs beyond BackendOptions (benchmarks and tests set them; users get the defaults).
struct CudaConfig {
  SvdMethod method = SvdMethod::Gram64;
  /// Worker lanes per GPU: each a host thread with its own stream, handles and
  /// buffers, so one pair's transfer overlaps another's compute.
  int lanes_per_device = 2;
  /// Gram64: largest |U^T U - I| (the GEMM side) accepted before the float64
  /// gesvd fallback, per precision.
  double orth_tolerance_f32 = 1e-6;
  double orth_tolerance_f64 = 1e-10;
  /// Quantized weights (FP8, MXFP4): dequantize on the device from the stored
  /// bytes and their scales (a quarter of the float32 transfer for FP8) instead
  /// of on the host (to_matrix). Both give the same matrix bit for bit by
  /// construction (detail/minifloat.h); off until the CudaDequantize tests
  /// have confirmed it on a GPU (`benchmarks/run_gpu.sh dequant`).
  bool dequantize_on_device = false;
};

/// Counters of the last compare() call (for benchmarks and tests).
struct CudaStats {
  int64_t pairs = 0;
  int64_t decompositions = 0;
  int64_t gram_fallbacks = 0;  // Gram64 decompositions redone with gesvd
  int64_t warm_starts = 0;     // post decompositions started from the base's factors (syevj)
  int64_t warm_fallbacks = 0;  // of those, redone cold (syevj did not converge, or lost orthogonality)
  int64_t warm_sweeps = 0;     // syevj sweeps of the warm starts that held, summed
  int lanes_used = 0;
  std::size_t bytes_per_lane = 0;
  std::size_t bytes_to_device = 0;
  std::size_t bytes_to_host = 0;
};

class CudaBackend : public Backend {
 public:
  virtual const CudaConfig& config() const = 0;
  virtual CudaStats last_stats() const = 0;
  /// `w` as the device holds it before a decomposition in `precision` (its stored
  /// dtype converted, a quantized view dequantized as config() says), copied back:
  /// for checking the device conversion against to_matrix bit for bit.
  virtual Matrix<double> converted(const TensorView& w, Precision precision) = 0;
};

std::unique_ptr<CudaBackend> make_cuda_backend_with(const BackendOptions& options, const CudaConfig& config);

}  // namespace cuda

/// The backend make_backend() returns for Device::CUDA (default CudaConfig).
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);

}  // namespace postsvd
