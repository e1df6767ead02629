// The dequantizing half of to_matrix (quantization.cpp): quantized views only.
#pragma once

#include "postsvd/types.h"

namespace postsvd {
namespace detail {

/// Dequantizes `view` (scales.scheme != None) into `out` [rows, cols];
/// returns false when a value is not finite (to_matrix reports which).
template <class T>
bool dequantize_into(const TensorView& view, Matrix<T>& out);

}  // namespace detail
}  // namespace postsvd
