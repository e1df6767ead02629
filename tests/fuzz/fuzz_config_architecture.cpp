// libFuzzer: config.json of a folder whose weights hold two layers of every
// family's projections (fuzz_util.h: every_family_tensors), so that the MoE and
// MLA mappings run: the architecture mapping, its check listing every problem
// (check_checkpoint, as postsvd info runs it) and a view of every mapped matrix.
#include "fuzz_util.h"
#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const auto folder = postsvd_fuzz::scratch() / "model";
  static const bool weights_written = [&folder] {
    std::filesystem::create_directories(folder);
    postsvd_fuzz::write_safetensors(folder / "model.safetensors", postsvd_fuzz::every_family_tensors());
    return true;
  }();
  (void)weights_written;
  postsvd_fuzz::write_file(folder / "config.json", data, size);
  try {
    const postsvd::Checkpoint checkpoint(folder.string());
    postsvd::check_checkpoint(checkpoint, true);
    const postsvd::Architecture arch = postsvd::detect_architecture(checkpoint);
    for (const postsvd::MatrixSource& source : arch.matrices) postsvd::to_matrix<float>(postsvd::view_of(checkpoint, source));
    postsvd::check_same_architecture(checkpoint, arch, checkpoint, arch);
  } catch (const postsvd::Error&) {
  }
  return 0;
}
