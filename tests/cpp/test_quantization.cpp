// Quantized weights: exact FP8 / FP4 / E8M0 decoders, block-scaled FP8
// (edge blocks, scales of every float dtype, a scale in another shard),
// compressed-tensors per-tensor and per-channel scales, ignored modules,
// MXFP4 views and their BF16 copies, and that every consumer (to_matrix, the CPU backend, the
// factor cache key) sees the dequantized matrix. Errors name tensor and file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>

#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/quantization.h"
#include "postsvd/writer.h"
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include "detail/half.h"
#include "cuda/device_view.h"
#include "reader_test_util.h"
#ifdef POSTSVD_WITH_CUDA
#include "cuda/cuda_backend.h"
#endif
#include "safetensors_test_util.h"

namespace {

using postsvd::BadCheckpoint;
using postsvd::Checkpoint;
using postsvd::DType;
using postsvd::MatrixSource;
using postsvd::QuantScheme;
using postsvd::TensorView;
using postsvd_test::TensorBlob;
using postsvd_test::expect_error;
using postsvd_test::TempDir;
using postsvd_test::write_text;

// Independent reference: (-1)^s * 2^(e - bias) * (1 + m / 2^M), subnormal 2^(1 - bias) * m / 2^M.
double minifloat(unsigned bits, int exponent_bits, int mantissa_bits, int bias) {
  const unsigned sign = bits >> (exponent_bits + mantissa_bits);
  const unsigned e = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1u);
  const unsigned m = bits & ((1u << mantissa_bits) - 1u);
  const double frac = static_cast<double>(m) / static_cast<double>(1u << mantissa_bits);
  const double v = e == 0 ? std::pow(2.0, 1 - bias) * frac : std::pow(2.0, static_cast<int>(e) - bias) * (1.0 + frac);
  return sign ? -v : v;
}

TEST(Quantization, Fp8E4M3DecodesEveryCodeExactly) {
  for (unsigned b = 0; b < 256; ++b) {
    const float v = postsvd::fp8_e4m3_to_float(static_cast<uint8_t>(b));
    if ((b & 0x7fu) == 0x7fu) {
      EXPECT_TRUE(std::isnan(v)) << b;  // S.1111.111 is NaN; float8_e4m3fn has no inf
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), minifloat(b, 4, 3, 7)) << "code " << b;
  }
  EXPECT_EQ(postsvd::fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(postsvd::fp8_e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(postsvd::fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(postsvd::fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_TRUE(std::signbit(postsvd::fp8_e4m3_to_float(0x80)));
}

TEST(Quantization, Fp8E5M2DecodesEveryCodeExactly) {
  for (unsigned b = 0; b < 256; ++b) {
    const float v = postsvd::fp8_e5m2_to_float(static_cast<uint8_t>(b));
    const unsigned magnitude = b & 0x7fu;
    if (magnitude == 0x7cu) {
      EXPECT_TRUE(std::isinf(v)) << b;
    } else if (magnitude > 0x7cu) {
      EXPECT_TRUE(std::isnan(v)) << b;
    } else {
      EXPECT_EQ(static_cast<double>(v), minifloat(b, 5, 2, 15)) << "code " << b;
    }
  }
  EXPECT_EQ(postsvd::fp8_e5m2_to_float(0x7b), 57344.0f);
  EXPECT_EQ(postsvd::fp8_e5m2_to_float(0x3c), 1.0f);
}

TEST(Quantization, Fp4AndE8M0) {
  const float expected[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (unsigned n = 0; n < 16; ++n) {
    EXPECT_EQ(postsvd::fp4_e2m1_to_float(static_cast<uint8_t>(n)), (n & 8u ? -1.0f : 1.0f) * expected[n & 7u]) << n;
    EXPECT_EQ(static_cast<double>(postsvd::fp4_e2m1_to_float(static_cast<uint8_t>(n))), minifloat(n, 2, 1, 1)) << n;
  }
  for (unsigned e = 0; e < 255; ++e) {
    EXPECT_EQ(static_cast<double>(postsvd::e8m0_to_float(static_cast<uint8_t>(e))), std::ldexp(1.0, static_cast<int>(e) - 127))
        << e;
  }
  EXPECT_TRUE(std::isnan(postsvd::e8m0_to_float(255)));
}

TEST(Quantization, RelativeBounds) {
  EXPECT_EQ(postsvd::quantization_relative_bound(DType::F8_E4M3, QuantScheme::ScaledFP8), 0.0625);
  EXPECT_EQ(postsvd::quantization_relative_bound(DType::F8_E5M2, QuantScheme::None), 0.125);
  EXPECT_EQ(postsvd::quantization_relative_bound(DType::U8, QuantScheme::MXFP4), 0.25);
  EXPECT_EQ(postsvd::quantization_relative_bound(DType::BF16, QuantScheme::None), std::ldexp(1.0, -9));
}

// ------------------------------------------------------------------ a tiny quantized llama

// hidden 6, 2 heads of 3, 1 kv head, intermediate 10, one layer; block 4 x 4 gives edge blocks everywhere.
const int64_t kHidden = 6, kInter = 10;
const std::vector<std::pair<std::string, std::vector<int64_t>>> kLinears = {
    {"model.layers.0.self_attn.q_proj", {6, 6}}, {"model.layers.0.self_attn.k_proj", {3, 6}},
    {"model.layers.0.self_attn.v_proj", {3, 6}}, {"model.layers.0.self_attn.o_proj", {6, 6}},
    {"model.layers.0.mlp.gate_proj", {10, 6}},   {"model.layers.0.mlp.up_proj", {10, 6}},
    {"model.layers.0.mlp.down_proj", {6, 10}}};

std::string llama_config(const std::string& quantization) {
  return R"({"model_type":"llama","hidden_size":6,"num_attention_heads":2,"num_key_value_heads":1,)"
         R"("intermediate_size":10,"num_hidden_layers":1)" +
         (quantization.empty() ? std::string() : ",\"quantization_config\":" + quantization) + "}";
}

struct Quantized {
  std::vector<int64_t> shape;        // stored [out, in]
  std::vector<uint8_t> codes;        // row-major FP8 codes
  std::vector<int64_t> scale_shape;
  std::vector<float> scales;         // exactly representable in the scale dtype
};

// Random finite E4M3 codes and power-of-two-free scales (so products round).
Quantized make_quantized(const std::vector<int64_t>& shape, const std::vector<int64_t>& scale_shape, uint32_t seed) {
  std::mt19937 rng(seed);
  Quantized q{shape, {}, scale_shape, {}};
  q.codes.resize(static_cast<std::size_t>(shape[0] * shape[1]));
  for (auto& c : q.codes) {
    do c = static_cast<uint8_t>(rng() & 0xffu);
    while ((c & 0x7fu) == 0x7fu);
  }
  int64_t n = 1;
  for (int64_t d : scale_shape) n *= d;
  std::uniform_real_distribution<float> u(0.001f, 0.02f);
  for (int64_t i = 0; i < n; ++i) q.scales.push_back(postsvd::detail::bf16_to_float(postsvd::detail::float_to_bf16(u(rng))));
  return q;
}

TensorBlob fp8_blob(const std::string& name, const Quantized& q) {
  return {name, DType::F8_E4M3, q.shape, postsvd_test::to_bytes(q.codes)};
}

TensorBlob scale_blob(const std::string& name, const Quantized& q, DType dtype) {
  if (dtype == DType::BF16) return postsvd_test::bf16_blob(name, q.scale_shape, q.scales);
  if (dtype == DType::F16) {
    std::vector<uint16_t> bits;
    for (float s : q.scales) bits.push_back(postsvd::float_to_f16_rne(s));
    return {name, DType::F16, q.scale_shape, postsvd_test::to_bytes(bits)};
  }
  return postsvd_test::f32_blob(name, q.scale_shape, q.scales);
}

// W(r, c) = float(q[c, r]) * float(scale of block (c / b_out, r / b_in)), computed in T.
template <class T>
T expected_value(const Quantized& q, int64_t r, int64_t c, int64_t b_out, int64_t b_in, DType scale_dtype) {
  const int64_t in = q.shape[1];
  int64_t index = 0;
  if (q.scales.size() > 1) {
    index = q.scale_shape.size() == 2 && q.scale_shape[1] == 1 ? c : (c / b_out) * q.scale_shape[1] + r / b_in;
  }
  float s = q.scales[static_cast<std::size_t>(index)];
  if (scale_dtype == DType::F16) s = postsvd::detail::f16_to_float(postsvd::float_to_f16_rne(s));
  return static_cast<T>(postsvd::fp8_e4m3_to_float(q.codes[static_cast<std::size_t>(c * in + r)])) * static_cast<T>(s);
}

// Writes the tiny model with every linear block-quantized (blocks b_out x b_in of the stored [out, in]);
// `sharded` puts the scales in a second shard.
std::map<std::string, Quantized> write_block_fp8(const std::string& folder, int64_t b_out, int64_t b_in, DType scale_dtype,
                                                 bool sharded) {
  write_text(folder + "/config.json",
             llama_config(R"({"quant_method":"fp8","fmt":"e4m3","activation_scheme":"dynamic","weight_block_size":[)" +
                          std::to_string(b_out) + "," + std::to_string(b_in) + "]}"));
  std::map<std::string, Quantized> stored;
  std::vector<TensorBlob> weights, scales;
  uint32_t seed = 1;
  for (const auto& [module, shape] : kLinears) {
    const std::vector<int64_t> grid{(shape[0] + b_out - 1) / b_out, (shape[1] + b_in - 1) / b_in};
    Quantized q = make_quantized(shape, grid, seed++);
    weights.push_back(fp8_blob(module + ".weight", q));
    scales.push_back(scale_blob(module + ".weight_scale_inv", q, scale_dtype));
    stored[module] = std::move(q);
  }
  if (!sharded) {
    weights.insert(weights.end(), scales.begin(), scales.end());
    postsvd_test::write_safetensors(folder + "/model.safetensors", weights);
    return stored;
  }
  postsvd_test::write_safetensors(folder + "/model-00001-of-00002.safetensors", weights);
  postsvd_test::write_safetensors(folder + "/model-00002-of-00002.safetensors", scales);
  std::string map;
  for (const auto& b : weights) map += (map.empty() ? "\"" : ",\"") + b.name + "\":\"model-00001-of-00002.safetensors\"";
  for (const auto& b : scales) map += ",\"" + b.name + "\":\"model-00002-of-00002.safetensors\"";
  write_text(folder + "/model.safetensors.index.json", "{\"weight_map\":{" + map + "}}");
  return stored;
}

const MatrixSource& source_of(const postsvd::Architecture& arch, const std::string& module) {
  for (const MatrixSource& s : arch.matrices) {
    if (s.tensor == module + ".weight") return s;
  }
  throw std::runtime_error("no source for " + module);
}

template <class T>
void expect_dequantized(const Checkpoint& ck, const std::map<std::string, Quantized>& stored, int64_t b_out,
                        int64_t b_in, DType scale_dtype) {
  const auto arch = postsvd::detect_architecture(ck);
  for (const auto& [module, q] : stored) {
    const TensorView view = postsvd::view_of(ck, source_of(arch, module));
    ASSERT_EQ(view.scales.scheme, QuantScheme::ScaledFP8) << module;
    const auto w = postsvd::to_matrix<T>(view);
    const auto wt = postsvd::to_matrix<T>(view.transposed());
    ASSERT_EQ(w.rows(), q.shape[1]);
    ASSERT_EQ(w.cols(), q.shape[0]);
    for (int64_t r = 0; r < w.rows(); ++r) {
      for (int64_t c = 0; c < w.cols(); ++c) {
        const T expected = expected_value<T>(q, r, c, b_out, b_in, scale_dtype);
        ASSERT_EQ(w(r, c), expected) << module << " (" << r << ", " << c << ")";
        ASSERT_EQ(wt(c, r), expected) << module << " transposed (" << c << ", " << r << ")";
      }
    }
  }
}

TEST(Quantization, BlockFp8WithEdgeBlocksAndEveryScaleDtype) {
  for (DType scale_dtype : {DType::F32, DType::BF16, DType::F16}) {
    TempDir dir;
    const auto stored = write_block_fp8(dir.path(), 4, 3, scale_dtype, false);
    const Checkpoint ck(dir.path());
    expect_dequantized<float>(ck, stored, 4, 3, scale_dtype);
    expect_dequantized<double>(ck, stored, 4, 3, scale_dtype);
  }
}

TEST(Quantization, ScaleInAnotherShard) {
  TempDir dir;
  const auto stored = write_block_fp8(dir.path(), 4, 4, DType::F32, true);
  const Checkpoint ck(dir.path());
  ASSERT_TRUE(ck.sharded());
  ASSERT_NE(ck.file_of("model.layers.0.mlp.up_proj.weight").path(),
            ck.file_of("model.layers.0.mlp.up_proj.weight_scale_inv").path());
  expect_dequantized<float>(ck, stored, 4, 4, DType::F32);
}

TEST(Quantization, BadScaleShapeNamesTensorAndFiles) {
  TempDir dir;
  write_block_fp8(dir.path(), 4, 4, DType::F32, false);
  // The same checkpoint declared with 3 x 3 blocks: q_proj [6, 6] needs a [2, 2] grid, up_proj [10, 6] [4, 2].
  std::string config = llama_config(R"({"quant_method":"fp8","weight_block_size":[3,3]})");
  write_text(dir.path() + "/config.json", config);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, source_of(arch, "model.layers.0.mlp.up_proj")); },
                              {"model.layers.0.mlp.up_proj.weight_scale_inv", "model.safetensors", "[3, 2]",
                               "expected [4, 2]", "model.layers.0.mlp.up_proj.weight", "[10, 6]"});
}

TEST(Quantization, MissingScaleAndBadScaleDtype) {
  TempDir dir;
  write_text(dir.path() + "/config.json", llama_config(R"({"quant_method":"fp8","weight_block_size":[4,4]})"));
  std::vector<TensorBlob> blobs;
  uint32_t seed = 1;
  for (const auto& [module, shape] : kLinears) {
    const Quantized q = make_quantized(shape, {(shape[0] + 3) / 4, (shape[1] + 3) / 4}, seed++);
    blobs.push_back(fp8_blob(module + ".weight", q));
    if (module.find("q_proj") != std::string::npos) continue;  // no scale
    if (module.find("k_proj") != std::string::npos) {
      std::vector<int32_t> ints(q.scales.size(), 1);
      blobs.push_back({module + ".weight_scale_inv", DType::I32, q.scale_shape, postsvd_test::to_bytes(ints)});
      continue;
    }
    blobs.push_back(scale_blob(module + ".weight_scale_inv", q, DType::F32));
  }
  postsvd_test::write_safetensors(dir.path() + "/model.safetensors", blobs);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, source_of(arch, "model.layers.0.self_attn.q_proj")); },
                              {"model.safetensors", "model.layers.0.self_attn.q_proj.weight", "F8_E4M3", "fp8",
                               "no scale", "model.layers.0.self_attn.q_proj.weight_scale_inv"});
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, source_of(arch, "model.layers.0.self_attn.k_proj")); },
                              {"model.layers.0.self_attn.k_proj.weight_scale_inv", "I32", "expected one of F16, BF16, F32"});
}

TEST(Quantization, IgnoredModulesReadUnquantized) {
  TempDir dir;
  // up_proj is kept in BF16 (modules_to_not_convert), down_proj is F8 listed as not converted and has no scale.
  write_text(dir.path() + "/config.json",
             llama_config(R"({"quant_method":"fp8","weight_block_size":[4,4],"modules_to_not_convert":["mlp.up_proj","mlp.down_proj"]})"));
  std::vector<TensorBlob> blobs;
  std::map<std::string, Quantized> stored;
  std::vector<float> up_values;
  uint32_t seed = 1;
  for (const auto& [module, shape] : kLinears) {
    Quantized q = make_quantized(shape, {(shape[0] + 3) / 4, (shape[1] + 3) / 4}, seed++);
    if (module.find("up_proj") != std::string::npos) {
      for (int64_t i = 0; i < shape[0] * shape[1]; ++i) up_values.push_back(static_cast<float>(i % 13) - 6.0f);
      blobs.push_back(postsvd_test::bf16_blob(module + ".weight", shape, up_values));
      continue;
    }
    blobs.push_back(fp8_blob(module + ".weight", q));
    if (module.find("down_proj") == std::string::npos) blobs.push_back(scale_blob(module + ".weight_scale_inv", q, DType::F32));
    stored[module] = std::move(q);
  }
  postsvd_test::write_safetensors(dir.path() + "/model.safetensors", blobs);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  const TensorView up = postsvd::view_of(ck, source_of(arch, "model.layers.0.mlp.up_proj"));
  EXPECT_EQ(up.dtype, DType::BF16);
  EXPECT_FALSE(up.quantized());
  const auto w_up = postsvd::to_matrix<float>(up);
  EXPECT_EQ(w_up(5, 9), up_values[9 * 6 + 5]);
  const TensorView down = postsvd::view_of(ck, source_of(arch, "model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(down.quantized());  // raw FP8, scale 1
  const auto w_down = postsvd::to_matrix<float>(down);
  const Quantized& q = stored.at("model.layers.0.mlp.down_proj");
  for (int64_t r = 0; r < kInter; ++r)
    for (int64_t c = 0; c < kHidden; ++c) ASSERT_EQ(w_down(r, c), postsvd::fp8_e4m3_to_float(q.codes[c * kInter + r]));
  expect_dequantized<float>(ck, {{"model.layers.0.self_attn.o_proj", stored.at("model.layers.0.self_attn.o_proj")}}, 4,
                            4, DType::F32);

  postsvd::QuantizationConfig ct;
  ct.method = postsvd::QuantizationConfig::Method::CompressedTensors;
  ct.not_converted = {"lm_head", "re:.*mlp\\.gate$"};
  EXPECT_TRUE(postsvd::module_not_converted(ct, "lm_head.weight"));
  EXPECT_TRUE(postsvd::module_not_converted(ct, "model.layers.3.mlp.gate.weight"));
  EXPECT_FALSE(postsvd::module_not_converted(ct, "model.layers.3.mlp.gate_proj.weight"));
  EXPECT_FALSE(postsvd::module_not_converted(ct, "model.lm_head.weight"));
}

TEST(Quantization, CompressedTensorsPerTensorAndPerChannel) {
  TempDir dir;
  write_text(dir.path() + "/config.json",
             llama_config(R"({"quant_method":"compressed-tensors","format":"float-quantized","ignore":["lm_head"],)"
                          R"("config_groups":{"group_0":{"targets":["Linear"],"weights":{"num_bits":8,"type":"float","strategy":"channel"}}}})"));
  std::vector<TensorBlob> blobs;
  std::map<std::string, Quantized> stored;
  uint32_t seed = 7;
  for (const auto& [module, shape] : kLinears) {
    // Attention per tensor ([] for q, [1] for the others), MLP per output channel [out, 1].
    const bool attention = module.find("self_attn") != std::string::npos;
    const std::vector<int64_t> scale_shape =
        attention ? (module.find("q_proj") != std::string::npos ? std::vector<int64_t>{} : std::vector<int64_t>{1})
                  : std::vector<int64_t>{shape[0], 1};
    Quantized q = make_quantized(shape, scale_shape, seed++);
    blobs.push_back(fp8_blob(module + ".weight", q));
    blobs.push_back(scale_blob(module + ".weight_scale", q, DType::BF16));
    blobs.push_back(postsvd_test::f32_blob(module + ".input_scale", {1}, {0.5f}));  // activations: ignored
    stored[module] = std::move(q);
  }
  postsvd_test::write_safetensors(dir.path() + "/model.safetensors", blobs);
  const Checkpoint ck(dir.path());
  expect_dequantized<float>(ck, stored, 1, 1, DType::BF16);
  expect_dequantized<double>(ck, stored, 1, 1, DType::BF16);
}

TEST(Quantization, UnsupportedQuantMethodNamesConfig) {
  TempDir dir;
  write_block_fp8(dir.path(), 4, 4, DType::F32, false);
  write_text(dir.path() + "/config.json", llama_config(R"({"quant_method":"gptq","bits":4})"));
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, arch.matrices[0]); }, {"config.json", "'gptq'", "not supported"});
}

// ------------------------------------------------------------------ MXFP4

TEST(Quantization, Mxfp4ViewDequantizesNibblesAndExponents) {
  TempDir dir;
  // blocks [E=2, R=4, G=2, 16]: each row holds G * 32 = 64 values; scales [2, 4, 2].
  const int64_t E = 2, R = 4, G = 2;
  std::mt19937 rng(3);
  std::vector<uint8_t> blocks(static_cast<std::size_t>(E * R * G * 16)), scales(static_cast<std::size_t>(E * R * G));
  for (auto& b : blocks) b = static_cast<uint8_t>(rng() & 0xffu);
  for (auto& s : scales) s = static_cast<uint8_t>(120 + rng() % 14);
  write_text(dir.path() + "/config.json", R"({"model_type":"gpt_oss","quantization_config":{"quant_method":"mxfp4"}})");
  postsvd_test::write_safetensors(
      dir.path() + "/model.safetensors",
      {{"experts.down_proj_blocks", DType::U8, {E, R, G, 16}, postsvd_test::to_bytes(blocks)},
       {"experts.down_proj_scales", DType::U8, {E, R, G}, postsvd_test::to_bytes(scales)}});
  const Checkpoint ck(dir.path());
  // Reference: the dequantized tensor [E, R, 64] in row-major order, low nibble first.
  auto value = [&](int64_t i) {
    const uint8_t byte = blocks[static_cast<std::size_t>(i / 2)];
    const uint8_t nibble = i % 2 ? byte >> 4 : byte & 0xf;
    return postsvd::fp4_e2m1_to_float(nibble) * std::ldexp(1.0f, scales[static_cast<std::size_t>(i / 32)] - 127);
  };
  // Expert 1 as [in = 64, out = R] (nn.Linear [out, in]), and its odd output rows (an interleaved part).
  const int64_t in = G * 32;
  const TensorView whole = postsvd::mxfp4_view(ck, "experts.down_proj_blocks", "experts.down_proj_scales", R * in, in, R, 1, in);
  const TensorView odd = postsvd::mxfp4_view(ck, "experts.down_proj_blocks", "experts.down_proj_scales", R * in + in, in,
                                             R / 2, 1, 2 * in);
  const auto w = postsvd::to_matrix<float>(whole);
  const auto wt = postsvd::to_matrix<double>(whole.transposed());
  const auto w_odd = postsvd::to_matrix<float>(odd);
  for (int64_t r = 0; r < in; ++r) {
    for (int64_t c = 0; c < R; ++c) {
      const float expected = value(R * in + c * in + r);
      ASSERT_EQ(w(r, c), expected) << r << ", " << c;
      ASSERT_EQ(wt(c, r), static_cast<double>(expected));
      if (c < R / 2) ASSERT_EQ(w_odd(r, c), value(R * in + (2 * c + 1) * in + r));
    }
  }
  EXPECT_EQ(whole.byte_span(), (std::pair<int64_t, int64_t>(R * in / 2, E * R * in / 2)));
  EXPECT_EQ(postsvd::scale_byte_span(whole), (std::pair<int64_t, int64_t>(R * G, E * R * G)));
  expect_error<BadCheckpoint>(
      [&] { postsvd::mxfp4_view(ck, "experts.down_proj_blocks", "experts.down_proj_scales", R * in + 1, in, R, 1, in); },
      {"experts.down_proj_blocks", "model.safetensors", "reaches value 512"});
  expect_error<BadCheckpoint>(
      [&] { postsvd::mxfp4_view(ck, "experts.down_proj_scales", "experts.down_proj_blocks", 0, 1, 1, 1, 1); },
      {"experts.down_proj_scales", "expected MXFP4 blocks"});
}

// ------------------------------------------------------------------ writing back

TEST(Quantization, WriterCopiesFp8AsBf16WithoutScalesOrQuantizationConfig) {
  TempDir dir;
  const std::string in = dir.folder("in"), out = dir.folder("out");
  write_block_fp8(in, 4, 3, DType::F32, true);
  const Checkpoint ck(in);
  postsvd::CheckpointWriter writer(ck, out);
  const auto names = writer.finish();
  EXPECT_NE(std::find(names.begin(), names.end(), "config.json"), names.end());
  std::ifstream config_file(out + "/config.json");
  const auto config = nlohmann::json::parse(config_file);
  EXPECT_FALSE(config.contains("quantization_config"));
  EXPECT_EQ(config["model_type"], "llama");
  write_text(out + "/config.json", llama_config(""));
  const Checkpoint copy(out);
  for (const std::string& name : copy.tensor_names()) {
    EXPECT_EQ(copy.info(name).dtype, DType::BF16) << name;
    EXPECT_EQ(name.find("scale"), std::string::npos) << name;
  }
  const auto arch = postsvd::detect_architecture(copy);
  const auto arch_in = postsvd::detect_architecture(ck);
  for (std::size_t i = 0; i < arch.matrices.size(); ++i) {
    const auto w = postsvd::to_matrix<float>(postsvd::view_of(copy, arch.matrices[i]));
    const auto q = postsvd::to_matrix<float>(postsvd::view_of(ck, arch_in.matrices[i]));
    for (int64_t j = 0; j < w.size(); ++j) {
      ASSERT_EQ(w.data()[j], postsvd::detail::bf16_to_float(postsvd::detail::float_to_bf16(q.data()[j])))
          << arch.matrices[i].tensor;
    }
  }
}

// A sharded MXFP4 pair (blocks [E, R, G, 16] in the first shard, scales in the second) and a float tensor.
void write_mxfp4_pair(const std::string& folder, const std::vector<int64_t>& blocks_shape,
                      const std::vector<int64_t>& scales_shape, std::vector<uint8_t>& blocks, std::vector<uint8_t>& scales) {
  std::mt19937 rng(11);
  int64_t n_blocks = 1, n_scales = 1;
  for (int64_t d : blocks_shape) n_blocks *= d;
  for (int64_t d : scales_shape) n_scales *= d;
  blocks.resize(static_cast<std::size_t>(n_blocks));
  scales.resize(static_cast<std::size_t>(n_scales));
  for (auto& b : blocks) b = static_cast<uint8_t>(rng() & 0xffu);
  for (auto& s : scales) s = static_cast<uint8_t>(110 + rng() % 30);
  write_text(folder + "/config.json", R"({"model_type":"gpt_oss","quantization_config":{"quant_method":"mxfp4"}})");
  postsvd_test::write_safetensors(folder + "/model-00001-of-00002.safetensors",
                                  {{"mlp.experts.down_proj_blocks", DType::U8, blocks_shape, postsvd_test::to_bytes(blocks)},
                                   postsvd_test::f32_blob("norm.weight", {4}, {1.f, 2.f, 3.f, 4.f})});
  postsvd_test::write_safetensors(folder + "/model-00002-of-00002.safetensors",
                                  {{"mlp.experts.down_proj_scales", DType::U8, scales_shape, postsvd_test::to_bytes(scales)}});
  write_text(folder + "/model.safetensors.index.json",
             R"({"weight_map":{"mlp.experts.down_proj_blocks":"model-00001-of-00002.safetensors",)"
             R"("norm.weight":"model-00001-of-00002.safetensors",)"
             R"("mlp.experts.down_proj_scales":"model-00002-of-00002.safetensors"}})");
}

TEST(Quantization, WriterUnpacksMxfp4AsBf16InTheUnquantizedLayout) {
  TempDir dir;
  const std::string in = dir.folder("in"), out = dir.folder("out");
  const int64_t E = 2, R = 3, G = 2, C = G * 32;  // dequantized [E, R, C]; written back as [E, C, R]
  std::vector<uint8_t> blocks, scales;
  write_mxfp4_pair(in, {E, R, G, 16}, {E, R, G}, blocks, scales);
  const Checkpoint ck(in);
  const postsvd::QuantizationConfig config = postsvd::quantization_config(ck);
  EXPECT_EQ(postsvd::copy_as(ck, config, "mlp.experts.down_proj_blocks"), postsvd::CopyAs::MXFP4ToBF16);
  EXPECT_EQ(postsvd::copy_as(ck, config, "mlp.experts.down_proj_scales"), postsvd::CopyAs::Drop);
  EXPECT_EQ(postsvd::copy_as(ck, config, "norm.weight"), postsvd::CopyAs::Same);
  const postsvd::UnpackedMXFP4 unpacked = postsvd::unpacked_mxfp4(ck, "mlp.experts.down_proj_blocks");
  EXPECT_EQ(unpacked.name, "mlp.experts.down_proj");
  EXPECT_EQ(unpacked.shape, (std::vector<int64_t>{E, C, R}));
  // Reference: value i of the dequantized [E, R, C] in row-major order, low nibble first.
  auto value = [&](int64_t i) {
    const uint8_t byte = blocks[static_cast<std::size_t>(i / 2)];
    const uint8_t nibble = i % 2 ? byte >> 4 : byte & 0xf;
    return postsvd::fp4_e2m1_to_float(nibble) * std::ldexp(1.0f, scales[static_cast<std::size_t>(i / 32)] - 127);
  };
  // Expert 1 replaced through its MXFP4 source (a gpt-oss down_proj part: W [in = C, out = R]).
  MatrixSource source;
  source.tensor = "mlp.experts.down_proj_blocks";
  source.mxfp4_scales = "mlp.experts.down_proj_scales";
  source.kind = postsvd::Kind::Down;
  source.expert = 1;
  source.in_features = C;
  source.out_features = R;
  source.fused_out = R;
  source.stacked = E;
  source.stacked_index = 1;
  postsvd::Matrix<float> w(C, R);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = 0.001f * static_cast<float>(i) - 0.05f;
  {
    postsvd::CheckpointWriter writer(ck, out);
    writer.write(source, w);
    const auto names = writer.finish();
    EXPECT_NE(std::find(names.begin(), names.end(), "config.json"), names.end());
  }
  std::ifstream config_file(out + "/config.json");
  EXPECT_FALSE(nlohmann::json::parse(config_file).contains("quantization_config"));
  std::ifstream index_file(out + "/model.safetensors.index.json");
  const auto index = nlohmann::json::parse(index_file);
  EXPECT_EQ(index["weight_map"], nlohmann::json::parse(R"({"mlp.experts.down_proj":"model-00001-of-00002.safetensors",)"
                                                       R"("norm.weight":"model-00001-of-00002.safetensors"})"));
  const Checkpoint copy(out);
  EXPECT_EQ(copy.tensor_names(), (std::vector<std::string>{"mlp.experts.down_proj", "norm.weight"}));
  const postsvd::TensorInfo& info = copy.info("mlp.experts.down_proj");
  ASSERT_EQ(info.dtype, DType::BF16);
  ASSERT_EQ(info.shape, (std::vector<int64_t>{E, C, R}));
  const auto* bits = static_cast<const uint16_t*>(copy.file_of("mlp.experts.down_proj").data(info));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      // Expert 0 untouched: its dequantized values, transposed, rounded to BF16; expert 1 is W.
      ASSERT_EQ(bits[c * R + r], postsvd::detail::float_to_bf16(value(r * C + c))) << c << ", " << r;
      ASSERT_EQ(bits[C * R + c * R + r], postsvd::detail::float_to_bf16(w(c, r))) << c << ", " << r;
    }
  }
  const auto* norm = static_cast<const float*>(copy.file_of("norm.weight").data(copy.info("norm.weight")));
  EXPECT_EQ(std::vector<float>(norm, norm + 4), (std::vector<float>{1.f, 2.f, 3.f, 4.f}));
}

TEST(Quantization, WriterLaysOutAnMxfp4PairFromItsHeadersAlone) {
  // A partial Hub copy whose headers alone are fetched: the writer lays out the BF16 copy (the pair checked
  // from the headers) and reads the pair only when it copies it, then writes what it writes from the whole.
  TempDir dir;
  const std::string in = dir.folder("in"), whole_out = dir.folder("whole-out"), out = dir.folder("out");
  std::vector<uint8_t> blocks, scales;
  write_mxfp4_pair(in, {2, 3, 2, 16}, {2, 3, 2}, blocks, scales);
  {
    const Checkpoint whole(in);
    postsvd::CheckpointWriter writer(whole, whole_out);
    writer.finish();
  }
  const std::vector<std::string> files = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> headers, everything;
  for (const std::string& name : files) {
    const postsvd::SafetensorsFile file(in + "/" + name);
    headers[name] = {{0, 8 + file.header_size()}};
    everything[name] = {{0, file.file_size()}};
  }
  postsvd_test::write_fetch_manifest(in, headers);
  const Checkpoint partial(in);
  postsvd::CheckpointWriter writer(partial, out);
  expect_error<postsvd::NotFetched>([&] { writer.copy_unchanged(); }, {"down_proj_blocks", "was not fetched"});
  postsvd_test::write_fetch_manifest(in, everything);
  writer.finish();
  for (const std::string& name : {files[0], files[1], std::string("model.safetensors.index.json"),
                                  std::string("config.json")})
    EXPECT_EQ(postsvd_test::read_bytes(out + "/" + name), postsvd_test::read_bytes(whole_out + "/" + name)) << name;
}

TEST(Quantization, WriterNamesAMalformedMxfp4Pair) {
  TempDir dir;
  std::vector<uint8_t> blocks, scales;
  {  // scales of the wrong shape
    const std::string in = dir.folder("scales"), out = dir.folder("scales-out");
    write_mxfp4_pair(in, {2, 3, 2, 16}, {2, 3, 1}, blocks, scales);
    const Checkpoint ck(in);
    expect_error<BadCheckpoint>([&] { postsvd::CheckpointWriter writer(ck, out); },
                                {"mlp.experts.down_proj_scales", "model-00002-of-00002.safetensors", "[2, 3, 1]",
                                 "expected the E8M0 scales", "[2, 3, 2]"});
  }
  {  // blocks that are not [E, R, G, 16]
    const std::string in = dir.folder("blocks"), out = dir.folder("blocks-out");
    write_mxfp4_pair(in, {3, 2, 16}, {3, 2}, blocks, scales);
    const Checkpoint ck(in);
    expect_error<BadCheckpoint>([&] { postsvd::CheckpointWriter writer(ck, out); },
                                {"mlp.experts.down_proj_blocks", "model-00001-of-00002.safetensors", "[3, 2, 16]",
                                 "[E, R, G, 16]"});
  }
}

// ------------------------------------------------------------------ consumers

TEST(Quantization, CpuBackendAndCacheKeySeeTheDequantizedMatrix) {
  TempDir dir;
  write_block_fp8(dir.path(), 4, 4, DType::BF16, false);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  postsvd::BackendOptions options;
  options.num_threads = 1;
  const auto backend_ptr = postsvd::make_backend(options);
  postsvd::Backend& backend = *backend_ptr;
  for (const std::string module : {"model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"}) {  // tall and wide
    const TensorView view = postsvd::view_of(ck, source_of(arch, module));
    const auto w = postsvd::to_matrix<float>(view);
    const TensorView plain{w.data(), DType::F32, w.rows(), w.cols(), 1, w.rows(), "plain"};
    const auto a = backend.decompose_f32(view);
    const auto b = backend.decompose_f32(plain);
    ASSERT_EQ(a.S, b.S) << module;
    for (int64_t i = 0; i < a.U.size(); ++i) ASSERT_EQ(a.U.data()[i], b.U.data()[i]) << module;
  }
  // Same FP8 bytes, other scales: another cache key.
  const TensorView q = postsvd::view_of(ck, source_of(arch, "model.layers.0.self_attn.q_proj"));
  TensorView rescaled = q;
  const TensorView o = postsvd::view_of(ck, source_of(arch, "model.layers.0.self_attn.o_proj"));
  rescaled.scales.data = o.scales.data;
  EXPECT_NE(postsvd::FactorCache::key(q, postsvd::Precision::F32), postsvd::FactorCache::key(rescaled, postsvd::Precision::F32));
  EXPECT_EQ(postsvd::FactorCache::key(q, postsvd::Precision::F32), postsvd::FactorCache::key(postsvd::view_of(ck, source_of(arch, "model.layers.0.self_attn.q_proj")), postsvd::Precision::F32));
}

}  // namespace

namespace {

// ------------------------------------------------------------------ the device's loaders

// Quantized views of every kind the CUDA backend may dequantize on the device: block FP8 with edge
// blocks and each scale dtype, the same codes unscaled, every other stored row (a grouped view, as
// DeepSeek's kv_b K/V parts), per-output-channel float32 scales (compressed-tensors; products that round
// in float32), MXFP4 (an expert whole and
// its odd rows). The folders live as long as the cases.
struct QuantizedCases {
  std::vector<std::unique_ptr<TempDir>> dirs;
  std::vector<std::unique_ptr<Checkpoint>> checkpoints;
  std::vector<std::pair<std::string, TensorView>> views;

  QuantizedCases() {
    for (DType scale_dtype : {DType::F32, DType::BF16, DType::F16}) {
      const Checkpoint& ck = folder([&](const std::string& path) { write_block_fp8(path, 4, 3, scale_dtype, false); });
      for (const MatrixSource& s : postsvd::detect_architecture(ck).matrices) {
        const TensorView view = postsvd::view_of(ck, s);
        const std::string name = s.tensor + " " + postsvd::dtype_name(scale_dtype) + " scales";
        views.emplace_back(name, view);
        TensorView raw = view;  // the same codes without their scales
        raw.scales = postsvd::ViewScales{};
        views.emplace_back(s.tensor + " unscaled", raw);
        if (view.cols >= 4) {
          TensorView grouped = view;
          grouped.cols = view.cols / 2;
          grouped.col_group = 1;
          grouped.col_group_skip = view.col_stride;
          views.emplace_back(name + ", every other stored row", grouped);
        }
      }
    }
    const Checkpoint& channel = folder([&](const std::string& path) {
      write_text(path + "/config.json", llama_config(R"({"quant_method":"compressed-tensors","format":"float-quantized"})"));
      std::vector<TensorBlob> blobs;
      uint32_t seed = 40;
      std::mt19937 rng(41);
      std::uniform_real_distribution<float> u(0.001f, 0.02f);
      for (const auto& [module, shape] : kLinears) {
        Quantized q = make_quantized(shape, {shape[0], 1}, seed++);
        for (float& scale : q.scales) scale = u(rng);  // full float32 scales: q * scale rounds in float32
        blobs.push_back(fp8_blob(module + ".weight", q));
        blobs.push_back(scale_blob(module + ".weight_scale", q, DType::F32));
      }
      postsvd_test::write_safetensors(path + "/model.safetensors", blobs);
    });
    for (const MatrixSource& s : postsvd::detect_architecture(channel).matrices)
      views.emplace_back(s.tensor + " per channel", postsvd::view_of(channel, s));
    const int64_t E = 2, R = 4, G = 2, in = G * 32;
    const Checkpoint& mx = folder([&](const std::string& path) {
      std::mt19937 rng(5);
      std::vector<uint8_t> blocks(static_cast<std::size_t>(E * R * G * 16)), scales(static_cast<std::size_t>(E * R * G));
      for (auto& b : blocks) b = static_cast<uint8_t>(rng() & 0xffu);
      for (auto& e : scales) e = static_cast<uint8_t>(118 + rng() % 16);
      write_text(path + "/config.json", R"({"model_type":"gpt_oss","quantization_config":{"quant_method":"mxfp4"}})");
      postsvd_test::write_safetensors(path + "/model.safetensors",
                                      {{"experts.down_proj_blocks", DType::U8, {E, R, G, 16}, postsvd_test::to_bytes(blocks)},
                                       {"experts.down_proj_scales", DType::U8, {E, R, G}, postsvd_test::to_bytes(scales)}});
    });
    views.emplace_back("mxfp4 expert 1",
                       postsvd::mxfp4_view(mx, "experts.down_proj_blocks", "experts.down_proj_scales", R * in, in, R, 1, in));
    views.emplace_back("mxfp4 expert 1, odd rows", postsvd::mxfp4_view(mx, "experts.down_proj_blocks",
                                                                       "experts.down_proj_scales", R * in + in, in, R / 2, 1, 2 * in));
  }

 private:
  template <class Write>
  const Checkpoint& folder(Write write) {
    dirs.push_back(std::make_unique<TempDir>());
    write(dirs.back()->path());
    checkpoints.push_back(std::make_unique<Checkpoint>(dirs.back()->path()));
    return *checkpoints.back();
  }
};

// Bitwise equality of a matrix with a reference in float or double (the cases hold no NaN).
template <class A, class B>
void expect_same_matrix(const postsvd::Matrix<A>& got, const postsvd::Matrix<B>& want, const std::string& what) {
  ASSERT_EQ(got.rows(), want.rows()) << what;
  ASSERT_EQ(got.cols(), want.cols()) << what;
  for (int64_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(static_cast<double>(got.data()[i]), static_cast<double>(want.data()[i]))
        << what << ", element (" << i % want.rows() << ", " << i / want.rows() << ")";
}

// What the CUDA kernels compute, run on the host: each view staged into a buffer as Pipeline::stage does
// (staging_of), then every element read by with_loader's loader (the code the kernels run) as
// convert_view reads it, in each working precision and working type, equals to_matrix bit for bit.
TEST(Quantization, DeviceLoadersOnStagedBytesEqualToMatrix) {
  QuantizedCases cases;
  auto staged_read = [](const TensorView& v, postsvd::Precision precision, auto zero) {
    using T = decltype(zero);
    const postsvd::cuda::Staging staging = postsvd::cuda::staging_of(v);
    std::vector<char> buffer(staging.total + 64, '\x7f');  // stray bytes around the copies
    std::memcpy(buffer.data(), static_cast<const char*>(v.data) + staging.first, static_cast<std::size_t>(staging.bytes));
    if (staging.scale_bytes > 0)
      std::memcpy(buffer.data() + staging.scale_offset, static_cast<const char*>(v.scales.data) + staging.scale_first,
                  static_cast<std::size_t>(staging.scale_bytes));
    postsvd::Matrix<T> out(v.rows, v.cols);
    const postsvd::cuda::ViewLayout layout = postsvd::cuda::layout_of(v);
    postsvd::cuda::with_loader(buffer.data(), v.dtype, postsvd::cuda::staged_base_offset(v),
                               postsvd::cuda::device_scales(v, buffer.data(), precision), [&](const auto& load) {
                                 for (int64_t c = 0; c < v.cols; ++c)
                                   for (int64_t r = 0; r < v.rows; ++r) out(r, c) = load.template get<T>(layout.element_of(r, c));
                               });
    return out;
  };
  ASSERT_GT(cases.views.size(), 40u);
  for (const auto& [what, view] : cases.views) {
    for (bool transposed : {false, true}) {
      const TensorView v = transposed ? view.transposed() : view;
      const std::string where = what + (transposed ? " (transposed)" : "");
      const auto f32 = postsvd::to_matrix<float>(v);
      expect_same_matrix(staged_read(v, postsvd::Precision::F32, 0.0f), f32, where + ", float32");
      // float32 precision in a float64 kernel (gram64): rounded once in float32, then widened.
      expect_same_matrix(staged_read(v, postsvd::Precision::F32, 0.0), f32, where + ", float32 in float64");
      expect_same_matrix(staged_read(v, postsvd::Precision::F64, 0.0), postsvd::to_matrix<double>(v), where + ", float64");
    }
  }
}

// GPU tier (ctest -L gpu): the CUDA backend dequantizes on the host with to_matrix, so a quantized view
// and the plain float32 view of its dequantized matrix are the same input: sigma agrees with the CPU and a
// pair of the two has scaling 1 and NF 0. Skips without a device.
TEST(QuantizationCuda, QuantizedViewsMatchTheCpuAndTheirDequantizedCopy) {
  if (postsvd::cuda_device_count() == 0) {
    GTEST_SKIP() << "no CUDA device here (or built without CUDA: POSTSVD_ENABLE_CUDA=OFF); GPU cases run with "
                    "`ctest -L gpu` on a GPU machine";
  }
  TempDir dir;
  write_block_fp8(dir.path(), 4, 3, DType::BF16, false);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  postsvd::BackendOptions gpu_options, cpu_options;
  gpu_options.device = postsvd::Device::CUDA;
  const auto gpu = postsvd::make_backend(gpu_options);
  const auto cpu = postsvd::make_backend(cpu_options);
  std::vector<postsvd::Matrix<float>> copies;
  std::vector<postsvd::PairInput> pairs;
  for (const MatrixSource& s : arch.matrices) {
    const TensorView view = postsvd::view_of(ck, s);
    const auto g = gpu->decompose_f32(view);
    const auto c = cpu->decompose_f32(view);
    for (std::size_t j = 0; j < c.S.size(); ++j) EXPECT_NEAR(g.S[j], c.S[j], 1e-5f * c.S[0]) << s.tensor;
    copies.push_back(postsvd::to_matrix<float>(view));
    const auto& w = copies.back();
    pairs.push_back({view, TensorView{w.data(), DType::F32, w.rows(), w.cols(), 1, w.rows(), s.tensor + " (copy)"}});
  }
  for (const auto& m : gpu->compare(pairs, postsvd::MeasureOptions{})) {
    EXPECT_NEAR(m.scaling_stats.mean, 1.0, 1e-6);
    EXPECT_LE(m.nf, 1e-5);
  }
}

#ifdef POSTSVD_WITH_CUDA
// Dequantization on the device (CudaConfig::dequantize_on_device) against to_matrix, bit for bit, on
// every case of QuantizedCases (each as stored and transposed), in both precisions and for a float64
// (gram64) and a float32 (gesvd) working type. Skips without a device.
TEST(QuantizationCuda, DeviceDequantizationEqualsToMatrixBitForBit) {
  if (postsvd::cuda_device_count() == 0) {
    GTEST_SKIP() << "no CUDA device here; GPU cases run with `ctest -L gpu` on a GPU machine";
  }
  QuantizedCases cases;
  postsvd::BackendOptions options;
  options.device = postsvd::Device::CUDA;
  for (auto method : {postsvd::cuda::SvdMethod::Gram64, postsvd::cuda::SvdMethod::Gesvd}) {
    postsvd::cuda::CudaConfig config;
    config.method = method;
    config.dequantize_on_device = true;
    auto gpu = postsvd::cuda::make_cuda_backend_with(options, config);
    for (const auto& [what, view] : cases.views) {
      for (bool transposed : {false, true}) {
        const TensorView v = transposed ? view.transposed() : view;
        const std::string where = std::string(postsvd::cuda::method_name(method)) + " " + what + (transposed ? " (T)" : "");
        expect_same_matrix(gpu->converted(v, postsvd::Precision::F32), postsvd::to_matrix<float>(v), where + " f32");
        expect_same_matrix(gpu->converted(v, postsvd::Precision::F64), postsvd::to_matrix<double>(v), where + " f64");
      }
    }
  }
}

TEST(QuantizationCuda, DeviceDequantizedCompareSendsFewerBytesAndSeesTheSameMatrices) {
  if (postsvd::cuda_device_count() == 0) {
    GTEST_SKIP() << "no CUDA device here; GPU cases run with `ctest -L gpu` on a GPU machine";
  }
  TempDir dir;
  write_block_fp8(dir.path(), 4, 3, DType::BF16, false);
  const Checkpoint ck(dir.path());
  const auto arch = postsvd::detect_architecture(ck);
  std::vector<postsvd::Matrix<float>> copies;
  std::vector<postsvd::PairInput> pairs;
  for (const MatrixSource& s : arch.matrices) {
    const TensorView view = postsvd::view_of(ck, s);
    copies.push_back(postsvd::to_matrix<float>(view));
    const auto& w = copies.back();
    pairs.push_back({view, TensorView{w.data(), DType::F32, w.rows(), w.cols(), 1, w.rows(), s.tensor + " (copy)"}});
  }
  postsvd::BackendOptions options;
  options.device = postsvd::Device::CUDA;
  std::size_t bytes[2] = {0, 0};
  for (bool on_device : {false, true}) {
    postsvd::cuda::CudaConfig config;
    config.dequantize_on_device = on_device;
    auto gpu = postsvd::cuda::make_cuda_backend_with(options, config);
    for (const auto& m : gpu->compare(pairs, postsvd::MeasureOptions{})) {
      EXPECT_NEAR(m.scaling_stats.mean, 1.0, 1e-6) << (on_device ? "device" : "host");
      EXPECT_LE(m.nf, 1e-5) << (on_device ? "device" : "host");
    }
    bytes[on_device] = gpu->last_stats().bytes_to_device;
  }
  // Host: two float32 matrices per pair; device: FP8 codes and BF16 scales for the base.
  EXPECT_LT(bytes[1], bytes[0]);
}
#endif

}  // namespace
