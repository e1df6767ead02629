// C++ timings of the backend on Qwen2.5-1.5B projection shapes (paper
// orientation [in, out]), stored as nn.Linear weights (F32 and BF16 views),
// plus one compare() pair. The Python harness bench_cpu.py compares with numpy.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "postsvd/backend.h"

namespace {

/// nn.Linear storage [out, in] row-major of a Gaussian matrix, as F32.
std::vector<float> gaussian_weights(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> data(static_cast<std::size_t>(rows * cols));
  for (float& x : data) x = normal(rng);
  return data;
}

/// The same values truncated to BF16 (the dtype checkpoints usually hold).
std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    uint32_t bits = 0;
    std::memcpy(&bits, &values[i], sizeof(bits));
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

postsvd::TensorView linear_view(const void* data, postsvd::DType dtype, int64_t rows, int64_t cols) {
  return postsvd::TensorView{data, dtype, rows, cols, 1, rows, "bench"};
}

void Decompose(benchmark::State& state, postsvd::DType dtype, postsvd::Precision precision) {
  const int64_t rows = state.range(0);
  const int64_t cols = state.range(1);
  const std::vector<float> f32 = gaussian_weights(rows, cols, 1);
  const std::vector<uint16_t> bf16 = to_bf16(f32);
  const void* data = dtype == postsvd::DType::BF16 ? static_cast<const void*>(bf16.data()) : f32.data();
  const postsvd::TensorView view = linear_view(data, dtype, rows, cols);
  auto backend = postsvd::make_backend(postsvd::BackendOptions{});
  for (auto _ : state) {
    if (precision == postsvd::Precision::F32) {
      benchmark::DoNotOptimize(backend->decompose_f32(view));
    } else {
      benchmark::DoNotOptimize(backend->decompose_f64(view));
    }
  }
  state.SetLabel(backend->name());
}

void ComparePair(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const int64_t cols = state.range(1);
  const std::vector<float> base = gaussian_weights(rows, cols, 1);
  const std::vector<float> post = gaussian_weights(rows, cols, 2);
  const postsvd::PairInput pair{linear_view(base.data(), postsvd::DType::F32, rows, cols),
                                linear_view(post.data(), postsvd::DType::F32, rows, cols)};
  auto backend = postsvd::make_backend(postsvd::BackendOptions{});
  for (auto _ : state) benchmark::DoNotOptimize(backend->compare({pair}, postsvd::MeasureOptions{}));
}

void QwenShapes(benchmark::internal::Benchmark* b) {
  b->Args({1536, 1536})->Args({1536, 256})->Args({256, 1536})->Args({1536, 8960})->Args({8960, 1536});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);
}

BENCHMARK_CAPTURE(Decompose, f32_from_f32, postsvd::DType::F32, postsvd::Precision::F32)->Apply(QwenShapes);
BENCHMARK_CAPTURE(Decompose, f32_from_bf16, postsvd::DType::BF16, postsvd::Precision::F32)->Apply(QwenShapes);
BENCHMARK_CAPTURE(Decompose, f64_from_bf16, postsvd::DType::BF16, postsvd::Precision::F64)->Apply(QwenShapes);
BENCHMARK(ComparePair)->Apply(QwenShapes);

}  // namespace
