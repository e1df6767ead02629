// Internals of the CUDA backend: status checks that throw BackendError with the
// failed call's text, file and line, and move-only device / pinned buffers.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <string>
#include <utility>

#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

const char* cublas_status_name(cublasStatus_t status);
const char* cusolver_status_name(cusolverStatus_t status);

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

namespace postsvd {
namespace cuda {

struct DeviceMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static void free(void* p) { cudaFree(p); }
  static constexpr const char* kCall = "cudaMalloc";
};
struct PinnedMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
  static void free(void* p) { cudaFreeHost(p); }
  static constexpr const char* kCall = "cudaMallocHost";
};

/// Move-only allocation (device or page-locked host) that only grows and frees on destruction.
template <class Memory>
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      release();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  /// Ensures at least `bytes`; contents are not kept when it grows.
  void reserve(std::size_t bytes, const char* what) {
    if (bytes <= bytes_) return;
    release();
    const cudaError_t status = Memory::allocate(&ptr_, bytes);
    if (status != cudaSuccess) {
      ptr_ = nullptr;
      (void)cudaGetLastError();
      POSTSVD_THROW(BackendError, Memory::kCall << " of " << bytes << " bytes for " << what << " failed: "
                                                << cudaGetErrorString(status));
    }
    bytes_ = bytes;
  }
  void release() noexcept {
    if (ptr_ != nullptr) Memory::free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <class T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

using DeviceBuffer = Buffer<DeviceMemory>;
using PinnedBuffer = Buffer<PinnedMemory>;

}  // namespace cuda
}  // namespace postsvd
