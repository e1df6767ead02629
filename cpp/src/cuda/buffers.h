// Move-only device and page-locked host buffers of the CUDA backend: they
// only grow, and free on destruction (a failed free is reported, not thrown).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "cuda/check.h"
#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

struct DeviceMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static cudaError_t free(void* p) { return cudaFree(p); }
  static constexpr const char* kCall = "cudaMalloc";
  static constexpr const char* kFreeCall = "cudaFree";
};
struct PinnedMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
  static cudaError_t free(void* p) { return cudaFreeHost(p); }
  static constexpr const char* kCall = "cudaMallocHost";
  static constexpr const char* kFreeCall = "cudaFreeHost";
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
    if (ptr_ != nullptr) {
      const cudaError_t status = Memory::free(ptr_);
      if (status != cudaSuccess && status != cudaErrorCudartUnloading)
        report_failure("CUDA", cudaGetErrorName(status), Memory::kFreeCall, __FILE__, __LINE__);
    }
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
