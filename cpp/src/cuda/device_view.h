// How a stored view reaches the CUDA kernels: which bytes are staged (the
// view's span, then the span of its scales), and the loaders that read element
// (r, c) back from those bytes in the working precision. No CUDA type appears
// here: the loaders are POSTSVD_HD, so kernels.cu runs them on the device and
// the CPU tests run the very same code on staged host bytes against to_matrix.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "detail/half.h"
#include "detail/minifloat.h"
#include "postsvd/error.h"
#include "postsvd/quantization.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

/// Alignment of every staged or device buffer region.
constexpr std::size_t kAlign = 256;
inline std::size_t align_up(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

/// Strides of a view (TensorView's, groups included): element (r, c) lies at
/// r*row_stride + (r/row_group)*row_group_skip + c*col_stride + (c/col_group)*col_group_skip
/// (a group of 0 adds nothing).
struct ViewLayout {
  int64_t row_stride = 1, col_stride = 0;
  int64_t row_group = 0, row_group_skip = 0;
  int64_t col_group = 0, col_group_skip = 0;

  POSTSVD_HD int64_t element_of(int64_t r, int64_t c) const {
    return r * row_stride + (row_group > 0 ? (r / row_group) * row_group_skip : 0) + c * col_stride +
           (col_group > 0 ? (c / col_group) * col_group_skip : 0);
  }
};
inline ViewLayout layout_of(const TensorView& v) {
  return {v.row_stride, v.col_stride, v.row_group, v.row_group_skip, v.col_group, v.col_group_skip};
}

/// The bytes staged for a view: its stored span [first, first + bytes) from
/// view.data at offset 0, and for a quantized view the span of its scales
/// (scale_byte_span) from view.scales.data at `scale_offset`; `total` in all.
struct Staging {
  int64_t first = 0, bytes = 0;
  int64_t scale_first = 0, scale_bytes = 0;
  std::size_t scale_offset = 0;
  std::size_t total = 0;
};
inline Staging staging_of(const TensorView& v) {
  Staging s;
  const auto span = v.byte_span();
  s.first = span.first;
  s.bytes = span.second - span.first;
  s.total = static_cast<std::size_t>(s.bytes);
  if (v.quantized()) {
    const auto scales = scale_byte_span(v);
    s.scale_first = scales.first;
    s.scale_bytes = scales.second - scales.first;
    s.scale_offset = align_up(static_cast<std::size_t>(s.bytes));
    s.total = s.scale_offset + static_cast<std::size_t>(s.scale_bytes);
  }
  return s;
}

/// The scales of a quantized view as the loaders read them: `data` points at
/// the staged copy of the bytes scale_byte_span(view) names, whose first scale
/// (ScaledFP8) or exponent byte (MXFP4) has index `shift` in the whole scale tensor.
struct DeviceScales {
  QuantScheme scheme = QuantScheme::None;
  const void* data = nullptr;
  int64_t shift = 0;
  int64_t first = 0;            // ViewScales::first
  detail::Fp8ScaleGrid grid{};  // ScaledFP8
  detail::ScaleKind kind = detail::ScaleKind::F32;
  bool round_to_float = false;  // dequantize in float32, then widen (float32 precision, float64 kernels)
};

/// DeviceScales of `v` staged as staging_of(v) says at `staged` (the start of its staged bytes);
/// `precision` is the working precision (float32 rounds q * scale once, as to_matrix<float>).
inline DeviceScales device_scales(const TensorView& v, const void* staged, Precision precision) {
  DeviceScales d;
  if (!v.quantized()) return d;
  const ViewScales& s = v.scales;
  const Staging staging = staging_of(v);
  const int64_t size = s.scheme == QuantScheme::MXFP4 ? 1 : static_cast<int64_t>(dtype_size(s.dtype));
  d.scheme = s.scheme;
  d.data = static_cast<const char*>(staged) + staging.scale_offset;
  d.shift = staging.scale_first / size;
  d.first = s.first;
  d.grid = detail::Fp8ScaleGrid{s.stored_cols, s.block_rows, s.block_cols, s.grid_cols};
  d.kind = detail::scale_kind_of(s.dtype);
  d.round_to_float = precision == Precision::F32;
  return d;
}

/// Element (0, 0) of `v` inside its staged bytes, in stored elements (bytes of packed values for MXFP4).
inline int64_t staged_base_offset(const TensorView& v) {
  return -staging_of(v).first / static_cast<int64_t>(dtype_size(v.dtype));
}

// Stored element types, by their safetensors dtype: `value` widens one exactly
// (F64 stays double; the cast to T then rounds as the host's to_matrix does).
// FP8 decodes with detail/minifloat.h, the host's rule.
struct StoredBf16 {
  using Bits = uint16_t;
  POSTSVD_HD static float value(Bits b) { return detail::bf16_to_float(b); }
};
struct StoredF16 {
  using Bits = uint16_t;
  POSTSVD_HD static float value(Bits b) { return detail::f16_to_float(b); }
};
struct StoredF32 {
  using Bits = float;
  POSTSVD_HD static float value(Bits b) { return b; }
};
struct StoredF64 {
  using Bits = double;
  POSTSVD_HD static double value(Bits b) { return b; }
};
struct StoredE4M3 {
  using Bits = uint8_t;
  POSTSVD_HD static float value(Bits b) { return detail::decode_e4m3(b); }
};
struct StoredE5M2 {
  using Bits = uint8_t;
  POSTSVD_HD static float value(Bits b) { return detail::decode_e5m2(b); }
};

// q * scale in T; rounded once in float32 first where the working precision is float32.
template <class T>
POSTSVD_HD T scaled(float q, float scale, bool round_to_float) {
  return round_to_float ? static_cast<T>(detail::dequantized<float>(q, scale)) : detail::dequantized<T>(q, scale);
}

// Loaders: get<T>(e) is the view's element at element offset e from the view's
// origin (TensorView's row_offset + col_offset, ViewLayout::element_of), in T,
// read from the staged bytes.

// A float or unscaled FP8 view: stored[base_offset + e].
template <class Stored>
struct PlainLoad {
  const typename Stored::Bits* stored;
  int64_t base_offset;
  template <class T>
  POSTSVD_HD T get(int64_t e) const {
    return static_cast<T>(Stored::value(stored[base_offset + e]));
  }
};

// Scaled FP8: q * scale, the scale found from the element's stored position (to_matrix's rule).
template <class Stored>
struct ScaledFp8Load {
  const uint8_t* stored;
  int64_t base_offset;
  DeviceScales scales;
  template <class T>
  POSTSVD_HD T get(int64_t e) const {
    const float scale = detail::scale_value(static_cast<const unsigned char*>(scales.data), scales.kind,
                                            scales.grid.index_of(scales.first + e) - scales.shift);
    const float q = Stored::value(stored[base_offset + e]);
    return scaled<T>(q, scale, scales.round_to_float);
  }
};

// MXFP4: value i = first + e is nibble i of the packed bytes (low nibble first), its E8M0
// exponent byte i / 32: stored[base_offset + i / 2] and scales[i / 32 - shift].
struct Mxfp4Load {
  const uint8_t* stored;
  int64_t base_offset;
  DeviceScales scales;
  template <class T>
  POSTSVD_HD T get(int64_t e) const {
    const int64_t i = scales.first + e;
    const uint8_t byte = stored[base_offset + (i >> 1)];
    const uint8_t nibble = (i & 1) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0xfu);
    const uint8_t exponent = static_cast<const uint8_t*>(scales.data)[(i >> 5) - scales.shift];
    const float q = detail::decode_e2m1(nibble), scale = detail::decode_e8m0(exponent);
    return scaled<T>(q, scale, scales.round_to_float);
  }
};

/// Calls f(loader) with the loader for a view of `dtype` (and `scales`) staged at `stored`:
/// float dtypes and raw FP8 read plainly, ScaledFP8 and MXFP4 dequantize.
template <class F>
void with_loader(const void* stored, DType dtype, int64_t base_offset, const DeviceScales& scales, F&& f) {
  const auto* bytes = static_cast<const uint8_t*>(stored);
  if (scales.scheme == QuantScheme::MXFP4) {
    POSTSVD_CHECK(dtype == DType::U8, InvalidArgument, "MXFP4 blocks must be U8, got " << dtype_name(dtype));
    return f(Mxfp4Load{bytes, base_offset, scales});
  }
  if (scales.scheme == QuantScheme::ScaledFP8) {
    if (dtype == DType::F8_E4M3) return f(ScaledFp8Load<StoredE4M3>{bytes, base_offset, scales});
    if (dtype == DType::F8_E5M2) return f(ScaledFp8Load<StoredE5M2>{bytes, base_offset, scales});
    POSTSVD_THROW(InvalidArgument, "scaled FP8 needs F8_E4M3 or F8_E5M2, got " << dtype_name(dtype));
  }
  switch (dtype) {
    case DType::BF16: return f(PlainLoad<StoredBf16>{static_cast<const uint16_t*>(stored), base_offset});
    case DType::F16: return f(PlainLoad<StoredF16>{static_cast<const uint16_t*>(stored), base_offset});
    case DType::F32: return f(PlainLoad<StoredF32>{static_cast<const float*>(stored), base_offset});
    case DType::F64: return f(PlainLoad<StoredF64>{static_cast<const double*>(stored), base_offset});
    case DType::F8_E4M3: return f(PlainLoad<StoredE4M3>{bytes, base_offset});
    case DType::F8_E5M2: return f(PlainLoad<StoredE5M2>{bytes, base_offset});
    default: break;
  }
  POSTSVD_THROW(InvalidArgument, "expected one of " << dtype_names(is_weight_dtype) << ", got " << dtype_name(dtype));
}

}  // namespace cuda
}  // namespace postsvd
