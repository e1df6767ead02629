// Status checks of the CUDA backend. The *_TRY macros throw BackendError with
// the failed call's text, the status name, file and line. The *_REPORT macros
// are their non-throwing variants for destructors and cleanup: they print the
// same to stderr and go on (silent for cudaErrorCudartUnloading: at process
// exit the driver frees everything). The status-name tables are in check.cpp.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

const char* cublas_status_name(cublasStatus_t status);
const char* cusolver_status_name(cusolverStatus_t status);

/// Prints "postsvd: <library> error <status> in '<call>' at <file>:<line> (not thrown: ...)" to stderr.
void report_failure(const char* library, const char* status, const char* call, const char* file, int line) noexcept;

}  // namespace cuda
}  // namespace postsvd

#define POSTSVD_CUDA_TRY(call)                                                                        \
  do {                                                                                                \
    const cudaError_t postsvd_status_ = (call);                                                       \
    if (postsvd_status_ != cudaSuccess)                                                               \
      POSTSVD_THROW(BackendError, "CUDA error " << cudaGetErrorName(postsvd_status_) << " ("          \
                                                << cudaGetErrorString(postsvd_status_) << ") in '"    \
                                                << #call << "' at " << __FILE__ << ":" << __LINE__);  \
  } while (0)

#define POSTSVD_CUBLAS_TRY(call)                                                                      \
  do {                                                                                                \
    const cublasStatus_t postsvd_status_ = (call);                                                    \
    if (postsvd_status_ != CUBLAS_STATUS_SUCCESS)                                                     \
      POSTSVD_THROW(BackendError, "cuBLAS error " << ::postsvd::cuda::cublas_status_name(postsvd_status_) \
                                                  << " in '" << #call << "' at " << __FILE__ << ":"   \
                                                  << __LINE__);                                       \
  } while (0)

#define POSTSVD_CUSOLVER_TRY(call)                                                                    \
  do {                                                                                                \
    const cusolverStatus_t postsvd_status_ = (call);                                                  \
    if (postsvd_status_ != CUSOLVER_STATUS_SUCCESS)                                                   \
      POSTSVD_THROW(BackendError, "cuSOLVER error "                                                   \
                                      << ::postsvd::cuda::cusolver_status_name(postsvd_status_) << " in '" \
                                      << #call << "' at " << __FILE__ << ":" << __LINE__);            \
  } while (0)

// After a kernel launch: a bad launch configuration shows up here, faults at the next sync.
#define POSTSVD_CUDA_CHECK_LAUNCH(kernel_name)                                                        \
  do {                                                                                                \
    const cudaError_t postsvd_status_ = cudaGetLastError();                                           \
    if (postsvd_status_ != cudaSuccess)                                                               \
      POSTSVD_THROW(BackendError, "CUDA error " << cudaGetErrorName(postsvd_status_) << " ("          \
                                                << cudaGetErrorString(postsvd_status_) << ") launching " \
                                                << kernel_name << " at " << __FILE__ << ":" << __LINE__); \
  } while (0)

#define POSTSVD_CUDA_REPORT(call)                                                                       \
  do {                                                                                                  \
    const cudaError_t postsvd_status_ = (call);                                                         \
    if (postsvd_status_ != cudaSuccess && postsvd_status_ != cudaErrorCudartUnloading)                  \
      ::postsvd::cuda::report_failure("CUDA", cudaGetErrorName(postsvd_status_), #call, __FILE__, __LINE__); \
  } while (0)

#define POSTSVD_CUBLAS_REPORT(call)                                                                     \
  do {                                                                                                  \
    const cublasStatus_t postsvd_status_ = (call);                                                      \
    if (postsvd_status_ != CUBLAS_STATUS_SUCCESS)                                                       \
      ::postsvd::cuda::report_failure("cuBLAS", ::postsvd::cuda::cublas_status_name(postsvd_status_), #call, \
                                      __FILE__, __LINE__);                                              \
  } while (0)

#define POSTSVD_CUSOLVER_REPORT(call)                                                                   \
  do {                                                                                                  \
    const cusolverStatus_t postsvd_status_ = (call);                                                    \
    if (postsvd_status_ != CUSOLVER_STATUS_SUCCESS)                                                     \
      ::postsvd::cuda::report_failure("cuSOLVER", ::postsvd::cuda::cusolver_status_name(postsvd_status_), #call, \
                                      __FILE__, __LINE__);                                              \
  } while (0)
