// The warm-started SVD of the CPU backend: a post-trained matrix decomposed
// from its base's factors. With V_s the start's right factors (tall
// orientation), G' = V_s^T (W^T W) V_s is nearly diagonal for a close pair, and
// a block Jacobi on G' (float64; small ?syevd rotations applied by ?gemm)
// converges in a few sweeps instead of a full bidiagonal reduction.
// Measurements and the choice of method: benchmarks/RESULTS.md, "Warm start".
#pragma once

#include <cstdint>

#include "postsvd/backend.h"
#include "postsvd/types.h"

namespace postsvd::cpu {

/// How the pre-rotated problem is solved.
enum class WarmMethod {
  /// Block Jacobi on the float64 G' (the default).
  BlockJacobi,
  /// LAPACK dgesvj (one-sided Jacobi) on W V_s with JOBV = 'A' (kept for the benchmarks).
  Gesvj,
};

struct WarmSettings {
  WarmMethod method = WarmMethod::BlockJacobi;
  /// Block size of the block Jacobi (a rotation is one ?syevd of 2 blocks).
  int64_t block = 64;
  /// Sweeps allowed before giving up (then the cold SVD runs).
  int64_t max_sweeps = 8;
  /// Largest ||offdiag(G')||_F / ||G'||_F that starts the Jacobi; above it the pair is not
  /// close and the cold SVD runs at once. Measured on the bundled family (benchmarks/RESULTS.md):
  /// instruct 0.11-0.39, reasoning 0.05-0.16 (both converge in 3 sweeps), base_alt 0.51-0.95.
  double max_initial_off = 0.45;
  /// A pair (i, j) is converged when |g_ij| <= tolerance * sqrt(g_ii g_jj) (or is rounding noise).
  double jacobi_tolerance = 1e-9;
  /// Largest |U^T U - I| accepted (the rule of the CUDA Gram path), else the cold SVD runs.
  double orth_tolerance = 1e-6;
};

/// The settings for working precision T (tolerances of the CUDA Gram path: 1e-6 / 1e-10).
template <class T>
WarmSettings default_warm_settings();

/// Reduced SVD of `view` from `start` (a reduced SVD of a matrix of the same shape, paper
/// orientation), sign rule applied, sigma descending; the cold reduced_svd<T> when the pair is
/// not close, the Jacobi does not converge in settings.max_sweeps or U loses orthogonality.
/// InvalidArgument when start's shapes do not match the view (naming the tensor), or for
/// NaN / Inf weights. `report` (when not null) says what ran.
template <class T>
Decomposition<T> warm_svd(const TensorView& view, const Decomposition<T>& start, const WarmSettings& settings,
                          WarmReport* report);

}  // namespace postsvd::cpu
