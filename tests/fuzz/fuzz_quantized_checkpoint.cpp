// libFuzzer: a quantized checkpoint, config.json and model.safetensors at once
// (input: a 2-byte little-endian length, config.json, then model.safetensors;
// seeds for block FP8, compressed-tensors, fbgemm_fp8 and MXFP4 are written by
// tests/fuzz/make_quantized_seeds.py). Runs the scale readers as compare, info
// and construct do: quantization_config, the check of every source
// (check_checkpoint), every matrix dequantized, and the BF16 copy a
// construction writes (CheckpointWriter).
#include "fuzz_util.h"
#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/error.h"
#include "postsvd/quantization.h"
#include "postsvd/writer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t config_size = std::min<std::size_t>(size - 2, data[0] | (std::size_t{data[1]} << 8));
  const auto folder = postsvd_fuzz::scratch() / "quantized";
  const auto out = postsvd_fuzz::scratch() / "copy";
  static const bool folders_made = [&] {
    std::filesystem::create_directories(folder);
    std::filesystem::create_directories(out);
    return true;
  }();
  (void)folders_made;
  postsvd_fuzz::write_file(folder / "config.json", data + 2, config_size);
  postsvd_fuzz::write_file(folder / "model.safetensors", data + 2 + config_size, size - 2 - config_size);
  try {
    const postsvd::Checkpoint checkpoint(folder.string());
    postsvd::quantization_config(checkpoint);
    postsvd::check_checkpoint(checkpoint, true);
    const postsvd::Architecture arch = postsvd::detect_architecture(checkpoint);
    for (const postsvd::MatrixSource& source : arch.matrices) {
      postsvd::source_tensors(checkpoint, source);
      postsvd::to_matrix<float>(postsvd::view_of(checkpoint, source));
    }
    postsvd::CheckpointWriter writer(checkpoint, out.string());
    writer.finish();
  } catch (const postsvd::Error&) {
  }
  return 0;
}
