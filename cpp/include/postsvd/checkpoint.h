// Reading Hugging Face checkpoints: memory-mapped safetensors files (single or
// sharded with model.safetensors.index.json), validated as strictly as the
// official safetensors library. Every error names the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "postsvd/types.h"

namespace postsvd {

/// One tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;
};

/// A validated, memory-mapped safetensors file. Move-only.
class SafetensorsFile {
 public:
  /// Opens and validates `path`; throws BadCheckpoint naming the file (and tensor).
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const;
  /// Entries in the order of their offsets.
  const std::vector<TensorInfo>& tensors() const;
  /// nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  /// The optional "__metadata__" map.
  const std::map<std::string, std::string>& metadata() const;
  /// Pointer to the first byte of the tensor's data (inside the mapping).
  const void* data(const TensorInfo& info) const;
  /// Size of the header (the 8-byte length prefix excluded) and of the file.
  uint64_t header_size() const;
  uint64_t file_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A Hugging Face model folder: config.json plus model.safetensors, or sharded
/// model-*.safetensors with model.safetensors.index.json. Move-only.
class Checkpoint {
 public:
  /// Opens the folder, every shard, and checks the index against the shards.
  explicit Checkpoint(const std::string& folder);
  ~Checkpoint();
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;

  const std::string& folder() const;
  /// Raw text of config.json.
  const std::string& config_json() const;
  /// All tensor names, sorted.
  std::vector<std::string> tensor_names() const;
  bool contains(const std::string& name) const;
  /// Throws BadCheckpoint naming the folder when absent.
  const TensorInfo& info(const std::string& name) const;
  /// The shard holding `name`.
  const SafetensorsFile& file_of(const std::string& name) const;
  /// Paths of the safetensors files, in index order.
  std::vector<std::string> files() const;
  /// True when the folder has model.safetensors.index.json.
  bool sharded() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

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
/// [stacked, ...]: the source is slice stacked_index.
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
};

/// The fused output column of the part's column c (see MatrixSource).
int64_t fused_column(const MatrixSource& source, int64_t c);
/// The stored shape the source expects: [fused_out, in] or [in, fused_out],
/// with [stacked] in front for 3-D tensors.
std::vector<int64_t> stored_shape(const MatrixSource& source);
/// "(layer L, kind[, expert E])" for messages.
std::string source_label(const MatrixSource& source);

/// The projections of a checkpoint, in (layer, kind) order.
struct Architecture {
  std::string model_type;
  int num_layers = 0;
  std::vector<MatrixSource> matrices;
};

/// Maps config.json's model_type and the tensor names to sources (the types of
/// supported_model_types()); any other model_type is an error listing the
/// supported ones. Every mapped tensor must exist with the expected shape.
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
