// One interface, implemented by the CPU (LAPACK) and the CUDA (cuSOLVER,
// cuBLAS) backends. No CUDA header here: the CPU build and the bindings stay
// free of CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/measures.h"
#include "postsvd/types.h"

namespace postsvd {

/// One pair of the same (layer, kind): views into the two checkpoints.
struct PairInput {
  TensorView base;
  TensorView post;
};

/// Settings for creating a backend.
struct BackendOptions {
  Device device = Device::CPU;
  /// CUDA devices to use (empty = device 0). Ignored on the CPU.
  std::vector<int> device_ids;
  /// Upper bound on device memory the backend may hold, in bytes (0 = 90 % of free memory).
  std::size_t memory_budget_bytes = 0;
  /// CPU threads for LAPACK/BLAS (0 = all cores).
  int num_threads = 0;
};

/// What a warm-started decomposition (Backend::decompose_warm_*) did.
struct WarmReport {
  /// Jacobi sweeps that ran; -1 = the matrix was decomposed cold.
  int64_t sweeps = -1;
  /// The warm start was tried and abandoned (pair not close, no convergence, lost orthogonality).
  bool fell_back = false;
  /// ||offdiag(G')||_F / ||G'||_F of G' = V_s^T (W^T W) V_s before the first sweep (tall orientation,
  /// V_s the start's right factors); 0 when not computed.
  double initial_off = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  /// Human-readable name, e.g. "cpu (OpenBLAS 0.3.21, 2 threads)" or "cuda:0 (NVIDIA H100)".
  virtual std::string name() const = 0;

  /// Reduced SVD of one matrix, sign rule applied.
  virtual Decomposition<float> decompose_f32(const TensorView& w) = 0;
  virtual Decomposition<double> decompose_f64(const TensorView& w) = 0;

  /// Both matrices of a pair (base first). The default decomposes them one
  /// after the other; a backend may overlap them (the CPU backend does on two
  /// cores). On failure the base's error is the one thrown.
  virtual std::pair<Decomposition<float>, Decomposition<float>> decompose_pair_f32(const TensorView& base,
                                                                                   const TensorView& post);
  virtual std::pair<Decomposition<double>, Decomposition<double>> decompose_pair_f64(const TensorView& base,
                                                                                     const TensorView& post);

  /// Reduced SVD of `w` starting from `start`, the factors of a close matrix of
  /// the same shape (the base of a post-trained `w`, or the previous checkpoint):
  /// same accuracy, sign rule and orientation as decompose_*; falls back to the
  /// cold decomposition when `w` is not close to `start`. `report` (when not
  /// null) says what ran. The default decomposes cold.
  virtual Decomposition<float> decompose_warm_f32(const TensorView& w, const Decomposition<float>& start,
                                                  WarmReport* report);
  virtual Decomposition<double> decompose_warm_f64(const TensorView& w, const Decomposition<double>& start,
                                                   WarmReport* report);

  /// Whether the warm start beats the cold SVD for [rows, cols] in `precision` on this backend
  /// (the WarmStartMode::Auto rule; by measurement, benchmarks/RESULTS.md). The default: false.
  virtual bool warm_start_pays(int64_t rows, int64_t cols, Precision precision) const;

  /// Measures of every pair, in input order. A backend may batch and overlap
  /// the pairs; memory stays bounded by the pairs of one call.
  virtual std::vector<PairMeasures> compare(const std::vector<PairInput>& pairs, const MeasureOptions& options) = 0;
};

/// Whether a post of [rows, cols] starts warm under `mode` on `backend`.
bool use_warm_start(const Backend& backend, WarmStartMode mode, int64_t rows, int64_t cols, Precision precision);
/// Every warm-start mode, the default (Auto) first: the one list the bindings, the CLI and the
/// error messages take their names from.
const std::vector<WarmStartMode>& warm_start_modes();
/// "auto", "always", "off"; parse_warm_start_mode throws InvalidArgument naming `argument` otherwise.
const char* warm_start_mode_name(WarmStartMode mode);
WarmStartMode parse_warm_start_mode(const std::string& name, const std::string& argument = "warm_start");

/// The checks every compare starts with, before any work: leading_k >= 0, the intruder options
/// (check_intruder_options), and equal shapes in each pair (InvalidArgument naming both tensors
/// and shapes).
void check_compare_arguments(const std::vector<PairInput>& pairs, const MeasureOptions& options);

/// Creates the backend for options.device; throws NotBuiltWithCuda for CUDA in a CPU build.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);

/// Capability probes, in every build.
bool has_cuda();          // built with CUDA and at least one device visible
bool built_with_cuda();   // the build has the CUDA backend (a device may still be missing)
int cuda_device_count();  // 0 where none or not built with CUDA
std::string build_info();  // compiler, BLAS, CUDA version, ...

}  // namespace postsvd
