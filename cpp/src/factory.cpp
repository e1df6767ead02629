// The backend factory: the one place that knows both backends (cpu/, cuda/).
#include "cpu/cpu_backend.h"
#include "postsvd/backend.h"
#include "postsvd/error.h"

#ifdef POSTSVD_WITH_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace postsvd {

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device) {
    case Device::CPU:
      return cpu::make_cpu_backend(options);
    case Device::CUDA:
#ifdef POSTSVD_WITH_CUDA
      return make_cuda_backend(options);
#else
      throw NotBuiltWithCuda(
          "device 'cuda' requested, but this postsvd was built without CUDA; build the GPU variant with "
          "`POSTSVD_ENABLE_CUDA=ON pip install .` (needs the CUDA toolkit), or use device 'cpu'");
#endif
  }
  POSTSVD_THROW(InvalidArgument, "make_backend: unknown device " << static_cast<int>(options.device)
                                                                  << "; expected CPU or CUDA");
}

}  // namespace postsvd
