// Backend factory and capability probes; they exist in every build.
//   has_cuda():          built with CUDA and at least one device is visible (false in a CPU build),
//                        so tests and callers can skip GPU work on a machine without a GPU.
//   cuda_device_count(): 0 in a CPU build or where the driver / device is missing.
#include <sstream>
#include <string>
#include <utility>

#include "cpu/cpu_backend.h"
#include "postsvd/backend.h"
#include "postsvd/error.h"

#ifdef POSTSVD_WITH_CUDA
#include "cuda/cuda_backend.h"
#endif

#ifndef POSTSVD_VERSION
#define POSTSVD_VERSION "unknown"
#endif
#ifndef POSTSVD_LAPACK_LIBRARIES
#define POSTSVD_LAPACK_LIBRARIES "unknown"
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

std::pair<Decomposition<float>, Decomposition<float>> Backend::decompose_pair_f32(const TensorView& base,
                                                                                  const TensorView& post) {
  Decomposition<float> first = decompose_f32(base);
  return {std::move(first), decompose_f32(post)};
}

std::pair<Decomposition<double>, Decomposition<double>> Backend::decompose_pair_f64(const TensorView& base,
                                                                                    const TensorView& post) {
  Decomposition<double> first = decompose_f64(base);
  return {std::move(first), decompose_f64(post)};
}

void check_compare_arguments(const std::vector<PairInput>& pairs, const MeasureOptions& options) {
  POSTSVD_CHECK(options.leading_k >= 0, InvalidArgument,
                "compare: leading_k: expected >= 0 (0 = all), got " << options.leading_k);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const TensorView& a = pairs[i].base;
    const TensorView& b = pairs[i].post;
    POSTSVD_CHECK(a.rows == b.rows && a.cols == b.cols, InvalidArgument,
                  "compare: pair " << i << ": base tensor '" << a.name << "' has shape [" << a.rows << ", " << a.cols
                                   << "] but post tensor '" << b.name << "' has shape [" << b.rows << ", " << b.cols
                                   << "]; expected equal shapes");
  }
}

bool has_cuda() { return cuda_device_count() > 0; }

bool built_with_cuda() {
#ifdef POSTSVD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef POSTSVD_WITH_CUDA
  return cuda_device_count_impl();
#else
  return 0;
#endif
}

std::string build_info() {
  std::ostringstream text;
  text << "postsvd " << POSTSVD_VERSION << "; compiler ";
#if defined(__clang__)
  text << "Clang " << __clang_major__ << "." << __clang_minor__ << "." << __clang_patchlevel__;
#elif defined(__GNUC__)
  text << "GCC " << __GNUC__ << "." << __GNUC_MINOR__ << "." << __GNUC_PATCHLEVEL__;
#else
  text << "unknown";
#endif
  text << ", C++ " << __cplusplus << "; BLAS/LAPACK: " << cpu::blas_description() << " (" << POSTSVD_LAPACK_LIBRARIES
       << "), " << cpu::blas_threads() << " threads; CUDA: ";
#ifdef POSTSVD_WITH_CUDA
  text << cuda_build_info();
#else
  text << "not built (GPU variant: POSTSVD_ENABLE_CUDA=ON pip install .)";
#endif
  return text.str();
}

}  // namespace postsvd
