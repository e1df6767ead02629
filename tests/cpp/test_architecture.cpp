// Architecture mapping on synthetic checkpoint folders: every supported
// model_type, fused splits (phi3 qkv / gate_up, gpt2 c_attn), Conv1D layout,
// optional name prefixes, MoE experts, and the errors for unknown types,
// wrong shapes and mismatched pairs. view_of + to_matrix must give W_hf^T.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "postsvd/architecture.h"
#include "reader_test_util.h"
#include "safetensors_test_util.h"

namespace {

using postsvd::Architecture;
using postsvd::BadCheckpoint;
using postsvd::Checkpoint;
using postsvd::DType;
using postsvd::Kind;
using postsvd::MatrixSource;
using postsvd::TensorView;
using postsvd_test::expect_error;
using postsvd_test::TempDir;
using postsvd_test::write_text;

struct StoredTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major, exactly representable in bf16
};
using TensorSpec = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// Deterministic values k/4 with |k| <= 100: distinct per tensor, exact in bf16.
std::vector<float> values_for(const std::string& name, int64_t count) {
  uint32_t h = 2166136261u;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  std::vector<float> v(static_cast<std::size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    v[static_cast<std::size_t>(i)] = static_cast<float>(static_cast<int>((h + 7919u * i) % 201u) - 100) / 4.0f;
  }
  return v;
}

// Writes config.json and the tensors (model.safetensors, or two shards with an
// index); returns the stored values for reference.
std::map<std::string, StoredTensor> write_folder(const std::string& folder, const std::string& config,
                                                 const TensorSpec& spec, DType dtype = DType::F32,
                                                 bool sharded = false) {
  write_text(folder + "/config.json", config);
  std::map<std::string, StoredTensor> stored;
  std::vector<postsvd_test::TensorBlob> blobs;
  for (const auto& [name, shape] : spec) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    StoredTensor t{shape, values_for(name, count)};
    blobs.push_back(dtype == DType::BF16 ? postsvd_test::bf16_blob(name, shape, t.values)
                                        : postsvd_test::f32_blob(name, shape, t.values));
    stored[name] = std::move(t);
  }
  if (!sharded) {
    postsvd_test::write_safetensors(folder + "/model.safetensors", blobs);
    return stored;
  }
  const std::size_t half = blobs.size() / 2;
  std::vector<postsvd_test::TensorBlob> first(blobs.begin(), blobs.begin() + half);
  std::vector<postsvd_test::TensorBlob> second(blobs.begin() + half, blobs.end());
  postsvd_test::write_safetensors(folder + "/model-00001-of-00002.safetensors", first);
  postsvd_test::write_safetensors(folder + "/model-00002-of-00002.safetensors", second);
  std::string map = "{";
  for (std::size_t i = 0; i < blobs.size(); ++i) {
    map += (i ? ",\"" : "\"") + blobs[i].name + "\":\"model-0000" + (i < half ? "1" : "2") + "-of-00002.safetensors\"";
  }
  write_text(folder + "/model.safetensors.index.json", R"({"metadata":{},"weight_map":)" + map + "}}");
  return stored;
}

// W (r, c) of the paper orientation, computed directly from the stored values.
double expected_entry(const StoredTensor& t, bool conv1d, int64_t out_offset, int64_t r, int64_t c) {
  if (conv1d) return t.values[static_cast<std::size_t>(r * t.shape[1] + out_offset + c)];  // [in, out]
  return t.values[static_cast<std::size_t>((out_offset + c) * t.shape[1] + r)];           // [out, in]
}

// Every source's view converts to W_hf^T (or the Conv1D part) exactly.
void expect_views_match(const Checkpoint& ck, const Architecture& arch, const std::map<std::string, StoredTensor>& stored) {
  for (const MatrixSource& s : arch.matrices) {
    SCOPED_TRACE(s.tensor + " " + postsvd::kind_name(s.kind));
    const postsvd::TensorView view = postsvd::view_of(ck, s);
    const auto w = postsvd::to_matrix<double>(view);
    ASSERT_EQ(w.rows(), s.in_features);
    ASSERT_EQ(w.cols(), s.out_features);
    const StoredTensor& t = stored.at(s.tensor);
    for (int64_t r = 0; r < w.rows(); ++r)
      for (int64_t c = 0; c < w.cols(); ++c) ASSERT_EQ(w(r, c), expected_entry(t, s.conv1d, s.out_offset, r, c));
    const auto span = view.byte_span();
    EXPECT_GE(span.first, 0);
    const int64_t total = static_cast<int64_t>(t.values.size() * postsvd::dtype_size(view.dtype));
    EXPECT_LE(static_cast<const char*>(view.data) - static_cast<const char*>(ck.file_of(s.tensor).data(ck.info(s.tensor))) + span.second, total);
  }
}

// Llama-style tensors for `layers` layers, plus embeddings and norms that the mapping ignores.
TensorSpec llama_spec(const std::string& prefix, int layers, int64_t hidden, int64_t q_out, int64_t kv_out,
                      int64_t inter) {
  TensorSpec spec = {{prefix + "embed_tokens.weight", {16, hidden}}, {prefix + "norm.weight", {hidden}}};
  for (int i = 0; i < layers; ++i) {
    const std::string p = prefix + "layers." + std::to_string(i) + ".";
    spec.push_back({p + "self_attn.q_proj.weight", {q_out, hidden}});
    spec.push_back({p + "self_attn.k_proj.weight", {kv_out, hidden}});
    spec.push_back({p + "self_attn.v_proj.weight", {kv_out, hidden}});
    spec.push_back({p + "self_attn.o_proj.weight", {hidden, q_out}});
    spec.push_back({p + "mlp.gate_proj.weight", {inter, hidden}});
    spec.push_back({p + "mlp.up_proj.weight", {inter, hidden}});
    spec.push_back({p + "mlp.down_proj.weight", {hidden, inter}});
    spec.push_back({p + "input_layernorm.weight", {hidden}});
  }
  return spec;
}

const char* kLlamaConfig =
    R"({"model_type": "%s", "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 12, "num_hidden_layers": 2, "head_dim": null})";

std::string llama_config(const std::string& type, const std::string& extra = "") {
  std::string c = kLlamaConfig;
  c.replace(c.find("%s"), 2, type);
  if (!extra.empty()) c.insert(c.size() - 1, ", " + extra);
  return c;
}

class ArchitectureFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(ArchitectureFamily, MapsEveryProjectionToTransposedWeights) {
  const std::string type = GetParam();
  TempDir dir;
  const std::string folder = dir.folder(type);
  // gemma2 carries an explicit head_dim that differs from hidden / heads.
  const bool gemma = type == "gemma2";
  const int64_t head_dim = gemma ? 6 : 4;
  const auto stored = write_folder(folder, llama_config(type, gemma ? "\"head_dim\": 6" : ""),
                                   llama_spec("model.", 2, 8, 2 * head_dim, head_dim, 12));
  Checkpoint ck(folder);
  const Architecture arch = postsvd::detect_architecture(ck);
  EXPECT_EQ(arch.model_type, type);
  EXPECT_EQ(arch.num_layers, 2);
  ASSERT_EQ(arch.matrices.size(), 14u);
  const Kind order[] = {Kind::Q, Kind::K, Kind::V, Kind::O, Kind::Gate, Kind::Up, Kind::Down};
  const int64_t in[] = {8, 8, 8, 2 * head_dim, 8, 8, 12};
  const int64_t out[] = {2 * head_dim, head_dim, head_dim, 8, 12, 12, 8};
  for (int i = 0; i < 14; ++i) {
    const MatrixSource& s = arch.matrices[static_cast<std::size_t>(i)];
    EXPECT_EQ(s.layer, i / 7);
    EXPECT_EQ(s.kind, order[i % 7]);
    EXPECT_EQ(s.expert, -1);
    EXPECT_FALSE(s.conv1d);
    EXPECT_EQ(s.in_features, in[i % 7]);
    EXPECT_EQ(s.out_features, out[i % 7]);
    EXPECT_EQ(s.fused_out, s.out_features);
  }
  EXPECT_EQ(arch.matrices[7].tensor, "model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(arch.matrices[13].tensor, "model.layers.1.mlp.down_proj.weight");
  expect_views_match(ck, arch, stored);
  EXPECT_EQ(postsvd::view_of(ck, arch.matrices[0]).name, "model.layers.0.self_attn.q_proj.weight");
}

INSTANTIATE_TEST_SUITE_P(Architecture, ArchitectureFamily, ::testing::Values("llama", "qwen2", "mistral", "gemma2"));

TEST(Architecture, BareNamesBf16AndShardedFolders) {
  TempDir dir;
  const std::string folder = dir.folder("bare");
  const auto stored = write_folder(folder, llama_config("llama"), llama_spec("", 2, 8, 8, 4, 12), DType::BF16, true);
  Checkpoint ck(folder);
  EXPECT_TRUE(ck.sharded());
  const Architecture arch = postsvd::detect_architecture(ck);
  ASSERT_EQ(arch.matrices.size(), 14u);
  EXPECT_EQ(arch.matrices[0].tensor, "layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(postsvd::view_of(ck, arch.matrices[0]).dtype, DType::BF16);
  expect_views_match(ck, arch, stored);
}

TEST(Architecture, Phi3SplitsFusedQkvAndGateUp) {
  TempDir dir;
  const std::string folder = dir.folder("phi3");
  // hidden 8, 4 query heads, 2 kv heads -> head_dim 2: q 8, k 4, v 4 rows of qkv_proj [16, 8].
  const std::string config = R"({"model_type": "phi3", "hidden_size": 8, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 6, "num_hidden_layers": 1})";
  const TensorSpec spec = {{"model.layers.0.self_attn.qkv_proj.weight", {16, 8}},
                           {"model.layers.0.self_attn.o_proj.weight", {8, 8}},
                           {"model.layers.0.mlp.gate_up_proj.weight", {12, 8}},
                           {"model.layers.0.mlp.down_proj.weight", {8, 6}}};
  const auto stored = write_folder(folder, config, spec);
  Checkpoint ck(folder);
  const Architecture arch = postsvd::detect_architecture(ck);
  ASSERT_EQ(arch.matrices.size(), 7u);
  // Hand-written expectations: (kind, first stored row, rows) of the fused tensors.
  const std::tuple<Kind, int64_t, int64_t, std::string> parts[] = {
      {Kind::Q, 0, 8, "qkv_proj"}, {Kind::K, 8, 4, "qkv_proj"}, {Kind::V, 12, 4, "qkv_proj"},
      {Kind::Gate, 0, 6, "gate_up_proj"}, {Kind::Up, 6, 6, "gate_up_proj"}};
  for (const auto& [kind, first_row, rows, tensor] : parts) {
    const auto it = std::find_if(arch.matrices.begin(), arch.matrices.end(),
                                 [&](const MatrixSource& s) { return s.kind == kind; });
    ASSERT_NE(it, arch.matrices.end());
    EXPECT_NE(it->tensor.find(tensor), std::string::npos);
    const postsvd::TensorView view = postsvd::view_of(ck, *it);
    EXPECT_EQ(view.name, it->tensor + "[" + postsvd::kind_name(kind) + "]");
    const auto w = postsvd::to_matrix<float>(view);
    ASSERT_EQ(w.rows(), 8);
    ASSERT_EQ(w.cols(), rows);
    const StoredTensor& t = stored.at(it->tensor);
    for (int64_t r = 0; r < 8; ++r)
      for (int64_t c = 0; c < rows; ++c) ASSERT_EQ(w(r, c), t.values[static_cast<std::size_t>((first_row + c) * 8 + r)]);
  }
  expect_views_match(ck, arch, stored);
}

TensorSpec gpt2_spec(const std::string& prefix, int layers, int64_t hidden, int64_t inner) {
  TensorSpec spec = {{prefix + "wte.weight", {20, hidden}}, {prefix + "wpe.weight", {10, hidden}}};
  for (int i = 0; i < layers; ++i) {
    const std::string p = prefix + "h." + std::to_string(i) + ".";
    spec.push_back({p + "attn.c_attn.weight", {hidden, 3 * hidden}});
    spec.push_back({p + "attn.c_attn.bias", {3 * hidden}});
    spec.push_back({p + "attn.c_proj.weight", {hidden, hidden}});
    spec.push_back({p + "mlp.c_fc.weight", {hidden, inner}});
    spec.push_back({p + "mlp.c_proj.weight", {inner, hidden}});
  }
  return spec;
}

TEST(Architecture, Gpt2SplitsConv1DAttention) {
  for (const std::string prefix : {"transformer.", ""}) {
    SCOPED_TRACE("prefix '" + prefix + "'");
    TempDir dir;
    const std::string folder = dir.folder("gpt2");
    const std::string config = R"({"model_type": "gpt2", "n_embd": 6, "n_head": 2, "n_layer": 2, "n_inner": null})";
    const auto stored = write_folder(folder, config, gpt2_spec(prefix, 2, 6, 24));
    Checkpoint ck(folder);
    const Architecture arch = postsvd::detect_architecture(ck);
    ASSERT_EQ(arch.matrices.size(), 12u);
    const Kind order[] = {Kind::Q, Kind::K, Kind::V, Kind::O, Kind::Up, Kind::Down};
    for (std::size_t i = 0; i < 12; ++i) {
      EXPECT_EQ(arch.matrices[i].kind, order[i % 6]);
      EXPECT_TRUE(arch.matrices[i].conv1d);
    }
    EXPECT_EQ(arch.matrices[4].in_features, 6);
    EXPECT_EQ(arch.matrices[4].out_features, 24);  // n_inner null -> 4 * n_embd
    EXPECT_EQ(arch.matrices[5].in_features, 24);
    // Hand-written: q, k, v of layer 1 are columns [0, 6), [6, 12), [12, 18) of c_attn [6, 18], no transpose.
    for (int part = 0; part < 3; ++part) {
      const MatrixSource& s = arch.matrices[static_cast<std::size_t>(6 + part)];
      EXPECT_EQ(s.tensor, prefix + "h.1.attn.c_attn.weight");
      const auto w = postsvd::to_matrix<double>(postsvd::view_of(ck, s));
      const StoredTensor& t = stored.at(s.tensor);
      ASSERT_EQ(w.rows(), 6);
      ASSERT_EQ(w.cols(), 6);
      for (int64_t r = 0; r < 6; ++r)
        for (int64_t c = 0; c < 6; ++c)
          ASSERT_EQ(w(r, c), t.values[static_cast<std::size_t>(r * 18 + 6 * part + c)]) << "part " << part;
    }
    EXPECT_EQ(postsvd::view_of(ck, arch.matrices[8]).name, prefix + "h.1.attn.c_attn.weight[v]");
    expect_views_match(ck, arch, stored);
  }
}

TEST(Architecture, MixtralExperts) {
  TempDir dir;
  const std::string folder = dir.folder("mixtral");
  TensorSpec spec;
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* n : {"q", "o"}) spec.push_back({p + "self_attn." + n + "_proj.weight", {8, 8}});
    for (const char* n : {"k", "v"}) spec.push_back({p + "self_attn." + n + "_proj.weight", {4, 8}});
    spec.push_back({p + "block_sparse_moe.gate.weight", {3, 8}});
    for (int e = 0; e < 3; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      spec.push_back({x + "w1.weight", {5, 8}});
      spec.push_back({x + "w3.weight", {5, 8}});
      spec.push_back({x + "w2.weight", {8, 5}});
    }
  }
  std::string config = llama_config("mixtral", "\"num_local_experts\": 3");
  config.replace(config.find("12"), 2, "5");  // intermediate_size: the experts' size
  const auto stored = write_folder(folder, config, spec);
  Checkpoint ck(folder);
  const Architecture arch = postsvd::detect_architecture(ck);
  ASSERT_EQ(arch.matrices.size(), 2u * (4 + 9));
  const MatrixSource& up2 = arch.matrices[4 + 3 + 2];  // layer 0: q k v o, gate x3, up e0 e1 e2
  EXPECT_EQ(up2.kind, Kind::Up);
  EXPECT_EQ(up2.expert, 2);
  EXPECT_EQ(up2.tensor, "model.layers.0.block_sparse_moe.experts.2.w3.weight");
  const MatrixSource& down0 = arch.matrices[13 + 4 + 6];
  EXPECT_EQ(down0.layer, 1);
  EXPECT_EQ(down0.kind, Kind::Down);
  EXPECT_EQ(down0.expert, 0);
  EXPECT_EQ(down0.tensor, "model.layers.1.block_sparse_moe.experts.0.w2.weight");
  EXPECT_EQ(down0.in_features, 5);
  expect_views_match(ck, arch, stored);
}

TEST(Architecture, QwenMoeSparseAndDenseLayers) {
  for (const std::string type : {"qwen2_moe", "qwen3_moe"}) {
    SCOPED_TRACE(type);
    TempDir dir;
    const std::string folder = dir.folder(type);
    // Layer 1 is dense (mlp_only_layers), layers 0 and 2 have 2 experts of size 3.
    TensorSpec spec;
    for (int i = 0; i < 3; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      for (const char* n : {"q", "o"}) spec.push_back({p + "self_attn." + n + "_proj.weight", {8, 8}});
      for (const char* n : {"k", "v"}) spec.push_back({p + "self_attn." + n + "_proj.weight", {4, 8}});
      if (i == 1) {
        spec.push_back({p + "mlp.gate_proj.weight", {12, 8}});
        spec.push_back({p + "mlp.up_proj.weight", {12, 8}});
        spec.push_back({p + "mlp.down_proj.weight", {8, 12}});
        continue;
      }
      spec.push_back({p + "mlp.gate.weight", {2, 8}});
      for (int e = 0; e < 2; ++e) {
        const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
        spec.push_back({x + "gate_proj.weight", {3, 8}});
        spec.push_back({x + "up_proj.weight", {3, 8}});
        spec.push_back({x + "down_proj.weight", {8, 3}});
      }
    }
    // transformers 5 writes qwen3_moe's expert count as num_local_experts.
    const std::string count_key = type == "qwen3_moe" ? "num_local_experts" : "num_experts";
    std::string config = llama_config(type, "\"" + count_key + R"(": 2, "moe_intermediate_size": 3,
        "decoder_sparse_step": 1, "mlp_only_layers": [1])");
    config.replace(config.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
    const auto stored = write_folder(folder, config, spec);
    Checkpoint ck(folder);
    const Architecture arch = postsvd::detect_architecture(ck);
    ASSERT_EQ(arch.matrices.size(), 10u + 7u + 10u);
    EXPECT_EQ(arch.matrices[10 + 4].tensor, "model.layers.1.mlp.gate_proj.weight");
    EXPECT_EQ(arch.matrices[10 + 4].expert, -1);
    EXPECT_EQ(arch.matrices[9].tensor, "model.layers.0.mlp.experts.1.down_proj.weight");
    EXPECT_EQ(arch.matrices[9].expert, 1);
    expect_views_match(ck, arch, stored);
  }
}

// ------------------------------------------------------------------ errors

class ArchitectureErrors : public ::testing::Test {
 protected:
  std::string llama(const std::string& name, const std::string& config, TensorSpec spec) {
    const std::string folder = dir_.folder(name);
    write_folder(folder, config, spec);
    return folder;
  }
  TempDir dir_;
};

TEST_F(ArchitectureErrors, UnknownModelTypeListsSupported) {
  const std::string folder = llama("bert", R"({"model_type": "bert"})", {{"x", {1}}});
  Checkpoint ck(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck); },
                              {folder + "/config.json", "'bert'", "deepseek_v3", "gemma2, gemma3", "gpt2, gpt_oss, llama, llama4",
                               "phi3", "qwen2", "qwen3"});
  const auto types = postsvd::supported_model_types();
  for (const char* t : {"llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2"}) {
    EXPECT_NE(std::find(types.begin(), types.end(), t), types.end()) << t;
  }
}

TEST_F(ArchitectureErrors, MissingConfigFields) {
  const std::string folder = llama("nokey", R"({"hidden_size": 8})", {{"x", {1}}});
  Checkpoint ck(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck); }, {"config.json", "model_type"});
  write_text(folder + "/config.json", R"({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2})");
  Checkpoint ck2(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck2); }, {"config.json", "num_hidden_layers"});
  write_text(folder + "/config.json", R"({"model_type": "llama", "hidden_size": -8})");
  Checkpoint ck3(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck3); }, {"hidden_size", "positive integer"});
}

TEST_F(ArchitectureErrors, WrongShapeNamesTensorExpectedAndActual) {
  TensorSpec spec = llama_spec("model.", 2, 8, 8, 4, 12);
  for (auto& entry : spec)
    if (entry.first == "model.layers.1.mlp.up_proj.weight") entry.second = {12, 7};
  const std::string folder = llama("shape", llama_config("llama"), spec);
  Checkpoint ck(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck); },
                              {"model.layers.1.mlp.up_proj.weight", "expected shape [12, 8]", "got [12, 7]",
                               "layer 1, up"});
}

TEST_F(ArchitectureErrors, MissingTensorAndNonFloatDtype) {
  TensorSpec spec = llama_spec("model.", 2, 8, 8, 4, 12);
  spec.erase(std::remove_if(spec.begin(), spec.end(),
                            [](const auto& e) { return e.first == "model.layers.1.self_attn.v_proj.weight"; }),
             spec.end());
  const std::string folder = llama("missing", llama_config("llama"), spec);
  Checkpoint ck(folder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck); },
                              {folder, "missing tensor 'model.layers.1.self_attn.v_proj.weight'", "llama"});

  // An int8 (quantized) projection is not a float weight.
  const std::string qfolder = dir_.folder("quantized");
  write_text(qfolder + "/config.json", llama_config("llama", "\"num_hidden_layers\": 1"));
  std::vector<postsvd_test::TensorBlob> blobs;
  for (const auto& [name, shape] : llama_spec("model.", 1, 8, 8, 4, 12)) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    if (name == "model.layers.0.self_attn.k_proj.weight") {
      blobs.push_back({name, DType::I8, shape, std::vector<unsigned char>(static_cast<std::size_t>(count), 1)});
    } else {
      blobs.push_back(postsvd_test::f32_blob(name, shape, values_for(name, count)));
    }
  }
  postsvd_test::write_safetensors(qfolder + "/model.safetensors", blobs);
  Checkpoint qck(qfolder);
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(qck); },
                              {"model.layers.0.self_attn.k_proj.weight", "dtype I8"});
}

TEST_F(ArchitectureErrors, CheckSameArchitecture) {
  const std::string base = llama("base", llama_config("llama"), llama_spec("model.", 2, 8, 8, 4, 12));
  const std::string post = llama("post", llama_config("llama"), llama_spec("", 2, 8, 8, 4, 12));
  Checkpoint a(base), b(post);
  const Architecture arch_a = postsvd::detect_architecture(a);
  const Architecture arch_b = postsvd::detect_architecture(b);
  EXPECT_NO_THROW(postsvd::check_same_architecture(a, arch_a, b, arch_b));  // prefixes may differ

  // Different intermediate size: the first differing tensors are layer 0's gate.
  std::string wide_config = llama_config("llama");
  wide_config.replace(wide_config.find("12"), 2, "16");
  const std::string wide = llama("wide", wide_config, llama_spec("model.", 2, 8, 8, 4, 16));
  Checkpoint c(wide);
  const Architecture arch_c = postsvd::detect_architecture(c);
  expect_error<BadCheckpoint>([&] { postsvd::check_same_architecture(a, arch_a, c, arch_c); },
                              {base + ": tensor 'model.layers.0.mlp.gate_proj.weight' [12, 8]",
                               wide + ": tensor 'model.layers.0.mlp.gate_proj.weight' [16, 8]", "layer 0, gate"});

  const std::string qwen = llama("qwen", llama_config("qwen2"), llama_spec("model.", 2, 8, 8, 4, 12));
  Checkpoint d(qwen);
  const Architecture arch_d = postsvd::detect_architecture(d);
  expect_error<BadCheckpoint>([&] { postsvd::check_same_architecture(a, arch_a, d, arch_d); },
                              {base, qwen, "'llama'", "'qwen2'"});

  std::string deep_config = llama_config("llama");
  deep_config.replace(deep_config.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 3");
  const std::string deep = llama("deep", deep_config, llama_spec("model.", 3, 8, 8, 4, 12));
  Checkpoint e(deep);
  const Architecture arch_e = postsvd::detect_architecture(e);
  expect_error<BadCheckpoint>([&] { postsvd::check_same_architecture(a, arch_a, e, arch_e); },
                              {base, deep, "2 layers", "3"});

  // Same layer count, a source missing on one side (hand-edited architecture).
  Architecture partial = arch_b;
  partial.matrices.pop_back();
  expect_error<BadCheckpoint>([&] { postsvd::check_same_architecture(a, arch_a, b, partial); },
                              {"model.layers.1.mlp.down_proj.weight", "no counterpart", post});
}

TEST_F(ArchitectureErrors, ViewOfRejectsInconsistentSource) {
  const std::string folder = llama("view", llama_config("llama"), llama_spec("model.", 2, 8, 8, 4, 12));
  Checkpoint ck(folder);
  MatrixSource s = postsvd::detect_architecture(ck).matrices[0];
  s.in_features = 7;
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, s); }, {s.tensor, "expected shape [8, 7]", "got [8, 8]"});
  s.in_features = 8;
  s.out_offset = 4;
  expect_error<postsvd::InvalidArgument>([&] { postsvd::view_of(ck, s); }, {s.tensor, "offset 4"});
  s.tensor = "nope";
  expect_error<BadCheckpoint>([&] { postsvd::view_of(ck, s); }, {folder, "'nope'"});
}

// ------------------------------------------------------------------ the architecture table

// A config with every size any mapping reads (small values), the text sizes also under text_config.
std::string superset_config(const std::string& type, int layers) {
  const std::string sizes =
      R"("hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
         "intermediate_size": 12, "intermediate_size_mlp": 12, "num_local_experts": 2, "num_experts": 2,
         "moe_intermediate_size": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2,
         "kv_lora_rank": 4, "q_lora_rank": 4, "n_embd": 8, "n_layer": )" +
      std::to_string(layers) + R"(, "num_hidden_layers": )" + std::to_string(layers);
  return R"({"model_type": ")" + type + R"(", )" + sizes + R"(, "text_config": {)" + sizes + "}}";
}

TEST(ArchitectureTable, EveryRowDispatchesToItsMappingWithItsNames) {
  const auto& families = postsvd::architecture_families();
  std::vector<std::string> types;
  for (const postsvd::ArchitectureFamily& f : families) types.push_back(f.model_type);
  EXPECT_EQ(postsvd::supported_model_types(), types);
  EXPECT_TRUE(std::is_sorted(types.begin(), types.end()));
  EXPECT_EQ(std::set<std::string>(types.begin(), types.end()).size(), types.size());
  TempDir dir;
  for (const postsvd::ArchitectureFamily& f : families) {
    SCOPED_TRACE(f.model_type);
    ASSERT_NE(f.map, nullptr);
    ASSERT_FALSE(f.prefixes.empty());
    EXPECT_EQ(f.prefixes.back(), "");  // bare names always read
    EXPECT_EQ(f.text_config.empty(), f.text_config_defaults.empty());
    // No weights at all: the row's mapping runs and names the first tensor it expects, under the
    // row's first prefix and layer container, for this model_type.
    const std::string folder = dir.folder(f.model_type);
    write_folder(folder, superset_config(f.model_type, 1), {{"unrelated.weight", {2}}});
    Checkpoint ck(folder);
    expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(ck); },
                                {"missing tensor '" + f.prefixes.front() + f.layer_container + ".0.",
                                 "expected for model_type '" + f.model_type + "'"});
  }
  // Lineage's facts: filled for every family, each norm kind one lineage reads, the norms placed
  // before each block, after it, or both (Gemma's sandwich), a router wherever a layer holds routed experts.
  std::map<std::string, const postsvd::ArchitectureFamily*> by_type;
  for (const postsvd::ArchitectureFamily& f : families) {
    SCOPED_TRACE(f.model_type);
    by_type[f.model_type] = &f;
    const postsvd::LineageNames& n = f.lineage;
    ASSERT_FALSE(n.empty());
    EXPECT_TRUE(n.norm == "RMSNorm" || n.norm == "GemmaRMSNorm" || n.norm == "LayerNorm") << n.norm;
    EXPECT_FALSE(n.final_norm.empty());
    EXPECT_FALSE(n.unembedding.empty());
    EXPECT_EQ(n.norm_before_attention.empty(), n.norm_before_mlp.empty());
    EXPECT_EQ(n.norm_after_attention.empty(), n.norm_after_mlp.empty());
    EXPECT_FALSE(n.norm_before_attention.empty() && n.norm_after_attention.empty());  // some norm in each block
    EXPECT_EQ(n.q_norm.empty(), n.k_norm.empty());
    EXPECT_EQ(n.q_latent_norm.empty(), f.model_type.rfind("deepseek", 0) != 0);  // MLA: the deepseek rows only
  }
  EXPECT_EQ(by_type["gpt2"]->lineage.norm, "LayerNorm");
  EXPECT_EQ(by_type["gpt2"]->lineage.embedding, "wte.weight");
  EXPECT_EQ(by_type["gemma3"]->lineage.norm_before_mlp, "pre_feedforward_layernorm");
  EXPECT_EQ(by_type["gemma3"]->lineage.norm_after_attention, "post_attention_layernorm");
  EXPECT_EQ(by_type["olmo2"]->lineage.norm_before_attention, "");
  EXPECT_EQ(by_type["llama"]->lineage.norm_before_mlp, "post_attention_layernorm");
  for (const char* moe : {"deepseek_v2", "deepseek_v3", "glm4_moe", "gpt_oss", "llama4", "llama4_text", "mixtral",
                          "qwen2_moe", "qwen3_moe"}) {
    EXPECT_FALSE(by_type[moe]->lineage.router.empty()) << moe;
  }
}

// Llama-style tensors under `prefix` with the MLP under `mlp` ("mlp." or Llama 4's "feed_forward.").
TensorSpec text_tower_spec(const std::string& prefix, int layers, const std::string& mlp) {
  TensorSpec spec = llama_spec(prefix, layers, 8, 8, 4, 12);
  for (auto& entry : spec) {
    const std::size_t at = entry.first.find(".mlp.");
    if (at != std::string::npos) entry.first.replace(at + 1, 4, mlp);
  }
  // A vision tower whose encoder layers are numbered too: never counted as text layers.
  spec.push_back({"model.vision_tower.vision_model.encoder.layers.7.mlp.fc1.weight", {4, 8}});
  spec.push_back({"vision_model.model.layers.7.mlp.fc1.weight", {4, 8}});
  return spec;
}

TEST(ArchitectureTable, TextTowerLayersBeyondTheTextConfigAreWarned) {
  const std::string text = R"("hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
                               "intermediate_size": 12, "intermediate_size_mlp": 12, "num_local_experts": 2,
                               "interleave_moe_layer_step": 4, "num_hidden_layers": 1)";
  struct Case {
    const char* type;
    std::string config;
    std::string prefix;
    const char* mlp;
    const char* count_key;
  };
  const Case cases[] = {
      {"gemma3", R"({"model_type": "gemma3", "text_config": {)" + text + "}}", "model.language_model.", "mlp.",
       "text_config.num_hidden_layers"},
      {"llama4", R"({"model_type": "llama4", "text_config": {)" + text + "}}", "language_model.model.",
       "feed_forward.", "text_config.num_hidden_layers"},
      {"gemma3_text", R"({"model_type": "gemma3_text", )" + text + "}", "model.language_model.", "mlp.",
       "num_hidden_layers"},
  };
  TempDir dir;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.type);
    // The weights hold 3 text layers, the config counts 1.
    const std::string folder = dir.folder(std::string(c.type) + "-more");
    write_folder(folder, c.config, text_tower_spec(c.prefix, 3, c.mlp));
    const Architecture arch = postsvd::detect_architecture(Checkpoint(folder));
    EXPECT_EQ(arch.num_layers, 1);
    EXPECT_EQ(arch.matrices.front().tensor, c.prefix + "layers.0.self_attn.q_proj.weight");
    ASSERT_EQ(arch.warnings.size(), 1u);
    const std::string& warning = arch.warnings[0];
    for (const std::string& part : {folder + "/config.json: \"" + c.count_key + "\" is 1", std::string("layers up to 2"),
                                    std::string("16 tensors"), c.prefix + "layers.2.", std::string("left out")}) {
      EXPECT_NE(warning.find(part), std::string::npos) << part << " not in: " << warning;
    }
    // Exactly the counted layers (the vision layers numbered beyond them do not count).
    const std::string exact = dir.folder(std::string(c.type) + "-exact");
    write_folder(exact, c.config, text_tower_spec(c.prefix, 1, c.mlp));
    EXPECT_TRUE(postsvd::detect_architecture(Checkpoint(exact)).warnings.empty());
  }
}

TEST(Kinds, NamesRoundTrip) {
  for (Kind k : {Kind::Q, Kind::K, Kind::V, Kind::O, Kind::Gate, Kind::Up, Kind::Down, Kind::QA, Kind::QB, Kind::KVA,
                 Kind::KVBK, Kind::KVBV}) {
    EXPECT_EQ(postsvd::parse_kind(postsvd::kind_name(k)), k);
  }
  expect_error<postsvd::InvalidArgument>([] { postsvd::parse_kind("qkv"); },
                                         {"'qkv'", "q, k, v, o, q_a, q_b, kv_a, kv_b_k, kv_b_v, gate, up, down"});
}

TEST(Kinds, TableGivesEveryKindOneNameAndGroup) {
  std::set<std::string> names;
  for (const postsvd::KindInfo& info : postsvd::kind_table()) {
    EXPECT_TRUE(names.insert(info.name).second) << info.name;
    EXPECT_STREQ(postsvd::kind_group(info.kind), info.group);
    const std::string group = info.group;
    const bool mlp = info.kind == Kind::Gate || info.kind == Kind::Up || info.kind == Kind::Down;
    EXPECT_EQ(group, mlp ? "mlp" : "attention") << info.name;
  }
  EXPECT_EQ(names.size(), 12u);
}

// DeepSeek's kv_b_proj [heads * (nope + v), rank]: per head, nope K rows then v V rows.
TEST(FusedParts, PerHeadGroupsReadAndWriteTheRightRows) {
  const int64_t heads = 3, nope = 2, v_head = 3, rank = 4;
  const int64_t fused = heads * (nope + v_head);
  std::vector<float> stored(static_cast<std::size_t>(fused * rank));
  for (std::size_t i = 0; i < stored.size(); ++i) stored[i] = static_cast<float>(i);
  for (const bool is_k : {true, false}) {
    MatrixSource s;
    s.in_features = rank;
    s.out_features = heads * (is_k ? nope : v_head);
    s.fused_out = fused;
    s.out_offset = is_k ? 0 : nope;
    s.out_group = is_k ? nope : v_head;
    s.out_group_stride = nope + v_head;
    TensorView view;
    view.data = stored.data();
    view.dtype = postsvd::DType::F32;
    view.rows = rank;
    view.cols = s.out_features;
    view.col_stride = rank;
    view.col_group = s.out_group;
    view.col_group_skip = (s.out_group_stride - s.out_group) * rank;
    view.data = stored.data() + s.out_offset * rank;
    const auto w = postsvd::to_matrix<double>(view);
    const auto wt = postsvd::to_matrix<double>(view.transposed());
    for (int64_t c = 0; c < s.out_features; ++c) {
      const int64_t head = c / s.out_group, j = c % s.out_group;
      const int64_t row = head * (nope + v_head) + (is_k ? 0 : nope) + j;  // the stored row of column c
      EXPECT_EQ(postsvd::fused_column(s, c), row);
      for (int64_t r = 0; r < rank; ++r) {
        EXPECT_EQ(w(r, c), static_cast<double>(row * rank + r)) << (is_k ? "K" : "V") << " col " << c;
        EXPECT_EQ(wt(c, r), w(r, c));
      }
    }
    const auto span = view.byte_span();
    EXPECT_EQ(span.first, 0);
    EXPECT_EQ(span.second, (postsvd::fused_column(s, s.out_features - 1) - s.out_offset + 1) * rank * 4);
  }
}

TEST(Kinds, PaperOrderAndGroups) {
  std::string names, groups;
  for (Kind k : postsvd::all_kinds()) {
    names += std::string(postsvd::kind_name(k)) + " ";
    groups += std::string(postsvd::kind_group(k)) + " ";
  }
  EXPECT_EQ(names, "q k v o q_a q_b kv_a kv_b_k kv_b_v gate up down ");
  EXPECT_EQ(groups, "attention attention attention attention attention attention attention attention attention "
                    "mlp mlp mlp ");
}

}  // namespace
