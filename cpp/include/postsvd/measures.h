// The paper's per-matrix measures (Section 4; definitions in docs/measures.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "postsvd/types.h"

namespace postsvd {

/// When a post matrix is decomposed from the base's factors (Backend::decompose_warm_*).
enum class WarmStartMode {
  Off,     // always the cold SVD
  Auto,    // where the backend measured it faster (Backend::warm_start_pays)
  Always,  // wherever a start is known (still cold when the pair is not close)
};

/// Which singular vectors the intruder count reads (docs/measures.md, "Intruder dimensions").
enum class IntruderSide {
  Output,  // V (paper orientation [in, out]), the left singular vectors of W_hf [out, in]: |Q2|
  Input,   // U: |Q1|
};

/// The intruder dimensions of Shuttleworth et al. 2024 (arXiv 2410.21228, Algorithm 1): among the
/// top `k` singular vectors of the post matrix on `side`, those whose largest |cosine| with every
/// base singular vector on that side is below `epsilon`.
struct IntruderOptions {
  int64_t k = 10;        // >= 1; a matrix with fewer singular vectors examines all of them
  double epsilon = 0.5;  // in [0, 1]
  IntruderSide side = IntruderSide::Output;
};

/// What to compute for a pair beyond the always-on scalars and vectors.
struct MeasureOptions {
  Precision precision = Precision::F32;
  /// Also return sim_U, sim_V, Q1, Q2 and I_orth (leading `leading_k` vectors).
  bool full_matrices = false;
  /// 0 = all k singular vectors; otherwise the leading min(leading_k, k).
  int64_t leading_k = 0;
  /// Decompose the post matrix starting from the base's factors (Backend::decompose_warm_*),
  /// falling back to the cold SVD when the pair is not close.
  WarmStartMode warm_start = WarmStartMode::Auto;
  /// The intruder count (always computed: O(k) from Q1 or Q2).
  IntruderOptions intruders;
};

/// Mean and population std (ddof = 0) of the scaling factors over the top 90 %
/// of indices, j < ceil(0.9 k) (Table 3, Fig. 8).
struct ScalingStats {
  double mean = 0;
  double std = 0;
  int64_t count = 0;
};

/// Measures of one (layer, kind) pair: A = base, B = post.
struct PairMeasures {
  int64_t rows = 0;  // in
  int64_t cols = 0;  // out
  int64_t k = 0;     // min(rows, cols)
  std::vector<double> sigma_base;   // [k], descending
  std::vector<double> sigma_post;   // [k], descending
  std::vector<double> scaling;      // [k], sigma_post / sigma_base (SVSM column, Eq. 4)
  ScalingStats scaling_stats;       // top 90 %
  double nf = 0;                    // ||Q1^T Q2 - I||_F / k (Eq. 7)
  std::vector<double> iorth_diag;   // [k], diagonal of I_orth
  /// Jacobi sweeps of the post's warm-started decomposition; -1 = decomposed cold
  /// (warm start off or not available, the pair not close, or loaded from a factor cache).
  int64_t warm_sweeps = -1;
  /// [min(intruders.k, k)]: for each leading post singular vector j on the chosen side, its largest
  /// |cosine| with any base singular vector, max_i |Q(i, j)| (Q = Q2 on the output side, Q1 on the input).
  std::vector<double> intruder_cosines;
  /// How many of intruder_cosines are below intruders.epsilon (count_intruders).
  int64_t intruders = 0;
  // Present when MeasureOptions::full_matrices; [kk, kk] column-major.
  Matrix<double> sim_u;  // |U_A^T U_B|
  Matrix<double> sim_v;  // |V_A^T V_B|
  Matrix<double> q1;     // U_A^T U_B
  Matrix<double> q2;     // V_A^T V_B
  Matrix<double> iorth;  // Q1^T Q2
};

/// Top-90 % statistics of one SVSM column (or of several pooled together).
/// Ratios follow IEEE: a zero base sigma gives inf (or nan for 0/0), and a
/// non-finite ratio among the top 90 % makes mean/std inf or nan (not hidden).
/// Throws InvalidArgument for an empty column.
ScalingStats scaling_statistics(const std::vector<double>& scaling);

/// ceil(0.9 k) in exact integer arithmetic: how many leading ratios the statistics use.
int64_t scaling_top_count(int64_t k);

/// Pooled statistics of a kind: mean and population std over the concatenation
/// of every column's top-90 % ratios (each column cut at its own ceil(0.9 k)).
ScalingStats pooled_scaling_statistics(const std::vector<std::vector<double>>& columns);

/// The intruder rule, in one place: how many of `cosines` are below `epsilon` (strictly).
int64_t count_intruders(const std::vector<double>& cosines, double epsilon);

/// How many leading post singular vectors a matrix with k of them examines: min(options.k, k).
int64_t intruder_vectors(const IntruderOptions& options, int64_t k);

/// InvalidArgument naming the option unless k >= 1 and 0 <= epsilon <= 1.
void check_intruder_options(const IntruderOptions& options);

/// "output" / "input"; the sides by name, the default first; InvalidArgument naming `argument`
/// and the choices for another name.
const char* intruder_side_name(IntruderSide side);
const std::vector<IntruderSide>& intruder_sides();
IntruderSide parse_intruder_side(const std::string& name, const std::string& argument = "intruder_side");

/// Host reference path: every measure from two decompositions of equal shape.
/// Used by the CPU backend; the CUDA backend computes the same on the device.
template <class T>
PairMeasures measures_from(const Decomposition<T>& base, const Decomposition<T>& post, const MeasureOptions& options);

}  // namespace postsvd
