// The merge of an adapter's term into a view (LowRankDelta, detail::add_low_rank): W + scale * L R and
// DoRA's per-output-column magnitude, through to_matrix in both orientations and both precisions, the
// factor cache key, and the CPU backend's decomposition of such a view against a merged copy.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>

#include "linalg_test_util.h"
#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/types.h"

namespace {

using postsvd::LowRankDelta;
using postsvd::Matrix;
using postsvd_test::gaussian;
using postsvd_test::store_linear;

// W + scale * L R, then each column scaled to magnitude / norm (when given), in float64.
Matrix<double> merged(const Matrix<double>& w, const Matrix<double>& left, const Matrix<double>& right, double scale,
                      const std::vector<double>* magnitude) {
  Matrix<double> out = w.clone();
  for (int64_t c = 0; c < w.cols(); ++c) {
    double norm = 0;
    for (int64_t r = 0; r < w.rows(); ++r) {
      for (int64_t k = 0; k < left.cols(); ++k) out(r, c) += scale * left(r, k) * right(k, c);
      norm += out(r, c) * out(r, c);
    }
    if (magnitude != nullptr) {
      for (int64_t r = 0; r < w.rows(); ++r) out(r, c) *= (*magnitude)[static_cast<std::size_t>(c)] / std::sqrt(norm);
    }
  }
  return out;
}

struct Term {
  postsvd_test::StoredWeights<float> left, right, magnitude;
  Matrix<double> l, r;
  std::vector<double> m;
};

// A rank-3 term on a [rows, cols] view, with a DoRA magnitude when `dora`.
Term make_term(int64_t rows, int64_t cols, bool dora, std::mt19937_64& rng) {
  Term t;
  t.l = gaussian(rows, 3, rng);
  t.r = gaussian(3, cols, rng);
  t.left = store_linear<float>(t.l, "lora_A");
  t.right = store_linear<float>(t.r, "lora_B");
  // Back to double from the stored floats: the reference uses the values the view holds.
  t.l = postsvd_test::to_double(postsvd::to_matrix<float>(t.left.view));
  t.r = postsvd_test::to_double(postsvd::to_matrix<float>(t.right.view));
  if (dora) {
    Matrix<double> m(1, cols);
    std::uniform_real_distribution<double> positive(0.5, 2.0);
    for (int64_t c = 0; c < cols; ++c) m(0, c) = static_cast<float>(positive(rng));
    t.magnitude = store_linear<float>(m, "lora_magnitude_vector");
    for (int64_t c = 0; c < cols; ++c) t.m.push_back(m(0, c));
  }
  return t;
}

std::shared_ptr<const LowRankDelta> delta_of(const Term& t, double scale) {
  LowRankDelta d;
  d.left = t.left.view;
  d.right = t.right.view;
  d.scale = scale;
  if (!t.m.empty()) d.magnitude = t.magnitude.view;
  return std::make_shared<const LowRankDelta>(d);
}

double max_difference(const Matrix<double>& a, const Matrix<double>& b) {
  double worst = 0;
  for (int64_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
  return worst;
}

class LowRank : public ::testing::TestWithParam<bool> {};  // DoRA or not

TEST_P(LowRank, ToMatrixFormsTheMergedWeightsInBothOrientationsAndPrecisions) {
  std::mt19937_64 rng(41);
  const Matrix<double> w = gaussian(12, 7, rng);
  auto stored = store_linear<float>(w, "q_proj.weight");
  const Matrix<double> w_stored = postsvd_test::to_double(postsvd::to_matrix<float>(stored.view));
  const Term t = make_term(12, 7, GetParam(), rng);
  const double scale = 0.75;
  stored.view.delta = delta_of(t, scale);
  const Matrix<double> expected = merged(w_stored, t.l, t.r, scale, GetParam() ? &t.m : nullptr);

  EXPECT_LT(max_difference(postsvd::to_matrix<double>(stored.view), expected), 1e-12);
  EXPECT_LT(max_difference(postsvd_test::to_double(postsvd::to_matrix<float>(stored.view)), expected), 1e-5);
  // The transposed view (the backends' tall orientation) carries the transposed term: W'^T.
  const Matrix<double> transposed = postsvd::to_matrix<double>(stored.view.transposed());
  ASSERT_EQ(transposed.rows(), 7);
  double worst = 0;
  for (int64_t r = 0; r < 12; ++r) {
    for (int64_t c = 0; c < 7; ++c) worst = std::max(worst, std::abs(transposed(c, r) - expected(r, c)));
  }
  EXPECT_LT(worst, 1e-12);
  // The term is not a no-op, and without it the view reads the stored weights.
  EXPECT_GT(max_difference(expected, w_stored), 1e-3);
  stored.view.delta.reset();
  EXPECT_EQ(max_difference(postsvd::to_matrix<double>(stored.view), w_stored), 0.0);
}

INSTANTIATE_TEST_SUITE_P(LoraAndDora, LowRank, ::testing::Bool());

TEST(LowRankErrors, NonFiniteFactorsAndMisfitShapesNameTheTensor) {
  std::mt19937_64 rng(42);
  auto stored = store_linear<float>(gaussian(6, 5, rng), "layers.0.q_proj.weight");
  Term t = make_term(6, 5, false, rng);
  t.left.storage[4] = std::nanf("");
  stored.view.delta = delta_of(t, 1.0);
  try {
    postsvd::to_matrix<float>(stored.view);
    FAIL() << "a NaN factor must be refused";
  } catch (const postsvd::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("lora_A"), std::string::npos) << e.what();
  }
  Term misfit = make_term(4, 5, false, rng);  // 4 rows for a 6-row view
  stored.view.delta = delta_of(misfit, 1.0);
  try {
    postsvd::to_matrix<float>(stored.view);
    FAIL() << "factors of another shape must be refused";
  } catch (const postsvd::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.q_proj.weight"), std::string::npos) << e.what();
  }
  // A finite term whose merge overflows float32 names the weights.
  Term huge = make_term(6, 5, false, rng);
  stored.view.delta = delta_of(huge, 1e38);
  try {
    postsvd::to_matrix<float>(stored.view);
    FAIL() << "an overflowing merge must be refused";
  } catch (const postsvd::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.q_proj.weight"), std::string::npos) << e.what();
  }
}

TEST(LowRankCache, TheTermJoinsTheFactorCacheKey) {
  std::mt19937_64 rng(43);
  auto stored = store_linear<float>(gaussian(8, 6, rng), "w");
  const std::string plain = postsvd::FactorCache::key(stored.view, postsvd::Precision::F32);
  Term t = make_term(8, 6, false, rng);
  stored.view.delta = delta_of(t, 0.5);
  const std::string adapted = postsvd::FactorCache::key(stored.view, postsvd::Precision::F32);
  EXPECT_NE(plain, adapted);
  stored.view.delta = delta_of(t, 0.25);  // another scaling is another matrix
  EXPECT_NE(postsvd::FactorCache::key(stored.view, postsvd::Precision::F32), adapted);
  t.right.storage[3] += 1.0f;  // so are other factor values
  stored.view.delta = delta_of(t, 0.5);
  EXPECT_NE(postsvd::FactorCache::key(stored.view, postsvd::Precision::F32), adapted);
}

TEST(LowRankBackend, TheCpuBackendDecomposesTheMergedMatrix) {
  std::mt19937_64 rng(44);
  const Matrix<double> w = gaussian(16, 10, rng);
  auto stored = store_linear<float>(w, "w");
  Term t = make_term(16, 10, true, rng);
  stored.view.delta = delta_of(t, 2.0);
  const Matrix<float> merged_copy = postsvd::to_matrix<float>(stored.view);
  const postsvd::TensorView copy_view{merged_copy.data(), postsvd::DType::F32, 16, 10, 1, 16, "merged"};
  auto backend = postsvd::make_backend(postsvd::BackendOptions{});
  const auto adapted = backend->decompose_f32(stored.view);
  const auto reference = backend->decompose_f32(copy_view);
  for (std::size_t j = 0; j < adapted.S.size(); ++j) EXPECT_NEAR(adapted.S[j], reference.S[j], 1e-5 * reference.S[0]);
}

// A GPU case (the suite name holds "Cuda": `ctest -L gpu`): the CUDA backend merges an adapted view on the
// host and measures the pair as the CPU backend does.
TEST(CudaLowRank, ComparingAnAdaptedPairMatchesTheCpuBackend) {
  if (postsvd::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device here (or built without CUDA)";
  std::mt19937_64 rng(45);
  const Matrix<double> w = gaussian(48, 32, rng);
  auto base = store_linear<float>(w, "base");
  auto post = store_linear<float>(w, "post");
  Term t = make_term(48, 32, true, rng);
  post.view.delta = delta_of(t, 0.5);
  postsvd::MeasureOptions options;
  auto cpu = postsvd::make_backend(postsvd::BackendOptions{});
  postsvd::BackendOptions on_gpu;
  on_gpu.device = postsvd::Device::CUDA;
  auto gpu = postsvd::make_backend(on_gpu);
  const auto expected = cpu->compare({{base.view, post.view}}, options);
  const auto got = gpu->compare({{base.view, post.view}}, options);
  EXPECT_NEAR(got[0].nf, expected[0].nf, 1e-4);
  for (std::size_t j = 0; j < expected[0].sigma_post.size(); ++j) {
    EXPECT_NEAR(got[0].sigma_post[j], expected[0].sigma_post[j], 1e-4 * expected[0].sigma_post[0]);
  }
}

}  // namespace
