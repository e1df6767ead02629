// Shared by the libFuzzer harnesses: a private scratch folder per process, file
// writers, and a tiny llama checkpoint the config and index harnesses read.
// A harness passes when postsvd either accepts an input or throws a
// postsvd::Error; any other exception, a sanitizer report or a leak fails it.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/warnings.h"

namespace postsvd_fuzz {

namespace fs = std::filesystem;

/// A folder of this process's own, removed at exit (in memory when /dev/shm exists).
inline const fs::path& scratch() {
  static const fs::path folder = [] {
    const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path p = base / ("postsvd-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(p);
    // Warnings (a corrupt cache entry, uncounted layers) are expected by the thousand here.
    postsvd::set_warning_handler([](const std::string&) {});
    return p;
  }();
  static const struct Remove {
    ~Remove() {
      std::error_code ec;
      fs::remove_all(folder, ec);
    }
  } remove_at_exit;
  return folder;
}

inline void write_file(const fs::path& path, const uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

inline void write_file(const fs::path& path, const std::string& text) {
  write_file(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

/// A safetensors file of F32 tensors (name, shape) with small distinct values.
inline void write_safetensors(const fs::path& path,
                              const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
  std::string header = "{";
  uint64_t offset = 0;
  std::vector<float> values;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    uint64_t count = 1;
    std::string shape = "[";
    for (std::size_t d = 0; d < tensors[i].second.size(); ++d) {
      count *= static_cast<uint64_t>(tensors[i].second[d]);
      shape += (d ? "," : "") + std::to_string(tensors[i].second[d]);
    }
    shape += "]";
    for (uint64_t e = 0; e < count; ++e) values.push_back(0.25f * static_cast<float>((e * 7 + i) % 11) - 1.0f);
    header += (i ? "," : "") + std::string("\"") + tensors[i].first + "\":{\"dtype\":\"F32\",\"shape\":" + shape +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + 4 * count) + "]}";
    offset += 4 * count;
  }
  header += "}";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  for (int b = 0; b < 8; ++b) bytes[b] = static_cast<char>((n >> (8 * b)) & 0xff);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  write_file(path, bytes);
}

/// config.json of the tiny llama below: hidden 4, 2 heads (1 KV head), MLP 6, 1 layer.
inline const char* tiny_llama_config() {
  return R"({"model_type":"llama","hidden_size":4,"num_attention_heads":2,"num_key_value_heads":1,)"
         R"("intermediate_size":6,"num_hidden_layers":1})";
}

inline std::vector<std::pair<std::string, std::vector<int64_t>>> tiny_llama_attention() {
  return {{"model.layers.0.self_attn.q_proj.weight", {4, 4}},
          {"model.layers.0.self_attn.k_proj.weight", {2, 4}},
          {"model.layers.0.self_attn.v_proj.weight", {2, 4}},
          {"model.layers.0.self_attn.o_proj.weight", {4, 4}}};
}

inline std::vector<std::pair<std::string, std::vector<int64_t>>> tiny_llama_mlp() {
  return {{"model.layers.0.mlp.gate_proj.weight", {6, 4}},
          {"model.layers.0.mlp.up_proj.weight", {6, 4}},
          {"model.layers.0.mlp.down_proj.weight", {4, 6}}};
}

/// Two layers of every family's projection tensors at once, so that a config.json of any MoE or MLA
/// family maps (the seeds in corpus/config_architecture/ match these sizes): hidden 4, 2 heads of dim 2,
/// 1 KV head, MLP 6, 2 routed experts of 2 (Mixtral's and the fused ones' of 6), a shared expert of 2;
/// DeepSeek MLA with q_lora_rank 2, kv_lora_rank 2, qk_nope 1, qk_rope 1, v_head 2.
inline std::vector<std::pair<std::string, std::vector<int64_t>>> every_family_tensors() {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    for (const char* name : {"q_proj", "o_proj"}) t.push_back({p + "self_attn." + name + ".weight", {4, 4}});
    for (const char* name : {"k_proj", "v_proj"}) t.push_back({p + "self_attn." + name + ".weight", {2, 4}});
    t.push_back({p + "self_attn.q_a_proj.weight", {2, 4}});
    t.push_back({p + "self_attn.q_b_proj.weight", {4, 2}});
    t.push_back({p + "self_attn.kv_a_proj_with_mqa.weight", {3, 4}});
    t.push_back({p + "self_attn.kv_b_proj.weight", {6, 2}});
    for (const std::string module : {"mlp.", "feed_forward.", "feed_forward.shared_expert."}) {
      t.push_back({p + module + "gate_proj.weight", {6, 4}});
      t.push_back({p + module + "up_proj.weight", {6, 4}});
      t.push_back({p + module + "down_proj.weight", {4, 6}});
    }
    for (const std::string module : {"mlp.shared_experts.", "mlp.shared_expert.", "mlp.experts.0.", "mlp.experts.1."}) {
      t.push_back({p + module + "gate_proj.weight", {2, 4}});
      t.push_back({p + module + "up_proj.weight", {2, 4}});
      t.push_back({p + module + "down_proj.weight", {4, 2}});
    }
    for (int e = 0; e < 2; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      t.push_back({x + "w1.weight", {6, 4}});
      t.push_back({x + "w3.weight", {6, 4}});
      t.push_back({x + "w2.weight", {4, 6}});
    }
    for (const std::string module : {"feed_forward.experts.", "mlp.experts."}) {  // Llama 4, gpt-oss
      t.push_back({p + module + "gate_up_proj", {2, 4, 12}});
      t.push_back({p + module + "down_proj", {2, 6, 4}});
    }
  }
  return t;
}

}  // namespace postsvd_fuzz
