// Memory-mapped safetensors files and Hugging Face checkpoint folders.
// Validation follows the official safetensors library: header length bounds,
// UTF-8 JSON object header, typed entries, offsets contiguous from 0 without
// gaps or overlaps, byte sizes equal to dtype size x shape product, and the
// data buffer ending exactly at the last tensor.
#include "postsvd/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "detail/json_guard.h"
#include "detail/mapped_file.h"
#include "detail/shape_format.h"
#include "postsvd/adapter.h"
#include "postsvd/architecture.h"
#include "postsvd/limits.h"

namespace postsvd {

namespace fs = std::filesystem;

namespace {

using detail::json_excerpt;
using limits::kMaxHeaderBytes;

// Returns the offset of the first byte that breaks UTF-8, or npos when valid.
std::size_t first_invalid_utf8(const unsigned char* s, std::size_t n) {
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return std::string::npos;
}

const char* json_type(const nlohmann::json& v) { return v.type_name(); }

// A JSON value that is a non-negative integer representable as uint64.
bool as_u64(const nlohmann::json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- partial copies of Hub files

// A folder that postsvd.hub filled with only some byte ranges of a repo's shards holds this
// manifest (written by python/postsvd/_hub_cache.py): for each partial file its full size and
// the [begin, end) byte ranges present; a file it lists as complete, or does not list, is whole.
constexpr const char* kFetchManifest = ".postsvd-fetch.json";
constexpr uint64_t kMaxFetchManifestBytes = 256u << 20;

using ByteRanges = std::vector<std::pair<uint64_t, uint64_t>>;  // sorted, merged [begin, end)

// The ranges present in `path` when its folder's manifest lists it as partial; false when the
// file is whole. Checks the file's size against the manifest's.
bool fetched_ranges(const std::string& path, uint64_t file_size, ByteRanges& present) {
  const fs::path file(path);
  const fs::path manifest = file.parent_path() / kFetchManifest;
  std::error_code ec;
  if (!fs::exists(manifest, ec)) return false;
  const std::string where = manifest.string();
  const std::string text = detail::read_bounded_text(where, kMaxFetchManifestBytes, "fetch manifest");
  const auto root = detail::parse_guarded<nlohmann::json>(text.data(), text.size(), where);
  const std::string name = file.filename().string();
  if (!root.is_object() || !root.contains("files") || !root["files"].is_object()) {
    POSTSVD_THROW(BadCheckpoint, where << ": expected a JSON object with a \"files\" object");
  }
  if (!root["files"].contains(name)) return false;
  const auto& entry = root["files"][name];
  if (!entry.is_object() || !entry.contains("complete") || !entry["complete"].is_boolean()) {
    POSTSVD_THROW(BadCheckpoint, where << ": entry of '" << name << "' has no boolean \"complete\"");
  }
  if (entry["complete"].get<bool>()) return false;
  uint64_t size = 0;
  if (!entry.contains("size") || !as_u64(entry["size"], size) || size != file_size) {
    POSTSVD_THROW(BadCheckpoint, path << ": a partial copy of " << file_size << " bytes, but " << where
                                      << " gives its size as " << (entry.contains("size") ? json_excerpt(entry["size"]) : "nothing")
                                      << "; fetch it again (postsvd cache clear)");
  }
  const nlohmann::json none = nlohmann::json::array();
  const auto& ranges = entry.contains("ranges") ? entry["ranges"] : none;
  if (!ranges.is_array()) POSTSVD_THROW(BadCheckpoint, where << ": \"ranges\" of '" << name << "' is not an array");
  for (const auto& r : ranges) {
    uint64_t begin = 0, end = 0;
    if (!r.is_array() || r.size() < 2 || !as_u64(r[0], begin) || !as_u64(r[1], end) || end < begin || end > size) {
      POSTSVD_THROW(BadCheckpoint, where << ": range " << json_excerpt(r) << " of '" << name
                                         << "'; expected [begin, end, ...] within the file's " << size << " bytes");
    }
    present.emplace_back(begin, end);
  }
  std::sort(present.begin(), present.end());
  ByteRanges merged;
  for (const auto& r : present) {
    if (!merged.empty() && r.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  present = std::move(merged);
  return true;
}

// Whether [begin, end) lies inside one merged range of `present`.
bool covered(const ByteRanges& present, uint64_t begin, uint64_t end) {
  if (begin == end) return true;
  auto it = std::upper_bound(present.begin(), present.end(), std::make_pair(begin, std::numeric_limits<uint64_t>::max()));
  if (it == present.begin()) return false;
  --it;
  return it->first <= begin && end <= it->second;
}

}  // namespace

// ---------------------------------------------------------------- SafetensorsFile

struct SafetensorsFile::Impl {
  std::string path;
  detail::MappedFile mapping;
  uint64_t size = 0;  // the file's size, fixed (a partial copy has its full size)
  uint64_t header_size = 0;
  std::vector<TensorInfo> tensors;  // sorted by offsets
  std::unordered_map<std::string, std::size_t> by_name;
  std::map<std::string, std::string> metadata;
  // A partial copy of a Hub file (opened so): only `present` may be read. postsvd.hub fetches more ranges
  // while the file is open (the next matrices while the current ones decompose), so a tensor not in
  // `present` makes the reader read the manifest again (refresh) before it refuses. Under `mutex`.
  bool opened_partial = false;
  bool partial = false;
  ByteRanges present;
  std::vector<detail::MappedFile> retired;  // mappings replaced by refresh; pointers into them stay valid
  std::mutex mutex;

  const unsigned char* data_section() const { return mapping.data() + 8 + header_size; }
  uint64_t data_size() const { return size - 8 - header_size; }

  void parse_entry(const std::string& name, const nlohmann::json& entry);
  void refresh();
};

// The manifest as it is now: ranges fetched since the file was opened, or the file now complete (a
// whole-file fetch replaced the partial copy by a link to the complete file: mapped anew, the old mapping
// kept alive for pointers handed out before).
void SafetensorsFile::Impl::refresh() {
  ByteRanges now;
  if (fetched_ranges(path, size, now)) {
    present = std::move(now);
    return;
  }
  detail::MappedFile whole(path);
  const uint64_t header_end = 8 + header_size;
  if (whole.size() != size || std::memcmp(whole.data(), mapping.data(), static_cast<std::size_t>(header_end)) != 0) {
    POSTSVD_THROW(BadCheckpoint, path << ": the file was replaced by another one (size " << whole.size()
                                      << ", was " << size << ") since it was opened; open the checkpoint again");
  }
  retired.push_back(std::move(mapping));
  mapping = std::move(whole);
  partial = false;
  present.clear();
}

void SafetensorsFile::Impl::parse_entry(const std::string& name, const nlohmann::json& entry) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!entry.is_object()) {
    POSTSVD_THROW(BadCheckpoint, where << ": header entry is a JSON " << json_type(entry)
                                       << "; expected an object with \"dtype\", \"shape\" and \"data_offsets\"");
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      POSTSVD_THROW(BadCheckpoint, where << ": header entry is missing the field \"" << field << "\"");
    }
  }
  TensorInfo info;
  info.name = name;
  const auto& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    POSTSVD_THROW(BadCheckpoint, where << ": \"dtype\" is a JSON " << json_type(dtype) << "; expected a string");
  }
  info.dtype = parse_dtype(dtype.get<std::string>(), where);

  const auto& shape = entry["shape"];
  if (!shape.is_array()) {
    POSTSVD_THROW(BadCheckpoint, where << ": \"shape\" is a JSON " << json_type(shape)
                                       << "; expected an array of non-negative integers");
  }
  if (shape.size() > limits::kMaxTensorRank) {
    POSTSVD_THROW(BadCheckpoint, where << ": shape has " << shape.size() << " dimensions, over the limit of "
                                       << limits::kMaxTensorRank);
  }
  uint64_t elements = 1;
  bool overflow = false;
  for (const auto& dim : shape) {
    uint64_t d = 0;
    if (!as_u64(dim, d)) {
      POSTSVD_THROW(BadCheckpoint, where << ": shape " << json_excerpt(shape) << " has the entry " << json_excerpt(dim)
                                         << "; expected non-negative integers");
    }
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
    if (__builtin_mul_overflow(elements, d, &elements)) overflow = true;
    info.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(dtype_size(info.dtype)), &nbytes)) {
    POSTSVD_THROW(BadCheckpoint, where << ": shape " << json_excerpt(shape) << " with dtype " << dtype_name(info.dtype)
                                       << " overflows a 64-bit byte count");
  }

  const auto& offsets = entry["data_offsets"];
  uint64_t begin = 0;
  uint64_t end = 0;
  if (!offsets.is_array() || offsets.size() != 2 || !as_u64(offsets[0], begin) || !as_u64(offsets[1], end)) {
    POSTSVD_THROW(BadCheckpoint, where << ": \"data_offsets\" is " << json_excerpt(offsets)
                                       << "; expected [begin, end] with non-negative integers");
  }
  info.begin = begin;
  info.end = end;
  if (end >= begin && end - begin != nbytes) {
    POSTSVD_THROW(BadCheckpoint, where << ": data_offsets [" << begin << ", " << end << "] span " << (end - begin)
                                       << " bytes; expected " << nbytes << " (dtype " << dtype_name(info.dtype)
                                       << " of " << dtype_size(info.dtype) << " bytes x shape "
                                       << detail::shape_string(info.shape) << ")");
  }
  tensors.push_back(std::move(info));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.path = path;
  im.mapping = detail::MappedFile(path);
  const uint64_t file_size = im.mapping.size();
  im.size = file_size;
  if (file_size < 8) {
    POSTSVD_THROW(BadCheckpoint, path << ": file is " << file_size
                                      << " bytes, shorter than the 8-byte header length; not a safetensors file");
  }
  im.partial = fetched_ranges(path, file_size, im.present);
  im.opened_partial = im.partial;
  if (im.partial && !covered(im.present, 0, 8)) {
    POSTSVD_THROW(BadCheckpoint, path << ": a partial copy of a Hub file whose header was not fetched (see "
                                      << kFetchManifest << " beside it)");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | im.mapping.data()[i];  // little-endian u64
  if (n > kMaxHeaderBytes) {
    POSTSVD_THROW(BadCheckpoint, path << ": header length " << n << " exceeds the limit of " << kMaxHeaderBytes
                                      << " bytes (header too large)");
  }
  if (n > file_size - 8) {
    POSTSVD_THROW(BadCheckpoint, path << ": header length " << n << " is larger than the " << (file_size - 8)
                                      << " bytes that follow the length prefix (file size " << file_size << ")");
  }
  if (im.partial && !covered(im.present, 0, 8 + n)) {
    POSTSVD_THROW(BadCheckpoint, path << ": a partial copy of a Hub file whose header was not fetched (see "
                                      << kFetchManifest << " beside it)");
  }
  im.header_size = n;
  const unsigned char* header = im.mapping.data() + 8;
  const std::size_t bad = first_invalid_utf8(header, static_cast<std::size_t>(n));
  if (bad != std::string::npos) {
    POSTSVD_THROW(BadCheckpoint, path << ": header is not valid UTF-8 (byte " << bad << " of the header)");
  }
  if (n == 0 || header[0] != '{') {
    POSTSVD_THROW(BadCheckpoint, path << ": header does not start with '{'; expected a JSON object");
  }
  // Bounds before the parse builds anything: nesting, tensor count, values.
  const char* header_text = reinterpret_cast<const char*>(header);
  const detail::JsonScan scan = detail::scan_json(header_text, static_cast<std::size_t>(n), limits::kMaxJsonDepth);
  if (scan.root_members > limits::kMaxTensorsPerFile + 1) {  // + 1: "__metadata__"
    POSTSVD_THROW(BadCheckpoint, path << ": header lists " << scan.root_members << " entries, over the limit of "
                                      << limits::kMaxTensorsPerFile << " tensors per file");
  }
  if (scan.values > limits::kMaxHeaderJsonValues) {
    POSTSVD_THROW(BadCheckpoint, path << ": header holds over " << limits::kMaxHeaderJsonValues
                                      << " JSON values (shapes, offsets, metadata); a valid header has about 10 per "
                                         "tensor");
  }
  const nlohmann::json root =
      detail::parse_guarded<nlohmann::json>(header_text, static_cast<std::size_t>(n), path + ": header", &scan);
  if (!root.is_object()) {
    POSTSVD_THROW(BadCheckpoint, path << ": header is a JSON " << json_type(root) << "; expected an object");
  }
  for (const auto& item : root.items()) {
    if (item.key() == "__metadata__") {
      const auto& meta = item.value();
      if (meta.is_null()) continue;
      if (!meta.is_object()) {
        POSTSVD_THROW(BadCheckpoint, path << ": \"__metadata__\" is a JSON " << json_type(meta)
                                          << "; expected an object mapping strings to strings");
      }
      for (const auto& kv : meta.items()) {
        if (!kv.value().is_string()) {
          POSTSVD_THROW(BadCheckpoint, path << ": \"__metadata__\" value of key '" << kv.key() << "' is a JSON "
                                            << json_type(kv.value()) << " (" << json_excerpt(kv.value())
                                            << "); expected a string");
        }
        im.metadata[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    im.parse_entry(item.key(), item.value());
  }

  // Contiguity: sorted by offsets, each tensor starts where the previous one ended.
  std::sort(im.tensors.begin(), im.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : im.tensors) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.end < t.begin) {
      POSTSVD_THROW(BadCheckpoint, where << ": data_offsets [" << t.begin << ", " << t.end
                                         << "] end before they begin");
    }
    if (t.begin != expected_begin) {
      if (previous == nullptr) {
        POSTSVD_THROW(BadCheckpoint, where << ": data_offsets [" << t.begin << ", " << t.end
                                           << "] do not start at 0; the first tensor's data must begin at offset 0");
      }
      if (t.begin < expected_begin) {
        POSTSVD_THROW(BadCheckpoint, where << ": data_offsets [" << t.begin << ", " << t.end
                                           << "] overlap tensor '" << previous->name << "' [" << previous->begin
                                           << ", " << previous->end << "]");
      }
      POSTSVD_THROW(BadCheckpoint, where << ": data_offsets [" << t.begin << ", " << t.end << "] leave a gap of "
                                         << (t.begin - expected_begin) << " bytes after tensor '" << previous->name
                                         << "' [" << previous->begin << ", " << previous->end
                                         << "]; expected offsets contiguous");
    }
    expected_begin = t.end;
    previous = &t;
  }
  const uint64_t buffer = im.data_size();
  if (expected_begin != buffer) {
    const std::string last = previous ? " (last tensor '" + previous->name + "')" : std::string(" (no tensors)");
    if (expected_begin > buffer) {
      POSTSVD_THROW(BadCheckpoint, path << ": truncated: the tensors need " << expected_begin
                                        << " bytes of data but the file holds " << buffer << last);
    }
    POSTSVD_THROW(BadCheckpoint, path << ": " << (buffer - expected_begin) << " trailing bytes: the data buffer is "
                                      << buffer << " bytes but the tensors end at " << expected_begin << last);
  }
  for (std::size_t i = 0; i < im.tensors.size(); ++i) im.by_name.emplace(im.tensors[i].name, i);
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return impl_->tensors; }

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }

const void* SafetensorsFile::data(const TensorInfo& info) const {
  if (info.end > impl_->data_size() || info.begin > info.end) {
    POSTSVD_THROW(InvalidArgument, impl_->path << ": tensor '" << info.name << "': offsets [" << info.begin << ", "
                                               << info.end << "] lie outside this file's data buffer");
  }
  if (!impl_->opened_partial) return impl_->data_section() + info.begin;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  const uint64_t start = 8 + impl_->header_size;
  if (impl_->partial && !covered(impl_->present, start + info.begin, start + info.end)) impl_->refresh();
  if (impl_->partial && !covered(impl_->present, start + info.begin, start + info.end)) {
    POSTSVD_THROW(NotFetched, impl_->path << ": tensor '" << info.name << "' was not fetched: this file is a "
                                             << "partial copy of a Hub file and bytes [" << start + info.begin << ", "
                                             << start + info.end << ") are not in " << kFetchManifest
                                             << "; fetch the tensor first (postsvd.hub.fetch)");
  }
  return impl_->data_section() + info.begin;
}

uint64_t SafetensorsFile::header_size() const { return impl_->header_size; }
uint64_t SafetensorsFile::file_size() const { return impl_->size; }

// ---------------------------------------------------------------- Checkpoint

namespace {

// Whether `path` names anything at all (a dangling link counts), and when it is
// there but not a readable regular file, BadCheckpoint saying what it is instead:
// a folder, a dangling link, a link loop, a device. Without this a model.safetensors
// that is a folder read as "no model.safetensors".
bool present_as_file(const fs::path& path, const char* what) {
  std::error_code ec;
  const fs::file_status link = fs::symlink_status(path, ec);
  if (ec || !fs::exists(link)) return false;
  const fs::file_status target = fs::status(path, ec);
  if (fs::is_regular_file(target)) return true;
  if (fs::is_symlink(link)) {
    std::error_code read_ec;
    const fs::path to = fs::read_symlink(path, read_ec);
    const std::string arrow = read_ec ? std::string() : " -> '" + to.string() + "'";
    if (ec == std::errc::too_many_symbolic_link_levels) {
      POSTSVD_THROW(BadCheckpoint, path.string() << arrow << ": the " << what
                                                 << " is a symbolic link loop; expected a file");
    }
    if (ec || !fs::exists(target)) {
      POSTSVD_THROW(BadCheckpoint, path.string() << arrow << ": the " << what
                                                 << " is a dangling symbolic link (its target does not exist)");
    }
  }
  if (fs::is_directory(target)) {
    POSTSVD_THROW(BadCheckpoint, path.string() << ": the " << what << " is a directory; expected a file");
  }
  POSTSVD_THROW(BadCheckpoint, path.string() << ": the " << what
                                             << " is not a regular file (a device, pipe or socket)");
}

}  // namespace

struct Checkpoint::Impl {
  std::string folder;
  std::string weights_folder;
  std::unique_ptr<Adapter> adapter;  // an adapter folder's; null for a model folder
  std::string config_text;
  nlohmann::ordered_json config;  // config_text parsed: a JSON object
  bool sharded = false;
  std::vector<SafetensorsFile> files;
  // name -> (file index, entry); entries live in the files' heap-allocated Impl.
  std::map<std::string, std::pair<std::size_t, const TensorInfo*>> tensors;
};

Checkpoint::Checkpoint(const std::string& adapter_folder, const std::string& base_folder,
                       const AdapterOptions& options) {
  std::string base = base_folder.empty() ? adapter_base_name(adapter_folder) : base_folder;
  std::error_code ec;
  if (base_folder.empty() && (base.empty() || !fs::is_directory(base, ec))) {
    POSTSVD_THROW(BadCheckpoint, adapter_folder << ": a PEFT adapter whose adapter_config.json names "
                                                << (base.empty() ? std::string("no base (base_model_name_or_path)")
                                                                 : "the base '" + base + "', not a local folder")
                                                << "; name its base model folder");
  }
  if (is_adapter_folder(base) && !fs::exists(fs::path(base) / "config.json", ec)) {
    POSTSVD_THROW(BadCheckpoint, adapter_folder << ": the base '" << base << "' is itself a PEFT adapter folder; "
                                                << "name the base model folder it applies to");
  }
  Checkpoint weights(base);
  impl_ = std::move(weights.impl_);
  impl_->folder = adapter_folder;
  const Architecture arch = detect_architecture(*this);
  impl_->adapter = std::make_unique<Adapter>(adapter_folder, *this, arch, options);
}

Checkpoint::Checkpoint(const std::string& folder) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.folder = folder;
  im.weights_folder = folder;
  const fs::path dir(folder);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    POSTSVD_THROW(BadCheckpoint, folder << ": checkpoint folder does not exist or is not a directory");
  }
  const fs::path config = dir / "config.json";
  if (!present_as_file(config, "config.json") && is_adapter_folder(folder)) {
    *this = Checkpoint(folder, "", AdapterOptions{});
    return;
  }
  if (!present_as_file(config, "config.json")) {
    POSTSVD_THROW(BadCheckpoint, folder << ": no config.json; expected a Hugging Face model folder with config.json");
  }
  im.config_text = detail::read_bounded_text(config.string(), limits::kMaxConfigBytes, "config.json");
  im.config =
      detail::parse_guarded<nlohmann::ordered_json>(im.config_text.data(), im.config_text.size(), config.string());
  if (!im.config.is_object()) {
    POSTSVD_THROW(BadCheckpoint, config.string() << ": is a JSON " << im.config.type_name() << "; expected an object");
  }

  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (present_as_file(single, "weights file")) {
    // Same preference as transformers: the single file wins over an index.
    im.files.emplace_back(single.string());
    for (const TensorInfo& t : im.files[0].tensors()) im.tensors.emplace(t.name, std::make_pair(std::size_t{0}, &t));
    return;
  }
  if (!present_as_file(index, "shard index")) {
    std::vector<std::string> others;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".safetensors") others.push_back(entry.path().filename().string());
    }
    std::sort(others.begin(), others.end());
    std::ostringstream found;
    for (std::size_t i = 0; i < others.size(); ++i) found << (i ? ", " : "") << others[i];
    if (!others.empty()) {
      POSTSVD_THROW(BadCheckpoint, folder << ": has " << others.size() << " safetensors file(s) (" << found.str()
                                          << ") but neither model.safetensors nor model.safetensors.index.json; "
                                             "expected model.safetensors, or shards listed in "
                                             "model.safetensors.index.json");
    }
    POSTSVD_THROW(BadCheckpoint, folder << ": no model.safetensors and no model.safetensors.index.json; expected "
                                           "safetensors weights");
  }

  im.sharded = true;
  const std::string index_path = index.string();
  const std::string index_text = detail::read_bounded_text(index_path, limits::kMaxIndexBytes, "shard index");
  const auto index_json =
      detail::parse_guarded<nlohmann::ordered_json>(index_text.data(), index_text.size(), index_path);
  if (!index_json.is_object() || !index_json.contains("weight_map") || !index_json.at("weight_map").is_object()) {
    POSTSVD_THROW(BadCheckpoint, index_path << ": expected a JSON object with a \"weight_map\" object "
                                               "(tensor name -> shard file name)");
  }
  const auto& weight_map = index_json.at("weight_map");
  if (weight_map.size() > limits::kMaxTensorsPerCheckpoint) {
    POSTSVD_THROW(BadCheckpoint, index_path << ": weight_map lists " << weight_map.size()
                                            << " tensors, over the limit of " << limits::kMaxTensorsPerCheckpoint);
  }
  std::vector<std::string> shard_names;                       // order of first appearance
  std::map<std::string, std::string> first_tensor_of_shard;   // for error messages
  for (const auto& item : weight_map.items()) {
    if (!item.value().is_string()) {
      POSTSVD_THROW(BadCheckpoint, index_path << ": weight_map entry for tensor '" << item.key() << "' is a JSON "
                                              << item.value().type_name() << "; expected a shard file name");
    }
    const std::string shard = item.value().get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos) {
      POSTSVD_THROW(BadCheckpoint, index_path << ": weight_map maps tensor '" << item.key() << "' to '" << shard
                                              << "'; expected a file name inside the folder");
    }
    if (first_tensor_of_shard.emplace(shard, item.key()).second) shard_names.push_back(shard);
  }
  for (const std::string& shard : shard_names) {
    const fs::path shard_path = dir / shard;
    if (!present_as_file(shard_path, "shard")) {
      POSTSVD_THROW(BadCheckpoint, index_path << ": shard '" << shard_path.string() << "' does not exist (the index maps "
                                              << "tensor '" << first_tensor_of_shard[shard] << "' to it)");
    }
  }
  std::map<std::string, std::size_t> shard_index;
  for (const std::string& shard : shard_names) {
    shard_index[shard] = im.files.size();
    im.files.emplace_back((dir / shard).string());
  }
  uint64_t total_tensors = 0;
  for (const SafetensorsFile& file : im.files) total_tensors += file.tensors().size();
  if (total_tensors > limits::kMaxTensorsPerCheckpoint) {
    POSTSVD_THROW(BadCheckpoint, folder << ": the shards hold " << total_tensors << " tensors, over the limit of "
                                        << limits::kMaxTensorsPerCheckpoint);
  }
  for (std::size_t f = 0; f < im.files.size(); ++f) {
    for (const TensorInfo& t : im.files[f].tensors()) {
      const auto inserted = im.tensors.emplace(t.name, std::make_pair(f, &t));
      if (!inserted.second) {
        POSTSVD_THROW(BadCheckpoint, folder << ": duplicate tensor '" << t.name << "' in shards '"
                                            << im.files[inserted.first->second.first].path() << "' and '"
                                            << im.files[f].path() << "'");
      }
    }
  }
  for (const auto& item : weight_map.items()) {
    const std::string& name = item.key();
    const std::size_t f = shard_index[item.value().get<std::string>()];
    if (im.files[f].find(name) == nullptr) {
      POSTSVD_THROW(BadCheckpoint, index_path << ": tensor '" << name << "' is mapped to shard '"
                                              << im.files[f].path() << "' but that shard has no such tensor");
    }
  }
  for (const auto& entry : im.tensors) {
    if (!weight_map.contains(entry.first)) {
      POSTSVD_THROW(BadCheckpoint, im.files[entry.second.first].path()
                                       << ": tensor '" << entry.first << "' is not listed in " << index_path);
    }
  }
}

Checkpoint::~Checkpoint() = default;
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;

const std::string& Checkpoint::folder() const { return impl_->folder; }
const std::string& Checkpoint::weights_folder() const { return impl_->weights_folder; }
const Adapter* Checkpoint::adapter() const { return impl_->adapter.get(); }
const std::string& Checkpoint::config_json() const { return impl_->config_text; }
const nlohmann::ordered_json& Checkpoint::config() const { return impl_->config; }
std::string Checkpoint::config_path() const { return impl_->weights_folder + "/config.json"; }

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(impl_->tensors.size());
  for (const auto& entry : impl_->tensors) names.push_back(entry.first);
  return names;
}

bool Checkpoint::contains(const std::string& name) const { return impl_->tensors.count(name) != 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  if (impl_->adapter) {
    if (const TensorInfo* replaced = impl_->adapter->replacement(name)) return *replaced;
  }
  const auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end()) {
    POSTSVD_THROW(BadCheckpoint, impl_->folder << ": no tensor '" << name << "' in this checkpoint");
  }
  return *it->second.second;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  if (impl_->adapter && impl_->adapter->replacement(name) != nullptr) return impl_->adapter->file();
  const auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end()) {
    POSTSVD_THROW(BadCheckpoint, impl_->folder << ": no tensor '" << name << "' in this checkpoint");
  }
  return impl_->files[it->second.first];
}

std::vector<std::string> Checkpoint::files() const {
  std::vector<std::string> paths;
  for (const auto& f : impl_->files) paths.push_back(f.path());
  return paths;
}

bool Checkpoint::sharded() const { return impl_->sharded; }

}  // namespace postsvd
