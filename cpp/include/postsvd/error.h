// postsvd: one exception hierarchy for the whole library.
// Messages name the file, tensor, shape and what was expected.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace postsvd {

/// Base of every error postsvd throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
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
