// libFuzzer: model.safetensors.index.json of a folder with two shards of a
// tiny llama (attention in one, MLP in the other).
#include "fuzz_util.h"
#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const auto folder = postsvd_fuzz::scratch() / "sharded";
  static const bool shards_written = [&folder] {
    std::filesystem::create_directories(folder);
    postsvd_fuzz::write_file(folder / "config.json", postsvd_fuzz::tiny_llama_config());
    postsvd_fuzz::write_safetensors(folder / "model-00001-of-00002.safetensors", postsvd_fuzz::tiny_llama_attention());
    postsvd_fuzz::write_safetensors(folder / "model-00002-of-00002.safetensors", postsvd_fuzz::tiny_llama_mlp());
    return true;
  }();
  (void)shards_written;
  postsvd_fuzz::write_file(folder / "model.safetensors.index.json", data, size);
  try {
    const postsvd::Checkpoint checkpoint(folder.string());
    const postsvd::Architecture arch = postsvd::detect_architecture(checkpoint);
    for (const postsvd::MatrixSource& source : arch.matrices) postsvd::to_matrix<float>(postsvd::view_of(checkpoint, source));
  } catch (const postsvd::Error&) {
  }
  return 0;
}
