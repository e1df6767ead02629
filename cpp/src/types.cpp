// dtype helpers, TensorView byte spans and the conversion of stored weights
// (BF16 / F16 / F32 / F64, any strides) to owning column-major matrices.
#include "postsvd/types.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>
#include <vector>

#include "detail/dequantize.h"
#include "detail/half.h"
#include "detail/low_rank.h"
#include "postsvd/quantization.h"

namespace postsvd {

const std::vector<DTypeInfo>& dtype_table() {
  static const std::vector<DTypeInfo> table = {
      {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},
      {DType::I16, "I16", 2},   {DType::U16, "U16", 2},   {DType::F16, "F16", 2},
      {DType::BF16, "BF16", 2}, {DType::I32, "I32", 4},   {DType::U32, "U32", 4},
      {DType::F32, "F32", 4},   {DType::F64, "F64", 8},   {DType::I64, "I64", 8},
      {DType::U64, "U64", 8},   {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
  };
  return table;
}

namespace {
const DTypeInfo& dtype_info(DType dtype, const char* caller) {
  for (const DTypeInfo& info : dtype_table()) {
    if (info.dtype == dtype) return info;
  }
  POSTSVD_THROW(InvalidArgument, caller << ": invalid DType value " << static_cast<int>(dtype));
}
}  // namespace

std::size_t dtype_size(DType dtype) { return dtype_info(dtype, "dtype_size").size; }

const char* dtype_name(DType dtype) { return dtype_info(dtype, "dtype_name").name; }

DType parse_dtype(const std::string& name, const std::string& context) {
  for (const DTypeInfo& info : dtype_table()) {
    if (name == info.name) return info.dtype;
  }
  POSTSVD_THROW(BadCheckpoint, context << ": unknown dtype '" << name << "'; expected one of "
                                       << dtype_names([](DType) { return true; }));
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

std::string dtype_names(bool (*accepts)(DType)) {
  std::string names;
  for (const DTypeInfo& info : dtype_table()) {
    if (!accepts(info.dtype)) continue;
    if (!names.empty()) names += ", ";
    names += info.name;
  }
  return names;
}

const std::vector<PrecisionInfo>& precision_table() {
  static const std::vector<PrecisionInfo> table = {
      {Precision::F32, "float32", {"float32", "f32", "fp32", "single"}},
      {Precision::F64, "float64", {"float64", "f64", "fp64", "double"}},
  };
  return table;
}

const char* precision_name(Precision precision) {
  for (const PrecisionInfo& info : precision_table()) {
    if (info.precision == precision) return info.name;
  }
  POSTSVD_THROW(InvalidArgument, "precision_name: invalid Precision value " << static_cast<int>(precision));
}

Precision parse_precision(const std::string& spelling) {
  std::ostringstream names;
  std::ostringstream spellings;
  const auto& table = precision_table();
  for (std::size_t i = 0; i < table.size(); ++i) {
    for (const char* s : table[i].spellings) {
      if (spelling == s) return table[i].precision;
    }
    names << (i == 0 ? "" : i + 1 == table.size() ? " or " : ", ") << '"' << table[i].name << '"';
    spellings << (i == 0 ? "" : "; ");
    for (std::size_t j = 0; j < table[i].spellings.size(); ++j) spellings << (j ? ", " : "") << table[i].spellings[j];
  }
  POSTSVD_THROW(InvalidArgument, "precision: expected " << names.str() << ", got \"" << spelling
                                                        << "\" (accepted spellings: " << spellings.str() << ")");
}

std::pair<int64_t, int64_t> TensorView::byte_span() const {
  if (rows <= 0 || cols <= 0) return {0, 0};
  if (scales.scheme == QuantScheme::MXFP4) {
    // Strides count packed FP4 values, two per byte, from value scales.first.
    const int64_t last = scales.first + row_offset(rows - 1) + col_offset(cols - 1);
    return {scales.first / 2, last / 2 + 1};
  }
  // Element offsets of the extreme rows and columns; strides and skips may in principle be negative.
  const int64_t row_first = 0, row_last = row_offset(rows - 1);
  const int64_t col_first = 0, col_last = col_offset(cols - 1);
  const int64_t lo = std::min(row_first, row_last) + std::min(col_first, col_last);
  const int64_t hi = std::max(row_first, row_last) + std::max(col_first, col_last);
  const auto size = static_cast<int64_t>(dtype_size(dtype));
  return {lo * size, (hi + 1) * size};
}

std::string tensor_label(const TensorView& view) {
  return "tensor '" + view.name + "'" + (view.file.empty() ? std::string() : " in " + view.file);
}

TensorView TensorView::transposed() const {
  TensorView t = *this;
  t.rows = cols;
  t.cols = rows;
  t.row_stride = col_stride;
  t.col_stride = row_stride;
  t.row_group = col_group;
  t.row_group_skip = col_group_skip;
  t.col_group = row_group;
  t.col_group_skip = row_group_skip;
  if (delta) t.delta = std::make_shared<const LowRankDelta>(delta->transposed());
  return t;
}

LowRankDelta LowRankDelta::transposed() const {
  LowRankDelta t = *this;
  t.left = right.transposed();
  t.right = left.transposed();
  if (magnitude.data != nullptr) t.magnitude = magnitude.transposed();
  t.magnitude_per_row = !magnitude_per_row;
  return t;
}

namespace {

template <class Stored>
inline Stored load(const char* base, int64_t element) {
  Stored value;
  // memcpy: safetensors data need not be aligned to the element size.
  std::memcpy(&value, base + element * static_cast<int64_t>(sizeof(Stored)), sizeof(Stored));
  return value;
}

template <class T, class Stored, class Convert>
bool convert_into(const TensorView& view, Matrix<T>& out, Convert convert) {
  const char* base = static_cast<const char*>(view.data);
  const int64_t rows = view.rows;
  const int64_t cols = view.cols;
  // Element offsets of every row and column (groups make them non-uniform).
  std::vector<int64_t> row_at(static_cast<std::size_t>(rows)), col_at(static_cast<std::size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) row_at[static_cast<std::size_t>(r)] = view.row_offset(r);
  for (int64_t c = 0; c < cols; ++c) col_at[static_cast<std::size_t>(c)] = view.col_offset(c);
  bool all_finite = true;
  if (std::abs(view.row_stride) <= std::abs(view.col_stride) || cols == 1) {
    // Reads run along the output's contiguous dimension (nn.Linear layout).
    for (int64_t c = 0; c < cols; ++c) {
      T* dst = out.data() + c * rows;
      const int64_t col_base = col_at[static_cast<std::size_t>(c)];
      for (int64_t r = 0; r < rows; ++r) {
        const T v = convert(load<Stored>(base, col_base + row_at[static_cast<std::size_t>(r)]));
        all_finite &= std::isfinite(v);
        dst[r] = v;
      }
    }
  } else {
    // Transposing layout (Conv1D): tile columns so reads stay contiguous.
    constexpr int64_t kTile = 32;
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row_base = row_at[static_cast<std::size_t>(r)];
        for (int64_t c = c0; c < c1; ++c) {
          const T v = convert(load<Stored>(base, row_base + col_at[static_cast<std::size_t>(c)]));
          all_finite &= std::isfinite(v);
          out.data()[r + c * rows] = v;
        }
      }
    }
  }
  return all_finite;
}

}  // namespace

template <class T>
Matrix<T> to_matrix(const TensorView& view) {
  const char* target = dtype_name(std::is_same<T, float>::value ? DType::F32 : DType::F64);
  if (!is_weight_dtype(view.dtype) && !view.quantized()) {
    POSTSVD_THROW(InvalidArgument, tensor_label(view) << ": dtype " << dtype_name(view.dtype)
                                              << " is not a float dtype; expected one of "
                                              << dtype_names(is_weight_dtype));
  }
  if (view.rows < 0 || view.cols < 0) {
    POSTSVD_THROW(InvalidArgument, tensor_label(view) << ": expected a non-negative shape, got ["
                                              << view.rows << ", " << view.cols << "]");
  }
  Matrix<T> out(view.rows, view.cols);
  if (out.size() == 0) return out;
  if (view.data == nullptr) {
    POSTSVD_THROW(InvalidArgument, tensor_label(view) << ": view of shape [" << view.rows << ", "
                                              << view.cols << "] has a null data pointer");
  }
  bool all_finite = true;
  if (view.quantized()) {
    all_finite = detail::dequantize_into<T>(view, out);
  } else switch (view.dtype) {
    case DType::BF16:
      all_finite = convert_into<T, uint16_t>(view, out, [](uint16_t b) { return static_cast<T>(detail::bf16_to_float(b)); });
      break;
    case DType::F16:
      all_finite = convert_into<T, uint16_t>(view, out, [](uint16_t h) { return static_cast<T>(detail::f16_to_float(h)); });
      break;
    case DType::F32:
      all_finite = convert_into<T, float>(view, out, [](float f) { return static_cast<T>(f); });
      break;
    case DType::F64:
      all_finite = convert_into<T, double>(view, out, [](double d) { return static_cast<T>(d); });
      break;
    case DType::F8_E4M3:
      all_finite = convert_into<T, uint8_t>(view, out, [](uint8_t q) { return static_cast<T>(fp8_e4m3_to_float(q)); });
      break;
    case DType::F8_E5M2:
      all_finite = convert_into<T, uint8_t>(view, out, [](uint8_t q) { return static_cast<T>(fp8_e5m2_to_float(q)); });
      break;
    default:
      break;
  }
  if (!all_finite) {
    // Report the first bad entry in column-major order (the order of the result).
    for (int64_t c = 0; c < out.cols(); ++c) {
      for (int64_t r = 0; r < out.rows(); ++r) {
        const T v = out(r, c);
        if (!std::isfinite(v)) {
          POSTSVD_THROW(InvalidArgument,
                        tensor_label(view) << ": non-finite value " << v << " at (row " << r << ", col " << c
                                   << ") of the [" << view.rows << ", " << view.cols << "] matrix (stored "
                                   << dtype_name(view.dtype)
                                   << (view.quantized() ? ", scaled by '" + view.scales.name + "'" : std::string())
                                   << ", converted to " << target
                                   << "); expected finite weights");
        }
      }
    }
  }
  if (view.delta) detail::add_low_rank(*view.delta, out, view.name);
  return out;
}

template Matrix<float> to_matrix<float>(const TensorView& view);
template Matrix<double> to_matrix<double>(const TensorView& view);

}  // namespace postsvd
