// The paper's constructions 9-16 (Sections 5.1, 5.2, Appendix C, D) and the
// split of the rotations of Eq. 13 (Appendix B.2). Definitions:
// docs/measures.md, section "Constructions". Everything is in
// paper orientation: W [in, out] = U diag(S) V^T, U [in, k] input side,
// V [out, k] output side, sign rule applied (see types.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "postsvd/adapter.h"
#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/types.h"

namespace postsvd {

/// Construction numbers as the paper numbers its equations.
enum class Construction : int {
  ReplaceScaled = 9,    // U_post (alpha' S_base) V_post^T
  AblateOutput = 10,    // U_post S_post V_base^T
  RestoreOutput = 11,   // U_post S_post (V_base Q1)^T, Q1 = U_base^T U_post
  RestoreFromRef = 12,  // U_post S_post (V_ref Q')^T, Q' = U_ref^T U_post
  Replace = 14,         // U_post S_base V_post^T (9 with alpha' = 1)
  AblateInput = 15,     // U_base S_post V_post^T
  RestoreInput = 16,    // (U_base Q2) S_post V_post^T, Q2 = V_base^T V_post
};

/// Throws InvalidArgument listing the valid numbers (9, 10, 11, 12, 14, 15, 16).
Construction parse_construction(int number);
/// Short name, e.g. "restore-output".
const char* construction_name(Construction construction);
/// The formula as text, e.g. "U_post S_post (V_base Q1)^T, Q1 = U_base^T U_post".
const char* construction_formula(Construction construction);
/// Construction 12 needs a second post model of the same base.
bool construction_needs_ref(Construction construction);
/// Only construction 9 takes alpha'.
bool construction_uses_alpha(Construction construction);

/// The new weight W [in, out] of one matrix. `ref` is required for 12 and
/// ignored otherwise; `alpha` is used by 9 only and must be finite and > 0.
/// Throws InvalidArgument when the decompositions' shapes differ.
template <class T>
Matrix<T> construct_weight(Construction construction, const Decomposition<T>& base, const Decomposition<T>& post,
                           const Decomposition<T>* ref, double alpha);
/// The same without a reference model (every construction but 12).
template <class T>
Matrix<T> construct_weight(Construction construction, const Decomposition<T>& base, const Decomposition<T>& post,
                           double alpha = 1.0) {
  return construct_weight<T>(construction, base, post, nullptr, alpha);
}

/// Mean and largest principal angle of a rotation, in degrees.
struct AngleSummary {
  double mean_deg = 0;
  double max_deg = 0;
};

/// Eq. 13: Q1 = Q dQ1, Q2 = Q dQ2 with one shared rotation Q.
///
/// Definition used (the paper leaves it open):
///  - P1 = polar(Q1), P2 = polar(Q2): the orthogonal polar factors (nearest
///    orthogonal matrices). Q1, Q2 are orthogonal only on the square side
///    (k = in or k = out); the other side's Q is a product of two k-frames in
///    a larger space and is only near-orthogonal.
///  - Q = polar(P1 + P2): the orthogonal midpoint of P1 and P2. When
///    R = P1^T P2 has no eigenvalue -1 this equals the geodesic midpoint
///    P1 (P1^T P2)^{1/2} on O(k), so the residual rotations are as small as
///    possible and equal in size.
///  - dQi = Q^T Qi, so Qi = Q dQi holds exactly; its rotation part is
///    polar(dQi) = Q^T Pi.
///  - Principal angles of a rotation M: |arg| of its eigenvalues, computed as
///    arccos of the eigenvalues of the symmetric part (M + M^T)/2 (each
///    complex pair e^{+-i t} gives cos t twice). k angles; mean and max.
///  - defect_i = ||Qi^T Qi - I||_F / k: how far Qi itself is from orthogonal.
struct SharedRotation {
  int64_t k = 0;
  AngleSummary residual1;  // angles of polar(dQ1) = Q^T P1
  AngleSummary residual2;  // angles of polar(dQ2) = Q^T P2
  AngleSummary shared;     // angles of Q itself (keep_matrices only; sign flips of pairs count as 180)
  double defect1 = 0;
  double defect2 = 0;
  // Present when requested (keep_matrices); [k, k] column-major.
  Matrix<double> q;
  Matrix<double> dq1;
  Matrix<double> dq2;
};

/// Eq. 13 from Q1 [k, k] and Q2 [k, k] (column-major, double).
SharedRotation shared_rotation(const Matrix<double>& q1, const Matrix<double>& q2, bool keep_matrices);
/// Eq. 13 for one pair: Q1 = U_base^T U_post, Q2 = V_base^T V_post, in double.
template <class T>
SharedRotation shared_rotation(const Decomposition<T>& base, const Decomposition<T>& post, bool keep_matrices);

/// The orthogonal polar factor of a square matrix (U V^T of its SVD); a few
/// Newton-Schulz steps when the input is already near-orthogonal.
Matrix<double> polar_factor(const Matrix<double>& a);
/// The k principal angles (degrees, ascending) of an orthogonal matrix.
std::vector<double> rotation_angles_deg(const Matrix<double>& rotation);

/// Table 4 rule: the mean rounded to one decimal (0.9071 -> 0.9, 1.3551 -> 1.4).
double table4_alpha(double pooled_mean_scaling);

// ---------------------------------------------------------------------------
// Whole checkpoints.

/// What to build. Folders are Hugging Face model folders.
struct ConstructionRequest {
  int number = 0;
  std::string base;
  std::string post;
  std::string ref;  // construction 12 only
  /// Folder the safetensors files (and the index when sharded) are written to;
  /// must exist. Non-weight files are the caller's business.
  std::string out_folder;
  /// alpha' per kind name ("q", ..., "down"); construction 9 needs every selected kind.
  std::map<std::string, double> alpha;
  std::vector<int> layers;          // empty = all
  std::vector<std::string> kinds;   // empty = all
  Precision precision = Precision::F32;
  BackendOptions backend;
  /// Folder of saved decompositions (see FactorCache); "" = none.
  std::string factor_cache;
  /// Compute the Eq. 13 summary for every matrix.
  bool rotations = true;
  /// When a missing post decomposition starts from the base's factors (see MeasureOptions).
  WarmStartMode warm_start = WarmStartMode::Auto;
  /// A PEFT adapter folder as post (or ref) applies to the base (adapter.h). Its W + ΔW is written
  /// for the projections it changes and the construction leaves; an adapter that changes other
  /// tensors (embeddings, lm_head, biases) is refused: only projections are formed.
  AdapterOptions adapter;
};

/// One row of the result table.
struct ConstructionRow {
  int layer = 0;
  std::string kind;
  int expert = -1;
  std::string tensor;
  int64_t rows = 0;  // in
  int64_t cols = 0;  // out
  double alpha = 1;  // alpha' used (1 where the construction takes none)
  /// ||W_new - W_post||_F / ||W_post||_F, W_post as stored.
  double relative_change = 0;
  SharedRotation rotation;  // matrices not kept
  bool decompositions_from_cache = false;
};

struct ConstructionReport {
  std::vector<ConstructionRow> rows;
  std::string backend_name;
  std::vector<std::string> written_files;  // names inside out_folder
  double seconds_decompose = 0;
  double seconds_construct = 0;  // weights + Eq. 13
  double seconds_write = 0;
  int64_t decompositions_computed = 0;
  int64_t decompositions_loaded = 0;
};

/// Progress: (done, total, what is being done).
using ProgressCallback = std::function<void(int64_t, int64_t, const std::string&)>;

/// Builds the checkpoint: checks the architectures match, decomposes each
/// selected matrix once per model (or loads it from the factor cache), builds
/// the new weights and writes every safetensors file of `post` into
/// out_folder, untouched tensors bit for bit. Throws on any problem; the
/// caller removes the half-written folder.
ConstructionReport construct_checkpoint(const ConstructionRequest& request, const ProgressCallback& progress = {});

/// Table 4 default: per kind, the pooled mean of the top-90 % scaling factors
/// over the selected layers, and alpha' = that mean rounded to one decimal.
struct AlphaChoice {
  std::map<std::string, double> pooled_mean;
  std::map<std::string, double> alpha;
};
AlphaChoice default_alpha(const std::string& base, const std::string& post, const std::vector<int>& layers,
                          const std::vector<std::string>& kinds, Precision precision, const BackendOptions& backend,
                          const std::string& factor_cache = "", const AdapterOptions& adapter = {});

}  // namespace postsvd
