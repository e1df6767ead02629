// PEFT LoRA adapters as post models (docs/adapters.md). An adapter folder
// (adapter_config.json + adapter_model.safetensors) opened against a base model
// folder reads as the merged model W + ΔW, without a merged copy being written:
// the adapter lives in the reader. Checkpoint(adapter, base, options) holds the
// base's weights; view_of gives every projection the adapter changes a
// LowRankDelta (types.h), which to_matrix adds while it converts the view to a
// float matrix, one matrix at a time. Every backend converts through to_matrix
// (the CUDA backend on the host for such views), so the data path and the
// backend interface stay as they are.
//
// ΔW = scaling * B A, scaling = lora_alpha / r (use_rslora: lora_alpha / sqrt(r)),
// r and lora_alpha per module from rank_pattern / alpha_pattern (peft's matching);
// fan_in_fan_out (Conv1D); DoRA: W' = m / ||W + ΔW|| per output row * (W + ΔW);
// target_parameters on fused MoE expert tensors; modules_to_save that replace a
// tensor. Options that change the merge otherwise are refused, naming the option.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/types.h"

namespace postsvd {

/// How an adapter is applied.
struct AdapterOptions {
  /// The base named is the residual model that an initialization which changes the base
  /// weights left (init_lora_weights 'pissa', 'pissa_niter_N', 'olora', 'corda', 'loftq',
  /// 'lora_ga'); such adapters are refused without it, since their published base is not
  /// the one they apply to.
  bool residual_base = false;
};

/// True when `folder` holds adapter_config.json (a PEFT adapter folder).
bool is_adapter_folder(const std::string& folder);

/// The adapter config's base_model_name_or_path ("" when absent or null), read without its weights.
std::string adapter_base_name(const std::string& folder);

/// What an adapter applies to its base and what it leaves out.
struct AdapterSummary {
  std::string folder;
  std::string weights_file;              // .../adapter_model.safetensors
  std::string base_folder;               // the base it is applied to
  std::string base_model_name_or_path;   // as adapter_config.json names it ("" = none)
  std::string revision;                  // the config's "revision" ("" = none)
  int64_t r = 0;
  double lora_alpha = 0;
  bool use_rslora = false;
  bool use_dora = false;
  bool fan_in_fan_out = false;
  std::string init_lora_weights;         // "true", "false", "gaussian", "pissa", ...
  bool residual_base = false;            // the base was declared the residual model
  int64_t adapted = 0;                   // projections (sources) with a low-rank term
  int64_t replaced = 0;                  // projections whose tensor modules_to_save replaces
  std::vector<std::string> replaced_tensors;  // base tensors modules_to_save replaces (projections or not)
  std::vector<std::pair<std::string, std::string>> skipped;  // adapter tensor, why it is not compared
};

/// An adapter bound to its base: built by Checkpoint(adapter, base, options), which owns it.
class Adapter {
 public:
  /// Reads adapter_config.json and the weights and binds every tensor to the base (`base`, its
  /// architecture `arch`): a term of projections, a replacement (modules_to_save), or skipped (not a
  /// projection). BadCheckpoint / InvalidArgument naming the file and the tensor or option otherwise.
  Adapter(const std::string& folder, const Checkpoint& base, const Architecture& arch, const AdapterOptions& options);
  ~Adapter();
  Adapter(const Adapter&) = delete;
  Adapter& operator=(const Adapter&) = delete;

  const AdapterSummary& summary() const;
  /// The term of `source`; null when the adapter leaves it as it is.
  std::shared_ptr<const LowRankDelta> delta(const MatrixSource& source) const;
  /// modules_to_save: the adapter's tensor that replaces the base tensor `name`; null when none.
  const TensorInfo* replacement(const std::string& name) const;
  /// adapter_model.safetensors.
  const SafetensorsFile& file() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A post model for a base: `folder` itself, or an adapter folder applied to `base_folder`.
Checkpoint open_post_model(const std::string& folder, const std::string& base_folder,
                           const AdapterOptions& options = {});

}  // namespace postsvd
