// Device kernels of the CUDA backend (kernels.cu). Matrices are column-major
// with a leading dimension; every launcher is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_view.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

/// Sentinel of `first_bad` when every element is finite.
constexpr unsigned long long kNoBadElement = ~0ull;

/// out[r + c*rows] = (T) W(r, c): element (r, c) of a view staged at `stored`
/// (staging_of), read by with_loader's loader at layout.element_of(r, c) from
/// base_offset (staged_base_offset) with `scales` (device_scales). Float dtypes
/// are widened exactly, FP8 and MXFP4 dequantized with the host's rules, so the
/// result equals to_matrix bit for bit. Writes into *first_bad
/// (atomicMin) the smallest column-major index r + c*rows of a NaN or Inf.
template <class T>
void convert_view(const void* stored, DType dtype, int64_t base_offset, int64_t rows, int64_t cols,
                  const ViewLayout& layout, const DeviceScales& scales, T* out, unsigned long long* first_bad,
                  cudaStream_t stream);

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

/// out[j] = max_i |a(i, j)| (in double) for each column j < cols of a [rows, cols] matrix.
template <class T>
void column_max_abs(const T* a, int64_t rows, int64_t cols, int64_t ld, double* out, cudaStream_t stream);

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
