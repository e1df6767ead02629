// Quantized weights, dequantized exactly: FP8 (F8_E4M3, F8_E5M2) with block,
// per-channel or per-tensor scales, and MXFP4 (FP4 E2M1 values with E8M0
// exponents per 32 values). docs/formats.md describes the formats and rules.
//
// A quantized matrix is an ordinary TensorView whose `scales` say how to
// dequantize it; to_matrix<T> (types.h) is the one conversion every consumer
// uses, so a quantized view reads like any other (the CUDA backend's optional
// device-side path applies the same element rules, cpp/src/detail/minifloat.h).
// Dequantization computes in the working precision: float32 gives
// float(q) * float(scale) rounded once (the releases' reference kernels do the
// same), float64 the exact product.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/types.h"

namespace postsvd {

/// True for F8_E4M3 and F8_E5M2.
bool is_fp8_dtype(DType dtype);
/// A dtype a weight matrix may be stored in: F16, BF16, F32, F64, F8_E4M3, F8_E5M2.
bool is_weight_dtype(DType dtype);

/// torch.float8_e4m3fn: bias 7, no infinities, finite max 448, S.1111.111 is NaN. Exact.
float fp8_e4m3_to_float(uint8_t bits);
/// torch.float8_e5m2: bias 15, IEEE infinities and NaN, max 57344. Exact.
float fp8_e5m2_to_float(uint8_t bits);
/// FP4 E2M1 (the low 4 bits): 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
float fp4_e2m1_to_float(uint8_t nibble);
/// E8M0 block exponent: 2^(bits - 127) (subnormal float32 below 2^-126); 255 is NaN.
float e8m0_to_float(uint8_t bits);

/// How a checkpoint's config.json says its weights are quantized.
struct QuantizationConfig {
  enum class Method { None, BlockFP8, CompressedTensors, FbgemmFP8, MXFP4 };
  Method method = Method::None;
  std::string quant_method;             // config.json spelling ("fp8", "compressed-tensors", "fbgemm_fp8", "mxfp4")
  int64_t block_out = 0;                // weight_block_size [B0, B1] of block FP8:
  int64_t block_in = 0;                 //   B0 along the stored output dim, B1 along the input dim
  std::vector<std::string> not_converted;  // modules_to_not_convert / ignore, as written
};

/// Parses `quantization_config` of the checkpoint's config.json (Method::None
/// when absent). Throws BadCheckpoint naming config.json for a quant_method
/// postsvd cannot dequantize or a malformed weight_block_size.
QuantizationConfig quantization_config(const Checkpoint& checkpoint);

/// True when the module of weight `tensor` ("X.weight" -> module "X") is kept
/// unquantized by the config: transformers' fp8 rule (a modules_to_not_convert
/// entry occurring in the name) or compressed-tensors' (an `ignore` entry equal
/// to the module name, or "re:PATTERN" matching it from its start).
bool module_not_converted(const QuantizationConfig& config, const std::string& tensor);

/// Attaches the scales of a weight stored as FP8 to `view` (made by view_of
/// from `source`): "X.weight_scale_inv" (block FP8) or "X.weight_scale"
/// (compressed-tensors and fbgemm_fp8, [] / [1] per tensor or [out, 1] per
/// output channel), looked up through the checkpoint's name -> shard map.
/// A fused 3-D expert tensor X [E, a, b] (Llama 4) takes "X_scale" (fbgemm_fp8)
/// or the names above: one scale, one per expert, one per expert and output
/// channel ([E, 1, out] or [E, out, 1]), or blocks [E, a / B0, ceil(b / B1)]. Views of other dtypes
/// and unscaled FP8 in a checkpoint without quantization_config are left as
/// they are. Throws BadCheckpoint naming the tensor and its file for a
/// misshapen or non-float scale, or a missing one in a quantized checkpoint.
void attach_scales(const Checkpoint& checkpoint, const MatrixSource& source, TensorView& view);

/// The stored tensors that reading `source` touches: its tensor, then the scale of
/// an FP8 weight (the name attach_scales reads, when the checkpoint has one) or
/// the `*_scales` of an MXFP4 pair. Reads names and headers only, no tensor data:
/// what a partial copy of a Hub repo must fetch before the source can be read.
std::vector<std::string> source_tensors(const Checkpoint& checkpoint, const MatrixSource& source);

/// An MXFP4 matrix inside a packed tensor pair (gpt-oss experts):
/// `blocks` [..., G, 16] uint8 and `scales` [..., G] uint8, which dequantize to
/// a tensor [..., G * 32] (transformers' convert_moe_packed_tensors before its
/// final transpose). The view's element (r, c) is dequantized value
///   first + r * row_stride + c * col_stride
/// of that tensor in row-major order. E.g. expert e of gpt-oss `down_proj`
/// (dequantized [E, hidden, inter] = [E, out, in]): first = e * hidden * inter,
/// rows = inter, cols = hidden, row_stride = 1, col_stride = inter.
/// Throws BadCheckpoint naming the tensors and their files for wrong dtypes,
/// shapes that do not pair, or a view reaching outside the tensor.
TensorView mxfp4_view(const Checkpoint& checkpoint, const std::string& blocks, const std::string& scales,
                      int64_t first, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride);

/// What a BF16 copy of a quantized checkpoint (a construction's output) holds for
/// each stored tensor: constructions write their inputs' FP8 weights and MXFP4
/// experts back as BF16 so that the copy loads without its quantization_config.
enum class CopyAs {
  Same,         // copied as stored (unquantized tensors; every tensor of an unquantized checkpoint)
  BF16,         // an FP8 weight, dequantized in float32 and rounded to BF16 (nearest even)
  Drop,         // a scale of an FP8 weight (weight_scale_inv, weight_scale, input_scale) or an MXFP4 X_scales
  MXFP4ToBF16,  // MXFP4 blocks X_blocks: the BF16 tensor X of unpacked_mxfp4, rounded to nearest even
};
/// The rule for tensor `name` of `checkpoint` (whose parsed config is `config`).
/// MXFP4 pairs are recognized as the architecture table maps them, by name and
/// dtype (U8 X_blocks beside X_scales), with or without a quantization_config.
CopyAs copy_as(const Checkpoint& checkpoint, const QuantizationConfig& config, const std::string& name);

/// The BF16 tensor that an MXFP4 pair X_blocks [E, R, G, 16] / X_scales [E, R, G]
/// is written back as: X [E, G * 32, R], the dequantized [E, R, G * 32] with its
/// last two dims swapped, as transformers' convert_moe_packed_tensors gives it
/// to unquantized gpt-oss (gate_up_proj [E, hidden, 2 inter], down_proj [E, inter, hidden]).
struct UnpackedMXFP4 {
  std::string blocks;          // X_blocks
  std::string name;            // X
  std::string scales;          // X_scales
  std::vector<int64_t> shape;  // [E, G * 32, R]
};
/// Throws BadCheckpoint naming the tensors and their files for blocks that are
/// not 4-D, a pair that does not match (mxfp4_view's checks), or a checkpoint
/// that holds X beside X_blocks.
UnpackedMXFP4 unpacked_mxfp4(const Checkpoint& checkpoint, const std::string& blocks);

/// Slice `index` of `unpacked` (from unpacked_mxfp4, which checked the pair once),
/// [G * 32, R] row-major, dequantized exactly by to_matrix: column-major [R, G * 32],
/// element (r, c) the dequantized value (index, r, c). Holds this slice only (twice
/// while transposing).
Matrix<float> dequantized_mxfp4_slice(const Checkpoint& checkpoint, const UnpackedMXFP4& unpacked, int64_t index);

/// The whole stored FP8 tensor `name` [out, in] dequantized in float32 with its
/// scales: column-major [in, out], i.e. the stored row-major [out, in] order.
/// A 3-D tensor (fused experts, stored [E, in, out] as Llama 4's) gives [out, E * in],
/// its stored order too.
Matrix<float> dequantized_tensor(const Checkpoint& checkpoint, const std::string& name);

/// Byte span [first, last) of the scale tensor that `view` reads, relative to
/// view.scales.data ({0, 0} for unquantized views); for device copies and cache keys.
std::pair<int64_t, int64_t> scale_byte_span(const TensorView& view);

/// Largest relative change |w_q - w| / |w| that quantizing one weight w to the
/// view's storage format may cause (round to nearest: 2^-(mantissa bits + 1)):
/// 2^-4 for F8_E4M3, 2^-3 for F8_E5M2, 2^-2 for MXFP4 (E2M1), 2^-9 for BF16,
/// 2^-11 for F16, 2^-24 for F32, 2^-53 for F64. Normal range only.
double quantization_relative_bound(DType stored, QuantScheme scheme);

}  // namespace postsvd
