// libFuzzer: a whole safetensors file (length prefix, JSON header, data).
#include "fuzz_util.h"
#include "postsvd/checkpoint.h"
#include "postsvd/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const auto path = postsvd_fuzz::scratch() / "model.safetensors";
  postsvd_fuzz::write_file(path, data, size);
  try {
    const postsvd::SafetensorsFile file(path.string());
    for (const postsvd::TensorInfo& info : file.tensors()) {
      file.data(info);
      if (postsvd::is_float_dtype(info.dtype) && info.shape.size() == 2) {
        postsvd::TensorView view;
        view.data = file.data(info);
        view.dtype = info.dtype;
        view.rows = info.shape[0];
        view.cols = info.shape[1];
        view.row_stride = info.shape[1];
        view.col_stride = 1;
        view.name = info.name;
        postsvd::to_matrix<float>(view);
      }
    }
    for (const auto& entry : file.metadata()) (void)entry;
  } catch (const postsvd::Error&) {
  }
  return 0;
}
