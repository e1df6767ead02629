// Device kernels of the CUDA backend: dtype conversion and dequantization of
// strided views (device_view.h's loaders, the host's rules), column
// operations, reductions and the sign rule. See kernels.h for the contracts.
#include "cuda/kernels.h"


#include <algorithm>
#include <cstdint>

#include "cuda/check.h"

namespace postsvd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;
constexpr int kTileRows = 8;
constexpr int64_t kMaxGridY = 65535;

template <class T>
__device__ __forceinline__ void note_if_bad(T value, int64_t out_index, unsigned long long* first_bad) {
  if (!isfinite(value)) atomicMin(first_bad, static_cast<unsigned long long>(out_index));
}

// Rows are the stored contiguous direction (nn.Linear [out, in]): each thread
// reads and writes along r, coalesced on both sides.
template <class Load, class T>
__global__ void convert_rows_kernel(Load load, int64_t rows, int64_t cols, ViewLayout layout, T* out,
                                    unsigned long long* first_bad) {
  for (int64_t c = blockIdx.y; c < cols; c += gridDim.y) {
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
         r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const T value = load.template get<T>(layout.element_of(r, c));
      const int64_t index = r + c * rows;
      out[index] = value;
      note_if_bad(value, index, first_bad);
    }
  }
}

// Columns are the stored contiguous direction (Conv1D [in, out], fused parts of
// it): a 32x32 tile goes through shared memory so that reads run along c and
// writes along r.
template <class Load, class T>
__global__ void convert_tiled_kernel(Load load, int64_t rows, int64_t cols, ViewLayout layout, T* out,
                                     unsigned long long* first_bad) {
  __shared__ T tile[kTile][kTile + 1];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile; r0 < rows; r0 += static_cast<int64_t>(gridDim.y) * kTile) {
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t r = r0 + j;
      const int64_t c = c0 + threadIdx.x;
      if (r < rows && c < cols) tile[j][threadIdx.x] = load.template get<T>(layout.element_of(r, c));
    }
    __syncthreads();
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t r = r0 + threadIdx.x;
      const int64_t c = c0 + j;
      if (r < rows && c < cols) {
        const T value = tile[threadIdx.x][j];
        const int64_t index = r + c * rows;
        out[index] = value;
        note_if_bad(value, index, first_bad);
      }
    }
    __syncthreads();
  }
}

template <class Load, class T>
void launch_convert(const Load& load, int64_t rows, int64_t cols, const ViewLayout& layout, T* out,
                    unsigned long long* first_bad, cudaStream_t stream) {
  const int64_t abs_row = layout.row_stride < 0 ? -layout.row_stride : layout.row_stride;
  const int64_t abs_col = layout.col_stride < 0 ? -layout.col_stride : layout.col_stride;
  if (abs_row <= abs_col || cols == 1) {
    const int64_t blocks_x = std::min<int64_t>((rows + kThreads - 1) / kThreads, 1024);
    const dim3 grid(static_cast<unsigned>(std::max<int64_t>(blocks_x, 1)), static_cast<unsigned>(std::min(cols, kMaxGridY)));
    convert_rows_kernel<Load, T><<<grid, kThreads, 0, stream>>>(load, rows, cols, layout, out, first_bad);
    POSTSVD_CUDA_CHECK_LAUNCH("convert_rows_kernel");
  } else {
    const int64_t col_tiles = (cols + kTile - 1) / kTile;
    const int64_t row_tiles = std::min<int64_t>((rows + kTile - 1) / kTile, kMaxGridY);
    POSTSVD_CHECK(col_tiles < (int64_t{1} << 31), BackendError, "convert_view: too many columns (" << cols << ")");
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles));
    const dim3 block(kTile, kTileRows);
    convert_tiled_kernel<Load, T><<<grid, block, 0, stream>>>(load, rows, cols, layout, out, first_bad);
    POSTSVD_CUDA_CHECK_LAUNCH("convert_tiled_kernel");
  }
}

template <class T>
__global__ void reverse_columns_kernel(T* a, int64_t rows, int64_t cols, int64_t ld, T* values) {
  const int64_t half = cols / 2;
  for (int64_t j = blockIdx.y; j < half; j += gridDim.y) {
    const int64_t other = cols - 1 - j;
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
         r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const T tmp = a[r + j * ld];
      a[r + j * ld] = a[r + other * ld];
      a[r + other * ld] = tmp;
    }
    if (values != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
      const T tmp = values[j];
      values[j] = values[other];
      values[other] = tmp;
    }
  }
}

struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {  // of non-negative values
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

// `op` over the block's values, 0 its identity (sums; maxima of non-negative values); every thread
// gets the result. scratch holds 32 doubles and is free again when this returns.
template <class Op>
__device__ double block_reduce(double value, double* scratch, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  const double result = scratch[0];
  __syncthreads();
  return result;
}

// One block per column: norm accumulated in double, then the column divided by it.
template <class T>
__global__ void normalize_columns_kernel(T* a, int64_t rows, int64_t cols, int64_t ld, T* norms) {
  __shared__ double scratch[32];
  for (int64_t j = blockIdx.x; j < cols; j += gridDim.x) {
    T* column = a + j * ld;
    double sum = 0;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
      const double x = static_cast<double>(column[r]);
      sum += x * x;
    }
    const double norm = sqrt(block_reduce(sum, scratch, Add{}));
    const T norm_t = static_cast<T>(norm);
    const T inverse = static_cast<T>(1.0 / norm);  // inf for a zero column: caught by the orthogonality check
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) column[r] *= inverse;
    if (threadIdx.x == 0) norms[j] = norm_t;
  }
}

__device__ __forceinline__ void atomic_max_nonnegative(double* target, double value) {
  // Non-negative doubles order like their bit patterns.
  atomicMax(reinterpret_cast<unsigned long long*>(target), static_cast<unsigned long long>(__double_as_longlong(value)));
}

template <class T>
__global__ void max_deviation_kernel(const T* c, int64_t k, int64_t ld, double* result) {
  __shared__ double scratch[32];
  double local = 0;
  const int64_t total = k * k;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i % k;
    const int64_t col = i / k;
    const double deviation = fabs(static_cast<double>(c[r + col * ld]) - (r == col ? 1.0 : 0.0));
    local = isnan(deviation) ? HUGE_VAL : fmax(local, deviation);
  }
  const double largest = block_reduce(local, scratch, Max{});
  if (threadIdx.x == 0) atomic_max_nonnegative(result, largest);
}

template <class T>
__global__ void squared_deviation_kernel(const T* c, int64_t k, int64_t ld, double* result) {
  __shared__ double scratch[32];
  double local = 0;
  const int64_t total = k * k;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i % k;
    const int64_t col = i / k;
    const double deviation = static_cast<double>(c[r + col * ld]) - (r == col ? 1.0 : 0.0);
    local += deviation * deviation;
  }
  const double sum = block_reduce(local, scratch, Add{});
  if (threadIdx.x == 0) atomicAdd(result, sum);
}

// One block per column: the largest |a(i, j)| in double.
template <class T>
__global__ void column_max_abs_kernel(const T* a, int64_t rows, int64_t cols, int64_t ld, double* out) {
  __shared__ double scratch[32];
  for (int64_t j = blockIdx.x; j < cols; j += gridDim.x) {
    const T* column = a + j * ld;
    double local = 0;
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) local = fmax(local, fabs(static_cast<double>(column[r])));
    const double largest = block_reduce(local, scratch, Max{});  // ends with a barrier: scratch is free again
    if (threadIdx.x == 0) out[j] = largest;
  }
}

template <class T>
__global__ void sign_rule_kernel(T* u, int64_t m, int64_t ldu, T* v, int64_t n, int64_t ldv, int64_t k) {
  __shared__ double best_abs[kThreads];
  __shared__ int64_t best_index[kThreads];
  __shared__ bool flip;
  for (int64_t j = blockIdx.x; j < k; j += gridDim.x) {
    T* column = u + j * ldu;
    double my_abs = -1;
    int64_t my_index = 0;
    for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
      const double a = fabs(static_cast<double>(column[r]));
      if (a > my_abs) {  // strictly greater: the first index wins ties
        my_abs = a;
        my_index = r;
      }
    }
    best_abs[threadIdx.x] = my_abs;
    best_index[threadIdx.x] = my_index;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) {
        const double other_abs = best_abs[threadIdx.x + stride];
        const int64_t other_index = best_index[threadIdx.x + stride];
        if (other_abs > best_abs[threadIdx.x] ||
            (other_abs == best_abs[threadIdx.x] && other_index < best_index[threadIdx.x])) {
          best_abs[threadIdx.x] = other_abs;
          best_index[threadIdx.x] = other_index;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) flip = column[best_index[0]] < T(0);
    __syncthreads();
    if (flip) {
      for (int64_t r = threadIdx.x; r < m; r += blockDim.x) column[r] = -column[r];
      T* v_column = v + j * ldv;
      for (int64_t r = threadIdx.x; r < n; r += blockDim.x) v_column[r] = -v_column[r];
    }
    __syncthreads();
  }
}

template <class T>
__global__ void gather_to_double_kernel(const T* src, int64_t count, int64_t stride, double* dst) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = static_cast<double>(src[i * stride]);
}

template <class S, class D>
__global__ void cast_matrix_kernel(const S* src, int64_t rows, int64_t cols, int64_t ld_src, D* dst, int64_t ld_dst) {
  for (int64_t c = blockIdx.y; c < cols; c += gridDim.y)
    for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
         r += static_cast<int64_t>(gridDim.x) * blockDim.x)
      dst[r + c * ld_dst] = static_cast<D>(src[r + c * ld_src]);
}

unsigned grid_for(int64_t elements) {
  return static_cast<unsigned>(std::clamp<int64_t>((elements + kThreads - 1) / kThreads, 1, 4096));
}

}  // namespace

template <class T>
void convert_view(const void* stored, DType dtype, int64_t base_offset, int64_t rows, int64_t cols,
                  const ViewLayout& layout, const DeviceScales& scales, T* out, unsigned long long* first_bad,
                  cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  with_loader(stored, dtype, base_offset, scales,
              [&](const auto& load) { launch_convert(load, rows, cols, layout, out, first_bad, stream); });
}

template <class T>
void reverse_columns(T* a, int64_t rows, int64_t cols, int64_t ld, T* values, cudaStream_t stream) {
  if (cols < 2) return;
  const dim3 grid(static_cast<unsigned>(std::clamp<int64_t>((rows + kThreads - 1) / kThreads, 1, 64)),
                  static_cast<unsigned>(std::min<int64_t>(cols / 2, kMaxGridY)));
  reverse_columns_kernel<T><<<grid, kThreads, 0, stream>>>(a, rows, cols, ld, values);
  POSTSVD_CUDA_CHECK_LAUNCH("reverse_columns_kernel");
}

template <class T>
void normalize_columns(T* a, int64_t rows, int64_t cols, int64_t ld, T* norms, cudaStream_t stream) {
  if (cols <= 0) return;
  normalize_columns_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(cols, 1 << 20)), kThreads, 0, stream>>>(a, rows, cols, ld, norms);
  POSTSVD_CUDA_CHECK_LAUNCH("normalize_columns_kernel");
}

template <class T>
void max_deviation_from_identity(const T* c, int64_t k, int64_t ld, double* result, cudaStream_t stream) {
  if (k <= 0) return;
  max_deviation_kernel<T><<<grid_for(k * k), kThreads, 0, stream>>>(c, k, ld, result);
  POSTSVD_CUDA_CHECK_LAUNCH("max_deviation_kernel");
}

template <class T>
void squared_deviation_from_identity(const T* c, int64_t k, int64_t ld, double* result, cudaStream_t stream) {
  if (k <= 0) return;
  squared_deviation_kernel<T><<<grid_for(k * k), kThreads, 0, stream>>>(c, k, ld, result);
  POSTSVD_CUDA_CHECK_LAUNCH("squared_deviation_kernel");
}

template <class T>
void column_max_abs(const T* a, int64_t rows, int64_t cols, int64_t ld, double* out, cudaStream_t stream) {
  if (cols <= 0) return;
  column_max_abs_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(cols, 1 << 20)), kThreads, 0, stream>>>(a, rows, cols, ld, out);
  POSTSVD_CUDA_CHECK_LAUNCH("column_max_abs_kernel");
}

template <class T>
void apply_sign_rule(T* u, int64_t m, int64_t ldu, T* v, int64_t n, int64_t ldv, int64_t k, cudaStream_t stream) {
  if (k <= 0) return;
  sign_rule_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(k, 1 << 20)), kThreads, 0, stream>>>(u, m, ldu, v, n, ldv, k);
  POSTSVD_CUDA_CHECK_LAUNCH("sign_rule_kernel");
}

template <class T>
void gather_to_double(const T* src, int64_t count, int64_t stride, double* dst, cudaStream_t stream) {
  if (count <= 0) return;
  gather_to_double_kernel<T><<<grid_for(count), kThreads, 0, stream>>>(src, count, stride, dst);
  POSTSVD_CUDA_CHECK_LAUNCH("gather_to_double_kernel");
}

template <class S, class D>
void cast_matrix(const S* src, int64_t rows, int64_t cols, int64_t ld_src, D* dst, int64_t ld_dst, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const dim3 grid(static_cast<unsigned>(std::clamp<int64_t>((rows + kThreads - 1) / kThreads, 1, 64)),
                  static_cast<unsigned>(std::min<int64_t>(cols, kMaxGridY)));
  cast_matrix_kernel<S, D><<<grid, kThreads, 0, stream>>>(src, rows, cols, ld_src, dst, ld_dst);
  POSTSVD_CUDA_CHECK_LAUNCH("cast_matrix_kernel");
}

#define POSTSVD_INSTANTIATE(T)                                                                                 \
  template void convert_view<T>(const void*, DType, int64_t, int64_t, int64_t, const ViewLayout&,            \
                                const DeviceScales&, T*, unsigned long long*, cudaStream_t);                  \
  template void reverse_columns<T>(T*, int64_t, int64_t, int64_t, T*, cudaStream_t);                          \
  template void normalize_columns<T>(T*, int64_t, int64_t, int64_t, T*, cudaStream_t);                        \
  template void max_deviation_from_identity<T>(const T*, int64_t, int64_t, double*, cudaStream_t);            \
  template void squared_deviation_from_identity<T>(const T*, int64_t, int64_t, double*, cudaStream_t);        \
  template void column_max_abs<T>(const T*, int64_t, int64_t, int64_t, double*, cudaStream_t);                \
  template void apply_sign_rule<T>(T*, int64_t, int64_t, T*, int64_t, int64_t, int64_t, cudaStream_t);        \
  template void gather_to_double<T>(const T*, int64_t, int64_t, double*, cudaStream_t);
POSTSVD_INSTANTIATE(float)
POSTSVD_INSTANTIATE(double)
#undef POSTSVD_INSTANTIATE
template void cast_matrix<double, float>(const double*, int64_t, int64_t, int64_t, float*, int64_t, cudaStream_t);
template void cast_matrix<float, double>(const float*, int64_t, int64_t, int64_t, double*, int64_t, cudaStream_t);
template void cast_matrix<double, double>(const double*, int64_t, int64_t, int64_t, double*, int64_t, cudaStream_t);
template void cast_matrix<float, float>(const float*, int64_t, int64_t, int64_t, float*, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace postsvd
