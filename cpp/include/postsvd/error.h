// postsvd: one exception hierarchy for the whole library.
// Messages name the file, tensor, shape and what was expected.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "postsvd/limits.h"

namespace postsvd {

/// `text` cut to limits::kMaxErrorMessageChars: its head and tail around a note
/// of what was cut, at UTF-8 character boundaries. A name or JSON value from a
/// hostile file can be megabytes long; the message stays readable and small.
inline std::string bounded_message(const std::string& text) {
  const std::size_t limit = limits::kMaxErrorMessageChars;
  if (text.size() <= limit) return text;
  auto boundary = [&text](std::size_t i) {  // back to the first byte of a UTF-8 character
    while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xc0) == 0x80) --i;
    return i;
  };
  const std::size_t head = boundary(limit / 2);
  const std::size_t tail = boundary(text.size() - limit / 2);
  return text.substr(0, head) + " [... " + std::to_string(tail - head) + " bytes cut ...] " + text.substr(tail);
}

/// Base of every error postsvd throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(bounded_message(what)) {}
};

/// A caller passed an argument that cannot be used (bad shape, unknown kind, ...).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A checkpoint folder or safetensors file is malformed, incomplete or mismatched.
class BadCheckpoint : public Error {
 public:
  using Error::Error;
};

/// A partial copy of a Hub file (postsvd.hub) lacks the bytes of a tensor that was read: it was not
/// fetched yet. check_checkpoint counts these instead of listing them as problems of the model.
class NotFetched : public BadCheckpoint {
 public:
  using BadCheckpoint::BadCheckpoint;
};

/// A numerical backend (LAPACK, cuSOLVER, cuBLAS, CUDA runtime) reported a failure.
class BackendError : public Error {
 public:
  using Error::Error;
};

/// The caller asked for CUDA but this build has none.
class NotBuiltWithCuda : public Error {
 public:
  using Error::Error;
};

}  // namespace postsvd

// Throws `Type` with a message assembled from stream insertions:
//   POSTSVD_THROW(BadCheckpoint, path << ": tensor '" << name << "' ...");
#define POSTSVD_THROW(Type, stream_expr)      \
  do {                                        \
    std::ostringstream postsvd_msg_;          \
    postsvd_msg_ << stream_expr;              \
    throw ::postsvd::Type(postsvd_msg_.str()); \
  } while (0)

// Throws `Type` when `cond` is false.
#define POSTSVD_CHECK(cond, Type, stream_expr)  \
  do {                                          \
    if (!(cond)) POSTSVD_THROW(Type, stream_expr); \
  } while (0)
