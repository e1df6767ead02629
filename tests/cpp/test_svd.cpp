// The CPU backend's reduced SVD against known answers: W = U0 diag(s) V0^T
// built in double from Householder-QR orthogonal factors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/cpu_backend.h"
#include "backend_test_util.h"
#include "linalg_test_util.h"
#include "postsvd/backend.h"
#include "postsvd/error.h"
#include "reader_test_util.h"

namespace {

using namespace postsvd_test;
using postsvd::Decomposition;
using postsvd::TensorView;

/// max over columns of (1 - |<a_j, b_j>|): 0 when the columns agree up to sign.
double column_disagreement(const Matrix<double>& a, const Matrix<double>& b) {
  double worst = 0;
  for (int64_t j = 0; j < a.cols(); ++j) {
    double dot = 0;
    for (int64_t i = 0; i < a.rows(); ++i) dot += a(i, j) * b(i, j);
    worst = std::max(worst, 1 - std::abs(dot));
  }
  return worst;
}

template <class T>
class CpuBackendSvd : public ::testing::Test {};
using Precisions = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CpuBackendSvd, Precisions);

TYPED_TEST(CpuBackendSvd, KnownSpectrumTallWideSquareAndDegenerateShapes) {
  using T = TypeParam;
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 1}, {1, 7}, {7, 1}, {2, 2},    {40, 40},
                                                           {64, 17}, {17, 64}, {200, 120}, {120, 200}};
  std::mt19937_64 rng(12345);
  auto backend = cpu_backend();
  for (const auto& [m, n] : shapes) {
    SCOPED_TRACE("shape [" + std::to_string(m) + ", " + std::to_string(n) + "]");
    const int64_t k = std::min(m, n);
    const std::vector<double> spectrum = decaying_spectrum(k);
    const Matrix<double> u0 = random_orthonormal(m, k, rng);
    const Matrix<double> v0 = random_orthonormal(n, k, rng);
    const Matrix<double> w = compose(u0, spectrum, v0);
    const auto stored = store_linear<T>(w, "layer.q_proj.weight");
    expect_valid_svd(decompose<T>(*backend, stored.view), w, spectrum);
  }
}

TYPED_TEST(CpuBackendSvd, GaussianMatrixReconstructs) {
  using T = TypeParam;
  std::mt19937_64 rng(7);
  auto backend = cpu_backend();
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{96, 33}, {33, 96}, {80, 80}}) {
    const Matrix<double> w = gaussian(m, n, rng);
    const auto stored = store_linear<T>(w, "gaussian");
    const Decomposition<T> d = decompose<T>(*backend, stored.view);
    const Matrix<double> u = to_double(d.U);
    const Matrix<double> v = to_double(d.V);
    EXPECT_LE(orthogonality_error(u), Tolerance<T>::orthogonality);
    EXPECT_LE(orthogonality_error(v), Tolerance<T>::orthogonality);
    Matrix<double> difference = compose(u, std::vector<double>(d.S.begin(), d.S.end()), v);
    for (int64_t i = 0; i < difference.size(); ++i) difference.data()[i] -= w.data()[i];
    EXPECT_LE(frobenius(difference), Tolerance<T>::reconstruction * frobenius(w));
  }
}

TYPED_TEST(CpuBackendSvd, StridedLayoutsGiveTheSameFactors) {
  using T = TypeParam;
  std::mt19937_64 rng(99);
  auto backend = cpu_backend();
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{48, 20}, {20, 48}}) {
    const int64_t k = std::min(m, n);
    const std::vector<double> spectrum = decaying_spectrum(k, 5.0, 0.85);
    const Matrix<double> w = compose(random_orthonormal(m, k, rng), spectrum, random_orthonormal(n, k, rng));
    const auto linear = store_linear<T>(w, "linear");
    const auto conv1d = store_conv1d<T>(w, "conv1d");
    // A column range of a fused [m, 3n] Conv1D tensor (GPT-2 c_attn), the middle part.
    Matrix<double> fused(m, 3 * n);
    const Matrix<double> noise = gaussian(m, 3 * n, rng);
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < 3 * n; ++c) fused(r, c) = (c >= n && c < 2 * n) ? w(r, c - n) : noise(r, c);
    }
    const auto fused_stored = store_conv1d<T>(fused, "c_attn");
    TensorView part = fused_stored.view;
    part.data = fused_stored.storage.data() + n;  // first column of the part
    part.cols = n;
    part.name = "c_attn[k]";

    const Decomposition<T> a = decompose<T>(*backend, linear.view);
    for (const TensorView* view : std::vector<const TensorView*>{&conv1d.view, &part}) {
      SCOPED_TRACE(view->name);
      const Decomposition<T> b = decompose<T>(*backend, *view);
      expect_valid_svd(b, w, spectrum);
      for (int64_t j = 0; j < k; ++j) EXPECT_NEAR(a.S[j], b.S[j], Tolerance<T>::sigma * spectrum[0]);
      // Distinct sigma: the columns are unique up to sign, and the sign rule fixes the sign.
      EXPECT_LE(column_disagreement(to_double(a.U), to_double(b.U)), Tolerance<T>::measure);
      EXPECT_LE(column_disagreement(to_double(a.V), to_double(b.V)), Tolerance<T>::measure);
    }
  }
}

TYPED_TEST(CpuBackendSvd, TransposeSwapsTheSides) {
  using T = TypeParam;
  std::mt19937_64 rng(3);
  auto backend = cpu_backend();
  const std::vector<double> spectrum = decaying_spectrum(24);
  const Matrix<double> w = compose(random_orthonormal(60, 24, rng), spectrum, random_orthonormal(24, 24, rng));
  const auto stored = store_linear<T>(w, "w");
  TensorView transposed = stored.view;  // W^T: same data, swapped strides
  std::swap(transposed.rows, transposed.cols);
  std::swap(transposed.row_stride, transposed.col_stride);
  const Decomposition<T> a = decompose<T>(*backend, stored.view);
  const Decomposition<T> b = decompose<T>(*backend, transposed);
  ASSERT_EQ(b.U.rows(), 24);
  ASSERT_EQ(b.V.rows(), 60);
  EXPECT_LE(column_disagreement(to_double(a.U), to_double(b.V)), Tolerance<T>::measure);
  EXPECT_LE(column_disagreement(to_double(a.V), to_double(b.U)), Tolerance<T>::measure);
}

TYPED_TEST(CpuBackendSvd, RankDeficientMatrixKeepsOrthonormalFactors) {
  using T = TypeParam;
  std::mt19937_64 rng(5);
  auto backend = cpu_backend(1);
  std::vector<double> spectrum = decaying_spectrum(30);
  for (std::size_t j = 10; j < spectrum.size(); ++j) spectrum[j] = 0;  // rank 10
  const Matrix<double> w = compose(random_orthonormal(50, 30, rng), spectrum, random_orthonormal(30, 30, rng));
  const auto stored = store_linear<T>(w, "low_rank");
  expect_valid_svd(decompose<T>(*backend, stored.view), w, spectrum);
}

TYPED_TEST(CpuBackendSvd, ZeroMatrixDecomposes) {
  using T = TypeParam;
  auto backend = cpu_backend();
  const Matrix<double> w(5, 3);
  const auto stored = store_linear<T>(w, "zeros");
  const Decomposition<T> d = decompose<T>(*backend, stored.view);
  for (T s : d.S) EXPECT_EQ(s, T(0));
  EXPECT_LE(orthogonality_error(to_double(d.U)), Tolerance<T>::orthogonality);
  EXPECT_LE(orthogonality_error(to_double(d.V)), Tolerance<T>::orthogonality);
}

TYPED_TEST(CpuBackendSvd, RejectsEmptyAndNonFiniteInput) {
  using T = TypeParam;
  auto backend = cpu_backend();
  std::vector<T> storage(12, T(1));
  TensorView empty{storage.data(), dtype_of<T>(), 0, 4, 1, 0, "model.layers.3.mlp.up_proj.weight"};
  expect_error<postsvd::InvalidArgument>([&] { decompose<T>(*backend, empty); },
                                         {"model.layers.3.mlp.up_proj.weight", "[0, 4]"});
  storage[5] = std::numeric_limits<T>::quiet_NaN();
  TensorView bad{storage.data(), dtype_of<T>(), 3, 4, 1, 3, "model.layers.0.self_attn.o_proj.weight"};
  expect_error<postsvd::InvalidArgument>([&] { decompose<T>(*backend, bad); },
                                         {"model.layers.0.self_attn.o_proj.weight"});
}

TEST(CpuBackend, ThreadCountsGiveTheSameSpectrum) {
  std::mt19937_64 rng(11);
  const Matrix<double> w = gaussian(150, 90, rng);
  const auto stored = store_linear<float>(w, "w");
  auto one = cpu_backend(1);
  const auto a = one->decompose_f32(stored.view);
  auto all = cpu_backend(0);
  const auto b = all->decompose_f32(stored.view);
  for (std::size_t j = 0; j < a.S.size(); ++j) EXPECT_NEAR(a.S[j], b.S[j], 1e-5 * a.S[0]);
  EXPECT_NE(all->name().find("cpu"), std::string::npos) << all->name();
}

TEST(CpuBackend, RejectsNegativeThreadCount) {
  postsvd::BackendOptions options;
  options.num_threads = -2;
  expect_error<postsvd::InvalidArgument>([&] { postsvd::make_backend(options); }, {"num_threads", "-2"});
}

TEST(CpuBackend, CapabilityProbes) {
  const std::string info = postsvd::build_info();
  EXPECT_NE(info.find("postsvd"), std::string::npos) << info;
  EXPECT_NE(info.find("BLAS"), std::string::npos) << info;
#ifndef POSTSVD_WITH_CUDA
  EXPECT_FALSE(postsvd::built_with_cuda());
  EXPECT_FALSE(postsvd::has_cuda());
  EXPECT_EQ(postsvd::cuda_device_count(), 0);
  postsvd::BackendOptions options;
  options.device = postsvd::Device::CUDA;
  expect_error<postsvd::NotBuiltWithCuda>([&] { postsvd::make_backend(options); },
                                          {"POSTSVD_ENABLE_CUDA=ON pip install ."});
#else
  EXPECT_TRUE(postsvd::built_with_cuda());
  EXPECT_EQ(postsvd::has_cuda(), postsvd::cuda_device_count() > 0);
#endif
}

}  // namespace
