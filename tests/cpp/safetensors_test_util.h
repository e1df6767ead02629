// Writing safetensors files for the C++ tests: valid files (checkpoint folders
// the reader, architecture, comparator and writer tests open) and raw, possibly
// malformed files for the reader tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "detail/half.h"
#include "postsvd/error.h"
#include "postsvd/types.h"

namespace postsvd_test {

using postsvd::DType;
using postsvd::dtype_name;

/// One tensor to write: its stored bytes, little-endian, row-major.
struct TensorBlob {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};

template <class Stored>
std::vector<unsigned char> to_bytes(const std::vector<Stored>& values) {
  std::vector<unsigned char> bytes(values.size() * sizeof(Stored));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

inline TensorBlob f32_blob(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
  return {name, DType::F32, std::move(shape), to_bytes(values)};
}

inline TensorBlob f64_blob(const std::string& name, std::vector<int64_t> shape, const std::vector<double>& values) {
  return {name, DType::F64, std::move(shape), to_bytes(values)};
}

/// Rounds to bfloat16 (nearest even).
inline TensorBlob bf16_blob(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) bits[i] = postsvd::detail::float_to_bf16(values[i]);
  return {name, DType::BF16, std::move(shape), to_bytes(bits)};
}

/// The header JSON of `blobs` laid out back to back in the given order.
inline std::string safetensors_header(const std::vector<TensorBlob>& blobs,
                                      const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorBlob& b : blobs) {
    header[b.name] = {{"dtype", dtype_name(b.dtype)},
                      {"shape", b.shape},
                      {"data_offsets", {offset, offset + b.bytes.size()}}};
    offset += b.bytes.size();
  }
  return header.dump();
}

/// Writes the 8-byte little-endian `header_length`, `header` and `data` verbatim.
inline void write_raw_safetensors(const std::string& path, const std::string& header,
                                  const std::vector<unsigned char>& data, uint64_t header_length) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) POSTSVD_THROW(InvalidArgument, path << ": cannot open for writing");
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(header_length >> (8 * i));
  out.write(reinterpret_cast<const char*>(prefix), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) POSTSVD_THROW(InvalidArgument, path << ": write failed");
}

inline void write_raw_safetensors(const std::string& path, const std::string& header,
                                  const std::vector<unsigned char>& data) {
  write_raw_safetensors(path, header, data, header.size());
}

/// Writes a valid file; the header is space-padded to a multiple of 8 bytes as
/// the official writer does, so the data section stays aligned.
inline void write_safetensors(const std::string& path, const std::vector<TensorBlob>& blobs,
                              const std::map<std::string, std::string>& metadata = {}) {
  std::string header = safetensors_header(blobs, metadata);
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<unsigned char> data;
  for (const TensorBlob& b : blobs) data.insert(data.end(), b.bytes.begin(), b.bytes.end());
  write_raw_safetensors(path, header, data);
}

/// Writes `folder`/.postsvd-fetch.json (postsvd.hub's manifest) listing each file as a partial copy of a Hub
/// file holding the byte ranges [begin, end) given (its header: [0, 8 + header length)).
inline void write_fetch_manifest(const std::string& folder,
                                 const std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>>& ranges) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& item : ranges) {
    std::ifstream in(folder + "/" + item.first, std::ios::binary | std::ios::ate);
    nlohmann::json list = nlohmann::json::array();
    for (const auto& r : item.second) list.push_back({r.first, r.second, "checksum"});
    files[item.first] = {{"size", static_cast<uint64_t>(in.tellg())}, {"complete", false}, {"ranges", list}};
  }
  std::ofstream(folder + "/.postsvd-fetch.json") << nlohmann::json{{"format", 1}, {"files", files}}.dump();
}

}  // namespace postsvd_test
