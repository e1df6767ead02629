// dtype helpers, TensorView byte spans and the conversion of stored weights
// (BF16 / F16 / F32 / F64, any strides) to owning column-major matrices.
#include "postsvd/types.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "detail/dequantize.h"
#include "detail/half.h"
#include "postsvd/quantization.h"

namespace postsvd {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
    case DType::F8_E4M3:
    case DType::F8_E5M2:
      return 1;
    case DType::I16:
    case DType::U16:
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::I32:
    case DType::U32:
    case DType::F32:
      return 4;
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
  }
  POSTSVD_THROW(InvalidArgument, "dtype_size: invalid DType value " << static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::BOOL: return "BOOL";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::U16: return "U16";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::U32: return "U32";
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::U64: return "U64";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
  }
  POSTSVD_THROW(InvalidArgument, "dtype_name: invalid DType value " << static_cast<int>(dtype));
}

namespace {
constexpr DType kAllDTypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16,  DType::U16,
                                DType::F16,  DType::BF16, DType::I32, DType::U32,  DType::F32,
                                DType::F64,  DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2};
}  // namespace

DType parse_dtype(const std::string& name, const std::string& context) {
  for (DType d : kAllDTypes) {
    if (name == dtype_name(d)) return d;
  }
  std::ostringstream known;
  for (DType d : kAllDTypes) known << (d == kAllDTypes[0] ? "" : ", ") << dtype_name(d);
  POSTSVD_THROW(BadCheckpoint, context << ": unknown dtype '" << name << "'; expected one of " << known.str());
}

bool is_float_dtype(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
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
  const char* target = std::is_same<T, float>::value ? "F32" : "F64";
  if (!is_weight_dtype(view.dtype) && !view.quantized()) {
    POSTSVD_THROW(InvalidArgument, "tensor '" << view.name << "': dtype " << dtype_name(view.dtype)
                                              << " is not a float dtype; expected one of F16, BF16, F32, F64, "
                                                 "F8_E4M3, F8_E5M2");
  }
  if (view.rows < 0 || view.cols < 0) {
    POSTSVD_THROW(InvalidArgument, "tensor '" << view.name << "': expected a non-negative shape, got ["
                                              << view.rows << ", " << view.cols << "]");
  }
  Matrix<T> out(view.rows, view.cols);
  if (out.size() == 0) return out;
  if (view.data == nullptr) {
    POSTSVD_THROW(InvalidArgument, "tensor '" << view.name << "': view of shape [" << view.rows << ", "
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
                        "tensor '" << view.name << "': non-finite value " << v << " at (row " << r << ", col " << c
                                   << ") of the [" << view.rows << ", " << view.cols << "] matrix (stored "
                                   << dtype_name(view.dtype)
                                   << (view.quantized() ? ", scaled by '" + view.scales.name + "'" : std::string())
                                   << ", converted to " << target
                                   << "); expected finite weights");
        }
      }
    }
  }
  return out;
}

template Matrix<float> to_matrix<float>(const TensorView& view);
template Matrix<double> to_matrix<double>(const TensorView& view);

}  // namespace postsvd
