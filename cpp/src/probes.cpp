// Capability probes; they exist in every build.
//   has_cuda():          built with CUDA and at least one device is visible (false in a CPU build),
//                        so tests and callers can skip GPU work on a machine without a GPU.
//   cuda_device_count(): 0 in a CPU build or where the driver / device is missing.
#include <dlfcn.h>

#include <sstream>
#include <string>

#include "cpu/cpu_backend.h"
#include "detail/lapack.h"
#include "postsvd/backend.h"

#ifdef POSTSVD_WITH_CUDA
#include "cuda/probes.h"
#endif

#ifndef POSTSVD_VERSION
#define POSTSVD_VERSION "unknown"
#endif
#ifndef POSTSVD_LAPACK_LIBRARIES
#define POSTSVD_LAPACK_LIBRARIES "unknown"
#endif

namespace postsvd {

namespace {

/// The file the LAPACK in use was loaded from (the wheel's bundled copy in
/// postsvd.libs/, or the system's), found from the address of ?gesdd.
std::string lapack_library_file() {
  Dl_info info{};
  const auto symbol = reinterpret_cast<void*>(&POSTSVD_BLAS_NAME(dgesdd_));
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "unknown file";
  return info.dli_fname;
}

}  // namespace

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
  return cuda::device_count();
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
       << ", loaded from " << lapack_library_file() << "), " << cpu::blas_threads() << " threads; CUDA: ";
#ifdef POSTSVD_WITH_CUDA
  text << cuda::build_info();
#else
  text << "not built (GPU variant: pip install postsvd-cu13, or POSTSVD_ENABLE_CUDA=ON pip install .)";
#endif
  return text.str();
}

}  // namespace postsvd
