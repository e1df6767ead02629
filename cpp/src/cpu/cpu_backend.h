// The CPU backend: LAPACK ?gesdd (OpenBLAS, both cores) for the reduced SVD,
// BLAS ?gemm for the measures (measures_from).
#pragma once

#include <memory>
#include <string>

#include "postsvd/backend.h"

namespace postsvd::cpu {

/// Reduced SVD of one view in working precision T, paper orientation, sign
/// rule applied. Decomposes whichever of W and W^T is tall (LAPACK's QR path
/// is faster than its LQ path), so a wide W costs no more than its transpose.
/// Falls back to ?gesvd when ?gesdd does not converge; every other LAPACK
/// failure is a BackendError naming the tensor, its shape and `info`.
template <class T>
Decomposition<T> reduced_svd(const TensorView& view);

/// InvalidArgument naming `original` when the Frobenius norm of x (its values,
/// any stored type) exceeds the largest T: its singular values would be inf in T.
template <class T, class Stored>
void check_norm_fits(const Matrix<Stored>& x, const TensorView& original);

/// Sets the BLAS thread count: 0 = every core. No-op without OpenBLAS.
void set_blas_threads(int num_threads);
/// The BLAS thread count in use (1 when the BLAS cannot say).
int blas_threads();
/// "OpenBLAS 0.3.21 ..." or "reference BLAS/LAPACK".
std::string blas_description();

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options);

  Device device() const override { return Device::CPU; }
  std::string name() const override;
  Decomposition<float> decompose_f32(const TensorView& w) override;
  Decomposition<double> decompose_f64(const TensorView& w) override;
  /// Block Jacobi from `start` (cpu/warm_svd.h), every BLAS thread.
  Decomposition<float> decompose_warm_f32(const TensorView& w, const Decomposition<float>& start,
                                          WarmReport* report) override;
  Decomposition<double> decompose_warm_f64(const TensorView& w, const Decomposition<double>& start,
                                           WarmReport* report) override;
  /// False at every shape measured (benchmarks/RESULTS.md, "Warm start"): ?gesdd wins on the CPU.
  bool warm_start_pays(int64_t rows, int64_t cols, Precision precision) const override;
  /// On two cores the two SVDs run side by side, one BLAS thread each.
  std::pair<Decomposition<float>, Decomposition<float>> decompose_pair_f32(const TensorView& base,
                                                                           const TensorView& post) override;
  std::pair<Decomposition<double>, Decomposition<double>> decompose_pair_f64(const TensorView& base,
                                                                             const TensorView& post) override;
  /// Pairs one after the other; only one pair's factors are alive at a time. On
  /// two cores the base and post SVDs of a pair run side by side (one BLAS thread each).
  std::vector<PairMeasures> compare(const std::vector<PairInput>& pairs, const MeasureOptions& options) override;

 private:
  int num_threads_ = 0;
};

std::unique_ptr<Backend> make_cpu_backend(const BackendOptions& options);

}  // namespace postsvd::cpu
