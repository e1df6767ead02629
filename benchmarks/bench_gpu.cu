// GPU benchmark of postsvd's CUDA backend at the real shapes of Qwen2.5-1.5B,
// Qwen2.5-7B and Llama-3.1-8B, on synthetic bf16 weights with LLM-like
// decaying spectra (exact orthogonal factors times a power-law spectrum, plus
// noise; post = 1.02 base + noise). Times Backend::compare over all matrix
// pairs of one model pair (values, vectors and every measure on the device),
// checks accuracy on layer 0 against LAPACK float64 (dgesdd, CPU), compares the
// cuSOLVER methods, and saves layer 0 as .npy for benchmarks/bench_gpu.py.
//
//   postsvd_bench_gpu --model qwen7b [--layers N] [--lanes 2] [--method gram64]
//                     [--accuracy] [--methods] [--save DIR] [--json FILE] [--repeat R]
//                     [--warm off,always]  (issue 15: post from the base's factors, each mode in turn)
//                     [--fp8 [--dequant host,device]]  (the weights block-quantized to FP8 E4M3 with
//                     128x128 float32 scales as DeepSeek-V3's, dequantized on the host or on the device)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"
#include "cuda/check.h"
#include "cuda/kernels.h"
#include "detail/half.h"
#include "detail/lapack.h"
#include "postsvd/backend.h"

using namespace postsvd;

namespace {

struct ModelShape {
  std::string name;
  int layers;
  int64_t hidden, kv, inter;
};

const std::map<std::string, ModelShape> kModels = {
    {"qwen1.5b", {"Qwen2.5-1.5B", 28, 1536, 256, 8960}},
    {"qwen7b", {"Qwen2.5-7B", 28, 3584, 512, 18944}},
    {"llama8b", {"Llama-3.1-8B", 32, 4096, 1024, 14336}},
};

const char* kKinds[7] = {"q", "k", "v", "o", "gate", "up", "down"};

// Paper orientation [in, out].
std::pair<int64_t, int64_t> shape_of_kind(const ModelShape& s, int kind) {
  switch (kind) {
    case 0: case 3: return {s.hidden, s.hidden};
    case 1: case 2: return {s.hidden, s.kv};
    case 4: case 5: return {s.hidden, s.inter};
    default: return {s.inter, s.hidden};
  }
}

// Nominal flop count of one thin SVD with vectors (Golub & Van Loan, R-SVD: 6 m n^2 + 20 n^3, m >= n)
// plus the measures of a pair (Q1, Q2, I_orth GEMMs), for the effective rate.
double svd_flops(int64_t m, int64_t n) {
  const double a = static_cast<double>(std::max(m, n)), b = static_cast<double>(std::min(m, n));
  return 6 * a * b * b + 20 * b * b * b;
}
double pair_flops(int64_t m, int64_t n) {
  const double k = static_cast<double>(std::min(m, n));
  return 2 * svd_flops(m, n) + 2.0 * m * k * k + 2.0 * n * k * k + 2.0 * k * k * k;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#define CK(call) POSTSVD_CUDA_TRY(call)
#define CB(call) POSTSVD_CUBLAS_TRY(call)
#define CS(call) POSTSVD_CUSOLVER_TRY(call)

__device__ __forceinline__ float gaussian(uint64_t seed, uint64_t index) {
  auto mix = [](uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
  };
  const uint64_t a = mix(seed * 0x9e3779b97f4a7c15ull + 2 * index + 1), b = mix(a ^ (index + 0x632be59bd9b4e019ull));
  const float u1 = (static_cast<float>(a >> 40) + 1.0f) / 16777217.0f, u2 = static_cast<float>(b >> 40) / 16777216.0f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__global__ void fill_gaussian(float* x, int64_t count, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = scale * gaussian(seed, static_cast<uint64_t>(i));
}
// dst[:, j] = src[:, j] * s[j], [rows, cols] with leading dimension ld_src.
__global__ void scale_columns(const float* src, int64_t ld_src, int64_t rows, int64_t cols, const float* s, float* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * cols; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i % rows, c = i / rows;
    dst[i] = src[r + c * ld_src] * s[c];
  }
}
// base: w += noise -> bf16; post: 1.02 w + noise2 -> bf16.
__global__ void finish_pair(const float* w, int64_t count, uint64_t seed, float noise, float noise_post, uint16_t* base, uint16_t* post) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float b = w[i] + noise * gaussian(seed, static_cast<uint64_t>(i));
    const float p = 1.02f * b + noise_post * gaussian(seed ^ 0x5555ull, static_cast<uint64_t>(i));
    base[i] = __bfloat16_as_ushort(__float2bfloat16_rn(b));
    post[i] = __bfloat16_as_ushort(__float2bfloat16_rn(p));
  }
}
__global__ void bf16_to_double(const uint16_t* x, int64_t count, double* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = static_cast<double>(__uint_as_float(static_cast<uint32_t>(x[i]) << 16));
}
__global__ void float_to_double(const float* x, int64_t count, double* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = static_cast<double>(x[i]);
}

constexpr int kGrid = 2048, kBlock = 256;

struct Dev {
  void* p = nullptr;
  explicit Dev(std::size_t bytes) { CK(cudaMalloc(&p, std::max<std::size_t>(bytes, 256))); }
  ~Dev() { cudaFree(p); }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

// Host storage of one model pair's bf16 weights (huge pages where the kernel offers them).
struct HostWeights {
  uint16_t* data = nullptr;
  std::size_t elements = 0;
  explicit HostWeights(std::size_t n) : elements(n) {
    const std::size_t bytes = (n * 2 + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    data = static_cast<uint16_t*>(std::aligned_alloc(2u << 20, bytes));
    if (!data) throw std::runtime_error("host allocation failed");
    madvise(data, bytes, MADV_HUGEPAGE);
  }
  ~HostWeights() { std::free(data); }
};

struct Generated {
  std::unique_ptr<HostWeights> base, post;
  std::vector<PairInput> pairs;  // layer-major, kinds in kKinds order
  std::vector<std::pair<int64_t, int64_t>> shapes;
};

// Orthonormal [rows, cols] factor: QR of a Gaussian matrix (cuSOLVER geqrf + orgqr).
std::unique_ptr<Dev> orthonormal(cusolverDnHandle_t solver, int64_t rows, int64_t cols, uint64_t seed) {
  auto q = std::make_unique<Dev>(rows * cols * sizeof(float));
  fill_gaussian<<<kGrid, kBlock>>>(q->as<float>(), rows * cols, seed, 1.0f);
  Dev tau(cols * sizeof(float));
  int lwork = 0, lwork2 = 0;
  CS(cusolverDnSgeqrf_bufferSize(solver, rows, cols, q->as<float>(), rows, &lwork));
  CS(cusolverDnSorgqr_bufferSize(solver, rows, cols, cols, q->as<float>(), rows, tau.as<float>(), &lwork2));
  Dev work(std::max(lwork, lwork2) * sizeof(float)), info(sizeof(int));
  CS(cusolverDnSgeqrf(solver, rows, cols, q->as<float>(), rows, tau.as<float>(), work.as<float>(), std::max(lwork, lwork2), info.as<int>()));
  CS(cusolverDnSorgqr(solver, rows, cols, cols, q->as<float>(), rows, tau.as<float>(), work.as<float>(), std::max(lwork, lwork2), info.as<int>()));
  CK(cudaDeviceSynchronize());
  return q;
}

Generated generate(const ModelShape& s, int layers, uint64_t seed) {
  const double t0 = now();
  cublasHandle_t blas;
  cusolverDnHandle_t solver;
  CB(cublasCreate(&blas));
  CS(cusolverDnCreate(&solver));
  CB(cublasSetMathMode(blas, CUBLAS_TF32_TENSOR_OP_MATH));  // generation only: W is defined as the result
  constexpr int kPool = 2;
  std::unique_ptr<Dev> o_h[kPool], o_kv[kPool], o_inter[kPool];
  for (int p = 0; p < kPool; ++p) {
    o_h[p] = orthonormal(solver, s.hidden, s.hidden, seed + 11 * p + 1);
    o_kv[p] = orthonormal(solver, s.kv, s.kv, seed + 11 * p + 2);
    o_inter[p] = orthonormal(solver, s.inter, s.hidden, seed + 11 * p + 3);
  }
  Generated g;
  std::size_t total = 0;
  for (int l = 0; l < layers; ++l)
    for (int kind = 0; kind < 7; ++kind) {
      auto mn = shape_of_kind(s, kind);
      g.shapes.push_back(mn);
      total += static_cast<std::size_t>(mn.first * mn.second);
    }
  g.base = std::make_unique<HostWeights>(total);
  g.post = std::make_unique<HostWeights>(total);
  const int64_t max_elems = std::max(s.hidden * s.inter, s.hidden * s.hidden);
  Dev w(max_elems * sizeof(float)), tmp(std::max(s.inter, s.hidden) * s.hidden * sizeof(float));
  Dev b16(max_elems * 2), p16(max_elems * 2), sig(s.inter * sizeof(float));
  std::size_t offset = 0;
  std::vector<float> sigma;
  uint64_t rng = seed * 7919 + 17;
  auto uniform = [&rng]() {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(rng >> 11) / 9007199254740992.0;
  };
  for (int l = 0; l < layers; ++l) {
    for (int kind = 0; kind < 7; ++kind) {
      const auto [m, n] = shape_of_kind(s, kind);
      const int64_t k = std::min(m, n);
      const int p = (l + kind) % kPool, p2 = (p + 1) % kPool;
      const float *qm, *qn;
      int64_t ldm;
      switch (kind) {
        case 0: case 3: qm = o_h[p]->as<float>(); qn = o_h[p2]->as<float>(); ldm = m; break;
        case 1: case 2: qm = o_h[p]->as<float>(); qn = o_kv[p]->as<float>(); ldm = m; break;  // first kv columns
        case 4: case 5: qm = o_h[p]->as<float>(); qn = o_inter[p]->as<float>(); ldm = m; break;
        default: qm = o_inter[p]->as<float>(); qn = o_h[p2]->as<float>(); ldm = m; break;
      }
      // LLM-like spectrum: power-law head, a long bulk, a tail dropping to ~1e-2 sigma_max.
      const double s0 = 20.0 * (0.5 + uniform()), alpha = 0.45 + 0.15 * uniform(), j0 = 4.0 + 8.0 * uniform();
      sigma.resize(static_cast<std::size_t>(k));
      for (int64_t j = 0; j < k; ++j) {
        const double x = static_cast<double>(j) / static_cast<double>(k);
        sigma[j] = static_cast<float>(s0 * std::pow(1.0 + j / j0, -alpha) * (1.0 - 0.8 * x * x));
      }
      CK(cudaMemcpy(sig.as<float>(), sigma.data(), k * sizeof(float), cudaMemcpyHostToDevice));
      scale_columns<<<kGrid, kBlock>>>(qm, ldm, m, k, sig.as<float>(), tmp.as<float>());
      const float one = 1, zero = 0;
      CB(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &one, tmp.as<float>(), m, qn, n, &zero, w.as<float>(), m));
      const double smin = sigma.back();
      const double edge = std::sqrt(static_cast<double>(m)) + std::sqrt(static_cast<double>(n));
      finish_pair<<<kGrid, kBlock>>>(w.as<float>(), m * n, seed * 1000003 + l * 7 + kind, static_cast<float>(0.2 * smin / edge),
                                     static_cast<float>(0.3 * smin / edge), b16.as<uint16_t>(), p16.as<uint16_t>());
      CK(cudaMemcpy(g.base->data + offset, b16.p, m * n * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(g.post->data + offset, p16.p, m * n * 2, cudaMemcpyDeviceToHost));
      // HF nn.Linear [out, in] row-major == paper [in, out] column-major.
      TensorView bv;
      bv.data = g.base->data + offset;
      bv.dtype = DType::BF16;
      bv.rows = m;
      bv.cols = n;
      bv.row_stride = 1;
      bv.col_stride = m;
      bv.name = "model.layers." + std::to_string(l) + "." + kKinds[kind] + " (base)";
      TensorView pv = bv;
      pv.data = g.post->data + offset;
      pv.name = "model.layers." + std::to_string(l) + "." + kKinds[kind] + " (post)";
      g.pairs.push_back({bv, pv});
      offset += static_cast<std::size_t>(m * n);
    }
  }
  CK(cudaDeviceSynchronize());
  cublasDestroy(blas);
  cusolverDnDestroy(solver);
  std::printf("generated %s x%d layers: %zu pairs, %.2f GB bf16 per model, %.1f s\n", s.name.c_str(), layers, g.pairs.size(),
              total * 2e-9, now() - t0);
  return g;
}

// One 128x128 block of a stored [out, in] row-major bf16 matrix per CUDA block: scale = amax / 448
// (weight_scale_inv, as DeepSeek-V3's releases), codes = E4M3(x / scale), round to nearest, saturated.
__global__ void quantize_block_fp8(const uint16_t* w, int64_t out, int64_t in, uint8_t* codes, float* scales, int64_t grid_cols) {
  __shared__ float partial[256];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 128, c0 = static_cast<int64_t>(blockIdx.x) * 128;
  const int64_t r1 = min(out, r0 + 128), c1 = min(in, c0 + 128), width = c1 - c0, count = (r1 - r0) * width;
  float amax = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x)
    amax = fmaxf(amax, fabsf(__uint_as_float(static_cast<uint32_t>(w[(r0 + i / width) * in + c0 + i % width]) << 16)));
  partial[threadIdx.x] = amax;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + half]);
    __syncthreads();
  }
  const float scale = partial[0] > 0 ? partial[0] / 448.0f : 1.0f;
  if (threadIdx.x == 0) scales[blockIdx.y * grid_cols + blockIdx.x] = scale;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t at = (r0 + i / width) * in + c0 + i % width;
    codes[at] = __nv_cvt_float_to_fp8(__uint_as_float(static_cast<uint32_t>(w[at]) << 16) / scale, __NV_SATFINITE, __NV_E4M3);
  }
}

// FP8 copies of both models of `g` (codes and scales per matrix) and views of them in place of the bf16 ones.
struct Fp8Model {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};
void quantize_fp8(Generated& g, Fp8Model& base, Fp8Model& post) {
  const double t0 = now();
  std::size_t codes = 0, scales = 0;
  for (const auto& p : g.pairs) {
    codes += static_cast<std::size_t>(p.base.rows * p.base.cols);
    scales += static_cast<std::size_t>(((p.base.rows + 127) / 128) * ((p.base.cols + 127) / 128));
  }
  for (Fp8Model* m : {&base, &post}) {
    m->codes.resize(codes);
    m->scales.resize(scales);
  }
  std::size_t code_at = 0, scale_at = 0;
  for (auto& p : g.pairs) {
    const int64_t in = p.base.rows, out = p.base.cols, grid_rows = (out + 127) / 128, grid_cols = (in + 127) / 128;
    Dev w(in * out * 2), q(in * out), s(grid_rows * grid_cols * sizeof(float));
    for (int side = 0; side < 2; ++side) {
      TensorView& v = side == 0 ? p.base : p.post;
      Fp8Model& m = side == 0 ? base : post;
      CK(cudaMemcpy(w.p, v.data, in * out * 2, cudaMemcpyHostToDevice));
      quantize_block_fp8<<<dim3(static_cast<unsigned>(grid_cols), static_cast<unsigned>(grid_rows)), 256>>>(
          w.as<uint16_t>(), out, in, q.as<uint8_t>(), s.as<float>(), grid_cols);
      CK(cudaGetLastError());
      CK(cudaMemcpy(m.codes.data() + code_at, q.p, in * out, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(m.scales.data() + scale_at, s.p, grid_rows * grid_cols * sizeof(float), cudaMemcpyDeviceToHost));
      v.data = m.codes.data() + code_at;
      v.dtype = DType::F8_E4M3;
      v.scales.scheme = QuantScheme::ScaledFP8;
      v.scales.data = m.scales.data() + scale_at;
      v.scales.dtype = DType::F32;
      v.scales.first = 0;
      v.scales.stored_cols = in;
      v.scales.block_rows = 128;
      v.scales.block_cols = 128;
      v.scales.grid_cols = grid_cols;
      v.scales.count = grid_rows * grid_cols;
      v.scales.name = v.name + " weight_scale_inv";
    }
    code_at += static_cast<std::size_t>(in * out);
    scale_at += static_cast<std::size_t>(grid_rows * grid_cols);
  }
  std::printf("quantized to FP8 E4M3 with 128x128 float32 scales: %.2f GB per model, %.1f s\n", codes * 1e-9, now() - t0);
}

void save_npy(const std::string& path, const void* data, const char* descr, const std::vector<int64_t>& shape, std::size_t bytes) {
  std::ostringstream dict;
  dict << "{'descr': '" << descr << "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) dict << shape[i] << (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
  dict << "), }";
  std::string header = dict.str();
  const std::size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// LAPACK float64 singular values (dgesdd, values only) of a bf16 view.
std::vector<double> lapack_sigma(const TensorView& v) {
  const int64_t m = v.rows, n = v.cols;
  std::vector<double> a(static_cast<std::size_t>(m * n));
  const auto* bits = static_cast<const uint16_t*>(v.data);
  for (int64_t i = 0; i < m * n; ++i) a[i] = detail::bf16_to_float(bits[i]);
  const int64_t k = std::min(m, n);
  std::vector<double> s(static_cast<std::size_t>(k));
  std::vector<int> iwork(static_cast<std::size_t>(8 * k));
  int info = 0;
  double query = 0;
  double dummy = 0;
  detail::gesdd('N', m, n, a.data(), m, s.data(), &dummy, 1, &dummy, 1, &query, -1, iwork.data(), &info);
  std::vector<double> work(static_cast<std::size_t>(query) + 1);
  detail::gesdd('N', m, n, a.data(), m, s.data(), &dummy, 1, &dummy, 1, work.data(), static_cast<int>(work.size()), iwork.data(), &info);
  if (info != 0) throw std::runtime_error("dgesdd failed, info = " + std::to_string(info));
  return s;
}

struct Accuracy {
  double reconstruction = 0, orth_u = 0, orth_v = 0, sigma_rel = 0;
};

// ||W - U S V^T||_F / ||W||_F, max|U^T U - I|, max|V^T V - I| (float64 on the device),
// max relative sigma error against `reference` over sigma >= 1e-3 sigma_max.
Accuracy accuracy_of(const TensorView& v, const Decomposition<float>& d, const std::vector<double>& reference) {
  const int64_t m = v.rows, n = v.cols, k = std::min(m, n);
  cublasHandle_t blas;
  CB(cublasCreate(&blas));
  Dev w16(m * n * 2), w(m * n * 8), uf(m * k * 4), vf(n * k * 4), u(m * k * 8), vd(n * k * 8), c(k * k * 8), dev(8);
  CK(cudaMemcpy(w16.p, v.data, m * n * 2, cudaMemcpyHostToDevice));
  bf16_to_double<<<kGrid, kBlock>>>(w16.as<uint16_t>(), m * n, w.as<double>());
  CK(cudaMemcpy(uf.p, d.U.data(), m * k * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(vf.p, d.V.data(), n * k * 4, cudaMemcpyHostToDevice));
  float_to_double<<<kGrid, kBlock>>>(uf.as<float>(), m * k, u.as<double>());
  float_to_double<<<kGrid, kBlock>>>(vf.as<float>(), n * k, vd.as<double>());
  Accuracy a;
  double norm_w = 0;
  CB(cublasDnrm2(blas, m * n, w.as<double>(), 1, &norm_w));
  // U S into u (scale columns), then W - (U S) V^T.
  for (int64_t j = 0; j < k; ++j) {
    const double sj = d.S[j];
    CB(cublasDscal(blas, m, &sj, u.as<double>() + j * m, 1));
  }
  const double minus = -1, one = 1, zero = 0;
  CB(cublasDgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &minus, u.as<double>(), m, vd.as<double>(), n, &one, w.as<double>(), m));
  double norm_r = 0;
  CB(cublasDnrm2(blas, m * n, w.as<double>(), 1, &norm_r));
  a.reconstruction = norm_r / norm_w;
  float_to_double<<<kGrid, kBlock>>>(uf.as<float>(), m * k, u.as<double>());
  auto orth = [&](const double* q, int64_t rows) {
    CB(cublasDgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, k, k, rows, &one, q, rows, q, rows, &zero, c.as<double>(), k));
    CK(cudaMemset(dev.p, 0, 8));
    cuda::max_deviation_from_identity<double>(c.as<double>(), k, k, dev.as<double>(), nullptr);
    double out = 0;
    CK(cudaMemcpy(&out, dev.p, 8, cudaMemcpyDeviceToHost));
    return out;
  };
  a.orth_u = orth(u.as<double>(), m);
  a.orth_v = orth(vd.as<double>(), n);
  for (int64_t j = 0; j < k; ++j)
    if (reference[j] >= 1e-3 * reference[0]) a.sigma_rel = std::max(a.sigma_rel, std::fabs(d.S[j] - reference[j]) / reference[j]);
  cublasDestroy(blas);
  return a;
}

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return fallback;
}
bool flag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] == name) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string model_key = arg(argc, argv, "--model", "qwen1.5b");
  const auto found = kModels.find(model_key);
  if (found == kModels.end()) {
    std::fprintf(stderr, "--model: expected qwen1.5b, qwen7b or llama8b, got %s\n", model_key.c_str());
    return 2;
  }
  const ModelShape shape = found->second;
  const int layers = std::stoi(arg(argc, argv, "--layers", std::to_string(shape.layers)));
  const int repeat = std::stoi(arg(argc, argv, "--repeat", "1"));
  const std::string lanes_list = arg(argc, argv, "--lanes", "2");
  const std::string json_path = arg(argc, argv, "--json", "");
  const std::string save_dir = arg(argc, argv, "--save", "");
  cuda::CudaConfig config;
  config.method = cuda::parse_method(arg(argc, argv, "--method", "gram64"));

  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB; %s\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
              build_info().c_str());
  std::ostringstream json;
  json << "{\"model\": \"" << shape.name << "\", \"layers\": " << layers << ", \"device\": \"" << prop.name << "\"";

  Generated g = generate(shape, layers, 1234);
  const bool fp8 = flag(argc, argv, "--fp8");
  if (fp8 && (flag(argc, argv, "--accuracy") || flag(argc, argv, "--parity") || flag(argc, argv, "--methods") || !save_dir.empty())) {
    std::fprintf(stderr, "--fp8: --accuracy, --parity, --methods and --save read the bf16 weights; run them without --fp8\n");
    return 2;
  }
  Fp8Model fp8_base, fp8_post;
  if (fp8) quantize_fp8(g, fp8_base, fp8_post);
  json << ", \"fp8\": " << (fp8 ? "true" : "false");
  double flops = 0;
  for (const auto& mn : g.shapes) flops += pair_flops(mn.first, mn.second);

  if (!save_dir.empty()) {  // layer 0 for the Python baselines, HF layout [out, in]
    for (int kind = 0; kind < 7; ++kind) {
      const PairInput& p = g.pairs[kind];
      const std::size_t bytes = static_cast<std::size_t>(p.base.rows * p.base.cols) * 2;
      save_npy(save_dir + "/" + kKinds[kind] + "_base.npy", p.base.data, "<u2", {p.base.cols, p.base.rows}, bytes);
      save_npy(save_dir + "/" + kKinds[kind] + "_post.npy", p.post.data, "<u2", {p.base.cols, p.base.rows}, bytes);
    }
  }

  MeasureOptions options;
  options.precision = Precision::F32;
  const std::string warm_list = arg(argc, argv, "--warm", "auto");
  BackendOptions backend_options;
  backend_options.device = Device::CUDA;
  std::vector<PairInput> layer0(g.pairs.begin(), g.pairs.begin() + 7);
  json << ", \"flops_nominal\": " << flops << ", \"runs\": [";
  bool first_run = true;
  std::stringstream lanes_stream(lanes_list);
  std::string lanes_item;
  struct Run {
    int lanes;
    std::string warm, dequant;
  };
  std::vector<Run> runs;
  const std::string dequant_list = arg(argc, argv, "--dequant", "host");
  while (std::getline(lanes_stream, lanes_item, ',')) {
    std::stringstream warm_stream(warm_list);
    std::string warm_item;
    while (std::getline(warm_stream, warm_item, ',')) {
      std::stringstream dequant_stream(dequant_list);
      std::string dequant_item;
      while (std::getline(dequant_stream, dequant_item, ',')) {
        if (dequant_item != "host" && dequant_item != "device") {
          std::fprintf(stderr, "--dequant: expected host and/or device, got %s\n", dequant_item.c_str());
          return 2;
        }
        runs.push_back({std::stoi(lanes_item), warm_item, dequant_item});
      }
    }
  }
  std::map<std::string, std::vector<PairMeasures>> by_dequant;  // the last result of each mode
  for (const auto& run : runs) {
    config.lanes_per_device = run.lanes;
    config.dequantize_on_device = run.dequant == "device";
    options.warm_start = parse_warm_start_mode(run.warm, "--warm");
    auto backend = cuda::make_cuda_backend_with(backend_options, config);
    backend->compare(layer0, options);  // warm-up: handles, buffers for the largest pair
    std::vector<double> times;
    for (int r = 0; r < repeat; ++r) {
      const double t0 = now();
      auto result = backend->compare(g.pairs, options);
      times.push_back(now() - t0);
      if (result.size() != g.pairs.size()) throw std::runtime_error("wrong result count");
      if (r + 1 == repeat) by_dequant[run.dequant] = std::move(result);
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    const cuda::CudaStats st = backend->last_stats();
    std::printf("postsvd %s lanes=%d warm=%s dequant=%s: %zu pairs in %.2f s (median of %d; min %.2f), %.1f TFLOP/s nominal, "
                "fallbacks %lld, warm starts %lld (fell back %lld, syevj sweeps %lld), %.2f GB to device, %.1f MB back, "
                "%.2f GB per lane\n",
                cuda::method_name(config.method), config.lanes_per_device, run.warm.c_str(), run.dequant.c_str(), g.pairs.size(), t, repeat,
                times.front(), flops / t * 1e-12, static_cast<long long>(st.gram_fallbacks),
                static_cast<long long>(st.warm_starts), static_cast<long long>(st.warm_fallbacks),
                static_cast<long long>(st.warm_sweeps), st.bytes_to_device * 1e-9, st.bytes_to_host * 1e-6,
                st.bytes_per_lane * 1e-9);
    std::fflush(stdout);
    json << (first_run ? "" : ", ") << "{\"method\": \"" << cuda::method_name(config.method) << "\", \"lanes\": "
         << config.lanes_per_device << ", \"warm\": \"" << run.warm << "\", \"dequant\": \"" << run.dequant
         << "\", \"warm_starts\": " << st.warm_starts
         << ", \"warm_fallbacks\": " << st.warm_fallbacks << ", \"warm_sweeps\": " << st.warm_sweeps << ", \"seconds\": " << t << ", \"seconds_min\": " << times.front()
         << ", \"repeat\": " << repeat << ", \"fallbacks\": " << st.gram_fallbacks
         << ", \"bytes_to_device\": " << st.bytes_to_device << ", \"bytes_to_host\": " << st.bytes_to_host << "}";
    first_run = false;
  }
  json << "]";
  if (by_dequant.count("host") && by_dequant.count("device")) {
    // Host and device dequantization decompose the same matrices: every sigma equal (0 expected).
    double worst = 0;
    const auto& h = by_dequant["host"];
    const auto& d = by_dequant["device"];
    for (std::size_t i = 0; i < h.size(); ++i)
      for (std::size_t j = 0; j < h[i].sigma_base.size(); ++j)
        worst = std::max({worst, std::fabs(h[i].sigma_base[j] - d[i].sigma_base[j]) / h[i].sigma_base[0],
                          std::fabs(h[i].sigma_post[j] - d[i].sigma_post[j]) / h[i].sigma_post[0]});
    std::printf("host vs device dequantization: largest sigma difference %.3g of sigma_max\n", worst);
    json << ", \"dequant_sigma_difference\": " << worst;
  }

  if (flag(argc, argv, "--accuracy")) {  // layer 0, base matrices: against LAPACK float64
    cpu::set_blas_threads(0);
    auto backend = cuda::make_cuda_backend_with(backend_options, config);
    json << ", \"accuracy\": {";
    for (int kind = 0; kind < 7; ++kind) {
      const TensorView& v = g.pairs[kind].base;
      const double t0 = now();
      const std::vector<double> reference = lapack_sigma(v);
      const double t_ref = now() - t0;
      const Decomposition<float> d = backend->decompose_f32(v);
      const Accuracy a = accuracy_of(v, d, reference);
      if (!save_dir.empty()) save_npy(save_dir + "/" + kKinds[kind] + "_sigma_ref.npy", reference.data(), "<f8",
                                      {static_cast<int64_t>(reference.size())}, reference.size() * 8);
      std::printf("accuracy %-4s [%lld, %lld] cond %.3g: recon %.2e, orth U %.2e, orth V %.2e, sigma rel %.2e (LAPACK dgesdd %.1f s)\n",
                  kKinds[kind], static_cast<long long>(v.rows), static_cast<long long>(v.cols),
                  reference.front() / reference.back(), a.reconstruction, a.orth_u, a.orth_v, a.sigma_rel, t_ref);
      std::fflush(stdout);
      json << (kind ? ", " : "") << "\"" << kKinds[kind] << "\": {\"reconstruction\": " << a.reconstruction
           << ", \"orth_u\": " << a.orth_u << ", \"orth_v\": " << a.orth_v << ", \"sigma_rel\": " << a.sigma_rel
           << ", \"cond\": " << reference.front() / reference.back() << "}";
    }
    json << "}";
  }

  if (flag(argc, argv, "--parity")) {  // layer 0: every measure against the CPU backend (float32)
    BackendOptions cpu_options;
    auto cpu = make_backend(cpu_options);
    auto gpu = cuda::make_cuda_backend_with(backend_options, config);
    MeasureOptions full = options;
    full.full_matrices = true;
    const double t0 = now();
    const auto h = cpu->compare(layer0, full);
    const double t_cpu = now() - t0;
    const auto d = gpu->compare(layer0, full);
    double worst = 0;
    auto diff = [&worst](const std::vector<double>& a, const std::vector<double>& b, double scale) {
      for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]) / scale);
    };
    double worst_nf = 0;
    for (std::size_t i = 0; i < h.size(); ++i) {
      diff(d[i].sigma_base, h[i].sigma_base, h[i].sigma_base[0]);
      diff(d[i].sigma_post, h[i].sigma_post, h[i].sigma_post[0]);
      diff(d[i].scaling, h[i].scaling, 1.0);
      diff({d[i].scaling_stats.mean, d[i].scaling_stats.std}, {h[i].scaling_stats.mean, h[i].scaling_stats.std}, 1.0);
      worst_nf = std::max(worst_nf, std::fabs(d[i].nf - h[i].nf));
    }
    std::printf("parity vs CPU backend (layer 0, float32; CPU %.1f s): max |diff| sigma/scaling/stats %.2e, NF %.2e\n", t_cpu, worst,
                worst_nf);
    json << ", \"parity\": {\"sigma_scaling_stats\": " << worst << ", \"nf\": " << worst_nf << ", \"cpu_seconds\": " << t_cpu << "}";
  }

  if (flag(argc, argv, "--methods")) {  // each cuSOLVER method on one pair of each distinct shape of layer 0
    json << ", \"methods\": [";
    bool first = true;
    std::map<int, std::vector<double>> references;
    for (auto method : {cuda::SvdMethod::Gram64, cuda::SvdMethod::Gesvdj, cuda::SvdMethod::Gesvdp, cuda::SvdMethod::Gesvd}) {
      cuda::CudaConfig c = config;
      c.method = method;
      c.lanes_per_device = 1;
      auto backend = cuda::make_cuda_backend_with(backend_options, c);
      double slowest = 0;
      for (int kind : {1, 0, 4, 6}) {
        if (slowest > 8.0) {
          std::printf("method %-7s %-4s skipped (the previous shape took %.1f s)\n", cuda::method_name(method), kKinds[kind], slowest);
          continue;
        }
        const PairInput& p = g.pairs[kind];
        backend->compare({g.pairs[1]}, options);  // warm-up
        const double t0 = now();
        backend->compare({p}, options);
        const double t = now() - t0;
        slowest = std::max(slowest, t);
        if (!references.count(kind)) references[kind] = lapack_sigma(p.base);
        const std::vector<double>& reference = references[kind];
        const Decomposition<float> d = backend->decompose_f32(p.base);
        const Accuracy a = accuracy_of(p.base, d, reference);
        std::printf("method %-7s %-4s [%lld, %lld]: pair %.3f s; recon %.2e, orth U %.2e, orth V %.2e, sigma rel %.2e\n",
                    cuda::method_name(method), kKinds[kind], static_cast<long long>(p.base.rows), static_cast<long long>(p.base.cols),
                    t, a.reconstruction, a.orth_u, a.orth_v, a.sigma_rel);
        std::fflush(stdout);
        json << (first ? "" : ", ") << "{\"method\": \"" << cuda::method_name(method) << "\", \"kind\": \"" << kKinds[kind]
             << "\", \"pair_seconds\": " << t << ", \"reconstruction\": " << a.reconstruction << ", \"orth_u\": " << a.orth_u
             << ", \"orth_v\": " << a.orth_v << ", \"sigma_rel\": " << a.sigma_rel << "}";
        first = false;
      }
    }
    json << "]";
  }
  json << "}\n";
  if (!json_path.empty()) std::ofstream(json_path) << json.str();
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_gpu: %s\n", e.what());
  return 1;
}
