// Architecture mapping: config.json's model_type and the tensor names of a
// checkpoint to the (layer, kind[, expert]) projections in paper orientation
// [in, out], fused tensors split into parts (implemented in architecture.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "postsvd/checkpoint.h"
#include "postsvd/types.h"

namespace postsvd {

/// Projection kinds (names "q", "k", "v", "o", "gate", "up", "down").
enum class Kind { Q, K, V, O, Gate, Up, Down };
const char* kind_name(Kind kind);
/// Throws InvalidArgument listing the valid names.
Kind parse_kind(const std::string& name);
/// Every kind, in the paper's order (the one kind list; Python reads it through the bindings).
std::vector<Kind> all_kinds();
/// The kind's group (Appendix D): "attention" for q, k, v, o (SA), "mlp" for gate, up, down (FFN).
const char* kind_group(Kind kind);

/// Where one (layer, kind) matrix lives in a checkpoint. Fused tensors
/// (phi3 qkv_proj / gate_up_proj, gpt2 c_attn) give several sources that
/// share a tensor with different column ranges of the paper-orientation matrix.
struct MatrixSource {
  int layer = 0;
  Kind kind = Kind::Q;
  int expert = -1;            // MoE expert index, -1 for dense
  std::string tensor;         // tensor name in the checkpoint
  bool conv1d = false;        // stored [in, out] (GPT-2 Conv1D) instead of [out, in]
  int64_t in_features = 0;    // rows of the paper-orientation part
  int64_t out_features = 0;   // cols of the part
  int64_t out_offset = 0;     // first column of the part inside the fused tensor's output dim
  int64_t fused_out = 0;      // whole output dim of the stored tensor (== out_features when not fused)
};

/// The projections of a checkpoint, in (layer, kind) order.
struct Architecture {
  std::string model_type;
  int num_layers = 0;
  std::vector<MatrixSource> matrices;
  /// What the mapping left out that the caller should hear about, e.g. weight
  /// layers beyond config.json's layer count (not compared). Comparator sends
  /// these through postsvd::warn; `postsvd info` prints them.
  std::vector<std::string> warnings;
};

/// Maps config.json's model_type and the tensor names to sources. Supports
/// llama, qwen2, mistral, gemma2, phi3, gpt2; any other model_type is an error
/// listing the supported ones. Every mapped tensor must exist with the expected shape.
Architecture detect_architecture(const Checkpoint& checkpoint);

/// The supported model_type strings.
std::vector<std::string> supported_model_types();

/// Checks two architectures match (model_type, layers, every source's shape and
/// dtype family); throws BadCheckpoint naming the first differing tensors.
void check_same_architecture(const Checkpoint& a, const Architecture& arch_a, const Checkpoint& b,
                             const Architecture& arch_b);

/// A strided view of `source` in paper orientation, pointing into the mapping.
TensorView view_of(const Checkpoint& checkpoint, const MatrixSource& source);

}  // namespace postsvd
