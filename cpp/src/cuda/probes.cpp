#include "cuda/probes.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <sstream>

namespace postsvd {
namespace cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string build_info() {
  std::ostringstream out;
  out << "CUDA " << CUDART_VERSION / 1000 << "." << (CUDART_VERSION % 1000) / 10 << " (build)";
  int runtime = 0, driver = 0;
  if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) out << ", runtime " << runtime / 1000 << "." << (runtime % 1000) / 10;
  if (cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0) out << ", driver " << driver / 1000 << "." << (driver % 1000) / 10;
  else out << ", no CUDA driver";
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS && cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    out << ", cuBLAS " << major << "." << minor << "." << patch;
  if (cusolverGetProperty(MAJOR_VERSION, &major) == CUSOLVER_STATUS_SUCCESS && cusolverGetProperty(MINOR_VERSION, &minor) == CUSOLVER_STATUS_SUCCESS &&
      cusolverGetProperty(PATCH_LEVEL, &patch) == CUSOLVER_STATUS_SUCCESS)
    out << ", cuSOLVER " << major << "." << minor << "." << patch;
  const int count = device_count();
  out << ", " << count << " device" << (count == 1 ? "" : "s");
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
      out << (d == 0 ? ": " : "; ") << "cuda:" << d << " " << prop.name << " (sm_" << prop.major << prop.minor << ", "
          << prop.totalGlobalMem / (1024 * 1024) << " MiB)";
  }
  (void)cudaGetLastError();
  return out.str();
}

}  // namespace cuda
}  // namespace postsvd
