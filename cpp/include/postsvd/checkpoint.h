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

/// Projection kinds (names "q", "k", "v", "o", "gate", "up", "down").
enum class Kind { Q, K, V, O, Gate, Up, Down };
const char* kind_name(Kind kind);
/// Throws InvalidArgument listing the valid names.
Kind parse_kind(const std::string& name);

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
