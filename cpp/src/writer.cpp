// Writing modified copies of safetensors checkpoints (see writer.h).
#include "postsvd/writer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "detail/half.h"
#include "detail/shape_format.h"
#include "postsvd/quantization.h"

namespace postsvd {

namespace fs = std::filesystem;

uint16_t float_to_f16_rne(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {
    if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (magnitude < 0x38800000u) {
    // Below the smallest normal 2^-14: a multiple of 2^-24. The product is
    // exact and nearbyint rounds half to even in the default rounding mode.
    float scaled;
    const uint32_t m = magnitude;
    std::memcpy(&scaled, &m, sizeof(scaled));
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled * 16777216.0f)));
  }
  const uint32_t mantissa = magnitude & 0x7fffffu;
  const uint32_t exponent = (magnitude >> 23) - 127u + 15u;
  if (exponent >= 31u) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t half = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry may give inf: correct
  return static_cast<uint16_t>(sign | half);
}

namespace {

// double -> float rounding to odd: the 29 extra bits then round once more
// correctly to any format with at most 21 significand bits (bf16, f16).
float round_to_odd_float(double value) {
  if (std::isnan(value)) return static_cast<float>(value);
  float nearest = static_cast<float>(value);
  if (static_cast<double>(nearest) == value) return nearest;
  if (std::fabs(static_cast<double>(nearest)) > std::fabs(value)) nearest = std::nextafter(nearest, 0.0f);
  uint32_t bits;
  std::memcpy(&bits, &nearest, sizeof(bits));
  bits |= 1u;
  std::memcpy(&nearest, &bits, sizeof(bits));
  return nearest;
}

}  // namespace

double largest_finite(DType dtype) {
  switch (dtype) {
    case DType::F16: return 65504.0;
    case DType::BF16: return static_cast<double>(detail::bf16_to_float(0x7f7fu));
    case DType::F32: return static_cast<double>(std::numeric_limits<float>::max());
    case DType::F64: return std::numeric_limits<double>::max();
    default: return 0;
  }
}

uint16_t double_to_bf16_rne(double value) { return detail::float_to_bf16(round_to_odd_float(value)); }
uint16_t double_to_f16_rne(double value) { return float_to_f16_rne(round_to_odd_float(value)); }

namespace {

// Stores `value` in `dtype` (round to nearest even); false when the stored value is not finite
// (an infinite or NaN input, or a finite one past the dtype's range: 1e5 in F16, 3.4e38 in BF16).
template <class T>
bool store_element(unsigned char* dst, DType dtype, T value);

template <>
bool store_element<float>(unsigned char* dst, DType dtype, float value) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, &value, 4); return std::isfinite(value);
    case DType::F64: { const double d = value; std::memcpy(dst, &d, 8); return std::isfinite(d); }
    case DType::BF16: { const uint16_t h = detail::float_to_bf16(value); std::memcpy(dst, &h, 2); return (h & 0x7f80u) != 0x7f80u; }
    case DType::F16: { const uint16_t h = float_to_f16_rne(value); std::memcpy(dst, &h, 2); return (h & 0x7c00u) != 0x7c00u; }
    default: return true;
  }
}

template <>
bool store_element<double>(unsigned char* dst, DType dtype, double value) {
  switch (dtype) {
    case DType::F32: { const float f = static_cast<float>(value); std::memcpy(dst, &f, 4); return std::isfinite(f); }
    case DType::F64: std::memcpy(dst, &value, 8); return std::isfinite(value);
    case DType::BF16: { const uint16_t h = double_to_bf16_rne(value); std::memcpy(dst, &h, 2); return (h & 0x7f80u) != 0x7f80u; }
    case DType::F16: { const uint16_t h = double_to_f16_rne(value); std::memcpy(dst, &h, 2); return (h & 0x7c00u) != 0x7c00u; }
    default: return true;
  }
}

std::string errno_text() { return std::strerror(errno); }

// One output file: a writable shared mapping of the whole file.
struct OutputFile {
  std::string name;  // file name inside the output folder
  std::string path;
  int fd = -1;
  unsigned char* map = nullptr;
  uint64_t size = 0;
  uint64_t data_start = 0;  // 8 + header length
  uint64_t data_size = 0;

  void close_file() noexcept {
    if (map != nullptr) munmap(map, size);
    map = nullptr;
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// One tensor of an output file: where it lands and how it is produced (CopyAs).
struct PlacedTensor {
  const TensorInfo* input = nullptr;
  CopyAs copy = CopyAs::Same;
  std::string name;             // in the output: the input's, or X for MXFP4 blocks X_blocks
  std::vector<int64_t> shape;   // in the output
  DType dtype = DType::F32;
  uint64_t begin = 0;  // offsets in the output's data section
  uint64_t end = 0;
};

// The tensors of a copy of `file`, in the order of their offsets, FP8 weights of a quantized
// checkpoint as BF16 and their scales dropped, MXFP4 pairs as one BF16 tensor (copy_as); an
// unquantized file keeps its offsets.
std::vector<PlacedTensor> layout_of(const Checkpoint& checkpoint, const QuantizationConfig& config,
                                    const SafetensorsFile& file) {
  std::vector<PlacedTensor> placed;
  uint64_t offset = 0;
  for (const TensorInfo& info : file.tensors()) {
    PlacedTensor t;
    t.input = &checkpoint.info(info.name);  // lives as long as the checkpoint
    t.copy = copy_as(checkpoint, config, info.name);
    if (t.copy == CopyAs::Drop) continue;
    t.name = info.name;
    t.shape = info.shape;
    t.dtype = t.copy == CopyAs::Same ? info.dtype : DType::BF16;
    uint64_t bytes = t.copy == CopyAs::BF16 ? (info.end - info.begin) * 2 : info.end - info.begin;
    if (t.copy == CopyAs::MXFP4ToBF16) {
      const UnpackedMXFP4 unpacked = unpacked_mxfp4(checkpoint, info.name);  // checks the blocks/scales pair
      t.name = unpacked.name;
      t.shape = unpacked.shape;
      bytes = 2;
      for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    }
    t.begin = offset;
    t.end = offset + bytes;
    offset = t.end;
    placed.push_back(t);
  }
  return placed;
}

// The header JSON of a copy, padded with spaces to a multiple of 8.
std::string header_of(const SafetensorsFile& file, const std::vector<PlacedTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  for (const auto& item : file.metadata()) metadata[item.first] = item.second;
  metadata["format"] = "pt";
  header["__metadata__"] = metadata;
  for (const PlacedTensor& t : tensors) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {t.begin, t.end};
    header[t.name] = entry;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// `json` indented by 2 with a final newline.
void write_json(const fs::path& path, const nlohmann::ordered_json& json) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << json.dump(2) << '\n';
  file.close();
  POSTSVD_CHECK(file.good(), Error, path.string() << ": write failed");
}

void write_all(int fd, const void* data, uint64_t size, const std::string& path) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<uint64_t>(size, uint64_t{1} << 26));
    const ssize_t n = ::write(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      POSTSVD_THROW(Error, path << ": write failed: " << errno_text());
    }
    p += n;
    size -= static_cast<uint64_t>(n);
  }
}

}  // namespace

struct CheckpointWriter::Impl {
  const Checkpoint* source = nullptr;
  std::map<std::string, PlacedTensor> placed;  // tensor name -> its place in the output
  std::vector<std::string> dropped;            // FP8 weights' scales and MXFP4 X_scales, left out of the copy
  std::map<std::string, std::string> renamed;  // MXFP4 X_blocks -> X
  bool dequantizing = false;                   // quantized weights written as BF16: config.json loses quantization_config
  std::string out_folder;
  std::vector<OutputFile> files;
  std::map<std::string, std::size_t> file_of_path;  // source path -> index into files
  bool finished = false;

  ~Impl() {
    for (OutputFile& f : files) f.close_file();
  }
};

CheckpointWriter::CheckpointWriter(const Checkpoint& source, const std::string& out_folder)
    : impl_(std::make_unique<Impl>()) {
  impl_->source = &source;
  impl_->out_folder = out_folder;
  std::error_code ec;
  POSTSVD_CHECK(fs::is_directory(out_folder, ec), InvalidArgument,
                "CheckpointWriter: output folder '" << out_folder << "' does not exist or is not a folder");
  // Quantized inputs (FP8 weights, MXFP4 blocks) are written back as BF16; other checkpoints as stored.
  QuantizationConfig quantization;
  for (const std::string& name : source.tensor_names()) {
    const DType dtype = source.info(name).dtype;
    if (is_fp8_dtype(dtype) || (dtype == DType::U8 && name.size() > 7 && name.compare(name.size() - 7, 7, "_blocks") == 0)) {
      quantization = quantization_config(source);
      break;
    }
  }
  impl_->dequantizing = quantization.method != QuantizationConfig::Method::None;
  for (const std::string& source_path : source.files()) {
    const SafetensorsFile input(source_path);
    const std::vector<PlacedTensor> tensors = layout_of(source, quantization, input);
    for (const TensorInfo& info : input.tensors()) {
      if (copy_as(source, quantization, info.name) == CopyAs::Drop) impl_->dropped.push_back(info.name);
    }
    for (const PlacedTensor& t : tensors) {
      impl_->placed[t.input->name] = t;
      if (t.copy != CopyAs::Same) impl_->dequantizing = true;
      if (t.name != t.input->name) impl_->renamed[t.input->name] = t.name;
    }
    OutputFile out;
    out.name = fs::path(source_path).filename().string();
    out.path = (fs::path(out_folder) / out.name).string();
    POSTSVD_CHECK(!fs::equivalent(out_folder, fs::path(source_path).parent_path(), ec), InvalidArgument,
                  "CheckpointWriter: output folder '" << out_folder << "' is the source folder of " << source_path);
    const std::string header = header_of(input, tensors);
    out.data_start = 8 + header.size();
    out.data_size = tensors.empty() ? 0 : tensors.back().end;
    out.size = out.data_start + out.data_size;
    impl_->files.push_back(std::move(out));
    OutputFile& f = impl_->files.back();
    impl_->file_of_path[source_path] = impl_->files.size() - 1;

    f.fd = ::open(f.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    POSTSVD_CHECK(f.fd >= 0, Error, f.path << ": cannot create: " << errno_text());
    const uint64_t header_len = header.size();
    unsigned char prefix[8];
    for (int b = 0; b < 8; ++b) prefix[b] = static_cast<unsigned char>((header_len >> (8 * b)) & 0xffu);
    write_all(f.fd, prefix, 8, f.path);
    write_all(f.fd, header.data(), header.size(), f.path);
    if (f.data_size > 0) {
      for (const PlacedTensor& t : tensors) {
        if (t.copy == CopyAs::Same) {
          write_all(f.fd, source.file_of(t.input->name).data(*t.input), t.end - t.begin, f.path);
          continue;
        }
        // Dequantized in float32 (the values every comparison sees), rounded once to BF16.
        // (to_matrix refused non-finite values; a float32 value past BF16's range is refused here.)
        auto write_bf16 = [&](const Matrix<float>& w) {
          std::vector<uint16_t> bf16(static_cast<std::size_t>(w.size()));
          for (std::size_t i = 0; i < bf16.size(); ++i) {
            bf16[i] = detail::float_to_bf16(w.data()[i]);
            POSTSVD_CHECK((bf16[i] & 0x7f80u) != 0x7f80u, BadCheckpoint,
                          source.file_of(t.input->name).path()
                              << ": tensor '" << t.input->name << "' dequantizes to " << w.data()[i]
                              << ", past the range of BF16 (largest finite value " << largest_finite(DType::BF16)
                              << "), the dtype of its copy");
          }
          write_all(f.fd, bf16.data(), bf16.size() * 2, f.path);
        };
        if (t.copy == CopyAs::BF16) {
          write_bf16(dequantized_tensor(source, t.input->name));  // holds the whole FP8 tensor in float32
          continue;
        }
        // MXFP4 -> BF16 X [E, G * 32, R], one slice at a time: holds one expert's [G * 32, R] in float32
        // (twice while dequantize_into transposes it) and in BF16.
        const UnpackedMXFP4 unpacked = unpacked_mxfp4(source, t.input->name);  // the pair checked once
        for (int64_t e = 0; e < t.shape[0]; ++e) write_bf16(dequantized_mxfp4_slice(source, unpacked, e));
      }
      f.map = static_cast<unsigned char*>(mmap(nullptr, f.size, PROT_READ | PROT_WRITE, MAP_SHARED, f.fd, 0));
      if (f.map == MAP_FAILED) {
        f.map = nullptr;
        POSTSVD_THROW(Error, f.path << ": mmap for writing failed: " << errno_text());
      }
    }
  }
}

CheckpointWriter::~CheckpointWriter() = default;
CheckpointWriter::CheckpointWriter(CheckpointWriter&&) noexcept = default;
CheckpointWriter& CheckpointWriter::operator=(CheckpointWriter&&) noexcept = default;

template <class T>
void CheckpointWriter::write(const MatrixSource& source, const Matrix<T>& w, const std::string& produced_by) {
  POSTSVD_CHECK(impl_ && !impl_->finished, InvalidArgument,
                "CheckpointWriter::write: the writer is finished; tensor '" << source.tensor << "'");
  const Checkpoint& checkpoint = *impl_->source;
  const TensorInfo& info = checkpoint.info(source.tensor);
  const std::string& source_path = checkpoint.file_of(source.tensor).path();
  const auto found = impl_->file_of_path.find(source_path);
  POSTSVD_CHECK(found != impl_->file_of_path.end(), Error,
                "CheckpointWriter: no output file for " << source_path << " (tensor '" << source.tensor << "')");
  OutputFile& f = impl_->files[found->second];
  const PlacedTensor& placed = impl_->placed.at(source.tensor);
  POSTSVD_CHECK(is_float_dtype(placed.dtype), BadCheckpoint,
                source_path << ": tensor '" << source.tensor << "' has dtype " << dtype_name(info.dtype)
                            << "; expected one of " << dtype_names(is_float_dtype));
  POSTSVD_CHECK(w.rows() == source.in_features && w.cols() == source.out_features, InvalidArgument,
                "CheckpointWriter::write: tensor '" << source.tensor << "' (layer " << source.layer << ", "
                    << kind_name(source.kind) << "): expected W of shape [" << source.in_features << ", "
                    << source.out_features << "] (paper orientation [in, out]), got [" << w.rows() << ", " << w.cols()
                    << "]");
  const std::vector<int64_t> stored = stored_shape(source);
  POSTSVD_CHECK(info.shape == stored, InvalidArgument,
                source_path << ": tensor '" << source.tensor << "' has shape " << detail::shape_string(info.shape)
                            << "; its source expects " << detail::shape_string(stored)
                            << (source.conv1d ? " (Conv1D [in, out])" : " ([out, in])"));
  POSTSVD_CHECK(source.out_offset >= 0 && source.out_step >= 1 &&
                    (source.stacked == 0 || (source.stacked_index >= 0 && source.stacked_index < source.stacked)) &&
                    fused_column(source, source.out_features - 1) < source.fused_out,
                InvalidArgument,
                "CheckpointWriter::write: tensor '" << source.tensor << "': the part's " << source.out_features
                    << " columns from " << source.out_offset << " do not fit in the fused output dim "
                    << source.fused_out);
  const std::size_t element = dtype_size(placed.dtype);
  const int64_t in = source.in_features;
  unsigned char* base = f.map + f.data_start + placed.begin +
                        static_cast<std::size_t>(source.stacked_index * in * source.fused_out) * element;
  // The first element (i, o) of W that is not finite once stored; every element is stored either way
  // (the file is the caller's to remove).
  int64_t bad_i = -1, bad_o = -1;
  auto store = [&](unsigned char* dst, int64_t i, int64_t o) {
    if (!store_element<T>(dst, placed.dtype, w(i, o)) && bad_i < 0) {
      bad_i = i;
      bad_o = o;
    }
  };
  // MXFP4 blocks [E, fused_out, in / 32, 16] are written back as X [E, in, fused_out] (unpacked_mxfp4).
  const bool stored_in_out = source.conv1d || placed.copy == CopyAs::MXFP4ToBF16;
  if (!stored_in_out) {
    // [fused_out, in] row-major: row fused_column(o) is column o of W, contiguous.
    for (int64_t o = 0; o < source.out_features; ++o) {
      unsigned char* row = base + static_cast<std::size_t>(fused_column(source, o) * in) * element;
      for (int64_t i = 0; i < in; ++i) store(row + static_cast<std::size_t>(i) * element, i, o);
    }
  } else {
    // [in, fused_out] row-major: W(i, o) at i * fused_out + fused_column(o).
    std::vector<int64_t> columns(static_cast<std::size_t>(source.out_features));
    for (int64_t o = 0; o < source.out_features; ++o) columns[static_cast<std::size_t>(o)] = fused_column(source, o);
    for (int64_t i = 0; i < in; ++i) {
      unsigned char* row = base + static_cast<std::size_t>(i * source.fused_out) * element;
      for (int64_t o = 0; o < source.out_features; ++o)
        store(row + static_cast<std::size_t>(columns[static_cast<std::size_t>(o)]) * element, i, o);
    }
  }
  POSTSVD_CHECK(bad_i < 0, InvalidArgument,
                source_path << ": tensor '" << source.tensor << "' " << source_label(source) << ": the new weight W["
                            << bad_i << ", " << bad_o << "] = " << static_cast<double>(w(bad_i, bad_o))
                            << " (paper orientation [in, out]) is not finite as " << dtype_name(placed.dtype)
                            << ", the tensor's stored dtype (largest finite value " << largest_finite(placed.dtype)
                            << ")" << (produced_by.empty() ? std::string() : "; it comes from " + produced_by));
}

std::vector<std::string> CheckpointWriter::finish() {
  POSTSVD_CHECK(impl_ && !impl_->finished, InvalidArgument, "CheckpointWriter::finish: called twice");
  std::vector<std::string> names;
  uint64_t total_size = 0;
  for (OutputFile& f : impl_->files) {
    if (f.map != nullptr && msync(f.map, f.size, MS_SYNC) != 0)
      POSTSVD_THROW(Error, f.path << ": msync failed: " << errno_text());
    if (f.fd >= 0 && ::fsync(f.fd) != 0) POSTSVD_THROW(Error, f.path << ": fsync failed: " << errno_text());
    f.close_file();
    names.push_back(f.name);
    total_size += f.data_size;
  }
  const Checkpoint& checkpoint = *impl_->source;
  if (checkpoint.sharded()) {
    const fs::path source_index = fs::path(checkpoint.weights_folder()) / "model.safetensors.index.json";
    std::ifstream in(source_index);
    POSTSVD_CHECK(in.good(), BadCheckpoint, source_index.string() << ": cannot read the index");
    std::stringstream text;
    text << in.rdbuf();
    nlohmann::ordered_json index = nlohmann::ordered_json::parse(text.str());
    nlohmann::ordered_json metadata = index.contains("metadata") && index["metadata"].is_object()
                                          ? index["metadata"]
                                          : nlohmann::ordered_json::object();
    metadata["total_size"] = total_size;
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    out["metadata"] = metadata;
    // The source's names in its order, less the dropped scales, MXFP4 X_blocks renamed X.
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    const std::set<std::string> dropped(impl_->dropped.begin(), impl_->dropped.end());
    for (const auto& item : index["weight_map"].items()) {
      if (dropped.count(item.key()) != 0) continue;
      const auto renamed = impl_->renamed.find(item.key());
      weight_map[renamed == impl_->renamed.end() ? item.key() : renamed->second] = item.value();
    }
    out["weight_map"] = weight_map;
    write_json(fs::path(impl_->out_folder) / "model.safetensors.index.json", out);
    names.push_back("model.safetensors.index.json");
  }
  if (impl_->dequantizing) {
    // The copy holds BF16 weights: its config.json is the source's without quantization_config.
    nlohmann::ordered_json config = checkpoint.config();
    config.erase("quantization_config");
    write_json(fs::path(impl_->out_folder) / "config.json", config);
    names.push_back("config.json");
  }
  impl_->finished = true;
  return names;
}

template void CheckpointWriter::write<float>(const MatrixSource&, const Matrix<float>&, const std::string&);
template void CheckpointWriter::write<double>(const MatrixSource&, const Matrix<double>&, const std::string&);

}  // namespace postsvd
