// Bit-exact conversions between the 16-bit float formats and float32. The
// widening ones are POSTSVD_HD: the CUDA kernels decode with the same code.
#pragma once

#include <cstdint>
#include <cstring>

// Host and device under nvcc (kernels.cu), host only elsewhere.
#if defined(__CUDACC__)
#define POSTSVD_HD __host__ __device__
#else
#define POSTSVD_HD
#endif

namespace postsvd {
namespace detail {

/// The float32 whose bits are `bits`.
POSTSVD_HD inline float float_from_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
#endif
}

/// bfloat16 is the upper half of a float32: widening is exact.
POSTSVD_HD inline float bf16_to_float(uint16_t bits) { return float_from_bits(static_cast<uint32_t>(bits) << 16); }

/// IEEE binary16 to float32, exact for normals, subnormals, infinities and NaN.
POSTSVD_HD inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal: shift the mantissa up until its leading 1 is the implicit bit.
    uint32_t e = 113u;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return float_from_bits(bits);
}

/// float32 to bfloat16 with round-to-nearest-even (NaN stays NaN).
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

}  // namespace detail
}  // namespace postsvd
