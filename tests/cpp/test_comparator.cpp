// postsvd::Comparator on checkpoint folders written here: a post model that is
// the base scaled by 1/2 gives scaling 0.5 and NF 0 for every pair, through the
// backend's own path and through the factor cache; bad indices and mismatched
// folders are refused with the names in the message.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "postsvd/comparator.h"
#include "reader_test_util.h"
#include "safetensors_test_util.h"

namespace {

using postsvd_test::expect_error;
using postsvd_test::TempDir;
using postsvd_test::write_text;

constexpr int kLayers = 2;
constexpr int64_t kHidden = 8, kQ = 8, kKv = 4, kInter = 12;

// A llama folder whose projections are `scale` times one fixed random draw.
void write_llama(const std::string& folder, float scale, int64_t hidden = kHidden) {
  write_text(folder + "/config.json",
             R"({"model_type": "llama", "hidden_size": )" + std::to_string(hidden) +
                 R"(, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 12,
                 "num_hidden_layers": 2})");
  std::mt19937_64 rng(17);
  std::normal_distribution<float> normal;
  std::vector<postsvd_test::TensorBlob> blobs;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> values(static_cast<std::size_t>(shape[0] * shape[1]));
    for (float& v : values) v = scale * normal(rng);
    blobs.push_back(postsvd_test::f32_blob(name, std::move(shape), values));
  };
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "self_attn.q_proj.weight", {kQ, hidden});
    add(p + "self_attn.k_proj.weight", {kKv, hidden});
    add(p + "self_attn.v_proj.weight", {kKv, hidden});
    add(p + "self_attn.o_proj.weight", {hidden, kQ});
    add(p + "mlp.gate_proj.weight", {kInter, hidden});
    add(p + "mlp.up_proj.weight", {kInter, hidden});
    add(p + "mlp.down_proj.weight", {hidden, kInter});
  }
  postsvd_test::write_safetensors(folder + "/model.safetensors", blobs);
}

std::vector<int64_t> all_indices(const postsvd::Comparator& c) {
  std::vector<int64_t> out;
  for (std::size_t i = 0; i < c.architecture().matrices.size(); ++i) out.push_back(static_cast<int64_t>(i));
  return out;
}

TEST(Comparator, HalvedWeightsGiveScalingOneHalfAndNoRotation) {
  TempDir dir;
  const std::string base = dir.folder("base"), post = dir.folder("post");
  write_llama(base, 1.0f);
  write_llama(post, 0.5f);
  for (const bool cached : {false, true}) {
    SCOPED_TRACE(cached ? "through the factor cache" : "backend path");
    postsvd::Comparator c(base, post, postsvd::BackendOptions{}, postsvd::Precision::F64,
                          cached ? dir.folder("factors") : std::string());
    ASSERT_EQ(c.architecture().matrices.size(), 7u * kLayers);
    const auto measures = c.compare(all_indices(c), true, 3);
    ASSERT_EQ(measures.size(), 7u * kLayers);
    for (const auto& m : measures) {
      for (double s : m.scaling) EXPECT_NEAR(s, 0.5, 1e-12);
      EXPECT_NEAR(m.nf, 0.0, 1e-12);
      EXPECT_EQ(m.iorth.rows(), 3);
      for (double d : m.iorth_diag) EXPECT_NEAR(d, 1.0, 1e-12);
    }
    EXPECT_EQ(c.cache_counts().computed, cached ? 2 * 7 * kLayers : 0);
  }
  // A second cached comparator finds every decomposition.
  postsvd::Comparator again(base, post, postsvd::BackendOptions{}, postsvd::Precision::F64, dir.file("factors"));
  again.compare(all_indices(again));
  EXPECT_EQ(again.cache_counts().loaded, 2 * 7 * kLayers);
  EXPECT_EQ(again.cache_counts().computed, 0);
}

TEST(Comparator, BadIndicesAndMismatchedFoldersAreRefused) {
  TempDir dir;
  const std::string base = dir.folder("base"), post = dir.folder("post"), wide = dir.folder("wide");
  write_llama(base, 1.0f);
  write_llama(post, 0.5f);
  write_llama(wide, 1.0f, 2 * kHidden);
  postsvd::Comparator c(base, post, postsvd::BackendOptions{});
  expect_error<postsvd::InvalidArgument>([&] { c.compare({0, 14}); }, {"indices", "[0, 14)", "14"});
  expect_error<postsvd::InvalidArgument>([&] { c.compare({0}, true, -1); }, {"leading_k"});
  expect_error<postsvd::BadCheckpoint>([&] { postsvd::Comparator(base, wide, postsvd::BackendOptions{}); },
                                       {"q_proj"});
}

}  // namespace
