// The element rules of quantized weights, shared by the host (quantization.cpp,
// to_matrix) and the device (cuda/kernels.cu): decoders of FP8 E4M3 / E5M2,
// FP4 E2M1 and E8M0, the scale of a stored FP8 element, and the product that
// dequantizes it. One definition compiled twice, so that the CPU and the CUDA
// backend give the same dequantized values bit for bit.
#pragma once

#include <cstdint>

#include "detail/half.h"
#include "postsvd/types.h"

namespace postsvd {
namespace detail {

/// sign, `exponent_bits`-bit exponent with `bias`, `mantissa_bits`-bit mantissa, subnormals when
/// the exponent field is 0; specials are the callers'. Exact in float32: at most 4 significant
/// bits times a power of two within float32's normal range (E4M3 and E5M2 reach 2^-16 .. 2^15).
POSTSVD_HD inline float decode_minifloat(uint32_t bits, int exponent_bits, int mantissa_bits, int bias) {
  const uint32_t sign = (bits >> (exponent_bits + mantissa_bits)) & 1u;
  const int exponent = static_cast<int>((bits >> mantissa_bits) & ((1u << exponent_bits) - 1u));
  const uint32_t mantissa = bits & ((1u << mantissa_bits) - 1u);
  const uint32_t significand = exponent == 0 ? mantissa : ((1u << mantissa_bits) | mantissa);
  const int power = (exponent == 0 ? 1 : exponent) - bias - mantissa_bits;
  // 2^power as float32 bits (power >= -126 for these formats), times an integer below 16: exact.
  const float magnitude = static_cast<float>(significand) * float_from_bits(static_cast<uint32_t>(power + 127) << 23);
  return sign ? -magnitude : magnitude;
}

/// torch.float8_e4m3fn: bias 7, no infinities, finite max 448, S.1111.111 is NaN.
POSTSVD_HD inline float decode_e4m3(uint8_t bits) {
  return (bits & 0x7fu) == 0x7fu ? float_from_bits(0x7fc00000u) : decode_minifloat(bits, 4, 3, 7);
}

/// torch.float8_e5m2: bias 15, IEEE infinities and NaN.
POSTSVD_HD inline float decode_e5m2(uint8_t bits) {
  const uint32_t magnitude = bits & 0x7fu;
  if (magnitude == 0x7cu) return float_from_bits((bits & 0x80u) ? 0xff800000u : 0x7f800000u);
  if (magnitude > 0x7cu) return float_from_bits(0x7fc00000u);
  return decode_minifloat(bits, 5, 2, 15);
}

/// FP4 E2M1 (the low 4 bits): 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
POSTSVD_HD inline float decode_e2m1(uint8_t nibble) {
  const uint32_t magnitude = nibble & 0x7u;
  // E2M1 is decode_minifloat's format with a 2-bit exponent, 1-bit mantissa and bias 1 (no specials).
  const float value = decode_minifloat(magnitude, 2, 1, 1);
  return (nibble & 0x8u) ? -value : value;
}

/// E8M0 block exponent: 2^(bits - 127) (2^-127 is subnormal in float32); 255 is NaN.
POSTSVD_HD inline float decode_e8m0(uint8_t bits) {
  if (bits == 0xffu) return float_from_bits(0x7fc00000u);
  if (bits == 0) return float_from_bits(0x00400000u);
  return float_from_bits(static_cast<uint32_t>(bits) << 23);
}

/// Scale dtypes of scaled FP8 (safetensors F32, BF16, F16), as small integers the device can switch on.
enum class ScaleKind : int { F32 = 0, BF16 = 1, F16 = 2 };

/// The ScaleKind of a scale tensor's dtype (F32, BF16 or F16; callers check the dtype first).
inline ScaleKind scale_kind_of(DType dtype) {
  return dtype == DType::F32 ? ScaleKind::F32 : dtype == DType::BF16 ? ScaleKind::BF16 : ScaleKind::F16;
}

/// Scale number `index` of a scale tensor of kind `kind` starting at `data` (unaligned reads).
POSTSVD_HD inline float scale_value(const unsigned char* data, ScaleKind kind, int64_t index) {
  if (kind == ScaleKind::F32) {
    const unsigned char* p = data + index * 4;
    return float_from_bits(static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                           static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24);
  }
  const unsigned char* p = data + index * 2;
  const auto half = static_cast<uint16_t>(p[0] | p[1] << 8);
  return kind == ScaleKind::BF16 ? bf16_to_float(half) : f16_to_float(half);
}

/// Where the scale of a stored FP8 element lives: element `stored` (row-major index into the stored
/// tensor) of rows of `stored_cols` elements, one scale per `block_rows` x `block_cols` block, grids
/// of `grid_cols` scales per row (per-tensor and per-channel scales are blocks that span them).
struct Fp8ScaleGrid {
  int64_t stored_cols = 1, block_rows = 1, block_cols = 1, grid_cols = 1;

  POSTSVD_HD int64_t index_of(int64_t stored) const {
    const int64_t i = stored / stored_cols, j = stored % stored_cols;
    return (i / block_rows) * grid_cols + j / block_cols;
  }
};

/// The dequantized value q * scale in the working precision: float32 rounds the product once (the
/// releases' reference kernels do the same), float64 is exact. Written as a plain product of two
/// values already in T, so that neither compiler can contract it with anything.
template <class T>
POSTSVD_HD inline T dequantized(float q, float scale) {
  return static_cast<T>(q) * static_cast<T>(scale);
}

}  // namespace detail
}  // namespace postsvd
