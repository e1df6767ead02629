// Core value types shared by the reader, the backends and the bindings.
// Orientation (see docs/measures.md): every matrix handed to a
// backend is the paper's W = W_hf^T, shape [in, out]: rows span the input
// space, columns the output space. Owning matrices are column-major.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/error.h"

namespace postsvd {

/// Element types a safetensors file may declare.
enum class DType { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };

/// One row of the dtype table.
struct DTypeInfo {
  DType dtype;
  const char* name;  // the safetensors spelling ("BF16", "F32", ...)
  std::size_t size;  // bytes per element
};
/// Every dtype a safetensors file may declare, in DType's order: the one list of their names and sizes.
const std::vector<DTypeInfo>& dtype_table();

/// Size of one element in bytes.
std::size_t dtype_size(DType dtype);
/// The safetensors spelling ("BF16", "F32", ...).
const char* dtype_name(DType dtype);
/// Parses a safetensors dtype string; throws BadCheckpoint naming `context` when unknown.
DType parse_dtype(const std::string& name, const std::string& context);
/// True for F16, BF16, F32, F64 (plain floats; is_weight_dtype adds FP8).
bool is_float_dtype(DType dtype);
/// The names of the table's dtypes that `accepts` takes, in table order, joined by ", ": what a
/// message lists beside the check it reports, e.g. dtype_names(is_float_dtype) is "F16, BF16, F32, F64".
std::string dtype_names(bool (*accepts)(DType));

/// Working precision of a decomposition.
enum class Precision { F32, F64 };

/// One row of the precision table.
struct PrecisionInfo {
  Precision precision;
  const char* name;                    // "float32", "float64"
  std::vector<const char*> spellings;  // every spelling parse_precision accepts, the name first
};
/// The working precisions and their spellings: the one list the core and the Python package read.
const std::vector<PrecisionInfo>& precision_table();
/// "float32" or "float64".
const char* precision_name(Precision precision);
/// Any spelling of precision_table(); throws InvalidArgument naming the argument "precision" and
/// listing the names and every spelling otherwise.
Precision parse_precision(const std::string& spelling);

/// Where the work runs.
enum class Device { CPU, CUDA };

/// How a view's stored values become weights (rules and decoders: quantization.h).
enum class QuantScheme {
  None,       // the stored float values (FP8 without scales converts exactly too)
  ScaledFP8,  // FP8 value x a float scale from a grid of blocks (block, per-channel, per-tensor)
  MXFP4,      // FP4 E2M1 nibbles x 2^(E8M0 - 127), 32 consecutive values per exponent
};

/// The scales of a quantized view. Scales follow the stored position of an
/// element, not the view's (r, c), so any view geometry (fused parts,
/// transposes, strided parts) finds them: element (r, c) of the view is
/// stored element e = first + view.row_offset(r) + view.col_offset(c) of its
/// tensor, counted from the tensor's start in row-major order.
/// ScaledFP8: e is stored at (i, j) = (e / stored_cols, e % stored_cols) of
///   the [out, in] tensor and scaled by data[(i / block_rows) * grid_cols +
///   j / block_cols] (dtype F32, BF16 or F16); one block covers the tensor
///   per tensor, [1, in] per output channel.
/// MXFP4: the view's dtype is U8 and view.data the packed tensor's start; e is
///   an FP4 value index (byte e / 2, low nibble first) scaled by the E8M0 byte
///   data[e / 32].
struct ViewScales {
  QuantScheme scheme = QuantScheme::None;
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t first = 0;        // stored element index of the view's (0, 0)
  int64_t stored_cols = 1;  // ScaledFP8: length of a stored row (in)
  int64_t block_rows = 1;   // ScaledFP8: stored rows per scale
  int64_t block_cols = 1;   // ScaledFP8: stored columns per scale
  int64_t grid_cols = 1;    // ScaledFP8: scales per row of the grid
  int64_t count = 0;        // elements of the scale tensor
  std::string name;         // scale tensor name, for error messages
};

struct LowRankDelta;

/// Non-owning, strided view of stored weights in their stored dtype, already in
/// paper orientation: element (r, c) of W [rows = in, cols = out] lives at
///   static_cast<const char*>(data) + (r * row_stride + c * col_stride) * dtype_size(dtype).
/// An nn.Linear tensor [out, in] row-major gives row_stride = 1, col_stride = in.
/// A GPT-2 Conv1D tensor [in, out] gives row_stride = out, col_stride = 1.
/// A part of a fused tensor is a column range of the fused matrix. Parts made
/// of equal groups (DeepSeek's kv_b_proj: per head, K rows then V rows) add a
/// skip between groups: with col_group > 0, column c starts at
///   c * col_stride + (c / col_group) * col_group_skip
/// (rows likewise with row_group, so that a transposed view keeps it).
struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 1;
  int64_t col_stride = 0;
  std::string name;  // tensor name (and part), for error messages
  ViewScales scales;  // quantized weights only (scheme != None)
  int64_t row_group = 0;       // 0 = no groups along rows
  int64_t row_group_skip = 0;  // extra elements between consecutive row groups
  int64_t col_group = 0;       // 0 = no groups along columns
  int64_t col_group_skip = 0;  // extra elements between consecutive column groups
  std::string file;  // the safetensors file holding the tensor (view_of sets it), for error messages; "" = none
  /// A PEFT adapter's term on these weights (adapter.h): the matrix is W + ΔW, formed
  /// when the view is converted (to_matrix). Null for plain weights.
  std::shared_ptr<const LowRankDelta> delta;

  /// Element offset of row r and of column c: element (r, c) is at row_offset(r) + col_offset(c).
  int64_t row_offset(int64_t r) const { return r * row_stride + (row_group > 0 ? (r / row_group) * row_group_skip : 0); }
  int64_t col_offset(int64_t c) const { return c * col_stride + (col_group > 0 ? (c / col_group) * col_group_skip : 0); }

  bool quantized() const { return scales.scheme != QuantScheme::None; }
  /// The same data seen as W^T (strides and groups swapped; scales follow stored positions;
  /// a delta is transposed with it).
  TensorView transposed() const;

  /// Byte span [first, last) the view touches, relative to `data`; for copying
  /// only what is needed to a device.
  std::pair<int64_t, int64_t> byte_span() const;
};

/// A low-rank term on a view's weights W [rows, cols] (a LoRA adapter, adapter.h), in the
/// view's orientation: W' = W + scale * left * right, then with a magnitude (DoRA) every
/// column c (magnitude_per_row: every row) of W' scaled by magnitude[c] / ||W'(:, c)||.
/// The views point into the adapter's weights file and hold no delta themselves.
struct LowRankDelta {
  TensorView left;   // [rows, rank]
  TensorView right;  // [rank, cols]
  double scale = 1;
  TensorView magnitude;  // DoRA: [1, cols] (per_row: [rows, 1]); data == nullptr without DoRA
  bool magnitude_per_row = false;
  /// W' as W^T's term: left and right swapped and transposed, the magnitude on the other side.
  LowRankDelta transposed() const;
};

/// How every message names a view's tensor: "tensor 'NAME' in FILE", or "tensor 'NAME'" when the view
/// names no file. With the file, the message says which model (folder) holds the bad tensor.
std::string tensor_label(const TensorView& view);

/// Owning column-major matrix, move-only.
template <class T>
class Matrix {
 public:
  Matrix() = default;
  Matrix(int64_t rows, int64_t cols) : rows_(rows), cols_(cols), data_(static_cast<std::size_t>(rows * cols)) {}
  Matrix(const Matrix&) = delete;
  Matrix& operator=(const Matrix&) = delete;
  Matrix(Matrix&&) noexcept = default;
  Matrix& operator=(Matrix&&) noexcept = default;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t size() const { return rows_ * cols_; }
  bool empty() const { return data_.empty(); }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  T& operator()(int64_t r, int64_t c) { return data_[static_cast<std::size_t>(r + c * rows_)]; }
  const T& operator()(int64_t r, int64_t c) const { return data_[static_cast<std::size_t>(r + c * rows_)]; }
  /// Explicit deep copy.
  Matrix clone() const {
    Matrix m(rows_, cols_);
    m.data_ = data_;
    return m;
  }

 private:
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  std::vector<T> data_;
};

/// Converts a view (any float or FP8 dtype, any strides; quantized views
/// dequantized, see ViewScales; an adapter's delta added, see LowRankDelta)
/// into an owning column-major Matrix<T>.
/// Throws InvalidArgument naming view.name for other dtypes.
/// Rejects NaN / Inf with InvalidArgument naming the tensor and the first bad index.
template <class T>
Matrix<T> to_matrix(const TensorView& view);

/// Reduced SVD in paper orientation: W [m, n] = U [m, k] diag(S) V^T, V [n, k],
/// k = min(m, n), S descending, sign rule applied (largest-|.| entry of each
/// column of U is positive; the matching column of V flips with it).
template <class T>
struct Decomposition {
  Matrix<T> U;             // [m, k] input side
  std::vector<T> S;        // [k]
  Matrix<T> V;             // [n, k] output side
};

/// Applies the sign rule in place (see Decomposition).
template <class T>
void apply_sign_rule(Decomposition<T>& d);

}  // namespace postsvd
