// Device kernels of the CUDA backend (kernels.cu). Matrices are column-major
// with a leading dimension; every launcher is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

/// Sentinel of `first_bad` when every element is finite.
constexpr unsigned long long kNoBadElement = ~0ull;

/// Strides of a view (TensorView's, groups included): element (r, c) lies at
/// r*row_stride + (r/row_group)*row_group_skip + c*col_stride + (c/col_group)*col_group_skip
/// (a group of 0 adds nothing).
struct ViewLayout {
  int64_t row_stride = 1, col_stride = 0;
  int64_t row_group = 0, row_group_skip = 0;
  int64_t col_group = 0, col_group_skip = 0;
};
inline ViewLayout layout_of(const TensorView& v) {
  return {v.row_stride, v.col_stride, v.row_group, v.row_group_skip, v.col_group, v.col_group_skip};
}

/// out[r + c*rows] = (T) stored(r, c), where stored element (r, c) lives at
/// element offset base_offset + (its offset in `layout`) of `stored`
/// (any float dtype: BF16, F16, F32, F64). Writes into *first_bad (atomicMin)
/// the smallest column-major index r + c*rows of a NaN or Inf.
template <class T>
void convert_view(const void* stored, DType dtype, int64_t base_offset, int64_t rows, int64_t cols,
                  const ViewLayout& layout, T* out, unsigned long long* first_bad, cudaStream_t stream);

/// Reverses the order of the columns of a [rows, cols] matrix and of the vector
/// `values` [cols] (may be null): ascending eigenpairs -> descending.
template <class T>
void reverse_columns(T* a, int64_t rows, int64_t cols, int64_t ld, T* values, cudaStream_t stream);

/// norms[j] = ||a[:, j]||_2, then a[:, j] /= norms[j].
template <class T>
void normalize_columns(T* a, int64_t rows, int64_t cols, int64_t ld, T* norms, cudaStream_t stream);

/// *result = max |c(i, j) - delta_ij| over a [k, k] matrix (+inf when any is NaN);
/// *result must be zeroed first (memset).
template <class T>
void max_deviation_from_identity(const T* c, int64_t k, int64_t ld, double* result, cudaStream_t stream);

/// *result += sum (c(i, j) - delta_ij)^2 over a [k, k] matrix; *result zeroed first.
template <class T>
void squared_deviation_from_identity(const T* c, int64_t k, int64_t ld, double* result, cudaStream_t stream);

/// Sign rule: for each column j < k of u [m, k], when its largest-|.| entry
/// (the first one on ties) is negative, negate u[:, j] and v[:, j] (v [n, k]).
template <class T>
void apply_sign_rule(T* u, int64_t m, int64_t ldu, T* v, int64_t n, int64_t ldv, int64_t k, cudaStream_t stream);

/// dst[i] = (double) src[i * stride], i < count (e.g. a diagonal with stride ld + 1).
template <class T>
void gather_to_double(const T* src, int64_t count, int64_t stride, double* dst, cudaStream_t stream);

/// dst (column-major, ld_dst) = (D) src (column-major, ld_src), [rows, cols].
template <class S, class D>
void cast_matrix(const S* src, int64_t rows, int64_t cols, int64_t ld_src, D* dst, int64_t ld_dst,
                 cudaStream_t stream);

}  // namespace cuda
}  // namespace postsvd
