// PEFT LoRA adapters as post models (adapter.h): adapter_config.json read and
// checked (refused options), the adapter's tensors bound to the base's
// projections (low-rank terms, modules_to_save replacements, skipped tensors),
// and the merge itself (add_low_rank), the one place W + ΔW is formed.
#include "postsvd/adapter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <type_traits>

#include "detail/half.h"
#include "detail/int_range.h"
#include "detail/json_guard.h"
#include "detail/lapack.h"
#include "detail/low_rank.h"
#include "detail/shape_format.h"
#include "postsvd/error.h"
#include "postsvd/limits.h"

namespace postsvd {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
// peft's PeftModel names every tensor under these two attributes (base_model: the LoRA tuner, model: the transformers model).
const std::string kPeftPrefix = "base_model.model.";
// ParamWrapper (target_parameters) nests one wrapper per parameter of a module: <module>.base_layer.base_layer...
const std::string kNesting = ".base_layer";

json read_config(const std::string& folder, std::string& path) {
  path = (fs::path(folder) / kConfigFile).string();
  const std::string text = detail::read_bounded_text(path, limits::kMaxConfigBytes, kConfigFile);
  json config = detail::parse_guarded<json>(text.data(), text.size(), path);
  POSTSVD_CHECK(config.is_object(), BadCheckpoint, path << ": is a JSON " << config.type_name() << "; expected an object");
  return config;
}

bool truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

// What a key of peft's LoraConfig (0.21) and PeftConfig does to the merged weights.
enum class KeyRole {
  Read,     // read below
  NoMerge,  // training, runtime or initialization settings: the merge does not depend on them
  Refused,  // set (truthy), it changes the merge in a way postsvd does not form
};

struct KeyRule {
  const char* key;
  KeyRole role;
  const char* why;  // Refused: what it does to the merge
};

const std::vector<KeyRule>& key_rules() {
  static const std::vector<KeyRule> rules = {
      {"peft_type", KeyRole::Read, ""},
      {"r", KeyRole::Read, ""},
      {"lora_alpha", KeyRole::Read, ""},
      {"use_rslora", KeyRole::Read, ""},
      {"use_dora", KeyRole::Read, ""},
      {"fan_in_fan_out", KeyRole::Read, ""},
      {"rank_pattern", KeyRole::Read, ""},
      {"alpha_pattern", KeyRole::Read, ""},
      {"target_modules", KeyRole::Read, ""},
      {"target_parameters", KeyRole::Read, ""},
      {"exclude_modules", KeyRole::Read, ""},
      {"layers_to_transform", KeyRole::Read, ""},
      {"layers_pattern", KeyRole::Read, ""},
      {"modules_to_save", KeyRole::Read, ""},
      {"trainable_token_indices", KeyRole::Read, ""},
      {"init_lora_weights", KeyRole::Read, ""},
      {"base_model_name_or_path", KeyRole::Read, ""},
      {"revision", KeyRole::Read, ""},
      {"auto_mapping", KeyRole::Read, ""},
      {"task_type", KeyRole::NoMerge, ""},
      {"inference_mode", KeyRole::NoMerge, ""},
      {"peft_version", KeyRole::NoMerge, ""},
      {"lora_dropout", KeyRole::NoMerge, ""},
      {"bias", KeyRole::NoMerge, ""},       // trained biases: postsvd compares weight matrices only
      {"lora_bias", KeyRole::NoMerge, ""},  // likewise
      {"megatron_config", KeyRole::NoMerge, ""},
      {"megatron_core", KeyRole::NoMerge, ""},
      {"loftq_config", KeyRole::NoMerge, ""},  // with init_lora_weights 'loftq' (refused below without a residual base)
      {"eva_config", KeyRole::NoMerge, ""},
      {"corda_config", KeyRole::NoMerge, ""},
      {"lora_ga_config", KeyRole::NoMerge, ""},
      {"runtime_config", KeyRole::NoMerge, ""},
      {"ensure_weight_tying", KeyRole::NoMerge, ""},
      {"velora_config", KeyRole::NoMerge, ""},      // a backward pass of its own; merges as LoRA
      {"monteclora_config", KeyRole::NoMerge, ""},  // sampling in training; merges as LoRA
      {"qalora_group_size", KeyRole::NoMerge, ""},  // read by use_qalora only
      {"use_qalora", KeyRole::Refused, "QALoRA pools the input of A, so its merge is not W + scaling * B A"},
      {"alora_invocation_tokens", KeyRole::Refused,
       "aLoRA applies the adapter only after its invocation tokens; it has no merged weights"},
      {"arrow_config", KeyRole::Refused, "Arrow routes each token among several adapters; it has no merged weights"},
      {"use_bdlora", KeyRole::Refused, "BD-LoRA's block-diagonal factors merge otherwise"},
      {"kasa_config", KeyRole::Refused,
       "KaSA truncates the base's singular values and puts a learned diagonal between A and B"},
      {"layer_replication", KeyRole::Refused, "layer replication changes the model's layers"},
  };
  return rules;
}

// init_lora_weights values that change the base weights at initialization (peft's *_init write
// base_layer.weight): the adapter applies to the residual base they leave, not to the published one.
bool changes_base(const std::string& init) {
  for (const char* prefix : {"pissa", "olora", "corda", "loftq", "lora_ga"}) {
    if (init.compare(0, std::strlen(prefix), prefix) == 0) return true;
  }
  return false;
}

bool known_init(const std::string& init) {
  for (const char* value : {"gaussian", "eva", "orthogonal", "mica"}) {
    if (init == value) return true;
  }
  return changes_base(init);
}

// peft's strip_base_layer_from_name: every ".base_layer" out of the name.
std::string strip_nesting(std::string module) {
  for (std::size_t at; (at = module.rfind(kNesting)) != std::string::npos;) module.erase(at, kNesting.size());
  return module;
}

bool ends_with(const std::string& text, const std::string& tail) {
  return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

bool starts_with(const std::string& text, const std::string& head) { return text.compare(0, head.size(), head) == 0; }

// rank_pattern / alpha_pattern keys are regular expressions from the adapter's config: bounded in size, and
// refused where a repeated group itself repeats or alternates ("(a*)*", "(a|aa)+"), whose backtracking
// match takes exponential time in the module name's length.
constexpr std::size_t kMaxPatternChars = 512;

bool backtracks(const std::string& pattern) {
  std::vector<bool> risky{false};  // per open group: it holds a quantifier or an alternation
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;
    } else if (c == '[') {
      while (i + 1 < pattern.size() && pattern[++i] != ']') {
        if (pattern[i] == '\\') ++i;
      }
    } else if (c == '(') {
      risky.push_back(false);
    } else if (c == ')' && risky.size() > 1) {
      const bool inner = risky.back();
      risky.pop_back();
      const char next = i + 1 < pattern.size() ? pattern[i + 1] : '\0';
      const bool repeated = next == '*' || next == '+' || next == '{' || next == '?';
      if (inner && repeated && next != '?') return true;
      risky.back() = risky.back() || inner || repeated;
    } else if (c == '*' || c == '+' || c == '{' || c == '|') {
      risky.back() = true;
    }
  }
  return false;
}

// What a tensor of the adapter file is, by its name's ending.
enum class Role { A, B, BBias, Magnitude, EmbeddingA, EmbeddingB, BaseCopy, TrainableTokens, Whole, Unknown };

Role role_of(const std::string& name, std::string& module) {
  static const std::vector<std::pair<std::string, Role>> endings = {
      {".lora_A.weight", Role::A},
      {".lora_B.weight", Role::B},
      {".lora_B.bias", Role::BBias},
      {".lora_magnitude_vector.weight", Role::Magnitude},
      {".lora_magnitude_vector", Role::Magnitude},
      {".lora_embedding_A", Role::EmbeddingA},
      {".lora_embedding_B", Role::EmbeddingB},
      {".base_layer.weight", Role::BaseCopy},
      {".base_layer.bias", Role::BBias},
      {".token_adapter.trainable_tokens_delta", Role::TrainableTokens},
      {".weight", Role::Whole},
      {".bias", Role::Whole},
  };
  for (const auto& ending : endings) {
    if (ends_with(name, ending.first)) {
      module = name.substr(0, name.size() - ending.first.size());
      if (ending.second == Role::Whole) module = name;  // the replaced tensor's own name
      return ending.second;
    }
  }
  module = name;
  return Role::Unknown;
}

// The part of a parameter's (or fused tensor's) output dim one projection takes: output c is row
// offset + (c / group) * group_stride + (c % group) * step (group 0: offset + c * step) of total rows.
struct OutMap {
  int64_t offset = 0;
  int64_t step = 1;
  int64_t group = 0;
  int64_t group_stride = 0;
  int64_t count = 0;
  int64_t total = 0;
};

OutMap out_map_of(const MatrixSource& s) {
  return {s.out_offset, s.out_step, s.out_group, s.out_group_stride, s.out_features, s.fused_out};
}

bool is_float_weights(DType dtype) { return is_float_dtype(dtype); }

struct LoraModule {
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
  const TensorInfo* magnitude = nullptr;
};

using SourceKey = std::tuple<int, int, int>;
SourceKey key_of(const MatrixSource& s) { return SourceKey{s.layer, static_cast<int>(s.kind), s.expert}; }

}  // namespace

bool is_adapter_folder(const std::string& folder) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(folder) / kConfigFile, ec);
}

std::string adapter_base_name(const std::string& folder) {
  std::string path;
  const json config = read_config(folder, path);
  if (!config.contains("base_model_name_or_path") || config["base_model_name_or_path"].is_null()) return "";
  POSTSVD_CHECK(config["base_model_name_or_path"].is_string(), BadCheckpoint,
                path << ": \"base_model_name_or_path\" is " << detail::json_excerpt(config["base_model_name_or_path"])
                     << "; expected a string");
  return config["base_model_name_or_path"].get<std::string>();
}

struct Adapter::Impl {
  AdapterSummary summary;
  std::string config_path;
  std::unique_ptr<SafetensorsFile> file;
  std::map<SourceKey, std::shared_ptr<const LowRankDelta>> deltas;
  std::map<std::string, const TensorInfo*> replacements;  // base tensor -> adapter tensor

  // Read from the config: rank_pattern / alpha_pattern as (peft's regular expression, value), in order.
  std::vector<std::pair<std::regex, int64_t>> rank_rules;
  std::vector<std::pair<std::regex, double>> alpha_rules;
  std::vector<std::string> target_parameters;
  bool use_dora = false;

  const ArchitectureFamily* family = nullptr;
  const Checkpoint* base = nullptr;
  const Architecture* arch = nullptr;

  std::string where(const std::string& tensor) const {
    return file->path() + ": tensor '" + detail::name_excerpt(tensor) + "'";
  }

  void read_options(const json& config, const AdapterOptions& options);
  void check_base_architecture(const json& config) const;
  // (rank, alpha) of the module or parameter peft names `key` (its rank_pattern / alpha_pattern rule).
  std::pair<int64_t, double> rank_and_alpha(const std::string& key) const;
  double scaling(int64_t rank, double alpha) const {
    return summary.use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
  }
  void check_factor(const TensorInfo& info, const char* what) const;
  void bind(const std::map<std::string, LoraModule>& modules, const std::map<std::string, const TensorInfo*>& whole,
            const std::set<std::string>& embeddings);
  // The module `module` (peft's name, nesting stripped) of the base: its projection sources, or whether
  // a base tensor `<module>.weight` exists (a module that is not a projection).
  std::vector<const MatrixSource*> sources_of(const std::string& module) const;
  std::string base_tensor_of(const std::string& name) const;
  int layer_of(const std::string& module) const;
  void bind_module(const std::string& module, const LoraModule& lora, const std::vector<const MatrixSource*>& sources);
  void bind_experts(const std::string& module, const std::vector<std::pair<std::string, LoraModule>>& nest);
  void add_delta(const MatrixSource& source, LowRankDelta delta);
  void skip(const std::string& tensor, const std::string& why) { summary.skipped.emplace_back(tensor, why); }

  std::map<std::string, std::vector<const MatrixSource*>> by_module;  // source module, family prefix stripped
};

void Adapter::Impl::read_options(const json& config, const AdapterOptions& options) {
  const std::string& path = config_path;
  POSTSVD_CHECK(config.contains("peft_type") && config["peft_type"].is_string(), BadCheckpoint,
                path << ": no \"peft_type\" string; expected a PEFT adapter config with \"peft_type\": \"LORA\"");
  const std::string peft_type = config["peft_type"].get<std::string>();
  POSTSVD_CHECK(peft_type == "LORA", InvalidArgument,
                path << ": peft_type '" << detail::name_excerpt(peft_type)
                     << "' is not supported; postsvd reads LoRA adapters (peft_type 'LORA', with rsLoRA and DoRA)");
  // Every option that changes the merge and is not formed here, and every key peft 0.21 does not know.
  for (const auto& item : config.items()) {
    const auto rule = std::find_if(key_rules().begin(), key_rules().end(),
                                   [&](const KeyRule& r) { return item.key() == r.key; });
    if (rule == key_rules().end()) {
      POSTSVD_CHECK(!truthy(item.value()), InvalidArgument,
                    path << ": option \"" << detail::name_excerpt(item.key()) << "\" (" << detail::json_excerpt(item.value())
                         << ") is not one of peft's LoRA options that postsvd knows; it may change the merged weights, "
                            "so the adapter is refused (merge it with peft's merge_and_unload and compare the merged folder)");
    } else if (rule->role == KeyRole::Refused) {
      POSTSVD_CHECK(!truthy(item.value()), InvalidArgument,
                    path << ": \"" << rule->key << "\" is " << detail::json_excerpt(item.value()) << ": " << rule->why
                         << "; postsvd does not form this merge, so the adapter is refused");
    }
  }
  auto flag = [&](const char* key) {
    if (!config.contains(key) || config[key].is_null()) return false;
    POSTSVD_CHECK(config[key].is_boolean(), BadCheckpoint,
                  path << ": \"" << key << "\" is " << detail::json_excerpt(config[key]) << "; expected true or false");
    return config[key].get<bool>();
  };
  summary.use_rslora = flag("use_rslora");
  summary.use_dora = use_dora = flag("use_dora");
  summary.fan_in_fan_out = flag("fan_in_fan_out");
  POSTSVD_CHECK(config.contains("r") && config["r"].is_number_integer(), BadCheckpoint,
                path << ": \"r\" is " << (config.contains("r") ? detail::json_excerpt(config["r"]) : std::string("missing"))
                     << "; expected the LoRA rank, an integer >= 1");
  summary.r = config["r"].get<int64_t>();
  POSTSVD_CHECK(summary.r >= 1, InvalidArgument, path << ": \"r\" is " << summary.r << "; expected a rank >= 1 (rank 0 has no LoRA factors)");
  POSTSVD_CHECK(config.contains("lora_alpha") && config["lora_alpha"].is_number(), BadCheckpoint,
                path << ": \"lora_alpha\" is "
                     << (config.contains("lora_alpha") ? detail::json_excerpt(config["lora_alpha"]) : std::string("missing"))
                     << "; expected a number");
  summary.lora_alpha = config["lora_alpha"].get<double>();
  POSTSVD_CHECK(std::isfinite(summary.lora_alpha), InvalidArgument, path << ": \"lora_alpha\" is not finite");
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!config.contains(key) || config[key].is_null()) continue;
    POSTSVD_CHECK(config[key].is_object(), BadCheckpoint,
                  path << ": \"" << key << "\" is " << detail::json_excerpt(config[key]) << "; expected an object");
    for (const auto& entry : config[key].items()) {
      const bool rank = std::strcmp(key, "rank_pattern") == 0;
      POSTSVD_CHECK(rank ? entry.value().is_number_integer() : entry.value().is_number(), BadCheckpoint,
                    path << ": \"" << key << "\" maps '" << detail::name_excerpt(entry.key()) << "' to "
                         << detail::json_excerpt(entry.value()) << "; expected " << (rank ? "an integer rank" : "a number"));
      POSTSVD_CHECK(!rank || entry.value().get<int64_t>() >= 1, InvalidArgument,
                    path << ": \"rank_pattern\" gives '" << detail::name_excerpt(entry.key()) << "' rank "
                         << entry.value().get<int64_t>() << "; expected a rank >= 1 (rank 0 has no LoRA factors)");
      POSTSVD_CHECK(entry.key().size() <= kMaxPatternChars && !backtracks(entry.key()), InvalidArgument,
                    path << ": \"" << key << "\" key '" << detail::name_excerpt(entry.key()) << "' "
                         << (entry.key().size() > kMaxPatternChars
                                 ? "is longer than " + std::to_string(kMaxPatternChars) + " characters"
                                 : std::string("repeats a group that itself repeats or alternates, which can take "
                                               "exponential time to match"))
                         << "; postsvd refuses it");
      try {
        // peft's get_pattern_key: re.match(rf"(.*\.)?({key})$", name), the first key that matches wins.
        std::regex pattern("(.*\\.)?(" + entry.key() + ")");
        if (rank) {
          rank_rules.emplace_back(std::move(pattern), entry.value().get<int64_t>());
        } else {
          alpha_rules.emplace_back(std::move(pattern), entry.value().get<double>());
        }
      } catch (const std::regex_error& error) {
        POSTSVD_THROW(InvalidArgument, path << ": \"" << key << "\" key '" << detail::name_excerpt(entry.key())
                                            << "' is not a regular expression postsvd can read (" << error.what() << ")");
      }
    }
  }
  if (config.contains("target_parameters") && !config["target_parameters"].is_null()) {
    POSTSVD_CHECK(config["target_parameters"].is_array(), BadCheckpoint,
                  path << ": \"target_parameters\" is " << detail::json_excerpt(config["target_parameters"])
                       << "; expected a list of parameter names");
    for (const json& name : config["target_parameters"]) {
      POSTSVD_CHECK(name.is_string(), BadCheckpoint,
                    path << ": \"target_parameters\" holds " << detail::json_excerpt(name) << "; expected names");
      target_parameters.push_back(name.get<std::string>());
    }
  }
  std::string init = "true";
  if (config.contains("init_lora_weights") && !config["init_lora_weights"].is_null()) {
    const json& value = config["init_lora_weights"];
    if (value.is_boolean()) {
      init = value.get<bool>() ? "true" : "false";
    } else {
      POSTSVD_CHECK(value.is_string(), BadCheckpoint,
                    path << ": \"init_lora_weights\" is " << detail::json_excerpt(value) << "; expected true, false or a name");
      init = value.get<std::string>();
      POSTSVD_CHECK(known_init(init), InvalidArgument,
                    path << ": \"init_lora_weights\" is '" << detail::name_excerpt(init)
                         << "', an initialization postsvd does not know; it may have changed the base weights, "
                            "so the adapter is refused");
    }
  }
  summary.init_lora_weights = init;
  summary.residual_base = options.residual_base;
  POSTSVD_CHECK(!changes_base(init) || options.residual_base, InvalidArgument,
                path << ": \"init_lora_weights\" is '" << init << "': that initialization changed the base weights, "
                     << "so the adapter applies to the residual base peft saved with it, not to the published model; "
                     << "name that residual base and declare it (residual_base=True, --residual-base), or convert the "
                     << "adapter with peft (save_pretrained(..., path_initial_model_for_weight_conversion=...))");
  for (const char* key : {"base_model_name_or_path", "revision"}) {
    if (!config.contains(key) || config[key].is_null()) continue;
    POSTSVD_CHECK(config[key].is_string(), BadCheckpoint,
                  path << ": \"" << key << "\" is " << detail::json_excerpt(config[key]) << "; expected a string");
    (std::strcmp(key, "revision") == 0 ? summary.revision : summary.base_model_name_or_path) = config[key].get<std::string>();
  }
}

void Adapter::Impl::check_base_architecture(const json& config) const {
  // The model class the adapter was trained on (peft writes auto_mapping when the task_type is unset)
  // against the base's config.json architectures, compared without their heads.
  auto stem = [](std::string name) {
    for (const char* head : {"ForConditionalGeneration", "ForCausalLM", "ForSequenceClassification",
                             "ForTokenClassification", "ForQuestionAnswering", "ForImageTextToText", "LMHeadModel",
                             "TextModel", "Model"}) {
      if (ends_with(name, head) && name.size() > std::strlen(head)) return name.substr(0, name.size() - std::strlen(head));
    }
    return name;
  };
  const json& base_config = base->config();
  if (config.contains("auto_mapping") && config["auto_mapping"].is_object() &&
      config["auto_mapping"].contains("base_model_class") && config["auto_mapping"]["base_model_class"].is_string() &&
      base_config.contains("architectures") && base_config["architectures"].is_array() &&
      !base_config["architectures"].empty()) {
    const std::string trained_on = config["auto_mapping"]["base_model_class"].get<std::string>();
    bool same = false;
    std::string listed;
    for (const json& name : base_config["architectures"]) {
      if (!name.is_string()) continue;
      same |= stem(name.get<std::string>()) == stem(trained_on);
      listed += (listed.empty() ? "" : ", ") + name.get<std::string>();
    }
    POSTSVD_CHECK(same || listed.empty(), BadCheckpoint,
                  config_path << ": the adapter was trained on a " << detail::name_excerpt(trained_on)
                              << " (auto_mapping.base_model_class) but the base " << base->config_path() << " is a "
                              << detail::name_excerpt(listed) << " (model_type '" << arch->model_type
                              << "'); name the base model the adapter was trained on");
  }
  // A base the config names as a local folder: its model_type must be the given base's.
  std::error_code ec;
  const std::string& named = summary.base_model_name_or_path;
  if (named.empty() || !fs::is_regular_file(fs::path(named) / "config.json", ec) ||
      fs::equivalent(named, base->weights_folder(), ec)) {
    return;
  }
  const std::string named_config = (fs::path(named) / "config.json").string();
  const std::string text = detail::read_bounded_text(named_config, limits::kMaxConfigBytes, "config.json");
  const json parsed = detail::parse_guarded<json>(text.data(), text.size(), named_config);
  if (parsed.is_object() && parsed.contains("model_type") && parsed["model_type"].is_string()) {
    const std::string type = parsed["model_type"].get<std::string>();
    POSTSVD_CHECK(type == arch->model_type, BadCheckpoint,
                  config_path << ": the adapter's base_model_name_or_path '" << detail::name_excerpt(named)
                              << "' is a model_type '" << detail::name_excerpt(type) << "' but the base "
                              << base->config_path() << " is a model_type '" << arch->model_type
                              << "'; name the base model the adapter was trained on");
  }
}

std::pair<int64_t, double> Adapter::Impl::rank_and_alpha(const std::string& key) const {
  std::pair<int64_t, double> out{summary.r, summary.lora_alpha};
  for (const auto& rule : rank_rules) {
    if (std::regex_match(key, rule.first)) {
      out.first = rule.second;
      break;
    }
  }
  for (const auto& rule : alpha_rules) {
    if (std::regex_match(key, rule.first)) {
      out.second = rule.second;
      break;
    }
  }
  return out;
}

void Adapter::Impl::check_factor(const TensorInfo& info, const char* what) const {
  POSTSVD_CHECK(is_float_weights(info.dtype), BadCheckpoint,
                where(info.name) << " (" << what << ") has dtype " << dtype_name(info.dtype) << "; expected one of "
                                 << dtype_names(is_float_dtype));
  const char* data = static_cast<const char*>(file->data(info));
  const uint64_t count = (info.end - info.begin) / dtype_size(info.dtype);
  for (uint64_t i = 0; i < count; ++i) {
    double value = 0;
    switch (info.dtype) {
      case DType::F32: { float v; std::memcpy(&v, data + 4 * i, 4); value = v; break; }
      case DType::F64: std::memcpy(&value, data + 8 * i, 8); break;
      case DType::BF16: { uint16_t v; std::memcpy(&v, data + 2 * i, 2); value = detail::bf16_to_float(v); break; }
      case DType::F16: { uint16_t v; std::memcpy(&v, data + 2 * i, 2); value = detail::f16_to_float(v); break; }
      default: break;
    }
    POSTSVD_CHECK(std::isfinite(value), InvalidArgument,
                  where(info.name) << " (" << what << "): non-finite value " << value << " at element " << i << " of "
                                   << detail::shape_string(info.shape) << "; expected finite adapter weights");
  }
}

std::vector<const MatrixSource*> Adapter::Impl::sources_of(const std::string& module) const {
  for (const std::string& prefix : family->prefixes) {
    if (!starts_with(module, prefix)) continue;
    const auto it = by_module.find(module.substr(prefix.size()));
    if (it != by_module.end()) return it->second;
  }
  return {};
}

std::string Adapter::Impl::base_tensor_of(const std::string& name) const {
  if (base->contains(name)) return name;
  for (const std::string& prefix : family->prefixes) {
    if (prefix.empty() || !starts_with(name, prefix)) continue;
    for (const std::string& other : family->prefixes) {
      if (base->contains(other + name.substr(prefix.size()))) return other + name.substr(prefix.size());
    }
  }
  for (const std::string& other : family->prefixes) {
    if (!other.empty() && base->contains(other + name)) return other + name;
  }
  return "";
}

int Adapter::Impl::layer_of(const std::string& module) const {
  for (const std::string& prefix : family->prefixes) {
    const std::string start = prefix + family->layer_container + ".";
    if (!starts_with(module, start)) continue;
    std::size_t i = start.size();
    int layer = 0;
    while (i < module.size() && module[i] >= '0' && module[i] <= '9' && i - start.size() < 9) layer = layer * 10 + (module[i++] - '0');
    if (i > start.size() && (i == module.size() || module[i] == '.')) return layer;
  }
  return -1;
}

namespace {

OutMap all_of(int64_t count) { return {0, 1, 0, 0, count, count}; }

// Rows first .. first + rank - 1 of a factor t [rows, width] (row-major) at the columns `map` takes:
// element (k, c) = t[first + k, column(c)], a [rank, map.count] view.
TensorView factor_rows(const SafetensorsFile& file, const TensorInfo& t, int64_t first, int64_t rank, const OutMap& map) {
  const int64_t width = t.shape[1];
  TensorView v;
  v.dtype = t.dtype;
  v.rows = rank;
  v.cols = map.count;
  v.row_stride = width;
  v.col_stride = map.step;
  if (map.group > 0) {
    v.col_group = map.group;
    v.col_group_skip = map.group_stride - map.group * map.step;
  }
  v.data = static_cast<const char*>(file.data(t)) + (first * width + map.offset) * static_cast<int64_t>(dtype_size(t.dtype));
  v.name = file.path() + ": " + t.name;
  return v;
}

// Columns first, first + every, ... (rank of them) of a factor t [rows, width] at the rows `map` takes:
// element (k, c) = t[row(c), first + k * every], a [rank, map.count] view.
TensorView factor_columns(const SafetensorsFile& file, const TensorInfo& t, const OutMap& map, int64_t rank,
                          int64_t first, int64_t every) {
  const int64_t width = t.shape[1];
  TensorView v;
  v.dtype = t.dtype;
  v.rows = rank;
  v.cols = map.count;
  v.row_stride = every;
  v.col_stride = map.step * width;
  if (map.group > 0) {
    v.col_group = map.group;
    v.col_group_skip = (map.group_stride - map.group * map.step) * width;
  }
  v.data = static_cast<const char*>(file.data(t)) + (map.offset * width + first) * static_cast<int64_t>(dtype_size(t.dtype));
  v.name = file.path() + ": " + t.name;
  return v;
}

// DoRA's magnitude [total] at the part's output rows: [1, count].
TensorView part_of_magnitude(const SafetensorsFile& file, const TensorInfo& m, const OutMap& map) {
  TensorView v;
  v.dtype = m.dtype;
  v.rows = 1;
  v.cols = map.count;
  v.row_stride = 1;
  v.col_stride = map.step;
  if (map.group > 0) {
    v.col_group = map.group;
    v.col_group_skip = map.group_stride - map.group * map.step;
  }
  v.data = static_cast<const char*>(file.data(m)) + map.offset * static_cast<int64_t>(dtype_size(m.dtype));
  v.name = file.path() + ": " + m.name;
  return v;
}

}  // namespace

void Adapter::Impl::add_delta(const MatrixSource& source, LowRankDelta delta) {
  POSTSVD_CHECK(delta.left.rows == source.in_features && delta.right.cols == source.out_features, InvalidArgument,
                "adapter term of '" << source.tensor << "' " << source_label(source) << ": [" << delta.left.rows << ", "
                                    << delta.right.cols << "] does not fit [" << source.in_features << ", "
                                    << source.out_features << "]");
  const bool added = deltas.emplace(key_of(source), std::make_shared<const LowRankDelta>(std::move(delta))).second;
  POSTSVD_CHECK(added, BadCheckpoint,
                file->path() << ": two LoRA terms on '" << source.tensor << "' " << source_label(source)
                             << " (a module and a target parameter?); expected one per projection");
  ++summary.adapted;
}

void Adapter::Impl::bind_module(const std::string& module, const LoraModule& lora,
                                const std::vector<const MatrixSource*>& sources) {
  const MatrixSource& first = *sources.front();
  const auto ra = rank_and_alpha(module);
  const int64_t rank = ra.first;
  const TensorInfo& a = *lora.a;
  const TensorInfo& b = *lora.b;
  const std::string base_tensor = "'" + first.tensor + "' " + detail::shape_string(base->info(first.tensor).shape);
  POSTSVD_CHECK(a.shape.size() == 2 && b.shape.size() == 2, BadCheckpoint,
                where(a.name) << " is " << detail::shape_string(a.shape) << " and '" << b.name << "' is "
                              << detail::shape_string(b.shape) << "; expected 2-D lora_A [r, in] and lora_B [out, r]");
  POSTSVD_CHECK(a.shape[0] >= 1 && b.shape[1] >= 1, InvalidArgument,
                where(a.name) << " " << detail::shape_string(a.shape) << ": rank 0; expected a rank >= 1");
  POSTSVD_CHECK(a.shape[0] == rank && b.shape[1] == rank, BadCheckpoint,
                where(a.name) << " is " << detail::shape_string(a.shape) << " and '" << b.name << "' is "
                              << detail::shape_string(b.shape) << " but adapter_config.json gives module '" << module
                              << "' rank " << rank << " (r / rank_pattern); expected lora_A [" << rank << ", in] and "
                              << "lora_B [out, " << rank << "]");
  POSTSVD_CHECK(a.shape[1] == first.in_features && b.shape[0] == first.fused_out, BadCheckpoint,
                where(a.name) << " " << detail::shape_string(a.shape) << " and '" << b.name << "' "
                              << detail::shape_string(b.shape) << " do not fit the base's " << base_tensor
                              << " (in " << first.in_features << ", out " << first.fused_out
                              << "); expected lora_A [" << rank << ", " << first.in_features << "] and lora_B ["
                              << first.fused_out << ", " << rank << "]: an adapter of another model?");
  POSTSVD_CHECK(!summary.fan_in_fan_out || first.conv1d, InvalidArgument,
                config_path << ": \"fan_in_fan_out\" is true but the base stores " << base_tensor
                            << " as nn.Linear [out, in]; peft merges fan_in_fan_out only into Conv1D layouts [in, out]");
  POSTSVD_CHECK(!lora.magnitude || use_dora, BadCheckpoint,
                where(lora.magnitude->name) << " is a DoRA magnitude but adapter_config.json does not set use_dora");
  POSTSVD_CHECK(lora.magnitude || !use_dora, BadCheckpoint,
                where(a.name) << ": adapter_config.json sets use_dora but the file has no '"
                              << a.name.substr(0, a.name.size() - std::strlen(".lora_A.weight"))
                              << ".lora_magnitude_vector'");
  if (lora.magnitude) {
    POSTSVD_CHECK(lora.magnitude->shape == std::vector<int64_t>{first.fused_out}, BadCheckpoint,
                  where(lora.magnitude->name) << " is " << detail::shape_string(lora.magnitude->shape)
                                              << "; expected the DoRA magnitude [" << first.fused_out << "] of "
                                              << base_tensor);
    check_factor(*lora.magnitude, "DoRA magnitude");
  }
  check_factor(a, "lora_A");
  check_factor(b, "lora_B");
  for (const MatrixSource* s : sources) {
    LowRankDelta d;
    // Paper orientation [in, out]: ΔW = scaling * A^T B^T (nn.Linear and Conv1D alike: peft's A is [r, in], B [out, r]).
    d.left = factor_rows(*file, a, 0, rank, all_of(first.in_features)).transposed();
    d.right = factor_columns(*file, b, out_map_of(*s), rank, 0, 1);
    d.scale = scaling(rank, ra.second);
    if (lora.magnitude) d.magnitude = part_of_magnitude(*file, *lora.magnitude, out_map_of(*s));
    add_delta(*s, std::move(d));
  }
}

void Adapter::Impl::bind_experts(const std::string& module,
                                 const std::vector<std::pair<std::string, LoraModule>>& nest) {
  const std::string first_tensor = nest.front().second.a->name;
  const int layer = layer_of(module);
  std::map<std::pair<int, int>, const MatrixSource*> routed;  // (expert, kind) -> source
  int experts = 0;
  for (const MatrixSource& s : arch->matrices) {
    if (s.layer != layer || s.expert < 0) continue;
    routed[{s.expert, static_cast<int>(s.kind)}] = &s;
    experts = std::max(experts, s.expert + 1);
  }
  POSTSVD_CHECK(layer >= 0 && experts > 0, BadCheckpoint,
                where(first_tensor) << ": LoRA on the parameters of module '" << module << "' (target_parameters), but "
                                    << (layer < 0 ? std::string("it is in no decoder layer")
                                                  : "layer " + std::to_string(layer) + " of the base has no routed experts")
                                    << "; postsvd maps target_parameters on fused MoE expert tensors");
  // The module's parameters that target_parameters names (peft's rule: the key or a "."-suffix of it).
  struct Param {
    std::string name;
    std::vector<Kind> kinds;
    int64_t in = 0;
    int64_t total = 0;
    std::vector<OutMap> maps;  // per kind
    // The factors the other way round: lora_A over the output, lora_B over the input (peft takes
    // a fused [experts, in, out] parameter of a family not marked is_transposed as [experts, out, in]).
    bool reversed = false;
    bool bound = false;
  };
  std::vector<Param> params;
  for (const std::string& target : target_parameters) {
    const std::string name = target.substr(target.rfind('.') == std::string::npos ? 0 : target.rfind('.') + 1);
    const std::string key = module + "." + name;
    if (!(key == target || ends_with(key, "." + target))) continue;
    Param p;
    p.name = name;
    if (name == "gate_up_proj") p.kinds = {Kind::Gate, Kind::Up};
    if (name == "down_proj") p.kinds = {Kind::Down};
    if (name == "up_proj") p.kinds = {Kind::Up};
    if (name == "gate_proj") p.kinds = {Kind::Gate};
    POSTSVD_CHECK(!p.kinds.empty(), InvalidArgument,
                  config_path << ": target parameter '" << detail::name_excerpt(target) << "' of module '" << module
                              << "' is not a fused expert tensor postsvd maps (gate_up_proj, down_proj, up_proj, gate_proj)");
    for (Kind kind : p.kinds) {
      const auto found = routed.find({0, static_cast<int>(kind)});
      POSTSVD_CHECK(found != routed.end(), BadCheckpoint,
                    config_path << ": target parameter '" << detail::name_excerpt(target) << "' holds the " << kind_name(kind)
                                << " projections of the experts, but layer " << layer << " of the base has none");
      const MatrixSource& s = *found->second;
      p.in = s.in_features;
      if (s.stacked > 0) {
        // Fused on disk as in memory ([experts, in, out]): the parameter is the stored tensor.
        std::string stored = s.tensor.substr(s.tensor.rfind('.') + 1);
        if (ends_with(stored, "_blocks")) stored.erase(stored.size() - 7);
        POSTSVD_CHECK(stored == name, BadCheckpoint,
                      config_path << ": target parameter '" << detail::name_excerpt(target) << "' but the base stores the "
                                  << kind_name(kind) << " experts of layer " << layer << " in '" << s.tensor << "'");
        p.maps.push_back(out_map_of(s));
        p.total = s.fused_out;
        p.reversed = !family->experts_is_transposed;
      } else {
        // One tensor per expert on disk: transformers concatenates them in memory, [experts, gate rows then up rows, in].
        OutMap map;
        map.offset = p.total;
        map.count = s.out_features;
        p.maps.push_back(map);
        p.total += s.out_features;
      }
    }
    for (OutMap& map : p.maps) map.total = p.total;
    params.push_back(std::move(p));
  }
  POSTSVD_CHECK(!params.empty(), BadCheckpoint,
                where(first_tensor) << ": LoRA on the parameters of module '" << module
                                    << "', but adapter_config.json's target_parameters names none of them");
  for (const auto& level : nest) {
    const LoraModule& lora = level.second;
    const TensorInfo& a = *lora.a;
    const TensorInfo& b = *lora.b;
    POSTSVD_CHECK(!lora.magnitude, BadCheckpoint,
                  where(lora.magnitude->name) << ": a DoRA magnitude on target_parameters, which peft does not support");
    POSTSVD_CHECK(a.shape.size() == 2 && b.shape.size() == 2, BadCheckpoint,
                  where(a.name) << " is " << detail::shape_string(a.shape) << " and '" << b.name << "' is "
                                << detail::shape_string(b.shape) << "; expected 2-D lora_A [experts * r, in] and lora_B "
                                << "[out, experts * r]");
    Param* match = nullptr;
    std::ostringstream expected;
    for (Param& p : params) {
      const int64_t a_width = p.reversed ? p.total : p.in, b_height = p.reversed ? p.in : p.total;
      expected << (&p == &params.front() ? "" : ", ") << p.name << " (lora_A [" << experts << " * r, " << a_width
               << "], lora_B [" << b_height << ", " << experts << " * r])";
      if (a.shape[1] == a_width && b.shape[0] == b_height && !p.bound) match = &p;
    }
    POSTSVD_CHECK(match != nullptr, BadCheckpoint,
                  where(a.name) << " " << detail::shape_string(a.shape) << " and '" << b.name << "' "
                                << detail::shape_string(b.shape) << " fit none of the target parameters of layer "
                                << layer << " with its " << experts << " experts: " << expected.str());
    match->bound = true;
    const auto ra = rank_and_alpha(module + "." + match->name);
    const int64_t rank = ra.first;
    POSTSVD_CHECK(a.shape[0] >= 1 && b.shape[1] >= 1, InvalidArgument,
                  where(a.name) << " " << detail::shape_string(a.shape) << ": rank 0; expected a rank >= 1");
    POSTSVD_CHECK(a.shape[0] == experts * rank && b.shape[1] == experts * rank, BadCheckpoint,
                  where(a.name) << " is " << detail::shape_string(a.shape) << " and '" << b.name << "' is "
                                << detail::shape_string(b.shape) << " but the rank of '" << module << "." << match->name
                                << "' is " << rank << " (r / rank_pattern) for " << experts << " experts; expected "
                                << experts * rank << " rows of lora_A and columns of lora_B");
    check_factor(a, "lora_A");
    check_factor(b, "lora_B");
    for (int e = 0; e < experts; ++e) {
      for (std::size_t k = 0; k < match->kinds.size(); ++k) {
        const auto found = routed.find({e, static_cast<int>(match->kinds[k])});
        POSTSVD_CHECK(found != routed.end(), BadCheckpoint,
                      base->weights_folder() << ": layer " << layer << " has no " << kind_name(match->kinds[k])
                                             << " projection of expert " << e);
        // peft's ParamWrapper: expert e takes rows e * r + j of A and columns j * experts + e of B.
        LowRankDelta d;
        if (match->reversed) {
          d.left = factor_columns(*file, b, all_of(match->in), rank, e, experts).transposed();
          d.right = factor_rows(*file, a, e * rank, rank, match->maps[k]);
        } else {
          d.left = factor_rows(*file, a, e * rank, rank, all_of(match->in)).transposed();
          d.right = factor_columns(*file, b, match->maps[k], rank, e, experts);
        }
        d.scale = scaling(rank, ra.second);
        add_delta(*found->second, std::move(d));
      }
    }
  }
}

void Adapter::Impl::bind(const std::map<std::string, LoraModule>& modules,
                         const std::map<std::string, const TensorInfo*>& whole, const std::set<std::string>& embeddings) {
  // Nested ParamWrappers (<module>.base_layer...) are levels of one module.
  std::map<std::string, std::vector<std::pair<std::string, LoraModule>>> by_stripped;
  for (const auto& entry : modules) {
    const LoraModule& lora = entry.second;
    if (!lora.a && !lora.b && embeddings.count(entry.first) != 0) {
      skip(lora.magnitude->name, "the DoRA magnitude of a LoRA on an embedding, not a projection");
      continue;
    }
    const TensorInfo* present = lora.a ? lora.a : lora.b ? lora.b : lora.magnitude;
    POSTSVD_CHECK(lora.a && lora.b, BadCheckpoint,
                  where(present->name) << ": module '" << entry.first << "' has "
                                       << (lora.a ? "lora_A but no lora_B" : lora.b ? "lora_B but no lora_A"
                                                                                    : "a DoRA magnitude but no lora_A and lora_B")
                                       << "; expected both LoRA factors");
    by_stripped[strip_nesting(entry.first)].push_back(entry);
  }
  for (const auto& entry : by_stripped) {
    const std::string& module = entry.first;
    const auto& nest = entry.second;
    const std::vector<const MatrixSource*> sources = sources_of(module);
    if (!sources.empty() && nest.size() == 1 && nest.front().first == module) {
      bind_module(module, nest.front().second, sources);
    } else if (!target_parameters.empty() && sources.empty() && base_tensor_of(module + ".weight").empty() &&
               layer_of(module) >= 0) {
      bind_experts(module, nest);
    } else if (!base_tensor_of(module + ".weight").empty()) {
      for (const auto& level : nest) {
        for (const TensorInfo* t : {level.second.a, level.second.b, level.second.magnitude}) {
          if (t) skip(t->name, "LoRA on '" + module + "', not a projection postsvd compares");
        }
      }
    } else {
      POSTSVD_THROW(BadCheckpoint, where(nest.front().second.a->name)
                                       << ": LoRA on module '" << detail::name_excerpt(module) << "', which the base "
                                       << base->weights_folder() << " does not have (no tensor '"
                                       << detail::name_excerpt(module) << ".weight'): an adapter of another model?");
    }
  }
  for (const auto& entry : whole) {
    const TensorInfo& info = *entry.second;
    const std::string replaced = base_tensor_of(entry.first);
    POSTSVD_CHECK(!replaced.empty(), BadCheckpoint,
                  where(info.name) << " (modules_to_save) replaces no tensor of the base " << base->weights_folder()
                                   << " (no tensor '" << detail::name_excerpt(entry.first) << "')");
    const TensorInfo& original = base->info(replaced);
    POSTSVD_CHECK(info.shape == original.shape, BadCheckpoint,
                  where(info.name) << " (modules_to_save) is " << detail::shape_string(info.shape) << " but the base's '"
                                   << replaced << "' is " << detail::shape_string(original.shape)
                                   << "; expected the same shape");
    POSTSVD_CHECK(is_float_dtype(info.dtype) || info.dtype == original.dtype, BadCheckpoint,
                  where(info.name) << " (modules_to_save) has dtype " << dtype_name(info.dtype) << "; expected one of "
                                   << dtype_names(is_float_dtype));
    replacements[replaced] = &info;
    summary.replaced_tensors.push_back(replaced);
    for (const MatrixSource& s : arch->matrices) {
      if (s.tensor != replaced) continue;
      POSTSVD_CHECK(deltas.count(key_of(s)) == 0, BadCheckpoint,
                    where(info.name) << " (modules_to_save) replaces '" << replaced
                                     << "', which the adapter also changes by LoRA; expected one or the other");
      ++summary.replaced;
    }
  }
}

Adapter::Adapter(const std::string& folder, const Checkpoint& base, const Architecture& arch,
                 const AdapterOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.summary.folder = folder;
  im.summary.base_folder = base.weights_folder();
  const json config = read_config(folder, im.config_path);
  im.read_options(config, options);
  im.base = &base;
  im.arch = &arch;
  for (const ArchitectureFamily& f : architecture_families()) {
    if (f.model_type == arch.model_type) im.family = &f;
  }
  POSTSVD_CHECK(im.family != nullptr, BadCheckpoint, "adapter: no architecture row for model_type '" << arch.model_type << "'");
  im.check_base_architecture(config);

  const fs::path weights = fs::path(folder) / kWeightsFile;
  std::error_code ec;
  if (!fs::is_regular_file(weights, ec)) {
    const bool pickle = fs::exists(fs::path(folder) / "adapter_model.bin", ec);
    POSTSVD_THROW(BadCheckpoint, weights.string() << ": missing; " << folder << " is a PEFT adapter folder ("
                                                  << kConfigFile << ") without its weights"
                                                  << (pickle ? " (adapter_model.bin, a pickle, is not read: save the "
                                                               "adapter as safetensors)"
                                                             : ""));
  }
  im.file = std::make_unique<SafetensorsFile>(weights.string());
  im.summary.weights_file = weights.string();
  POSTSVD_CHECK(!im.file->tensors().empty(), BadCheckpoint,
                weights.string() << ": holds no tensors; expected the adapter's lora_A / lora_B weights");

  for (const MatrixSource& s : arch.matrices) {
    if (!ends_with(s.tensor, ".weight")) continue;  // fused expert tensors: not a module (target_parameters)
    const std::string module = s.tensor.substr(0, s.tensor.size() - 7);
    for (const std::string& prefix : im.family->prefixes) {
      if (!starts_with(module, prefix)) continue;
      im.by_module[module.substr(prefix.size())].push_back(&s);
      break;
    }
  }
  std::map<std::string, LoraModule> modules;
  std::map<std::string, const TensorInfo*> whole;
  std::set<std::string> embeddings;
  for (const TensorInfo& t : im.file->tensors()) {
    const std::string name = starts_with(t.name, kPeftPrefix) ? t.name.substr(kPeftPrefix.size()) : t.name;
    std::string module;
    switch (role_of(name, module)) {
      case Role::A: modules[module].a = &t; break;
      case Role::B: modules[module].b = &t; break;
      case Role::Magnitude: modules[module].magnitude = &t; break;
      case Role::BBias: im.skip(t.name, "a bias (lora_bias, or bias 'all' / 'lora_only'): postsvd compares weight matrices only"); break;
      case Role::EmbeddingA:
      case Role::EmbeddingB:
        embeddings.insert(module);
        im.skip(t.name, "LoRA on an embedding, not a projection");
        break;
      case Role::BaseCopy: im.skip(t.name, "a copy of a base layer (save_embedding_layers), not a projection"); break;
      case Role::TrainableTokens: im.skip(t.name, "trainable tokens (rows of an embedding), not a projection"); break;
      case Role::Whole: whole[module] = &t; break;
      case Role::Unknown:
        POSTSVD_THROW(BadCheckpoint, im.where(t.name) << ": not a tensor of a LoRA adapter (expected names ending in "
                                                      << "lora_A.weight, lora_B.weight, lora_magnitude_vector, or a "
                                                      << "modules_to_save .weight)");
    }
  }
  im.bind(modules, whole, embeddings);
  im.base = nullptr;  // binding only: the Checkpoint that owns this adapter outlives no pointer kept here
  im.arch = nullptr;
}

Adapter::~Adapter() = default;

const AdapterSummary& Adapter::summary() const { return impl_->summary; }

std::shared_ptr<const LowRankDelta> Adapter::delta(const MatrixSource& source) const {
  const auto it = impl_->deltas.find(key_of(source));
  return it == impl_->deltas.end() ? nullptr : it->second;
}

const TensorInfo* Adapter::replacement(const std::string& name) const {
  const auto it = impl_->replacements.find(name);
  return it == impl_->replacements.end() ? nullptr : it->second;
}

const SafetensorsFile& Adapter::file() const { return *impl_->file; }

Checkpoint open_post_model(const std::string& folder, const std::string& base_folder, const AdapterOptions& options) {
  std::error_code ec;
  if (is_adapter_folder(folder) && !fs::exists(fs::path(folder) / "config.json", ec)) {
    return Checkpoint(folder, base_folder, options);
  }
  return Checkpoint(folder);
}

namespace detail {

template <class T>
void add_low_rank(const LowRankDelta& delta, Matrix<T>& w, const std::string& name) {
  const int64_t rows = w.rows(), cols = w.cols(), rank = delta.left.cols;
  POSTSVD_CHECK(delta.left.rows == rows && delta.right.cols == cols && delta.right.rows == rank, InvalidArgument,
                "tensor '" << name << "': adapter factors [" << delta.left.rows << ", " << rank << "] x ["
                           << delta.right.rows << ", " << delta.right.cols << "] do not fit the [" << rows << ", "
                           << cols << "] weights");
  if (rows == 0 || cols == 0) return;
  const Matrix<T> left = to_matrix<T>(delta.left);    // [rows, rank]
  const Matrix<T> right = to_matrix<T>(delta.right);  // [rank, cols]
  const int m = as_int(rows, "rows"), n = as_int(cols, "cols"), k = as_int(rank, "rank");
  gemm('N', 'N', m, n, k, static_cast<T>(delta.scale), left.data(), m, right.data(), k, T(1), w.data(), m);
  if (delta.magnitude.data != nullptr) {
    // DoRA as peft merges it: every output row of W + ΔW (a column here; a row of a transposed view) scaled
    // to the magnitude m: W' = m / ||W + ΔW|| * (W + ΔW).
    const Matrix<T> magnitude = to_matrix<T>(delta.magnitude);
    const bool per_row = delta.magnitude_per_row;
    const int64_t count = per_row ? rows : cols;
    POSTSVD_CHECK(magnitude.size() == count, InvalidArgument,
                  "tensor '" << name << "': DoRA magnitude of " << magnitude.size() << " values for " << count
                             << " output rows");
    std::vector<double> norms(static_cast<std::size_t>(count), 0.0);
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < rows; ++r) {
        const double v = static_cast<double>(w(r, c));
        norms[static_cast<std::size_t>(per_row ? r : c)] += v * v;
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = per_row ? r : c;
        const T factor = magnitude.data()[i] / static_cast<T>(std::sqrt(norms[static_cast<std::size_t>(i)]));
        w(r, c) *= factor;
      }
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      POSTSVD_CHECK(std::isfinite(w(r, c)), InvalidArgument,
                    "tensor '" << name << "': the merged weights W + ΔW have the non-finite value " << w(r, c)
                               << " at (row " << r << ", col " << c << "); expected finite weights");
    }
  }
}

template void add_low_rank<float>(const LowRankDelta&, Matrix<float>&, const std::string&);
template void add_low_rank<double>(const LowRankDelta&, Matrix<double>&, const std::string&);

}  // namespace detail

}  // namespace postsvd
