// Architecture mapping: config.json's model_type and the tensor names of a
// checkpoint to the (layer, kind[, expert]) projections in paper orientation
// [in, out], fused tensors split into parts (implemented in architecture.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/checkpoint.h"
#include "postsvd/types.h"

namespace postsvd {

/// Projection kinds. Their names and groups live in one table (kind_table()):
/// q, k, v, o, q_a, q_b, kv_a, kv_b_k, kv_b_v (group "attention"; the last five
/// are DeepSeek's MLA: q_a_proj, q_b_proj, kv_a_proj_with_mqa and the K and V
/// halves of kv_b_proj) and gate, up, down (group "mlp").
enum class Kind { Q, K, V, O, Gate, Up, Down, QA, QB, KVA, KVBK, KVBV };

/// One row of the kind table.
struct KindInfo {
  Kind kind;
  const char* name;   // "q", ..., "kv_b_v"
  const char* group;  // "attention" or "mlp"
};
/// Every kind, attention kinds first, in display order.
const std::vector<KindInfo>& kind_table();
const char* kind_name(Kind kind);
const char* kind_group(Kind kind);
/// Throws InvalidArgument listing the valid names.
Kind parse_kind(const std::string& name);
/// Every kind, in kind_table()'s order.
std::vector<Kind> all_kinds();

/// MatrixSource::expert of a shared expert (DeepSeek shared_experts, Llama 4
/// shared_expert, ...); routed experts are 0, 1, ...; -1 is not an expert.
constexpr int kSharedExpert = -2;
/// "shared", the routed expert's number, or "" for -1.
std::string expert_label(int expert);

/// Where one (layer, kind) matrix lives in a checkpoint. Fused tensors
/// (phi3 qkv_proj / gate_up_proj, gpt2 c_attn) give several sources that
/// share a tensor with different column sets of the paper-orientation matrix:
/// column c of the part is column fused_column(source, c) of the fused tensor,
///   out_offset + (c / out_group) * out_group_stride + (c % out_group) * out_step
/// (out_group = 0: out_offset + c * out_step). A contiguous range has
/// out_step 1; gpt-oss's interleaved gate/up columns out_step 2; DeepSeek's
/// kv_b_proj per head out_group = qk_nope (or v_head) columns every
/// qk_nope + v_head. Fused experts (Llama 4, gpt-oss) are 3-D tensors
/// [stacked, ...]: the source is slice stacked_index. MXFP4 experts (gpt-oss
/// releases) name the packed `*_blocks` tensor and its `*_scales` (mxfp4_scales):
/// they dequantize to [stacked, fused_out, in] (nn.Linear order per expert), so
/// the stored shape is [stacked, fused_out, in / 32, 16].
struct MatrixSource {
  int layer = 0;
  Kind kind = Kind::Q;
  int expert = -1;            // routed expert index, kSharedExpert, or -1 (not an expert)
  std::string tensor;         // tensor name in the checkpoint
  bool conv1d = false;        // stored [in, out] (GPT-2 Conv1D, fused experts) instead of [out, in]
  int64_t in_features = 0;    // rows of the paper-orientation part
  int64_t out_features = 0;   // cols of the part
  int64_t out_offset = 0;     // first column of the part inside the fused tensor's output dim
  int64_t fused_out = 0;      // whole output dim of the stored tensor (== out_features when not fused)
  int64_t out_step = 1;       // fused columns between consecutive columns of the part
  int64_t out_group = 0;      // columns per group (per head); 0 = one group
  int64_t out_group_stride = 0;  // fused columns between the starts of consecutive groups
  int64_t stacked = 0;        // leading dim of a 3-D tensor [stacked, ...]; 0 for 2-D
  int64_t stacked_index = 0;  // the slice of a 3-D tensor
  std::string mxfp4_scales;   // MXFP4: the E8M0 scales of `tensor` (the *_blocks); empty otherwise
};

/// True when the source reads an MXFP4 tensor pair (mxfp4_scales is set).
inline bool is_mxfp4(const MatrixSource& source) { return !source.mxfp4_scales.empty(); }

/// The fused output column of the part's column c (see MatrixSource).
int64_t fused_column(const MatrixSource& source, int64_t c);
/// The stored shape the source expects: [fused_out, in] or [in, fused_out],
/// with [stacked] in front for 3-D tensors; MXFP4 blocks [stacked, fused_out, in / 32, 16].
std::vector<int64_t> stored_shape(const MatrixSource& source);
/// "(layer L, kind[, expert E])" for messages.
std::string source_label(const MatrixSource& source);

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

/// config.json as the mappings read it: typed fields with errors naming the file
/// and the key; inside a nested text config, transformers' defaults for the keys
/// save_pretrained leaves out (architecture.cpp).
class ModelConfig;

/// What lineage (python/postsvd/lineage.py) reads of a family besides its
/// projections: the residual stream's tensors by name, and where its norms sit
/// and how they act. Model-level names are relative to the prefix the
/// projections were found under (Architecture's tensors start with it), per-layer
/// names to "<prefix><layer_container>.<N>."; norms are module names (their
/// tensors "<name>.weight", and "<name>.bias" for LayerNorm). "" where the family
/// has none. Empty (no embedding) where lineage does not read the family.
struct LineageNames {
  std::string embedding;                 // "embed_tokens.weight", gpt2 "wte.weight"
  std::vector<std::string> unembedding;  // whole names tried in order; none present: tied to the embedding
  std::string final_norm;                // the norm before the unembedding: "norm", gpt2 "ln_f"
  /// Every norm's kind: "RMSNorm" (x / rms(x) * w), "GemmaRMSNorm" (x / rms(x) * (1 + w)), "LayerNorm"
  /// ((x - mean(x)) / std(x) * w + b).
  std::string norm;
  std::string norm_before_attention;  // reads the residual stream for attention: "input_layernorm", gpt2 "ln_1";
                                      // "" where attention reads the residual stream itself (OLMo 2)
  std::string norm_before_mlp;        // "post_attention_layernorm", Gemma "pre_feedforward_layernorm", gpt2 "ln_2"
  std::string norm_after_attention;   // on attention's output before the residual add (Gemma, OLMo 2)
  std::string norm_after_mlp;         // on the MLP's output before the residual add (Gemma, OLMo 2)
  std::string q_norm;                 // norms of the queries and keys ("self_attn.q_norm"), read where present:
  std::string k_norm;                 //   per head (width head_dim) or across heads (width heads x head_dim)
  std::string q_latent_norm;          // MLA: the norm of the query latent, "self_attn.q_a_layernorm"
  std::string kv_latent_norm;         // MLA: the norm of the key/value latent, "self_attn.kv_a_layernorm"
  std::string router;                 // MoE: the router's weight in a layer with routed experts, "mlp.gate.weight"
  bool empty() const { return embedding.empty(); }
};

/// One row of the architecture table: what postsvd knows of one config.json
/// model_type. A new family is its mapping function and its row
/// (architecture.cpp), plus its test fixture.
struct ArchitectureFamily {
  std::string model_type;
  /// The projections: `config` is the text model's config (text_config below),
  /// `family` this row. Every mapped tensor must exist with the expected shape.
  Architecture (*map)(const Checkpoint& checkpoint, const ModelConfig& config, const ArchitectureFamily& family) =
      nullptr;
  /// Where the text model's config lives: "" for config.json itself, else the key of
  /// the nested config ("text_config") and the values transformers' config class
  /// assumes for the keys save_pretrained leaves out of it.
  std::string text_config;
  std::vector<std::pair<std::string, int64_t>> text_config_defaults;
  /// Name prefixes of the text model's tensors, tried in order (the first holding
  /// the mapping's first tensor wins; "" = bare names): "model.", gpt2's
  /// "transformer.", or a multimodal folder's text tower "model.language_model."
  /// and "language_model.model.".
  std::vector<std::string> prefixes;
  /// The decoder layers are <prefix><layer_container>.<N>.* ("layers", gpt2's "h"),
  /// counted by the config key layer_count_key ("num_hidden_layers", gpt2's "n_layer").
  std::string layer_container;
  std::string layer_count_key;
  /// What lineage reads besides the projections (filled for every family).
  LineageNames lineage;
  /// transformers' experts module of the family is marked is_transposed (its fused expert parameters
  /// [experts, in, out], gpt_oss). peft's target_parameters take the other fused parameters as
  /// [experts, out, in] (adapter.cpp): llama4's, stored [experts, in, out], get their LoRA factors
  /// the other way round; the families stored one tensor per expert are [experts, out, in] in memory.
  bool experts_is_transposed = false;
};

/// Every supported family, one row per model_type, sorted by model_type.
const std::vector<ArchitectureFamily>& architecture_families();

/// Maps config.json's model_type and the tensor names to sources through its
/// row of architecture_families(); any other model_type is an error listing the
/// supported ones. Warns (Architecture::warnings) about tensors of layers the
/// config does not count.
Architecture detect_architecture(const Checkpoint& checkpoint);

/// The checks a comparison runs on one model, without decomposing: what `postsvd info` reports.
struct CheckpointCheck {
  /// False when config.json could not be mapped at all (the first problem says why).
  bool mapped = false;
  /// The mapping, less the sources whose tensors are missing or misshapen (each one a problem).
  Architecture architecture;
  /// One line per problem found, in the order found, each naming its file and tensor: a mapped tensor
  /// missing or of the wrong shape or dtype, FP8 scales missing or misshapen, an MXFP4 pair that does not
  /// match, a weight that is not finite once dequantized to float32 (read_values only).
  std::vector<std::string> problems;
  /// Sources not opened because a partial Hub copy lacks their bytes (NotFetched): checked by the mapping
  /// only (present, shaped); their scales and values are checked once fetched. 0 for a local folder.
  int64_t not_fetched = 0;
};

/// Maps `checkpoint` as detect_architecture does, but lists every problem instead of throwing at the
/// first, then opens every source as a comparison would (view_of: scales, MXFP4 pairs) and, with
/// `read_values`, reads it (to_matrix: finite values). A folder with no problem compares.
CheckpointCheck check_checkpoint(const Checkpoint& checkpoint, bool read_values = true);

/// The model_type of every row of architecture_families().
std::vector<std::string> supported_model_types();

/// Checks two architectures match (model_type, layers, every source's shape and
/// dtype family); throws BadCheckpoint naming the first differing tensors.
void check_same_architecture(const Checkpoint& a, const Architecture& arch_a, const Checkpoint& b,
                             const Architecture& arch_b);

/// A strided view of `source` in paper orientation, pointing into the mapping.
TensorView view_of(const Checkpoint& checkpoint, const MatrixSource& source);

}  // namespace postsvd
