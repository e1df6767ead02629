// The one overflow check for 32-bit library indices: LAPACK and BLAS (LP64),
// cuBLAS and cuSOLVER take dimensions, leading dimensions and workspace sizes
// as int, and postsvd's shapes are int64_t.
#pragma once

#include <cstdint>
#include <limits>

#include "postsvd/error.h"

namespace postsvd::detail {

/// `value` as an int for a BLAS/LAPACK/cuBLAS/cuSOLVER call; InvalidArgument
/// naming `what` (e.g. "rows", "lwork") when it is negative or above INT_MAX.
inline int as_int(int64_t value, const char* what) {
  POSTSVD_CHECK(value >= 0 && value <= std::numeric_limits<int>::max(), InvalidArgument,
                what << " = " << value << " is outside the 32-bit index range [0, "
                     << std::numeric_limits<int>::max() << "] of BLAS, LAPACK, cuBLAS and cuSOLVER");
  return static_cast<int>(value);
}

}  // namespace postsvd::detail
