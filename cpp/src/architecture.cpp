// Architecture mapping: config.json's model_type and the tensor names to the
// (layer, kind[, expert]) projections, fused tensors split into parts, and
// strided views of them in paper orientation [in, out]. One mapping function
// per layout and one row per model_type (architecture_families(), at the end).
#include <algorithm>
#include <iterator>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "detail/json_guard.h"
#include "detail/shape_format.h"
#include "postsvd/adapter.h"
#include "postsvd/limits.h"
#include "postsvd/architecture.h"
#include "postsvd/quantization.h"

namespace postsvd {

const std::vector<KindInfo>& kind_table() {
  static const std::vector<KindInfo> table = {
      {Kind::Q, "q", "attention"},       {Kind::K, "k", "attention"},       {Kind::V, "v", "attention"},
      {Kind::O, "o", "attention"},       {Kind::QA, "q_a", "attention"},    {Kind::QB, "q_b", "attention"},
      {Kind::KVA, "kv_a", "attention"},  {Kind::KVBK, "kv_b_k", "attention"}, {Kind::KVBV, "kv_b_v", "attention"},
      {Kind::Gate, "gate", "mlp"},       {Kind::Up, "up", "mlp"},           {Kind::Down, "down", "mlp"},
  };
  return table;
}

namespace {
const KindInfo& kind_info(Kind kind) {
  for (const KindInfo& info : kind_table()) {
    if (info.kind == kind) return info;
  }
  POSTSVD_THROW(InvalidArgument, "kind_name: invalid Kind value " << static_cast<int>(kind));
}
}  // namespace

const char* kind_name(Kind kind) { return kind_info(kind).name; }
const char* kind_group(Kind kind) { return kind_info(kind).group; }

std::vector<Kind> all_kinds() {
  std::vector<Kind> kinds;
  for (const KindInfo& info : kind_table()) kinds.push_back(info.kind);
  return kinds;
}

Kind parse_kind(const std::string& name) {
  std::ostringstream names;
  for (const KindInfo& info : kind_table()) {
    if (name == info.name) return info.kind;
    names << (names.tellp() > 0 ? ", " : "") << info.name;
  }
  POSTSVD_THROW(InvalidArgument, "unknown projection kind '" << name << "'; expected one of " << names.str());
}

std::string expert_label(int expert) {
  if (expert == kSharedExpert) return "shared";
  return expert >= 0 ? std::to_string(expert) : std::string();
}

std::string source_label(const MatrixSource& s) {
  std::ostringstream out;
  out << "(layer " << s.layer << ", " << kind_name(s.kind);
  if (s.expert != -1) out << ", expert " << expert_label(s.expert);
  out << ")";
  return out.str();
}

int64_t fused_column(const MatrixSource& s, int64_t c) {
  if (s.out_group > 0) return s.out_offset + (c / s.out_group) * s.out_group_stride + (c % s.out_group) * s.out_step;
  return s.out_offset + c * s.out_step;
}

std::vector<int64_t> stored_shape(const MatrixSource& s) {
  std::vector<int64_t> shape;
  if (s.stacked > 0) shape.push_back(s.stacked);
  if (is_mxfp4(s)) {
    shape.insert(shape.end(), {s.fused_out, s.in_features / 32, 16});
  } else if (s.conv1d) {
    shape.push_back(s.in_features);
    shape.push_back(s.fused_out);
  } else {
    shape.push_back(s.fused_out);
    shape.push_back(s.in_features);
  }
  return shape;
}

using json = nlohmann::ordered_json;

// Typed access to config.json (or one of its sub-objects, e.g. the text_config
// of a multimodal checkpoint) with errors naming the file and the key. It reads
// the checkpoint's one parsed config (Checkpoint::config). `defaults`: the values
// transformers' config class assumes for keys that save_pretrained leaves out of
// a nested config (it writes only differences).
class ModelConfig {
 public:
  explicit ModelConfig(const Checkpoint& checkpoint) : path_(checkpoint.config_path()), json_(&checkpoint.config()) {}

  // The sub-object `key` (e.g. "text_config"), falling back to `defaults` for absent keys.
  ModelConfig sub(const std::string& key, const std::vector<std::pair<std::string, int64_t>>& defaults) const {
    if (!has(key.c_str()) || !(*json_)[key].is_object()) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": missing the object \"" << key << "\" (the text model's config)");
    }
    ModelConfig out(*this);
    out.json_ = &(*json_)[key];
    out.where_ = where_ + key + ".";
    out.defaults_.clear();
    for (const auto& entry : defaults) out.defaults_[entry.first] = entry.second;
    return out;
  }

  const std::string& path() const { return path_; }
  // "" at the top level, "text_config." inside a sub-object: how messages name a key.
  const std::string& where() const { return where_; }

  bool has(const char* key) const {
    return (json_->contains(key) && !(*json_)[key].is_null()) || (!json_->contains(key) && defaults_.count(key) != 0);
  }

  std::string string(const char* key) const {
    if (!json_->contains(key)) POSTSVD_THROW(BadCheckpoint, path_ << ": missing the field \"" << where_ << key << "\"");
    if (!(*json_)[key].is_string()) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << where_ << key << "\" is a JSON " << (*json_)[key].type_name()
                                         << "; expected a string");
    }
    return (*json_)[key].get<std::string>();
  }
  // A positive integer field.
  int64_t positive(const char* key) const {
    if (!has(key)) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": missing the integer field \"" << where_ << key << "\"");
    }
    const json& v = value(key);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << where_ << key << "\" is " << detail::json_excerpt(v)
                                         << "; expected a positive integer");
    }
    // Sizes multiply (heads x head_dim, 3 x hidden): bounded so no product overflows.
    if (v.get<int64_t>() > limits::kMaxConfigInteger) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << key << "\" is " << v.get<int64_t>() << ", over the limit of "
                                         << limits::kMaxConfigInteger);
    }
    return v.get<int64_t>();
  }

  int64_t positive_or(const char* key, int64_t fallback) const { return has(key) ? positive(key) : fallback; }

  // A non-negative integer field with a fallback when absent.
  int64_t non_negative_or(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = value(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << where_ << key << "\" is " << detail::json_excerpt(v)
                                         << "; expected a non-negative integer");
    }
    return v.get<int64_t>();
  }

  // An optional list of integers (absent or null gives an empty list).
  std::vector<int64_t> int_list(const char* key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    const json& v = value(key);
    if (!v.is_array()) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << where_ << key << "\" is " << detail::json_excerpt(v) << "; expected a list");
    }
    for (const auto& e : v) {
      if (!e.is_number_integer()) {
        POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << where_ << key << "\" is " << detail::json_excerpt(v)
                                           << "; expected integers");
      }
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

 private:
  const json& value(const char* key) const {
    if (json_->contains(key)) return (*json_)[key];
    return defaults_.at(key);
  }

  std::string path_;
  std::string where_;  // "text_config." inside a sub-object
  const json* json_;   // inside the checkpoint's config
  std::map<std::string, json> defaults_;
};

namespace {


// Where the mappers list a missing or misshapen tensor instead of throwing: set by check_checkpoint
// (this thread only) while it maps, null otherwise.
thread_local std::vector<std::string>* problem_sink = nullptr;

// Collects sources, resolving the family's name prefix ("model.", "transformer.",
// a multimodal checkpoint's text tower "model.language_model." or
// "language_model.model.", or none for a bare model) and checking each
// tensor's presence, rank, shape and dtype.
class Mapper {
 public:
  // The first of the family's prefixes under which `probe` exists; the first one when none does (errors then name it).
  Mapper(const Checkpoint& checkpoint, const ArchitectureFamily& family, const std::string& probe)
      : checkpoint_(checkpoint), model_type_(family.model_type), prefixes_(family.prefixes),
        prefix_(family.prefixes.front()) {
    for (const std::string& p : prefixes_) {
      if (checkpoint.contains(p + probe)) {
        prefix_ = p;
        break;
      }
    }
  }

  // A dense nn.Linear [out, in] (or Conv1D [in, out]) tensor, or one contiguous part of a fused one.
  void add(int layer, Kind kind, int expert, const std::string& suffix, bool conv1d, int64_t in, int64_t out,
           int64_t out_offset = 0, int64_t fused_out = -1) {
    MatrixSource s;
    s.layer = layer;
    s.kind = kind;
    s.expert = expert;
    s.tensor = suffix;
    s.conv1d = conv1d;
    s.in_features = in;
    s.out_features = out;
    s.out_offset = out_offset;
    s.fused_out = fused_out < 0 ? out : fused_out;
    add(std::move(s));
  }

  // Any source; its tensor names are taken relative to the prefix. While check_checkpoint collects
  // problems (problem_sink), a source that fails its check is listed there and left out.
  void add(MatrixSource s) {
    s.tensor = prefix_ + s.tensor;
    if (is_mxfp4(s)) s.mxfp4_scales = prefix_ + s.mxfp4_scales;
    if (problem_sink == nullptr) {
      check(s);
    } else {
      try {
        check(s);
      } catch (const BadCheckpoint& e) {
        problem_sink->push_back(e.what());
        return;
      }
    }
    arch.matrices.push_back(std::move(s));
  }

  // True when the tensor `suffix` exists under the prefix.
  bool has(const std::string& suffix) const { return checkpoint_.contains(prefix_ + suffix); }

  Architecture arch;

 private:
  void check(const MatrixSource& s) const {
    const std::string what = source_label(s);
    if (!checkpoint_.contains(s.tensor)) {
      std::ostringstream also;
      const std::string bare = s.tensor.substr(prefix_.size());
      if (prefixes_.size() > 1) {
        also << " (looked for";
        for (std::size_t i = 0; i < prefixes_.size(); ++i) also << (i ? " and '" : " '") << prefixes_[i] << bare << "'";
        also << ")";
      }
      POSTSVD_THROW(BadCheckpoint, checkpoint_.folder() << ": missing tensor '" << s.tensor << "' " << what
                                                        << also.str() << ", expected for model_type '" << model_type_
                                                        << "'");
    }
    if (is_mxfp4(s)) {
      check_mxfp4(s, what);
      return;
    }
    const TensorInfo& info = checkpoint_.info(s.tensor);
    const std::vector<int64_t> expected = stored_shape(s);
    if (info.shape != expected) {
      POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(s.tensor).path()
                                       << ": tensor '" << s.tensor << "' " << what << ": expected shape "
                                       << detail::shape_string(expected) << " from config.json, got "
                                       << detail::shape_string(info.shape));
    }
    if (!is_weight_dtype(info.dtype)) {
      POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(s.tensor).path()
                                       << ": tensor '" << s.tensor << "' has dtype " << dtype_name(info.dtype)
                                       << "; expected one of " << dtype_names(is_weight_dtype));
    }
  }

  // The *_blocks tensor and its *_scales: U8 [stacked, fused_out, in / 32, 16] and [stacked, fused_out, in / 32].
  void check_mxfp4(const MatrixSource& s, const std::string& what) const {
    const std::vector<int64_t> blocks_shape = stored_shape(s);
    const std::vector<int64_t> scales_shape(blocks_shape.begin(), blocks_shape.end() - 1);
    if (s.in_features % 32 != 0) {
      POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(s.tensor).path()
                                       << ": tensor '" << s.tensor << "' " << what << ": MXFP4 packs 32 values per "
                                       << "block along the input dim, but config.json gives " << s.in_features);
    }
    for (const auto& t : {std::make_pair(&s.tensor, &blocks_shape), std::make_pair(&s.mxfp4_scales, &scales_shape)}) {
      if (!checkpoint_.contains(*t.first)) {
        POSTSVD_THROW(BadCheckpoint, checkpoint_.folder() << ": missing tensor '" << *t.first << "' " << what
                                                          << " (MXFP4 blocks and scales come in pairs), expected for "
                                                          << "model_type '" << model_type_ << "'");
      }
      const TensorInfo& info = checkpoint_.info(*t.first);
      if (info.dtype != DType::U8 || info.shape != *t.second) {
        POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(*t.first).path()
                                         << ": tensor '" << *t.first << "' " << what << ": expected MXFP4 "
                                         << (t.first == &s.tensor ? "blocks" : "scales") << " U8 "
                                         << detail::shape_string(*t.second) << " from config.json, got "
                                         << dtype_name(info.dtype) << " " << detail::shape_string(info.shape));
      }
    }
  }

  const Checkpoint& checkpoint_;
  std::string model_type_;
  std::vector<std::string> prefixes_;
  std::string prefix_;
};

struct AttentionSizes {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

AttentionSizes attention_sizes(const ModelConfig& config) {
  AttentionSizes a;
  a.hidden = config.positive("hidden_size");
  a.heads = config.positive("num_attention_heads");
  a.kv_heads = config.positive_or("num_key_value_heads", a.heads);
  if (config.has("head_dim")) {
    a.head_dim = config.positive("head_dim");
  } else {
    if (a.hidden % a.heads != 0) {
      POSTSVD_THROW(BadCheckpoint, config.path() << ": hidden_size " << a.hidden << " is not divisible by "
                                                 << "num_attention_heads " << a.heads << " and no head_dim is given");
    }
    a.head_dim = a.hidden / a.heads;
  }
  return a;
}

void add_attention(Mapper& m, int layer, const std::string& p, const AttentionSizes& a) {
  const int64_t q_out = a.heads * a.head_dim;
  const int64_t kv_out = a.kv_heads * a.head_dim;
  m.add(layer, Kind::Q, -1, p + "self_attn.q_proj.weight", false, a.hidden, q_out);
  m.add(layer, Kind::K, -1, p + "self_attn.k_proj.weight", false, a.hidden, kv_out);
  m.add(layer, Kind::V, -1, p + "self_attn.v_proj.weight", false, a.hidden, kv_out);
  m.add(layer, Kind::O, -1, p + "self_attn.o_proj.weight", false, q_out, a.hidden);
}

// gate_proj, up_proj, down_proj under `module` ("mlp.", "mlp.shared_experts.", ...).
void add_dense_mlp(Mapper& m, int layer, const std::string& module, int64_t hidden, int64_t inter, int expert = -1) {
  m.add(layer, Kind::Gate, expert, module + "gate_proj.weight", false, hidden, inter);
  m.add(layer, Kind::Up, expert, module + "up_proj.weight", false, hidden, inter);
  m.add(layer, Kind::Down, expert, module + "down_proj.weight", false, inter, hidden);
}

// Experts in (kind, expert) order; names[] = {gate, up, down} suffixes after "experts.{e}.".
void add_experts(Mapper& m, int layer, const std::string& experts_prefix, int64_t experts, int64_t hidden,
                 int64_t inter, const char* const names[3]) {
  const Kind kinds[3] = {Kind::Gate, Kind::Up, Kind::Down};
  for (int k = 0; k < 3; ++k) {
    for (int e = 0; e < experts; ++e) {
      const std::string name = experts_prefix + std::to_string(e) + "." + names[k] + ".weight";
      if (kinds[k] == Kind::Down) {
        m.add(layer, kinds[k], e, name, false, inter, hidden);
      } else {
        m.add(layer, kinds[k], e, name, false, hidden, inter);
      }
    }
  }
}

// Fused experts stored [E, in, out] without ".weight" (Llama 4, gpt-oss):
// gate_up [E, hidden, 2 * inter] holds gate and up either as halves (Llama 4:
// gate_up.chunk(2, -1)) or interleaved (gpt-oss: gate = [..., ::2], up = [..., 1::2]);
// down [E, inter, hidden]. MXFP4 experts (gpt-oss releases, `mxfp4` true) store
// the same columns as rows: gate_up_proj_blocks dequantizes to [E, 2 * inter, hidden]
// and down_proj_blocks to [E, hidden, inter] (transformers' convert_moe_packed_tensors
// transposes them on loading); their scales are the names with "_scales" for "_blocks".
void add_fused_experts(Mapper& m, int layer, const std::string& gate_up, const std::string& down, int64_t experts,
                       int64_t hidden, int64_t inter, bool interleaved, bool mxfp4 = false) {
  const Kind kinds[3] = {Kind::Gate, Kind::Up, Kind::Down};
  auto scales_of = [](const std::string& blocks) { return blocks.substr(0, blocks.size() - 6) + "scales"; };
  for (int k = 0; k < 3; ++k) {
    for (int e = 0; e < experts; ++e) {
      MatrixSource s;
      s.layer = layer;
      s.kind = kinds[k];
      s.expert = e;
      s.conv1d = !mxfp4;
      s.stacked = experts;
      s.stacked_index = e;
      if (kinds[k] == Kind::Down) {
        s.tensor = down;
        s.in_features = inter;
        s.out_features = hidden;
        s.fused_out = hidden;
      } else {
        s.tensor = gate_up;
        s.in_features = hidden;
        s.out_features = inter;
        s.fused_out = 2 * inter;
        const bool up = kinds[k] == Kind::Up;
        s.out_step = interleaved ? 2 : 1;
        s.out_offset = interleaved ? (up ? 1 : 0) : (up ? inter : 0);
      }
      if (mxfp4) s.mxfp4_scales = scales_of(s.tensor);
      m.add(std::move(s));
    }
  }
}

// The family's layer count (its layer_count_key).
int num_layers_of(const ModelConfig& config, const ArchitectureFamily& family) {
  const char* key = family.layer_count_key.c_str();
  const int64_t n = config.positive(key);
  if (n > 1000000) POSTSVD_THROW(BadCheckpoint, config.path() << ": \"" << key << "\" is " << n << "; too large");
  return static_cast<int>(n);
}

// Hub configs name the expert count "num_experts" (Qwen) or "num_local_experts"
// (Mixtral); transformers 5 writes either spelling for either family.
int64_t num_experts_of(const ModelConfig& config, bool required) {
  if (config.has("num_experts")) return config.positive("num_experts");
  if (config.has("num_local_experts")) return config.positive("num_local_experts");
  if (required) POSTSVD_THROW(BadCheckpoint, config.path() << ": missing the integer field \"num_local_experts\"");
  return 0;
}

// "<container>.<i>.": layer i's names after the prefix ("layers.3.", gpt2's "h.3.").
std::string layer_prefix(const ArchitectureFamily& family, int i) {
  return family.layer_container + "." + std::to_string(i) + ".";
}

// Llama-style attention (q/k/v/o_proj) in every layer; `mlp(m, layer, layer_prefix, sizes)` adds the layer's MLP.
template <class Mlp>
Architecture map_llama_attention(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family,
                                 Mlp mlp) {
  const AttentionSizes a = attention_sizes(config);
  const int layers = num_layers_of(config, family);
  Mapper m(ck, family, layer_prefix(family, 0) + "self_attn.q_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i);
    add_attention(m, i, p, a);
    mlp(m, i, p, a);
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

// llama, qwen2, qwen3, mistral, gemma2, gemma3 (text), olmo2, olmo3: a dense
// MLP. Norms inside attention (qwen3 / olmo2 q_norm, k_norm) are not projections.
Architecture map_llama_like(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  return map_llama_attention(ck, config, family, [&](Mapper& m, int i, const std::string& p, const AttentionSizes& a) {
    add_dense_mlp(m, i, p + "mlp.", a.hidden, config.positive("intermediate_size"));
  });
}

// Mixtral: every layer's MLP is routed experts block_sparse_moe.experts.E.{w1, w3, w2}.
Architecture map_mixtral(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  return map_llama_attention(ck, config, family, [&](Mapper& m, int i, const std::string& p, const AttentionSizes& a) {
    static const char* const names[3] = {"w1", "w3", "w2"};
    add_experts(m, i, p + "block_sparse_moe.experts.", num_experts_of(config, true), a.hidden,
                config.positive("intermediate_size"), names);
  });
}

// qwen2_moe, qwen3_moe: sparse layers hold routed experts mlp.experts.E.* (and
// Qwen2-MoE a shared expert), the others a dense MLP.
Architecture map_qwen_moe(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  return map_llama_attention(ck, config, family, [&](Mapper& m, int i, const std::string& p, const AttentionSizes& a) {
    // Sparse layers as in transformers: not in mlp_only_layers, and every decoder_sparse_step-th.
    const std::vector<int64_t> dense_only = config.int_list("mlp_only_layers");
    const int64_t experts = num_experts_of(config, false);
    const int64_t step = config.positive_or("decoder_sparse_step", 1);
    const bool sparse = std::find(dense_only.begin(), dense_only.end(), i) == dense_only.end() && experts > 0 &&
                        (i + 1) % step == 0;
    if (!sparse) {
      add_dense_mlp(m, i, p + "mlp.", a.hidden, config.positive("intermediate_size"));
      return;
    }
    static const char* const names[3] = {"gate_proj", "up_proj", "down_proj"};
    add_experts(m, i, p + "mlp.experts.", experts, a.hidden, config.positive("moe_intermediate_size"), names);
    // Qwen2-MoE's shared expert (its sigmoid gate shared_expert_gate is not a projection).
    if (family.model_type == "qwen2_moe" && config.has("shared_expert_intermediate_size")) {
      add_dense_mlp(m, i, p + "mlp.shared_expert.", a.hidden, config.positive("shared_expert_intermediate_size"),
                    kSharedExpert);
    }
  });
}

// GLM-4.5 (glm4_moe), DeepSeek-V2/V3: the first first_k_dense_replace layers
// dense, then MoE (every moe_layer_freq-th for deepseek_v2) with routed experts
// mlp.experts.E.* of moe_intermediate_size and the shared experts
// mlp.shared_experts.* of n_shared_experts x moe_intermediate_size. The router
// mlp.gate (weight, e_score_correction_bias) is not a projection.
void add_deepseek_style_mlp(Mapper& m, const ModelConfig& config, int layer, const std::string& p, int64_t hidden,
                            int64_t layer_freq) {
  const int64_t first_dense = config.non_negative_or("first_k_dense_replace", 0);
  const int64_t routed = config.non_negative_or("n_routed_experts", 0);
  if (layer < first_dense || routed == 0 || layer % layer_freq != 0) {
    add_dense_mlp(m, layer, p + "mlp.", hidden, config.positive("intermediate_size"));
    return;
  }
  const int64_t inter = config.positive("moe_intermediate_size");
  static const char* const names[3] = {"gate_proj", "up_proj", "down_proj"};
  add_experts(m, layer, p + "mlp.experts.", routed, hidden, inter, names);
  const int64_t shared = config.non_negative_or("n_shared_experts", 0);
  if (shared > 0) add_dense_mlp(m, layer, p + "mlp.shared_experts.", hidden, shared * inter, kSharedExpert);
}

Architecture map_glm4_moe(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  return map_llama_attention(ck, config, family, [&](Mapper& m, int i, const std::string& p, const AttentionSizes& a) {
    add_deepseek_style_mlp(m, config, i, p, a.hidden, 1);
  });
}

// DeepSeek-V2/V3 multi-head latent attention: q_a_proj and q_b_proj (q_proj
// when q_lora_rank is null), kv_a_proj_with_mqa, kv_b_proj split per head into
// its K rows (qk_nope_head_dim) and V rows (v_head_dim), o_proj.
Architecture map_deepseek(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  const int64_t hidden = config.positive("hidden_size");
  const int64_t heads = config.positive("num_attention_heads");
  const int64_t nope = config.positive("qk_nope_head_dim");
  const int64_t rope = config.positive("qk_rope_head_dim");
  const int64_t v_head = config.positive("v_head_dim");
  const int64_t kv_rank = config.positive("kv_lora_rank");
  const bool q_lora = config.has("q_lora_rank");
  const int64_t q_rank = q_lora ? config.positive("q_lora_rank") : 0;
  const int64_t layer_freq = family.model_type == "deepseek_v2" ? config.positive_or("moe_layer_freq", 1) : 1;
  const int layers = num_layers_of(config, family);
  const int64_t q_out = heads * (nope + rope);
  const int64_t kv_b_out = heads * (nope + v_head);
  Mapper m(ck, family, layer_prefix(family, 0) + "self_attn.kv_b_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i) + "self_attn.";
    if (q_lora) {
      m.add(i, Kind::QA, -1, p + "q_a_proj.weight", false, hidden, q_rank);
      m.add(i, Kind::QB, -1, p + "q_b_proj.weight", false, q_rank, q_out);
    } else {
      m.add(i, Kind::Q, -1, p + "q_proj.weight", false, hidden, q_out);
    }
    m.add(i, Kind::KVA, -1, p + "kv_a_proj_with_mqa.weight", false, hidden, kv_rank + rope);
    for (const bool is_k : {true, false}) {
      MatrixSource s;
      s.layer = i;
      s.kind = is_k ? Kind::KVBK : Kind::KVBV;
      s.tensor = p + "kv_b_proj.weight";
      s.in_features = kv_rank;
      s.out_features = heads * (is_k ? nope : v_head);
      s.fused_out = kv_b_out;
      s.out_offset = is_k ? 0 : nope;
      s.out_group = is_k ? nope : v_head;
      s.out_group_stride = nope + v_head;
      m.add(std::move(s));
    }
    m.add(i, Kind::O, -1, p + "o_proj.weight", false, heads * v_head, hidden);
    add_deepseek_style_mlp(m, config, i, layer_prefix(family, i), hidden, layer_freq);
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

// Llama 4 text: MoE layers are moe_layers (default every
// interleave_moe_layer_step-th); they hold fused experts
// feed_forward.experts.{gate_up_proj, down_proj} and feed_forward.shared_expert.*
// (intermediate_size); the other layers a dense feed_forward.* of
// intermediate_size_mlp. The router feed_forward.router is not a projection.
Architecture map_llama4(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  const AttentionSizes a = attention_sizes(config);
  const int layers = num_layers_of(config, family);
  const int64_t inter = config.positive("intermediate_size");
  const int64_t experts = num_experts_of(config, true);
  std::vector<int64_t> moe_layers = config.int_list("moe_layers");
  if (!config.has("moe_layers")) {
    const int64_t step = config.positive_or("interleave_moe_layer_step", 1);
    for (int64_t i = step - 1; i < layers; i += step) moe_layers.push_back(i);
  }
  Mapper m(ck, family, layer_prefix(family, 0) + "self_attn.q_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i);
    add_attention(m, i, p, a);
    const std::string ff = p + "feed_forward.";
    if (std::find(moe_layers.begin(), moe_layers.end(), i) != moe_layers.end()) {
      add_fused_experts(m, i, ff + "experts.gate_up_proj", ff + "experts.down_proj", experts, a.hidden, inter, false);
      add_dense_mlp(m, i, ff + "shared_expert.", a.hidden, inter, kSharedExpert);
    } else {
      add_dense_mlp(m, i, ff, a.hidden, config.positive("intermediate_size_mlp"));
    }
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

// gpt-oss: every layer MoE with fused experts mlp.experts.{gate_up_proj,
// down_proj} (gate and up interleaved); biases, attention sinks and the
// router mlp.router are not projections.
Architecture map_gpt_oss(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  const AttentionSizes a = attention_sizes(config);
  const int layers = num_layers_of(config, family);
  const int64_t experts = num_experts_of(config, true);
  const int64_t inter = config.positive("intermediate_size");
  Mapper m(ck, family, layer_prefix(family, 0) + "self_attn.q_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i);
    add_attention(m, i, p, a);
    // The release stores the experts in MXFP4 (*_blocks / *_scales); a dequantized save_pretrained in BF16.
    const std::string experts_prefix = p + "mlp.experts.";
    if (m.has(experts_prefix + "gate_up_proj_blocks") || m.has(experts_prefix + "down_proj_blocks")) {
      add_fused_experts(m, i, experts_prefix + "gate_up_proj_blocks", experts_prefix + "down_proj_blocks", experts,
                        a.hidden, inter, true, true);
    } else {
      add_fused_experts(m, i, experts_prefix + "gate_up_proj", experts_prefix + "down_proj", experts, a.hidden, inter,
                        true);
    }
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

Architecture map_phi3(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  const AttentionSizes a = attention_sizes(config);
  const int64_t inter = config.positive("intermediate_size");
  const int layers = num_layers_of(config, family);
  const int64_t q_out = a.heads * a.head_dim;
  const int64_t kv_out = a.kv_heads * a.head_dim;
  const int64_t qkv_out = q_out + 2 * kv_out;
  Mapper m(ck, family, layer_prefix(family, 0) + "self_attn.qkv_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i);
    const std::string qkv = p + "self_attn.qkv_proj.weight";
    m.add(i, Kind::Q, -1, qkv, false, a.hidden, q_out, 0, qkv_out);
    m.add(i, Kind::K, -1, qkv, false, a.hidden, kv_out, q_out, qkv_out);
    m.add(i, Kind::V, -1, qkv, false, a.hidden, kv_out, q_out + kv_out, qkv_out);
    m.add(i, Kind::O, -1, p + "self_attn.o_proj.weight", false, q_out, a.hidden);
    const std::string gate_up = p + "mlp.gate_up_proj.weight";
    m.add(i, Kind::Gate, -1, gate_up, false, a.hidden, inter, 0, 2 * inter);
    m.add(i, Kind::Up, -1, gate_up, false, a.hidden, inter, inter, 2 * inter);
    m.add(i, Kind::Down, -1, p + "mlp.down_proj.weight", false, inter, a.hidden);
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

Architecture map_gpt2(const Checkpoint& ck, const ModelConfig& config, const ArchitectureFamily& family) {
  const int64_t hidden = config.positive("n_embd");
  const int64_t inner = config.positive_or("n_inner", 4 * hidden);
  const int layers = num_layers_of(config, family);
  Mapper m(ck, family, layer_prefix(family, 0) + "attn.c_attn.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = layer_prefix(family, i);
    const std::string c_attn = p + "attn.c_attn.weight";
    m.add(i, Kind::Q, -1, c_attn, true, hidden, hidden, 0, 3 * hidden);
    m.add(i, Kind::K, -1, c_attn, true, hidden, hidden, hidden, 3 * hidden);
    m.add(i, Kind::V, -1, c_attn, true, hidden, hidden, 2 * hidden, 3 * hidden);
    m.add(i, Kind::O, -1, p + "attn.c_proj.weight", true, hidden, hidden);
    m.add(i, Kind::Up, -1, p + "mlp.c_fc.weight", true, hidden, inner);
    m.add(i, Kind::Down, -1, p + "mlp.c_proj.weight", true, inner, hidden);
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

// The number N when `name` continues at `at` with "<N>." (at most 9 digits), else -1.
int64_t index_at(const std::string& name, std::size_t at) {
  std::size_t i = at;
  int64_t index = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - at < 9) index = index * 10 + (name[i++] - '0');
  return i > at && i < name.size() && name[i] == '.' ? index : -1;
}

// The layer index of `name` when it is "<prefix><container>.<N>." for one of the family's prefixes, else -1.
int64_t layer_index_of(const std::string& name, const ArchitectureFamily& family) {
  for (const std::string& prefix : family.prefixes) {
    const std::string start = prefix + family.layer_container + ".";
    if (name.compare(0, start.size(), start) != 0) continue;
    const int64_t index = index_at(name, start.size());
    if (index >= 0) return index;
  }
  return -1;
}

// A warning when the weights hold layers config.json does not count: they are
// silently left out of every comparison and construction otherwise.
void note_uncounted_layers(const Checkpoint& checkpoint, const ModelConfig& config, const ArchitectureFamily& family,
                           Architecture& arch) {
  int64_t highest = -1;
  int64_t uncounted = 0;
  std::string example;
  for (const std::string& name : checkpoint.tensor_names()) {
    const int64_t layer = layer_index_of(name, family);
    if (layer < arch.num_layers) continue;
    ++uncounted;
    if (layer > highest) {
      highest = layer;
      example = name;
    }
  }
  if (uncounted == 0) return;
  std::ostringstream text;
  text << config.path() << ": \"" << config.where() << family.layer_count_key << "\" is " << arch.num_layers
       << " but the weights hold layers up to " << highest << " (" << uncounted << " tensors, e.g. '"
       << detail::name_excerpt(example) << "'); only layers 0 to " << arch.num_layers - 1
       << " are read, the others are left out";
  arch.warnings.push_back(text.str());
}

// The routed expert of a per-expert tensor name ("...experts.<N>.gate_proj.weight"), else -1. Shared
// experts ("shared_experts.", "shared_expert.") and fused 3-D experts ("experts.gate_up_proj") hold no index.
int64_t expert_index_of(const std::string& name) {
  static const std::string key = ".experts.";
  for (std::size_t at = name.find(key); at != std::string::npos; at = name.find(key, at + 1)) {
    const int64_t index = index_at(name, at + key.size());
    if (index >= 0) return index;
  }
  return -1;
}

// "0-3, 5, 7" from sorted layer indices.
std::string index_ranges(const std::set<int64_t>& indices) {
  std::ostringstream text;
  for (auto it = indices.begin(); it != indices.end();) {
    const int64_t first = *it;
    int64_t last = first;
    while (++it != indices.end() && *it == last + 1) last = *it;
    text << (text.tellp() > 0 ? ", " : "") << first;
    if (last > first) text << "-" << last;
  }
  return text.str();
}

// Warnings when the weights hold routed experts config.json does not declare (experts past its count in
// a MoE layer, or experts in a layer it makes dense): like uncounted layers, they are silently left out of
// every comparison and construction otherwise. Layers beyond the count are note_uncounted_layers' to report.
void note_uncounted_experts(const Checkpoint& checkpoint, const ModelConfig& config, const ArchitectureFamily& family,
                            Architecture& arch) {
  std::vector<int64_t> mapped(static_cast<std::size_t>(arch.num_layers), 0);  // routed experts read per layer
  for (const MatrixSource& s : arch.matrices) {
    if (s.expert >= 0) mapped[static_cast<std::size_t>(s.layer)] = std::max<int64_t>(mapped[static_cast<std::size_t>(s.layer)], s.expert + 1);
  }
  struct Stray {
    std::set<int64_t> layers;
    int64_t tensors = 0;
    int64_t highest = -1;
    std::string example;
  } beyond, in_dense;
  int64_t declared = 0;
  for (const std::string& name : checkpoint.tensor_names()) {
    const int64_t layer = layer_index_of(name, family);
    if (layer < 0 || layer >= arch.num_layers) continue;
    const int64_t expert = expert_index_of(name);
    const int64_t read = mapped[static_cast<std::size_t>(layer)];
    if (expert < read) continue;  // -1 (not a routed expert) or one that is read
    Stray& stray = read > 0 ? beyond : in_dense;
    declared = std::max(declared, read);
    stray.layers.insert(layer);
    ++stray.tensors;
    if (expert > stray.highest) {
      stray.highest = expert;
      stray.example = name;
    }
  }
  if (beyond.tensors > 0) {
    const char* key = config.has("num_experts")         ? "num_experts"
                      : config.has("num_local_experts") ? "num_local_experts"
                                                        : "n_routed_experts";
    std::ostringstream text;
    text << config.path() << ": \"" << config.where() << key << "\" is " << declared
         << " but the weights hold routed experts up to " << beyond.highest << " in layer"
         << (beyond.layers.size() > 1 ? "s " : " ") << index_ranges(beyond.layers) << " (" << beyond.tensors
         << " tensors, e.g. '" << detail::name_excerpt(beyond.example) << "'); only experts 0 to " << declared - 1
         << " are read, the others are left out";
    arch.warnings.push_back(text.str());
  }
  if (in_dense.tensors > 0) {
    std::ostringstream text;
    text << config.path() << ": config.json makes layer" << (in_dense.layers.size() > 1 ? "s " : " ")
         << index_ranges(in_dense.layers) << " dense (one MLP, no routed experts) but the weights hold routed "
         << "experts there (" << in_dense.tensors << " tensors, e.g. '" << detail::name_excerpt(in_dense.example)
         << "'); they are left out";
    arch.warnings.push_back(text.str());
  }
}

// Name prefixes: a text model's ("model.", or none for a bare model), and a
// multimodal checkpoint's text tower as transformers writes it today
// ("model.language_model.") and as the original releases did
// ("language_model.model."), then a text-only model's.
const std::vector<std::string> kPlain = {"model.", ""};
const std::vector<std::string> kTextTower = {"model.language_model.", "language_model.model.", "model.", ""};

// Lineage's facts (LineageNames) per residual-stream layout. Every family reads the
// unembedding as lm_head (a multimodal Llama 4: its language model's), tied when absent.
LineageNames lineage_names(const char* norm, const char* before_attention, const char* before_mlp,
                           const char* after_attention = "", const char* after_mlp = "") {
  LineageNames n;
  n.embedding = "embed_tokens.weight";
  n.unembedding = {"lm_head.weight", "language_model.lm_head.weight"};
  n.final_norm = "norm";
  n.norm = norm;
  n.norm_before_attention = before_attention;
  n.norm_before_mlp = before_mlp;
  n.norm_after_attention = after_attention;
  n.norm_after_mlp = after_mlp;
  return n;
}

// RMSNorm before each block (llama, mistral, qwen2, phi3 and the MoE families), with `router`
// the router of a layer with routed experts.
LineageNames pre_norm(const char* router = "") {
  LineageNames n = lineage_names("RMSNorm", "input_layernorm", "post_attention_layernorm");
  n.router = router;
  return n;
}

// The same with query and key norms (qwen3, qwen3_moe, glm4_moe's use_qk_norm).
LineageNames with_qk_norms(LineageNames n) {
  n.q_norm = "self_attn.q_norm";
  n.k_norm = "self_attn.k_norm";
  return n;
}

// DeepSeek's MLA: RMSNorms on the query and key/value latents.
LineageNames mla(LineageNames n) {
  n.q_latent_norm = "self_attn.q_a_layernorm";
  n.kv_latent_norm = "self_attn.kv_a_layernorm";
  return n;
}

// Gemma 2 and 3: RMSNorm scaling by (1 + weight) before and after each block (sandwich norms).
const LineageNames kGemma = lineage_names("GemmaRMSNorm", "input_layernorm", "pre_feedforward_layernorm",
                                          "post_attention_layernorm", "post_feedforward_layernorm");
// OLMo 2 and 3: RMSNorm after each block only; attention and MLP read the residual stream itself.
const LineageNames kOlmo = with_qk_norms(
    lineage_names("RMSNorm", "", "", "post_attention_layernorm", "post_feedforward_layernorm"));

// GPT-2: LayerNorm (weight and bias) before each block, tied wte, final ln_f.
LineageNames gpt2_lineage() {
  LineageNames n = lineage_names("LayerNorm", "ln_1", "ln_2");
  n.embedding = "wte.weight";
  n.final_norm = "ln_f";
  return n;
}

ArchitectureFamily make_family(const char* model_type,
                               Architecture (*map)(const Checkpoint&, const ModelConfig&, const ArchitectureFamily&),
                               LineageNames lineage, std::vector<std::string> prefixes = kPlain) {
  ArchitectureFamily f;
  f.model_type = model_type;
  f.map = map;
  f.prefixes = std::move(prefixes);
  f.layer_container = "layers";
  f.layer_count_key = "num_hidden_layers";
  f.lineage = std::move(lineage);
  return f;
}

// A multimodal family: the text model's config is `text_config`, with transformers' defaults.
ArchitectureFamily multimodal(ArchitectureFamily f, std::vector<std::pair<std::string, int64_t>> text_defaults) {
  f.text_config = "text_config";
  f.text_config_defaults = std::move(text_defaults);
  return f;
}

}  // namespace

const std::vector<ArchitectureFamily>& architecture_families() {
  // Defaults of the nested text configs: transformers' Gemma3TextConfig and Llama4TextConfig.
  static const std::vector<ArchitectureFamily> table = [] {
    ArchitectureFamily gpt2 = make_family("gpt2", map_gpt2, gpt2_lineage(), {"transformer.", ""});
    gpt2.layer_container = "h";
    gpt2.layer_count_key = "n_layer";
    const LineageNames gemma3 = with_qk_norms(kGemma);
    ArchitectureFamily gpt_oss = make_family("gpt_oss", map_gpt_oss, pre_norm("mlp.router.weight"));
    gpt_oss.experts_is_transposed = true;
    return std::vector<ArchitectureFamily>{
        make_family("deepseek_v2", map_deepseek, mla(pre_norm("mlp.gate.weight"))),
        make_family("deepseek_v3", map_deepseek, mla(pre_norm("mlp.gate.weight"))),
        make_family("gemma2", map_llama_like, kGemma),
        multimodal(make_family("gemma3", map_llama_like, gemma3, kTextTower),
                   {{"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
                    {"num_attention_heads", 8}, {"num_key_value_heads", 4}, {"head_dim", 256}}),
        make_family("gemma3_text", map_llama_like, gemma3, kTextTower),
        make_family("glm4_moe", map_glm4_moe, with_qk_norms(pre_norm("mlp.gate.weight"))),
        gpt2,
        gpt_oss,
        make_family("llama", map_llama_like, pre_norm()),
        multimodal(make_family("llama4", map_llama4, pre_norm("feed_forward.router.weight"), kTextTower),
                   {{"hidden_size", 5120}, {"intermediate_size", 8192}, {"intermediate_size_mlp", 16384},
                    {"num_hidden_layers", 48}, {"num_attention_heads", 40}, {"num_key_value_heads", 8},
                    {"head_dim", 128}, {"num_local_experts", 16}, {"interleave_moe_layer_step", 1}}),
        make_family("llama4_text", map_llama4, pre_norm("feed_forward.router.weight"), kTextTower),
        make_family("mistral", map_llama_like, pre_norm()),
        make_family("mixtral", map_mixtral, pre_norm("block_sparse_moe.gate.weight")),
        make_family("olmo2", map_llama_like, kOlmo),
        make_family("olmo3", map_llama_like, kOlmo),
        make_family("phi3", map_phi3, pre_norm()),
        make_family("qwen2", map_llama_like, pre_norm()),
        make_family("qwen2_moe", map_qwen_moe, pre_norm("mlp.gate.weight")),
        make_family("qwen3", map_llama_like, with_qk_norms(pre_norm())),
        make_family("qwen3_moe", map_qwen_moe, with_qk_norms(pre_norm("mlp.gate.weight"))),
    };
  }();
  return table;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> types;
  for (const ArchitectureFamily& f : architecture_families()) types.push_back(f.model_type);
  return types;
}

Architecture detect_architecture(const Checkpoint& checkpoint) {
  const ModelConfig top(checkpoint);
  const std::string type = top.string("model_type");
  const auto& families = architecture_families();
  const auto row = std::find_if(families.begin(), families.end(),
                                [&](const ArchitectureFamily& f) { return f.model_type == type; });
  if (row == families.end()) {
    std::ostringstream list;
    for (std::size_t i = 0; i < families.size(); ++i) list << (i ? ", " : "") << families[i].model_type;
    POSTSVD_THROW(BadCheckpoint, top.path() << ": unsupported model_type '" << type << "'; supported: "
                                            << list.str());
  }
  const ModelConfig config = row->text_config.empty() ? top : top.sub(row->text_config, row->text_config_defaults);
  Architecture arch = row->map(checkpoint, config, *row);
  arch.model_type = type;
  note_uncounted_layers(checkpoint, config, *row, arch);
  note_uncounted_experts(checkpoint, config, *row, arch);
  return arch;
}

CheckpointCheck check_checkpoint(const Checkpoint& checkpoint, bool read_values) {
  CheckpointCheck result;
  std::vector<std::string> found;
  struct Collecting {  // the mappers list problems in `found` while this lives
    explicit Collecting(std::vector<std::string>* sink) { problem_sink = sink; }
    ~Collecting() { problem_sink = nullptr; }
  };
  try {
    const Collecting collecting(&found);
    result.architecture = detect_architecture(checkpoint);
    result.mapped = true;
  } catch (const Error& e) {  // the config: an unsupported model_type, a missing or bad field
    found.push_back(e.what());
  }
  // Each source as a comparison reads it: FP8 scales present and shaped, MXFP4 pairs, finite values.
  for (const MatrixSource& source : result.architecture.matrices) {
    try {
      const TensorView view = view_of(checkpoint, source);
      if (read_values) to_matrix<float>(view);
    } catch (const NotFetched&) {  // a Hub model's tensor not fetched: not a problem of the model
      ++result.not_fetched;
    } catch (const Error& e) {
      found.push_back(e.what());
    }
  }
  std::set<std::string> seen;  // one line per problem: a scale shared by a tensor's parts is listed once
  for (std::string& problem : found) {
    if (seen.insert(problem).second) result.problems.push_back(std::move(problem));
  }
  return result;
}

void check_same_architecture(const Checkpoint& a, const Architecture& arch_a, const Checkpoint& b,
                             const Architecture& arch_b) {
  if (arch_a.model_type != arch_b.model_type) {
    POSTSVD_THROW(BadCheckpoint, "architectures differ: " << a.folder() << " has model_type '" << arch_a.model_type
                                                          << "' but " << b.folder() << " has '" << arch_b.model_type
                                                          << "'");
  }
  if (arch_a.num_layers != arch_b.num_layers) {
    POSTSVD_THROW(BadCheckpoint, "architectures differ: " << a.folder() << " has " << arch_a.num_layers
                                                          << " layers but " << b.folder() << " has "
                                                          << arch_b.num_layers);
  }
  using Key = std::tuple<int, int, int>;
  auto key_of = [](const MatrixSource& s) { return Key{s.layer, static_cast<int>(s.kind), s.expert}; };
  std::map<Key, const MatrixSource*> in_b;
  for (const MatrixSource& s : arch_b.matrices) in_b.emplace(key_of(s), &s);
  auto describe = [](const Checkpoint& ck, const MatrixSource& s) {
    std::ostringstream out;
    out << ck.folder() << ": tensor '" << s.tensor << "'";
    if (ck.contains(s.tensor)) out << " " << detail::shape_string(ck.info(s.tensor).shape);
    if (s.fused_out != s.out_features) {
      out << " part [" << s.in_features << ", " << s.out_features << "] at output offset " << s.out_offset;
    }
    if (s.stacked > 0) out << " slice " << s.stacked_index;
    return out.str();
  };
  for (const MatrixSource& sa : arch_a.matrices) {
    const auto it = in_b.find(key_of(sa));
    if (it == in_b.end()) {
      POSTSVD_THROW(BadCheckpoint, "architectures differ: " << describe(a, sa) << " " << source_label(sa)
                                                            << " has no counterpart in " << b.folder());
    }
    const MatrixSource& sb = *it->second;
    if (sa.in_features != sb.in_features || sa.out_features != sb.out_features) {
      POSTSVD_THROW(BadCheckpoint, "shapes differ at " << source_label(sa) << ": " << describe(a, sa)
                                                       << " is [in " << sa.in_features << ", out "
                                                       << sa.out_features << "] but " << describe(b, sb)
                                                       << " is [in " << sb.in_features << ", out "
                                                       << sb.out_features << "]");
    }
    for (const auto& side : {std::make_pair(&a, &sa), std::make_pair(&b, &sb)}) {
      const Checkpoint& ck = *side.first;
      const MatrixSource& s = *side.second;
      if (ck.contains(s.tensor) && !is_mxfp4(s) && !is_weight_dtype(ck.info(s.tensor).dtype)) {
        POSTSVD_THROW(BadCheckpoint, describe(ck, s) << " has dtype " << dtype_name(ck.info(s.tensor).dtype)
                                                     << "; expected one of " << dtype_names(is_weight_dtype));
      }
    }
    in_b.erase(it);
  }
  if (!in_b.empty()) {
    const MatrixSource& sb = *in_b.begin()->second;
    POSTSVD_THROW(BadCheckpoint, "architectures differ: " << describe(b, sb) << " " << source_label(sb)
                                                          << " has no counterpart in " << a.folder());
  }
}

namespace {

// The stored weights of `source`, as view_of gives them before an adapter term.
TensorView stored_view(const Checkpoint& checkpoint, const MatrixSource& source) {
  const TensorInfo& info = checkpoint.info(source.tensor);
  const std::vector<int64_t> expected = stored_shape(source);
  if (info.shape != expected) {
    POSTSVD_THROW(BadCheckpoint, checkpoint.file_of(source.tensor).path()
                                     << ": tensor '" << source.tensor << "' " << source_label(source)
                                     << ": expected shape " << detail::shape_string(expected) << ", got "
                                     << detail::shape_string(info.shape));
  }
  const bool grouped = source.out_group > 0;
  const bool fits = source.in_features > 0 && source.out_features > 0 && source.out_offset >= 0 &&
                    source.out_step >= 1 && (!grouped || source.out_features % source.out_group == 0) &&
                    (!grouped || source.out_group_stride >= source.out_group * source.out_step) &&
                    fused_column(source, source.out_features - 1) < source.fused_out &&
                    (source.stacked == 0 || (source.stacked_index >= 0 && source.stacked_index < source.stacked));
  if (!fits) {
    POSTSVD_THROW(InvalidArgument, "tensor '" << source.tensor << "' " << source_label(source) << ": part of "
                                              << source.out_features << " output columns at offset "
                                              << source.out_offset << " (step " << source.out_step << ", group "
                                              << source.out_group << " every " << source.out_group_stride
                                              << ") does not fit in " << source.fused_out << " (in_features "
                                              << source.in_features << ", slice " << source.stacked_index << " of "
                                              << source.stacked << ")");
  }
  if (is_mxfp4(source)) {
    // Dequantized [stacked, fused_out, in] row-major: W (r, c) = value (index, fused_column(c), r).
    POSTSVD_CHECK(!grouped && !source.conv1d, InvalidArgument,
                  "tensor '" << source.tensor << "' " << source_label(source)
                             << ": MXFP4 parts are column ranges or strided columns of [out, in] experts");
    TensorView view = mxfp4_view(checkpoint, source.tensor, source.mxfp4_scales,
                                 (source.stacked_index * source.fused_out + source.out_offset) * source.in_features,
                                 source.in_features, source.out_features, 1, source.out_step * source.in_features);
    view.name = source.tensor + "[" + std::to_string(source.stacked_index) + "]";
    if (source.fused_out != source.out_features) view.name += std::string("[") + kind_name(source.kind) + "]";
    view.file = checkpoint.file_of(source.tensor).path();
    return view;
  }
  const auto element = static_cast<int64_t>(dtype_size(info.dtype));
  const char* base = static_cast<const char*>(checkpoint.file_of(source.tensor).data(info)) +
                     source.stacked_index * source.in_features * source.fused_out * element;
  // Column c of the part lies `unit` elements per fused column away from fused column 0.
  const int64_t unit = source.conv1d ? 1 : source.in_features;
  TensorView view;
  view.dtype = info.dtype;
  view.rows = source.in_features;
  view.cols = source.out_features;
  // Stored [out, in] row-major: W (r, c) = W_hf (c, r) at c * in + r; Conv1D [in, out]: at r * fused_out + c.
  view.row_stride = source.conv1d ? source.fused_out : 1;
  view.col_stride = source.out_step * unit;
  if (grouped) {
    view.col_group = source.out_group;
    view.col_group_skip = (source.out_group_stride - source.out_group * source.out_step) * unit;
  }
  view.data = base + source.out_offset * unit * element;
  view.name = source.tensor;
  if (source.stacked > 0) view.name += "[" + std::to_string(source.stacked_index) + "]";
  if (source.fused_out != source.out_features) view.name += std::string("[") + kind_name(source.kind) + "]";
  view.file = checkpoint.file_of(source.tensor).path();
  attach_scales(checkpoint, source, view);  // FP8 weights: their scale grid (quantization.h)
  return view;
}

}  // namespace

TensorView view_of(const Checkpoint& checkpoint, const MatrixSource& source) {
  TensorView view = stored_view(checkpoint, source);
  if (const Adapter* adapter = checkpoint.adapter()) {
    // A PEFT adapter's term (adapter.h): to_matrix forms W + ΔW when the view is converted.
    view.delta = adapter->delta(source);
    if (view.delta) view.name += " + LoRA of " + adapter->file().path();
  }
  return view;
}

}  // namespace postsvd
