// Quantized weights on the CUDA backend: FP8 and MXFP4 views are dequantized
// on the host by to_matrix (the CPU backend's exact values, so both backends
// decompose identical matrices) and uploaded as F32 (float32 precision) or F64.
// A device-side dequantization kernel would move a quarter of the bytes; it is
// not written yet because it could not be tested on a GPU.
#pragma once

#include <cstddef>

#include "cuda/plan.h"
#include "postsvd/quantization.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

/// True when the device cannot convert `v` itself (scaled or raw FP8, MXFP4).
inline bool needs_host_dequantization(const TensorView& v) { return v.quantized() || is_fp8_dtype(v.dtype); }

/// Bytes staged for `v`: its stored span, or the dequantized matrix.
inline std::size_t staged_bytes(const TensorView& v, Precision precision) {
  if (!needs_host_dequantization(v)) return span_bytes(v);
  return static_cast<std::size_t>(v.rows * v.cols) * (precision == Precision::F32 ? sizeof(float) : sizeof(double));
}

/// `v` itself, or a column-major F32 / F64 view of its host-dequantized copy (owned here).
class HostDequantized {
 public:
  HostDequantized(const TensorView& v, Precision precision) : view_(v) {
    if (!needs_host_dequantization(v)) return;
    if (precision == Precision::F32) {
      f32_ = to_matrix<float>(v);
      point_at(f32_.data(), DType::F32);
    } else {
      f64_ = to_matrix<double>(v);
      point_at(f64_.data(), DType::F64);
    }
  }
  HostDequantized(const HostDequantized&) = delete;
  HostDequantized& operator=(const HostDequantized&) = delete;

  const TensorView& view() const { return view_; }

 private:
  void point_at(const void* data, DType dtype) {
    view_.data = data;
    view_.dtype = dtype;
    view_.row_stride = 1;
    view_.col_stride = view_.rows;
    // The copy is dense: a grouped part's (DeepSeek kv_b K/V) group skips do not apply to it.
    view_.row_group = view_.row_group_skip = 0;
    view_.col_group = view_.col_group_skip = 0;
    view_.scales = ViewScales{};
    view_.name += " (dequantized on the host)";
  }

  TensorView view_;
  Matrix<float> f32_;
  Matrix<double> f64_;
};

}  // namespace cuda
}  // namespace postsvd
