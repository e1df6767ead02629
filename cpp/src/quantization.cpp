// Quantized weights (see quantization.h): exact decoders of FP8, FP4 and E8M0,
// the quantization_config of config.json, scale lookup for FP8 weights, MXFP4
// views, and the dequantizing conversion that to_matrix calls.
#include "postsvd/quantization.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <type_traits>

#include "detail/dequantize.h"
#include "detail/half.h"
#include "detail/json_guard.h"
#include "detail/minifloat.h"
#include "detail/shape_format.h"
#include "postsvd/limits.h"

namespace postsvd {

bool is_fp8_dtype(DType dtype) { return dtype == DType::F8_E4M3 || dtype == DType::F8_E5M2; }

bool is_weight_dtype(DType dtype) { return is_float_dtype(dtype) || is_fp8_dtype(dtype); }

namespace {

// The decoders are detail/minifloat.h's (the device uses the same); 256-entry tables on the host.
std::array<float, 256> make_table(float (*decode)(uint8_t)) {
  std::array<float, 256> t{};
  for (uint32_t b = 0; b < 256; ++b) t[b] = decode(static_cast<uint8_t>(b));
  return t;
}

const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = make_table(detail::decode_e4m3);
  return table;
}

const std::array<float, 256>& e5m2_table() {
  static const std::array<float, 256> table = make_table(detail::decode_e5m2);
  return table;
}

}  // namespace

float fp8_e4m3_to_float(uint8_t bits) { return e4m3_table()[bits]; }
float fp8_e5m2_to_float(uint8_t bits) { return e5m2_table()[bits]; }

float fp4_e2m1_to_float(uint8_t nibble) { return detail::decode_e2m1(nibble); }

float e8m0_to_float(uint8_t bits) { return detail::decode_e8m0(bits); }

double quantization_relative_bound(DType stored, QuantScheme scheme) {
  if (scheme == QuantScheme::MXFP4) return std::ldexp(1.0, -2);  // 1 mantissa bit
  switch (stored) {
    case DType::F8_E4M3: return std::ldexp(1.0, -4);
    case DType::F8_E5M2: return std::ldexp(1.0, -3);
    case DType::BF16: return std::ldexp(1.0, -9);
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::F32: return std::ldexp(1.0, -24);
    case DType::F64: return std::ldexp(1.0, -53);
    default: break;
  }
  POSTSVD_THROW(InvalidArgument, "quantization_relative_bound: " << dtype_name(stored) << " is not a weight dtype");
}

// ---------------------------------------------------------------- config.json

namespace {

using json = nlohmann::ordered_json;

std::vector<std::string> string_list(const json& parent, const char* key, const std::string& where) {
  std::vector<std::string> out;
  if (!parent.contains(key) || parent[key].is_null()) return out;
  const json& v = parent[key];
  POSTSVD_CHECK(v.is_array(), BadCheckpoint,
                where << ": quantization_config." << key << " is " << v.dump() << "; expected a list of module names");
  for (const json& e : v) {
    POSTSVD_CHECK(e.is_string(), BadCheckpoint,
                  where << ": quantization_config." << key << " has the entry " << e.dump() << "; expected strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// A [B0, B1] pair of positive integers.
void block_size(const json& v, const std::string& where, const std::string& key, QuantizationConfig& out) {
  const bool ok = v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer() &&
                  v[0].get<int64_t>() > 0 && v[1].get<int64_t>() > 0;
  POSTSVD_CHECK(ok, BadCheckpoint, where << ": " << key << " is " << v.dump() << "; expected [B0, B1], two positive integers");
  out.block_out = v[0].get<int64_t>();
  out.block_in = v[1].get<int64_t>();
}

}  // namespace

QuantizationConfig quantization_config(const Checkpoint& checkpoint) {
  const std::string where = checkpoint.config_path();
  QuantizationConfig out;
  const json& config = checkpoint.config();
  // Multimodal configs keep the text tower's settings in text_config; the quantization is top level.
  if (!config.contains("quantization_config") || config["quantization_config"].is_null()) {
    return out;
  }
  const json& q = config["quantization_config"];
  POSTSVD_CHECK(q.is_object(), BadCheckpoint, where << ": quantization_config is a JSON " << q.type_name()
                                                    << "; expected an object");
  POSTSVD_CHECK(q.contains("quant_method") && q["quant_method"].is_string(), BadCheckpoint,
                where << ": quantization_config has no string \"quant_method\"");
  out.quant_method = q["quant_method"].get<std::string>();
  if (out.quant_method == "fp8") {
    out.method = QuantizationConfig::Method::BlockFP8;
    if (q.contains("weight_block_size") && !q["weight_block_size"].is_null()) {
      block_size(q["weight_block_size"], where, "quantization_config.weight_block_size", out);
    }
    out.not_converted = string_list(q, "modules_to_not_convert", where);
  } else if (out.quant_method == "compressed-tensors") {
    out.method = QuantizationConfig::Method::CompressedTensors;
    const std::string format = q.contains("format") && q["format"].is_string() ? q["format"].get<std::string>() : "";
    POSTSVD_CHECK(format == "float-quantized" || format == "naive-quantized", BadCheckpoint,
                  where << ": compressed-tensors format '" << format
                        << "' is not supported; postsvd dequantizes \"float-quantized\" (FP8) checkpoints");
    out.not_converted = string_list(q, "ignore", where);
    if (q.contains("config_groups") && q["config_groups"].is_object()) {
      for (const auto& group : q["config_groups"].items()) {
        const json& g = group.value();
        if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object()) continue;
        const json& w = g["weights"];
        if (w.contains("block_structure") && !w["block_structure"].is_null()) {
          block_size(w["block_structure"], where,
                     "quantization_config.config_groups." + group.key() + ".weights.block_structure", out);
        }
      }
    }
  } else if (out.quant_method == "fbgemm_fp8") {
    // Llama 4 FP8 releases: per-channel weight_scale of nn.Linear, X_scale of fused experts.
    out.method = QuantizationConfig::Method::FbgemmFP8;
    out.not_converted = string_list(q, "modules_to_not_convert", where);
  } else if (out.quant_method == "mxfp4") {
    out.method = QuantizationConfig::Method::MXFP4;
    out.not_converted = string_list(q, "modules_to_not_convert", where);
  } else {
    POSTSVD_THROW(BadCheckpoint, where << ": quantization_config.quant_method '" << out.quant_method
                                       << "' is not supported; postsvd reads \"fp8\" (block-scaled), "
                                          "\"compressed-tensors\" (float-quantized), \"fbgemm_fp8\" and \"mxfp4\"");
  }
  return out;
}

namespace {

// An upper bound on the states of `pattern`'s automaton from `at` to the closing ')' of the current group
// (or the end): an atom (a character, an escape, a class) counts 1, a group the states of its parts,
// {m,n} multiplies the item before it by n (m without n). `depth` counts the open groups; past the
// limits the bound is +inf.
double pattern_states(const std::string& pattern, std::size_t& at, int depth) {
  if (depth > limits::kMaxPatternDepth) return std::numeric_limits<double>::infinity();
  double total = 0, last = 0;
  while (at < pattern.size()) {
    const char c = pattern[at++];
    if (c == ')') break;
    if (c == '(') {
      last = pattern_states(pattern, at, depth + 1);
    } else if (c == '\\') {
      ++at;
      last = 1;
    } else if (c == '[') {
      if (at < pattern.size() && pattern[at] == '^') ++at;
      if (at < pattern.size() && pattern[at] == ']') ++at;
      while (at < pattern.size() && pattern[at] != ']') at += pattern[at] == '\\' ? 2 : 1;
      ++at;
      last = 1;
    } else if (c == '{') {
      double low = 0, high = 0;
      bool comma = false;
      for (; at < pattern.size() && pattern[at] != '}'; ++at) {
        const char d = pattern[at];
        if (d == ',') comma = true;
        if (d < '0' || d > '9') continue;
        double& bound = comma ? high : low;
        bound = std::min(bound * 10 + (d - '0'), limits::kMaxPatternStates + 1);
      }
      ++at;
      const double copies = !comma ? low : high > 0 ? high : low + 1;  // "{m,}": one copy past m, starred
      total += last * (std::max(copies, 1.0) - 1);  // the item counted once already
      continue;
    } else {
      last = 1;
    }
    total += last;
  }
  return total;
}

// A compressed-tensors "re:" pattern, compiled to match in polynomial time (libstdc++'s breadth-first
// executor; Python's re and a backtracking std::regex take exponential time on patterns like "(.*)*x").
// Refused past the limits of limits.h: its characters, group nesting and automaton size.
std::regex ignore_pattern(const std::string& entry) {
  const std::string pattern = entry.substr(3);
  std::size_t at = 0;
  const double states = pattern.size() <= limits::kMaxPatternChars ? pattern_states(pattern, at, 0)
                                                                   : std::numeric_limits<double>::infinity();
  POSTSVD_CHECK(states <= limits::kMaxPatternStates, BadCheckpoint,
                "quantization_config.ignore: the pattern '" << detail::name_excerpt(entry) << "' is too complex ("
                    << pattern.size() << " characters; postsvd reads patterns of at most "
                    << limits::kMaxPatternChars << " characters, " << limits::kMaxPatternDepth
                    << " nested groups and " << limits::kMaxPatternStates << " states with {m,n} expanded)");
#ifdef __GLIBCXX__
  constexpr auto flags = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
  constexpr auto flags = std::regex::ECMAScript;
#endif
  try {
    return std::regex(pattern, flags);
  } catch (const std::regex_error& e) {
    POSTSVD_THROW(BadCheckpoint, "quantization_config.ignore: the pattern '" << detail::name_excerpt(entry)
                                                                              << "' is not a valid regular expression "
                                                                                 "(or uses back-references): "
                                                                              << e.what());
  }
}

}  // namespace

bool module_not_converted(const QuantizationConfig& config, const std::string& tensor) {
  const std::string suffix = ".weight";
  const std::string module = tensor.size() > suffix.size() && tensor.compare(tensor.size() - suffix.size(), suffix.size(), suffix) == 0
                                 ? tensor.substr(0, tensor.size() - suffix.size())
                                 : tensor;
  for (const std::string& entry : config.not_converted) {
    if (config.method == QuantizationConfig::Method::CompressedTensors) {
      if (entry.rfind("re:", 0) == 0) {
        if (std::regex_search(module, ignore_pattern(entry), std::regex_constants::match_continuous)) return true;
      } else if (module == entry) {
        return true;
      }
    } else if (!entry.empty() && module.find(entry) != std::string::npos) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- scales of FP8 weights

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_scale_dtype(DType dtype) { return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16; }

// The fields every scale grid of FP8 weight `source` shares: scale tensor `name`, stored rows of
// `stored_cols` elements, and the stored element index of the view's (0, 0).
ViewScales scale_grid(const Checkpoint& checkpoint, const MatrixSource& source, const std::string& name,
                      const TensorView& view, int64_t stored_cols) {
  const TensorInfo& info = checkpoint.info(source.tensor);
  const TensorInfo& scale = checkpoint.info(name);
  ViewScales s;
  s.scheme = QuantScheme::ScaledFP8;
  s.data = checkpoint.file_of(name).data(scale);
  s.dtype = scale.dtype;
  s.name = name;
  s.count = 1;
  for (int64_t d : scale.shape) s.count *= d;
  s.stored_cols = stored_cols;
  // view_of points at the part's first stored element: element (0, 0) is stored at `first`.
  s.first = (static_cast<const char*>(view.data) - static_cast<const char*>(checkpoint.file_of(source.tensor).data(info))) /
            static_cast<int64_t>(dtype_size(info.dtype));
  return s;
}

// Scales of a 3-D FP8 tensor [E, a, b] (fused experts: Llama 4 gate_up_proj [E, hidden, 2 inter] and
// down_proj [E, inter, hidden], stored [E, in, out]; or [E, out, in]), by the stored position of each
// element: one scale ([], [1]); one per expert ([E], [E, 1, 1]); one per expert and output channel
// ([E, 1, out], [E, out, 1] or [E, out]: fbgemm_fp8's gate_up_proj_scale [E, 1, 2 inter] and
// down_proj_scale [E, hidden, 1]); or blocks per expert ([E, ceil(a / B0), ceil(b / B1)], a a multiple of B0).
void attach_stacked_scales(const Checkpoint& checkpoint, const MatrixSource& source, const QuantizationConfig& config,
                           const std::string& name, bool inverse, TensorView& view) {
  const TensorInfo& info = checkpoint.info(source.tensor);
  const TensorInfo& scale = checkpoint.info(name);
  const int64_t experts = info.shape[0], a = info.shape[1], b = info.shape[2];
  const std::vector<int64_t>& sh = scale.shape;
  const int64_t outs = source.conv1d ? b : a;  // output channels per expert
  ViewScales s = scale_grid(checkpoint, source, name, view, b);  // the stored rows of [E * a, b]
  const int64_t numel = s.count;
  const bool blocked = config.block_out > 0 && sh.size() == 3 && sh[0] == experts &&
                       sh[1] == ceil_div(a, config.block_out) && sh[2] == ceil_div(b, config.block_in) &&
                       a % config.block_out == 0 && (sh[1] > 1 || sh[2] > 1);
  if (numel == 1) {
    s.block_rows = experts * a;
    s.block_cols = b;
  } else if (blocked) {
    s.block_rows = config.block_out;  // row e * a + r of [E * a, b] lies in grid row e * (a / B0) + r / B0
    s.block_cols = config.block_in;
    s.grid_cols = sh[2];
  } else if (!inverse && (sh == std::vector<int64_t>{experts} || sh == std::vector<int64_t>{experts, 1} ||
                          sh == std::vector<int64_t>{experts, 1, 1})) {
    s.block_rows = a;
    s.block_cols = b;
  } else if (!inverse && (sh == std::vector<int64_t>{experts, 1, outs} || sh == std::vector<int64_t>{experts, outs, 1} ||
                          sh == std::vector<int64_t>{experts, outs})) {
    if (source.conv1d) {  // [E, in, out]: scale (e, j) = index e * b + j, j the stored column
      s.block_rows = a;
      s.block_cols = 1;
      s.grid_cols = b;
    } else {  // [E, out, in]: scale (e, r) = index e * a + r, the stored row
      s.block_rows = 1;
      s.block_cols = b;
    }
  } else {
    POSTSVD_THROW(BadCheckpoint, checkpoint.file_of(name).path()
                                     << ": tensor '" << name << "' has shape " << detail::shape_string(sh)
                                     << " for the fused FP8 tensor '" << source.tensor << "' "
                                     << detail::shape_string(info.shape) << " in "
                                     << checkpoint.file_of(source.tensor).path() << "; expected [1] per tensor, ["
                                     << experts << "] per expert, [" << experts << ", 1, " << outs << "] or [" << experts
                                     << ", " << outs << ", 1] per expert and output channel"
                                     << (config.block_out > 0 ? ", or [E, ceil(" + std::to_string(a) + " / " +
                                                                    std::to_string(config.block_out) + "), ceil(" +
                                                                    std::to_string(b) + " / " +
                                                                    std::to_string(config.block_in) + ")] with " +
                                                                    std::to_string(a) + " a multiple of " +
                                                                    std::to_string(config.block_out)
                                                              : std::string()));
  }
  view.scales = std::move(s);
}

}  // namespace

namespace {

// The names an FP8 weight's scale may have, and the one the checkpoint holds ("" when none).
struct Fp8ScaleNames {
  bool has_suffix = false;   // the weight's name ends in ".weight"
  std::string inverse_name;  // block FP8: value = q * scale_inv
  std::string scale_name;    // compressed-tensors: value = q * scale
  std::string fused_name;    // fbgemm_fp8 fused experts: value = q * scale
  std::string found;
  bool inverse = false;
};

Fp8ScaleNames fp8_scale_names(const Checkpoint& checkpoint, const std::string& tensor) {
  Fp8ScaleNames n;
  const std::string suffix = ".weight";
  n.has_suffix = tensor.size() > suffix.size() && tensor.compare(tensor.size() - suffix.size(), suffix.size(), suffix) == 0;
  const std::string module = n.has_suffix ? tensor.substr(0, tensor.size() - suffix.size()) : tensor;
  n.inverse_name = module + ".weight_scale_inv";
  n.scale_name = module + ".weight_scale";
  n.fused_name = tensor + "_scale";
  n.inverse = checkpoint.contains(n.inverse_name);
  if (n.inverse) {
    n.found = n.inverse_name;
  } else if (!n.has_suffix && checkpoint.contains(n.fused_name)) {
    n.found = n.fused_name;
  } else if (checkpoint.contains(n.scale_name)) {
    n.found = n.scale_name;
  }
  return n;
}

}  // namespace

std::vector<std::string> source_tensors(const Checkpoint& checkpoint, const MatrixSource& source) {
  std::vector<std::string> names{source.tensor};
  if (is_mxfp4(source)) {
    names.push_back(source.mxfp4_scales);
  } else if (is_fp8_dtype(checkpoint.info(source.tensor).dtype)) {
    const Fp8ScaleNames scale = fp8_scale_names(checkpoint, source.tensor);
    if (!scale.found.empty()) names.push_back(scale.found);
  }
  return names;
}

void attach_scales(const Checkpoint& checkpoint, const MatrixSource& source, TensorView& view) {
  const TensorInfo& info = checkpoint.info(source.tensor);
  if (!is_fp8_dtype(info.dtype)) return;
  const std::string& weight_file = checkpoint.file_of(source.tensor).path();
  const QuantizationConfig config = quantization_config(checkpoint);
  const Fp8ScaleNames names = fp8_scale_names(checkpoint, source.tensor);
  if (names.found.empty()) {
    if (config.method == QuantizationConfig::Method::None || module_not_converted(config, source.tensor)) return;
    POSTSVD_THROW(BadCheckpoint, weight_file << ": tensor '" << source.tensor << "' is " << dtype_name(info.dtype)
                                             << " in a checkpoint quantized with '" << config.quant_method
                                             << "' but has no scale: expected '" << names.inverse_name << "' or '"
                                             << names.scale_name << "'"
                                             << (names.has_suffix ? "" : " or '" + names.fused_name + "'"));
  }
  const std::string& name = names.found;
  const bool inverse = names.inverse;
  const TensorInfo& scale = checkpoint.info(name);
  const std::string& scale_file = checkpoint.file_of(name).path();
  POSTSVD_CHECK(is_scale_dtype(scale.dtype), BadCheckpoint,
                scale_file << ": tensor '" << name << "' (scale of '" << source.tensor << "') has dtype "
                           << dtype_name(scale.dtype) << "; expected one of " << dtype_names(is_scale_dtype));
  if (source.stacked > 0 && info.shape.size() == 3) {
    attach_stacked_scales(checkpoint, source, config, name, inverse, view);
    return;
  }
  POSTSVD_CHECK(!source.conv1d && info.shape.size() == 2, BadCheckpoint,
                weight_file << ": tensor '" << source.tensor << "' " << detail::shape_string(info.shape)
                            << ": scaled FP8 weights are read from nn.Linear tensors [out, in] or fused experts "
                               "[E, ., .]; this one is "
                            << (source.conv1d ? "a Conv1D [in, out] tensor" : "neither"));
  const int64_t out = info.shape[0];
  const int64_t in = info.shape[1];
  ViewScales s = scale_grid(checkpoint, source, name, view, in);
  const int64_t numel = s.count;
  const bool per_tensor = scale.shape.empty() || (scale.shape.size() == 1 && scale.shape[0] == 1) ||
                          (scale.shape.size() == 2 && scale.shape[0] == 1 && scale.shape[1] == 1 && out != 1);
  const bool per_channel = !inverse && (scale.shape == std::vector<int64_t>{out, 1} || scale.shape == std::vector<int64_t>{out});
  if (config.block_out > 0 && (inverse || !per_channel) && !per_tensor) {
    // [ceil(out / B0), ceil(in / B1)]: one scale per B0 x B1 block of the stored [out, in] tensor.
    const std::vector<int64_t> expected{ceil_div(out, config.block_out), ceil_div(in, config.block_in)};
    POSTSVD_CHECK(scale.shape == expected, BadCheckpoint,
                  scale_file << ": tensor '" << name << "' has shape " << detail::shape_string(scale.shape)
                             << "; expected " << detail::shape_string(expected) << " = [ceil(" << out << " / "
                             << config.block_out << "), ceil(" << in << " / " << config.block_in << ")] for weight '"
                             << source.tensor << "' " << detail::shape_string(info.shape) << " in " << weight_file
                             << " with block size [" << config.block_out << ", " << config.block_in << "]");
    s.block_rows = config.block_out;
    s.block_cols = config.block_in;
    s.grid_cols = expected[1];
  } else if (per_tensor) {
    s.block_rows = out;  // one block: the whole tensor
    s.block_cols = in;
  } else if (per_channel) {
    s.block_rows = 1;  // one scale per stored row
    s.block_cols = in;
  } else {
    std::ostringstream expected;
    expected << (inverse ? "" : "[] or [1] per tensor, [" + std::to_string(out) + ", 1] per output channel");
    if (config.block_out > 0 || inverse) {
      expected << (inverse ? "" : ", or ") << "[ceil(out / B0), ceil(in / B1)] with weight_block_size [B0, B1]";
    }
    POSTSVD_THROW(BadCheckpoint, scale_file << ": tensor '" << name << "' has shape " << detail::shape_string(scale.shape)
                                            << " (" << numel << " scales) for weight '" << source.tensor << "' "
                                            << detail::shape_string(info.shape) << " in " << weight_file
                                            << "; expected " << expected.str()
                                            << (inverse && config.block_out == 0
                                                    ? " (config.json's quantization_config has no weight_block_size)"
                                                    : ""));
  }
  view.scales = std::move(s);
}

// ---------------------------------------------------------------- BF16 copies

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

CopyAs copy_as(const Checkpoint& checkpoint, const QuantizationConfig& config, const std::string& name) {
  const TensorInfo& info = checkpoint.info(name);
  // An MXFP4 pair (gpt-oss experts), by the names the architecture table reads it under.
  if (info.dtype == DType::U8) {
    const bool blocks = ends_with(name, "_blocks"), scales = ends_with(name, "_scales");
    const std::string stem = name.substr(0, name.size() - (blocks || scales ? 7 : 0));
    if (blocks && checkpoint.contains(stem + "_scales")) return CopyAs::MXFP4ToBF16;
    if (scales && checkpoint.contains(stem + "_blocks") && checkpoint.info(stem + "_blocks").dtype == DType::U8) {
      return CopyAs::Drop;
    }
  }
  if (config.method == QuantizationConfig::Method::None) return CopyAs::Same;
  if (is_fp8_dtype(info.dtype)) return CopyAs::BF16;
  for (const char* suffix : {".weight_scale_inv", ".weight_scale", ".input_scale", "_scale"}) {
    if (ends_with(name, suffix)) {
      // "_scale": fbgemm_fp8's scale of a fused expert tensor X (no ".weight"), named X_scale.
      const bool fused = std::strcmp(suffix, "_scale") == 0;
      const std::string weight = name.substr(0, name.size() - std::strlen(suffix)) + (fused ? "" : ".weight");
      if (checkpoint.contains(weight) && is_fp8_dtype(checkpoint.info(weight).dtype)) return CopyAs::Drop;
    }
  }
  return CopyAs::Same;
}

Matrix<float> dequantized_tensor(const Checkpoint& checkpoint, const std::string& name) {
  const TensorInfo& info = checkpoint.info(name);
  POSTSVD_CHECK(info.shape.size() == 2 || info.shape.size() == 3, BadCheckpoint,
                checkpoint.file_of(name).path() << ": tensor '" << name << "' " << detail::shape_string(info.shape)
                                                << " is FP8 but neither 2-D [out, in] nor fused experts [E, ., .]");
  MatrixSource whole;
  whole.tensor = name;
  if (info.shape.size() == 2) {
    whole.in_features = info.shape[1];
    whole.out_features = info.shape[0];
    whole.fused_out = info.shape[0];
    return to_matrix<float>(view_of(checkpoint, whole));
  }
  // Fused experts stored [E, in, out] (Llama 4; per-channel scales follow the out dim), expert by
  // expert: W_e [in, out] goes to columns e * in ... of the result, transposed into stored order.
  whole.conv1d = true;
  whole.stacked = info.shape[0];
  whole.in_features = info.shape[1];
  whole.out_features = info.shape[2];
  whole.fused_out = info.shape[2];
  Matrix<float> out(whole.out_features, whole.stacked * whole.in_features);
  for (int64_t e = 0; e < whole.stacked; ++e) {
    whole.stacked_index = e;
    const Matrix<float> part = to_matrix<float>(view_of(checkpoint, whole));
    for (int64_t r = 0; r < whole.in_features; ++r)
      for (int64_t c = 0; c < whole.out_features; ++c) out(c, e * whole.in_features + r) = part(r, c);
  }
  return out;
}

// ---------------------------------------------------------------- MXFP4

namespace {

// mxfp4_view's checks, from the headers only (nothing read): the pair's dtypes and shapes, and the view
// inside the blocks. Returns the number of values the blocks hold.
int64_t check_mxfp4_view(const Checkpoint& checkpoint, const std::string& blocks, const std::string& scales,
                         int64_t first, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  const TensorInfo& b = checkpoint.info(blocks);
  const TensorInfo& s = checkpoint.info(scales);
  const std::string& blocks_file = checkpoint.file_of(blocks).path();
  const std::string& scales_file = checkpoint.file_of(scales).path();
  POSTSVD_CHECK(b.dtype == DType::U8 && b.shape.size() >= 2 && b.shape.back() == 16, BadCheckpoint,
                blocks_file << ": tensor '" << blocks << "' is " << dtype_name(b.dtype) << " "
                            << detail::shape_string(b.shape) << "; expected MXFP4 blocks: U8 [..., G, 16]");
  const std::vector<int64_t> expected(b.shape.begin(), b.shape.end() - 1);
  POSTSVD_CHECK(s.dtype == DType::U8 && s.shape == expected, BadCheckpoint,
                scales_file << ": tensor '" << scales << "' is " << dtype_name(s.dtype) << " "
                            << detail::shape_string(s.shape) << "; expected the E8M0 scales of '" << blocks
                            << "': U8 " << detail::shape_string(expected));
  int64_t values = 32;
  for (int64_t d : expected) values *= d;
  POSTSVD_CHECK(rows > 0 && cols > 0 && first >= 0 && row_stride >= 0 && col_stride >= 0, InvalidArgument,
                "mxfp4_view: tensor '" << blocks << "': expected a positive shape, non-negative first and strides, got ["
                                       << rows << ", " << cols << "] at " << first << " with strides (" << row_stride
                                       << ", " << col_stride << ")");
  const int64_t last = first + (rows - 1) * row_stride + (cols - 1) * col_stride;
  POSTSVD_CHECK(last < values, BadCheckpoint,
                blocks_file << ": tensor '" << blocks << "' " << detail::shape_string(b.shape) << " holds " << values
                            << " values; a [" << rows << ", " << cols << "] matrix at " << first << " with strides ("
                            << row_stride << ", " << col_stride << ") reaches value " << last);
  return values;
}

}  // namespace

TensorView mxfp4_view(const Checkpoint& checkpoint, const std::string& blocks, const std::string& scales, int64_t first,
                      int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  const int64_t values = check_mxfp4_view(checkpoint, blocks, scales, first, rows, cols, row_stride, col_stride);
  const TensorInfo& b = checkpoint.info(blocks);
  const TensorInfo& s = checkpoint.info(scales);
  TensorView view;
  view.data = checkpoint.file_of(blocks).data(b);
  view.dtype = DType::U8;
  view.rows = rows;
  view.cols = cols;
  view.row_stride = row_stride;
  view.col_stride = col_stride;
  view.name = blocks;
  view.scales.scheme = QuantScheme::MXFP4;
  view.scales.data = checkpoint.file_of(scales).data(s);
  view.scales.dtype = DType::U8;
  view.scales.first = first;
  view.scales.count = values / 32;
  view.scales.name = scales;
  return view;
}

UnpackedMXFP4 unpacked_mxfp4(const Checkpoint& checkpoint, const std::string& blocks) {
  const TensorInfo& b = checkpoint.info(blocks);
  const std::string& blocks_file = checkpoint.file_of(blocks).path();
  POSTSVD_CHECK(ends_with(blocks, "_blocks") && b.shape.size() == 4, BadCheckpoint,
                blocks_file << ": tensor '" << blocks << "' is " << dtype_name(b.dtype) << " "
                            << detail::shape_string(b.shape)
                            << "; a construction writes back MXFP4 experts X_blocks U8 [E, R, G, 16] "
                               "(gpt-oss), as BF16 X [E, G * 32, R]");
  UnpackedMXFP4 out;
  out.blocks = blocks;
  out.name = blocks.substr(0, blocks.size() - 7);
  out.scales = out.name + "_scales";
  POSTSVD_CHECK(checkpoint.contains(out.scales), BadCheckpoint,
                blocks_file << ": tensor '" << blocks << "' has no E8M0 scales '" << out.scales << "' in "
                            << checkpoint.folder());
  POSTSVD_CHECK(!checkpoint.contains(out.name), BadCheckpoint,
                checkpoint.file_of(out.name).path() << ": tensor '" << out.name << "' sits beside the MXFP4 '" << blocks
                                                    << "' in " << blocks_file
                                                    << "; the BF16 copy would hold two tensors of that name");
  out.shape = {b.shape[0], b.shape[2] * 32, b.shape[1]};
  check_mxfp4_view(checkpoint, blocks, out.scales, 0, 1, 1, 1, 1);  // the pair's dtypes and shapes (headers only)
  return out;
}

Matrix<float> dequantized_mxfp4_slice(const Checkpoint& checkpoint, const UnpackedMXFP4& unpacked, int64_t index) {
  const int64_t columns = unpacked.shape[1], rows = unpacked.shape[2];  // G * 32, R
  POSTSVD_CHECK(index >= 0 && index < unpacked.shape[0], InvalidArgument,
                "dequantized_mxfp4_slice: tensor '" << unpacked.blocks << "' has " << unpacked.shape[0]
                                                    << " slices; got index " << index);
  // Element (r, c) = dequantized value (index, r, c) of [E, R, G * 32]: column-major [R, G * 32].
  return to_matrix<float>(mxfp4_view(checkpoint, unpacked.blocks, unpacked.scales, index * rows * columns, rows,
                                     columns, columns, 1));
}

std::pair<int64_t, int64_t> scale_byte_span(const TensorView& view) {
  const ViewScales& s = view.scales;
  if (s.scheme == QuantScheme::None || view.rows <= 0 || view.cols <= 0) return {0, 0};
  // Stored element indices of the view's extreme corners (strides and group skips may be negative).
  const int64_t row_reach = view.row_offset(view.rows - 1), col_reach = view.col_offset(view.cols - 1);
  const int64_t lo = s.first + std::min<int64_t>(0, row_reach) + std::min<int64_t>(0, col_reach);
  const int64_t hi = s.first + std::max<int64_t>(0, row_reach) + std::max<int64_t>(0, col_reach);
  if (s.scheme == QuantScheme::MXFP4) return {lo / 32, hi / 32 + 1};
  // Whole grid rows from the first to the last stored row the view touches.
  const int64_t first_scale = (lo / s.stored_cols / s.block_rows) * s.grid_cols;
  const int64_t end_scale = std::min(s.count, (hi / s.stored_cols / s.block_rows + 1) * s.grid_cols);
  const auto size = static_cast<int64_t>(dtype_size(s.dtype));
  return {first_scale * size, end_scale * size};
}

// ---------------------------------------------------------------- dequantization

namespace detail {

namespace {

template <class T>
bool dequantize_fp8(const TensorView& view, Matrix<T>& out) {
  const ViewScales& s = view.scales;
  POSTSVD_CHECK(is_fp8_dtype(view.dtype), InvalidArgument,
                "tensor '" << view.name << "': scaled FP8 view of dtype " << dtype_name(view.dtype)
                           << "; expected F8_E4M3 or F8_E5M2");
  POSTSVD_CHECK(s.data != nullptr && s.stored_cols > 0 && s.block_rows > 0 && s.block_cols > 0 && s.grid_cols > 0 &&
                    (s.dtype == DType::F32 || s.dtype == DType::BF16 || s.dtype == DType::F16),
                InvalidArgument, "tensor '" << view.name << "': scale '" << s.name << "' is not a valid F32/BF16/F16 block grid");
  const std::array<float, 256>& decode = view.dtype == DType::F8_E4M3 ? e4m3_table() : e5m2_table();
  const unsigned char* q = static_cast<const unsigned char*>(view.data);
  const unsigned char* scales = static_cast<const unsigned char*>(s.data);
  const ScaleKind kind = scale_kind_of(s.dtype);
  const Fp8ScaleGrid grid{s.stored_cols, s.block_rows, s.block_cols, s.grid_cols};
  bool all_finite = true;
  for (int64_t c = 0; c < view.cols; ++c) {
    T* dst = out.data() + c * view.rows;
    const int64_t col_base = view.col_offset(c);
    int64_t r = 0;
    while (r < view.rows) {
      const int64_t offset = col_base + view.row_offset(r);  // from view.data
      const int64_t j = (s.first + offset) % s.stored_cols;
      const int64_t index = grid.index_of(s.first + offset);
      POSTSVD_CHECK(index >= 0 && index < s.count, InvalidArgument,
                    tensor_label(view) << ": element (" << r << ", " << c << ") needs scale " << index << " of '"
                               << s.name << "', which holds " << s.count);
      const float scale = scale_value(scales, kind, index);
      // Along a stored row (row_stride 1), the rest of the block shares this scale; a run stays
      // within its row group (grouped views skip elements between groups).
      const int64_t run = view.row_stride == 1
                              ? std::min({view.rows - r, s.block_cols - j % s.block_cols, s.stored_cols - j,
                                          view.row_group > 0 ? view.row_group - r % view.row_group : view.rows - r})
                              : 1;
      for (int64_t k = 0; k < run; ++k) {
        const T v = dequantized<T>(decode[q[offset + k]], scale);
        all_finite &= std::isfinite(v);
        dst[r + k] = v;
      }
      r += run;
    }
  }
  return all_finite;
}

template <class T>
bool dequantize_mxfp4(const TensorView& view, Matrix<T>& out) {
  const ViewScales& s = view.scales;
  POSTSVD_CHECK(view.dtype == DType::U8 && s.data != nullptr, InvalidArgument,
                "tensor '" << view.name << "': MXFP4 view of dtype " << dtype_name(view.dtype)
                           << "; expected U8 blocks with E8M0 scales");
  const unsigned char* packed = static_cast<const unsigned char*>(view.data);
  const unsigned char* exponents = static_cast<const unsigned char*>(s.data);
  bool all_finite = true;
  for (int64_t c = 0; c < view.cols; ++c) {
    T* dst = out.data() + c * view.rows;
    const int64_t col_base = s.first + view.col_offset(c);
    for (int64_t r = 0; r < view.rows; ++r) {
      const int64_t i = col_base + view.row_offset(r);
      const uint8_t byte = packed[i >> 1];
      const uint8_t nibble = (i & 1) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0xfu);
      // Exact in float32 and float64: a 2-bit significand times a power of two.
      const T v = dequantized<T>(decode_e2m1(nibble), decode_e8m0(exponents[i >> 5]));
      all_finite &= std::isfinite(v);
      dst[r] = v;
    }
  }
  return all_finite;
}

template <class T>
bool dequantize_along_columns(const TensorView& view, Matrix<T>& out) {
  switch (view.scales.scheme) {
    case QuantScheme::ScaledFP8: return dequantize_fp8<T>(view, out);
    case QuantScheme::MXFP4: return dequantize_mxfp4<T>(view, out);
    case QuantScheme::None: break;
  }
  POSTSVD_THROW(InvalidArgument, "tensor '" << view.name << "': dequantize_into called on an unquantized view");
}

}  // namespace

template <class T>
bool dequantize_into(const TensorView& view, Matrix<T>& out) {
  if (std::abs(view.row_stride) <= std::abs(view.col_stride) || view.rows == 1 || view.cols == 1) {
    return dequantize_along_columns<T>(view, out);  // reads run along the stored rows
  }
  // A transposing view (W^T of an nn.Linear tensor): dequantize in stored order, then transpose in tiles.
  Matrix<T> stored(view.cols, view.rows);
  const bool all_finite = dequantize_along_columns<T>(view.transposed(), stored);
  constexpr int64_t kTile = 32;
  for (int64_t c0 = 0; c0 < view.cols; c0 += kTile) {
    for (int64_t r0 = 0; r0 < view.rows; r0 += kTile) {
      const int64_t c1 = std::min(view.cols, c0 + kTile), r1 = std::min(view.rows, r0 + kTile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) out(r, c) = stored(c, r);
    }
  }
  return all_finite;
}

template bool dequantize_into<float>(const TensorView&, Matrix<float>&);
template bool dequantize_into<double>(const TensorView&, Matrix<double>&);

}  // namespace detail

}  // namespace postsvd
