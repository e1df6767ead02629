// Reading Hugging Face checkpoints: memory-mapped safetensors files (single or
// sharded with model.safetensors.index.json), validated as strictly as the
// official safetensors library. Every error names the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

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

class Adapter;
struct AdapterOptions;

/// A Hugging Face model folder: config.json plus model.safetensors, or sharded
/// model-*.safetensors with model.safetensors.index.json. Or a PEFT adapter
/// folder applied to its base (adapter.h): the base's config and tensors, with
/// the adapter's terms on the projection views (view_of). Move-only.
class Checkpoint {
 public:
  /// Opens the folder, every shard, and checks the index against the shards. An adapter
  /// folder (adapter_config.json, no config.json) opens against the base its config names
  /// (base_model_name_or_path) when that is a local folder.
  explicit Checkpoint(const std::string& folder);
  /// A PEFT adapter folder applied to the model folder `base_folder` ("" = the config's
  /// base_model_name_or_path, when a local folder); the adapter is read and checked against
  /// the base here (adapter.h).
  Checkpoint(const std::string& adapter_folder, const std::string& base_folder, const AdapterOptions& options);
  ~Checkpoint();
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;

  /// The folder opened (an adapter's own folder for an adapter).
  const std::string& folder() const;
  /// The folder of config.json and the weights: folder(), or an adapter's base.
  const std::string& weights_folder() const;
  /// The adapter (null for a model folder).
  const Adapter* adapter() const;
  /// Raw text of config.json.
  const std::string& config_json() const;
  /// config.json, parsed once when the folder is opened (a JSON object): what every reader of the
  /// config (architecture, quantization, writer, the Python package) takes.
  const nlohmann::ordered_json& config() const;
  /// The path of config.json, for messages about its fields.
  std::string config_path() const;
  /// All tensor names, sorted. info() and file_of() of a tensor that an adapter's
  /// modules_to_save replaces give the adapter's tensor.
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

}  // namespace postsvd
