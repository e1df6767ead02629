// Quantized weights on the CUDA backend (FP8 raw or scaled, MXFP4). Two ways:
// - on the device (CudaConfig::dequantize_on_device): the stored bytes and the
//   span of their scales are staged and kernels.cu dequantizes them with the
//   host's rules (detail/minifloat.h), moving a quarter (FP8, float32) or an
//   eighth (MXFP4) of the bytes of a host-dequantized float32 matrix;
// - on the host (the default until the device path has been checked on a GPU,
//   tests/cpp/test_cuda_backend.cpp CudaDequantize): to_matrix, the CPU
//   backend's conversion, then uploaded as F32 or F64.
// Both give the same matrix bit for bit; the device path is the one that
// needs checking on a GPU, against the host's.
#pragma once

#include <cstddef>
#include <utility>

#include "cuda/device_view.h"
#include "postsvd/quantization.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

/// True for views that are not plain float data (scaled or raw FP8, MXFP4).
inline bool is_quantized_view(const TensorView& v) { return v.quantized() || is_fp8_dtype(v.dtype); }

/// True when `v` goes through the host's to_matrix before the upload: quantized weights unless they
/// dequantize on the device, and a PEFT adapter's W + ΔW (adapter.h: formed by to_matrix, one matrix
/// at a time, so the device sees a float matrix like any other).
inline bool needs_host_dequantization(const TensorView& v, bool on_device) {
  return v.delta != nullptr || (!on_device && is_quantized_view(v));
}

/// Bytes staged for `v`: its stored span and the span of its scales, or the host-dequantized matrix.
inline std::size_t staged_bytes(const TensorView& v, Precision precision, bool on_device) {
  if (needs_host_dequantization(v, on_device))
    return static_cast<std::size_t>(v.rows * v.cols) * (precision == Precision::F32 ? sizeof(float) : sizeof(double));
  return staging_of(v).total;
}

/// `v` itself, or a column-major F32 / F64 view of its host-converted copy (dequantized, or an
/// adapter's W + ΔW; owned here).
class HostDequantized {
 public:
  HostDequantized(const TensorView& v, Precision precision, bool on_device) : view_(v) {
    if (!needs_host_dequantization(v, on_device)) return;
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
    view_.name += view_.delta ? " (merged on the host)" : " (dequantized on the host)";
    view_.delta.reset();
  }

  TensorView view_;
  Matrix<float> f32_;
  Matrix<double> f64_;
};

}  // namespace cuda
}  // namespace postsvd
