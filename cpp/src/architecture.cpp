// Architecture mapping: config.json's model_type and the tensor names to the
// (layer, kind[, expert]) projections, fused tensors split into parts, and
// strided views of them in paper orientation [in, out].
#include <algorithm>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "detail/json_guard.h"
#include "detail/shape_format.h"
#include "postsvd/architecture.h"
#include "postsvd/quantization.h"

namespace postsvd {

namespace {
constexpr Kind kAllKinds[] = {Kind::Q, Kind::K, Kind::V, Kind::O, Kind::Gate, Kind::Up, Kind::Down};
}  // namespace

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Q: return "q";
    case Kind::K: return "k";
    case Kind::V: return "v";
    case Kind::O: return "o";
    case Kind::Gate: return "gate";
    case Kind::Up: return "up";
    case Kind::Down: return "down";
  }
  POSTSVD_THROW(InvalidArgument, "kind_name: invalid Kind value " << static_cast<int>(kind));
}

std::vector<Kind> all_kinds() { return {std::begin(kAllKinds), std::end(kAllKinds)}; }

const char* kind_group(Kind kind) {
  switch (kind) {
    case Kind::Q: case Kind::K: case Kind::V: case Kind::O: return "attention";
    case Kind::Gate: case Kind::Up: case Kind::Down: return "mlp";
  }
  POSTSVD_THROW(InvalidArgument, "kind_group: invalid Kind value " << static_cast<int>(kind));
}

Kind parse_kind(const std::string& name) {
  for (Kind k : kAllKinds) {
    if (name == kind_name(k)) return k;
  }
  POSTSVD_THROW(InvalidArgument, "unknown projection kind '" << name << "'; expected one of q, k, v, o, gate, up, down");
}

std::vector<std::string> supported_model_types() {
  return {"gemma2", "gpt2", "llama", "mistral", "mixtral", "phi3", "qwen2", "qwen2_moe", "qwen3_moe"};
}

namespace {

using nlohmann::json;

// Typed access to config.json with errors naming the file and the key.
class Config {
 public:
  explicit Config(const Checkpoint& checkpoint) : path_(checkpoint.folder() + "/config.json") {
    json_ = detail::parse_guarded<json>(checkpoint.config_json().data(), checkpoint.config_json().size(), path_);
    if (!json_.is_object()) POSTSVD_THROW(BadCheckpoint, path_ << ": expected a JSON object");
  }

  const std::string& path() const { return path_; }

  bool has(const char* key) const { return json_.contains(key) && !json_[key].is_null(); }

  std::string string(const char* key) const {
    if (!json_.contains(key)) POSTSVD_THROW(BadCheckpoint, path_ << ": missing the field \"" << key << "\"");
    if (!json_[key].is_string()) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << key << "\" is a JSON " << json_[key].type_name()
                                         << "; expected a string");
    }
    return json_[key].get<std::string>();
  }

  // A positive integer field.
  int64_t positive(const char* key) const {
    if (!has(key)) POSTSVD_THROW(BadCheckpoint, path_ << ": missing the integer field \"" << key << "\"");
    const auto& v = json_[key];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << key << "\" is " << detail::json_excerpt(v) << "; expected a positive integer");
    }
    return v.get<int64_t>();
  }

  int64_t positive_or(const char* key, int64_t fallback) const { return has(key) ? positive(key) : fallback; }

  // An optional list of integers (absent or null gives an empty list).
  std::vector<int64_t> int_list(const char* key) const {
    std::vector<int64_t> out;
    if (!has(key)) return out;
    const auto& v = json_[key];
    if (!v.is_array()) POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << key << "\" is " << detail::json_excerpt(v) << "; expected a list");
    for (const auto& e : v) {
      if (!e.is_number_integer()) {
        POSTSVD_THROW(BadCheckpoint, path_ << ": \"" << key << "\" is " << detail::json_excerpt(v) << "; expected integers");
      }
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

 private:
  std::string path_;
  json json_;
};

// Collects sources, resolving the optional "model." / "transformer." prefix and
// checking each tensor's presence, rank, shape and dtype.
class Mapper {
 public:
  Mapper(const Checkpoint& checkpoint, const std::string& model_type, const std::string& prefix,
         const std::string& probe)
      : checkpoint_(checkpoint), model_type_(model_type), canonical_prefix_(prefix) {
    // Checkpoints of the bare model (LlamaModel, GPT2Model) save names without the prefix.
    prefix_ = (!checkpoint.contains(prefix + probe) && checkpoint.contains(probe)) ? std::string() : prefix;
  }

  // A dense nn.Linear [out, in] (or Conv1D [in, out]) tensor, or one part of a fused one.
  void add(int layer, Kind kind, int expert, const std::string& suffix, bool conv1d, int64_t in, int64_t out,
           int64_t out_offset = 0, int64_t fused_out = -1) {
    MatrixSource s;
    s.layer = layer;
    s.kind = kind;
    s.expert = expert;
    s.tensor = prefix_ + suffix;
    s.conv1d = conv1d;
    s.in_features = in;
    s.out_features = out;
    s.out_offset = out_offset;
    s.fused_out = fused_out < 0 ? out : fused_out;
    check(s);
    arch.matrices.push_back(std::move(s));
  }

  Architecture arch;

 private:
  void check(const MatrixSource& s) const {
    std::ostringstream what;
    what << "(layer " << s.layer << ", " << kind_name(s.kind);
    if (s.expert >= 0) what << ", expert " << s.expert;
    what << ")";
    if (!checkpoint_.contains(s.tensor)) {
      std::ostringstream also;
      if (!canonical_prefix_.empty()) {
        const std::string bare = prefix_.empty() ? s.tensor : s.tensor.substr(prefix_.size());
        also << " (looked for '" << canonical_prefix_ << bare << "' and '" << bare << "')";
      }
      POSTSVD_THROW(BadCheckpoint, checkpoint_.folder() << ": missing tensor '" << s.tensor << "' " << what.str()
                                                        << also.str() << ", expected for model_type '" << model_type_
                                                        << "'");
    }
    const TensorInfo& info = checkpoint_.info(s.tensor);
    const std::vector<int64_t> expected =
        s.conv1d ? std::vector<int64_t>{s.in_features, s.fused_out} : std::vector<int64_t>{s.fused_out, s.in_features};
    if (info.shape != expected) {
      POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(s.tensor).path()
                                       << ": tensor '" << s.tensor << "' " << what.str() << ": expected shape "
                                       << detail::shape_string(expected) << " from config.json, got "
                                       << detail::shape_string(info.shape));
    }
    if (!is_weight_dtype(info.dtype)) {
      POSTSVD_THROW(BadCheckpoint, checkpoint_.file_of(s.tensor).path()
                                       << ": tensor '" << s.tensor << "' has dtype " << dtype_name(info.dtype)
                                       << "; expected one of F16, BF16, F32, F64, F8_E4M3, F8_E5M2");
    }
  }

  const Checkpoint& checkpoint_;
  std::string model_type_;
  std::string canonical_prefix_;
  std::string prefix_;
};

struct AttentionSizes {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

AttentionSizes attention_sizes(const Config& config) {
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

void add_dense_mlp(Mapper& m, int layer, const std::string& p, int64_t hidden, int64_t inter) {
  m.add(layer, Kind::Gate, -1, p + "mlp.gate_proj.weight", false, hidden, inter);
  m.add(layer, Kind::Up, -1, p + "mlp.up_proj.weight", false, hidden, inter);
  m.add(layer, Kind::Down, -1, p + "mlp.down_proj.weight", false, inter, hidden);
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

int num_layers_of(const Config& config, const char* key) {
  const int64_t n = config.positive(key);
  if (n > 1000000) POSTSVD_THROW(BadCheckpoint, config.path() << ": \"" << key << "\" is " << n << "; too large");
  return static_cast<int>(n);
}

// Hub configs name the expert count "num_experts" (Qwen) or "num_local_experts"
// (Mixtral); transformers 5 writes either spelling for either family.
int64_t num_experts_of(const Config& config, bool required) {
  if (config.has("num_experts")) return config.positive("num_experts");
  if (config.has("num_local_experts")) return config.positive("num_local_experts");
  if (required) POSTSVD_THROW(BadCheckpoint, config.path() << ": missing the integer field \"num_local_experts\"");
  return 0;
}

Architecture map_llama_like(const Checkpoint& ck, const Config& config, const std::string& type) {
  const AttentionSizes a = attention_sizes(config);
  const int layers = num_layers_of(config, "num_hidden_layers");
  Mapper m(ck, type, "model.", "layers.0.self_attn.q_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    add_attention(m, i, p, a);
    if (type == "mixtral") {
      static const char* const names[3] = {"w1", "w3", "w2"};
      add_experts(m, i, p + "block_sparse_moe.experts.", num_experts_of(config, true), a.hidden,
                  config.positive("intermediate_size"), names);
    } else if (type == "qwen2_moe" || type == "qwen3_moe") {
      // Sparse layers as in transformers: not in mlp_only_layers, and every decoder_sparse_step-th.
      const std::vector<int64_t> dense_only = config.int_list("mlp_only_layers");
      const int64_t experts = num_experts_of(config, false);
      const int64_t step = config.positive_or("decoder_sparse_step", 1);
      const bool sparse = std::find(dense_only.begin(), dense_only.end(), i) == dense_only.end() && experts > 0 &&
                          (i + 1) % step == 0;
      if (sparse) {
        static const char* const names[3] = {"gate_proj", "up_proj", "down_proj"};
        add_experts(m, i, p + "mlp.experts.", experts, a.hidden, config.positive("moe_intermediate_size"), names);
      } else {
        add_dense_mlp(m, i, p, a.hidden, config.positive("intermediate_size"));
      }
    } else {
      add_dense_mlp(m, i, p, a.hidden, config.positive("intermediate_size"));
    }
  }
  m.arch.num_layers = layers;
  return std::move(m.arch);
}

Architecture map_phi3(const Checkpoint& ck, const Config& config) {
  const AttentionSizes a = attention_sizes(config);
  const int64_t inter = config.positive("intermediate_size");
  const int layers = num_layers_of(config, "num_hidden_layers");
  const int64_t q_out = a.heads * a.head_dim;
  const int64_t kv_out = a.kv_heads * a.head_dim;
  const int64_t qkv_out = q_out + 2 * kv_out;
  Mapper m(ck, "phi3", "model.", "layers.0.self_attn.qkv_proj.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
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

Architecture map_gpt2(const Checkpoint& ck, const Config& config) {
  const int64_t hidden = config.positive("n_embd");
  const int64_t inner = config.positive_or("n_inner", 4 * hidden);
  const int layers = num_layers_of(config, "n_layer");
  Mapper m(ck, "gpt2", "transformer.", "h.0.attn.c_attn.weight");
  for (int i = 0; i < layers; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
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

std::string source_label(const MatrixSource& s) {
  std::ostringstream out;
  out << "(layer " << s.layer << ", " << kind_name(s.kind);
  if (s.expert >= 0) out << ", expert " << s.expert;
  out << ")";
  return out.str();
}

// The layer index of `name` when it is "<prefix><container>.<N>." or "<container>.<N>.", else -1.
int64_t layer_index_of(const std::string& name, const std::string& prefix, const std::string& container) {
  for (const std::string& start : {prefix + container + ".", container + "."}) {
    if (name.compare(0, start.size(), start) != 0) continue;
    std::size_t i = start.size();
    int64_t index = 0;
    const std::size_t first_digit = i;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - first_digit < 9) index = index * 10 + (name[i++] - '0');
    if (i > first_digit && i < name.size() && name[i] == '.') return index;
  }
  return -1;
}

// A warning when the weights hold layers config.json does not count: they are
// silently left out of every comparison and construction otherwise.
void note_uncounted_layers(const Checkpoint& checkpoint, Architecture& arch, const char* count_key) {
  const bool gpt2 = arch.model_type == "gpt2";
  int64_t highest = -1;
  int64_t uncounted = 0;
  std::string example;
  for (const std::string& name : checkpoint.tensor_names()) {
    const int64_t layer = gpt2 ? layer_index_of(name, "transformer.", "h") : layer_index_of(name, "model.", "layers");
    if (layer < arch.num_layers) continue;
    ++uncounted;
    if (layer > highest) {
      highest = layer;
      example = name;
    }
  }
  if (uncounted == 0) return;
  std::ostringstream text;
  text << checkpoint.folder() << "/config.json: \"" << count_key << "\" is " << arch.num_layers
       << " but the weights hold layers up to " << highest << " (" << uncounted << " tensors, e.g. '"
       << detail::name_excerpt(example) << "'); only layers 0 to " << arch.num_layers - 1
       << " are read, the others are left out";
  arch.warnings.push_back(text.str());
}

}  // namespace

Architecture detect_architecture(const Checkpoint& checkpoint) {
  const Config config(checkpoint);
  const std::string type = config.string("model_type");
  Architecture arch;
  if (type == "llama" || type == "qwen2" || type == "mistral" || type == "gemma2" || type == "mixtral" ||
      type == "qwen2_moe" || type == "qwen3_moe") {
    arch = map_llama_like(checkpoint, config, type);
  } else if (type == "phi3") {
    arch = map_phi3(checkpoint, config);
  } else if (type == "gpt2") {
    arch = map_gpt2(checkpoint, config);
  } else {
    std::ostringstream list;
    const auto types = supported_model_types();
    for (std::size_t i = 0; i < types.size(); ++i) list << (i ? ", " : "") << types[i];
    POSTSVD_THROW(BadCheckpoint, config.path() << ": unsupported model_type '" << type << "'; supported: "
                                               << list.str());
  }
  arch.model_type = type;
  note_uncounted_layers(checkpoint, arch, type == "gpt2" ? "n_layer" : "num_hidden_layers");
  return arch;
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
      if (ck.contains(s.tensor) && !is_weight_dtype(ck.info(s.tensor).dtype)) {
        POSTSVD_THROW(BadCheckpoint, describe(ck, s) << " has dtype " << dtype_name(ck.info(s.tensor).dtype)
                                                     << "; expected one of F16, BF16, F32, F64, F8_E4M3, F8_E5M2");
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

TensorView view_of(const Checkpoint& checkpoint, const MatrixSource& source) {
  const TensorInfo& info = checkpoint.info(source.tensor);
  const std::vector<int64_t> expected = source.conv1d ? std::vector<int64_t>{source.in_features, source.fused_out}
                                                      : std::vector<int64_t>{source.fused_out, source.in_features};
  if (info.shape != expected) {
    POSTSVD_THROW(BadCheckpoint, checkpoint.file_of(source.tensor).path()
                                     << ": tensor '" << source.tensor << "' " << source_label(source)
                                     << ": expected shape " << detail::shape_string(expected) << ", got "
                                     << detail::shape_string(info.shape));
  }
  if (source.in_features <= 0 || source.out_features <= 0 || source.out_offset < 0 ||
      source.out_offset + source.out_features > source.fused_out) {
    POSTSVD_THROW(InvalidArgument, "tensor '" << source.tensor << "' " << source_label(source) << ": part of "
                                              << source.out_features << " output columns at offset "
                                              << source.out_offset << " does not fit in " << source.fused_out
                                              << " (in_features " << source.in_features << ")");
  }
  const char* base = static_cast<const char*>(checkpoint.file_of(source.tensor).data(info));
  const auto element = static_cast<int64_t>(dtype_size(info.dtype));
  TensorView view;
  view.dtype = info.dtype;
  view.rows = source.in_features;
  view.cols = source.out_features;
  if (source.conv1d) {
    // Stored [in, out] row-major: W (r, c) at r * fused_out + c.
    view.row_stride = source.fused_out;
    view.col_stride = 1;
    view.data = base + source.out_offset * element;
  } else {
    // Stored [out, in] row-major: W (r, c) = W_hf (c, r) at c * in + r.
    view.row_stride = 1;
    view.col_stride = source.in_features;
    view.data = base + source.out_offset * source.in_features * element;
  }
  view.name = source.tensor;
  if (source.fused_out != source.out_features) view.name += std::string("[") + kind_name(source.kind) + "]";
  attach_scales(checkpoint, source, view);  // FP8 weights: their scale grid (quantization.h)
  return view;
}

}  // namespace postsvd
