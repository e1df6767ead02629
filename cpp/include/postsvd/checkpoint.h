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
  /// config.json, parsed once when the folder is opened (a JSON object): what every reader of the
  /// config (architecture, quantization, writer, the Python package) takes.
  const nlohmann::ordered_json& config() const;
  /// The path of config.json, for messages about its fields.
  std::string config_path() const;
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

}  // namespace postsvd
