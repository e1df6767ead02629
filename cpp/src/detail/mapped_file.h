// Read-only memory mapping of a whole file (POSIX mmap), move-only RAII.
#pragma once

#include <cstdint>
#include <string>

namespace postsvd {
namespace detail {

class MappedFile {
 public:
  MappedFile() = default;
  /// Maps `path` read-only; throws BadCheckpoint naming the path on failure.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void release() noexcept;
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace detail
}  // namespace postsvd
