// The measures (docs/measures.md) on pairs with known answers:
//   B = (U Q)(alpha S)(V Q)^T  -> every scaling = alpha, NF = 0, I_orth = I;
//   B = (U Q) S (V R)^T        -> I_orth = Q^T R (up to one diagonal sign matrix), NF = ||Q^T R - I||_F / k;
//   B = A                      -> Q1 = Q2 = I;
//   B unrelated                -> NF near sqrt(2 / k), far from 0.
// Intruder dimensions (Shuttleworth et al. 2024): B = A + a few strong rank-1 terms orthogonal to every
// base singular vector on one side -> exactly that many intruders on that side; B = A slightly rotated -> none.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cpu_backend.h"
#include "backend_test_util.h"
#include "linalg_test_util.h"
#include "postsvd/backend.h"
#include "postsvd/error.h"
#include "postsvd/measures.h"
#include "reader_test_util.h"

namespace {

using namespace postsvd_test;
using postsvd::Decomposition;
using postsvd::MeasureOptions;
using postsvd::PairInput;
using postsvd::PairMeasures;
using postsvd::Precision;

template <class T>
MeasureOptions options_for(bool full_matrices = false, int64_t leading_k = 0) {
  MeasureOptions options;
  options.precision = precision_of<T>();
  options.full_matrices = full_matrices;
  options.leading_k = leading_k;
  return options;
}

PairMeasures compare_one(const postsvd::TensorView& base, const postsvd::TensorView& post, const MeasureOptions& options) {
  auto backend = cpu_backend();
  std::vector<PairMeasures> results = backend->compare({PairInput{base, post}}, options);
  EXPECT_EQ(results.size(), 1u);
  return std::move(results.at(0));
}

/// A known base W_A = U0 S V0^T of shape [m, n].
struct KnownPair {
  Matrix<double> u0, v0;
  std::vector<double> spectrum;
  Matrix<double> base;
};

KnownPair known_base(int64_t m, int64_t n, std::mt19937_64& rng) {
  const int64_t k = std::min(m, n);
  KnownPair pair{random_orthonormal(m, k, rng), random_orthonormal(n, k, rng), decaying_spectrum(k, 8.0, 0.9), {}};
  pair.base = compose(pair.u0, pair.spectrum, pair.v0);
  return pair;
}

template <class T>
class MeasuresKnownAnswer : public ::testing::Test {};
using Precisions = ::testing::Types<float, double>;
TYPED_TEST_SUITE(MeasuresKnownAnswer, Precisions);

TYPED_TEST(MeasuresKnownAnswer, SharedRotationAndScalingGiveAlphaAndZeroNf) {
  using T = TypeParam;
  const double tol = Tolerance<T>::measure;
  std::mt19937_64 rng(2024);
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{40, 40}, {70, 30}, {30, 70}}) {
    SCOPED_TRACE("shape [" + std::to_string(m) + ", " + std::to_string(n) + "]");
    const int64_t k = std::min(m, n);
    const KnownPair a = known_base(m, n, rng);
    const Matrix<double> q = random_orthonormal(k, k, rng);
    const double alpha = 1.3;
    std::vector<double> scaled = a.spectrum;
    for (double& s : scaled) s *= alpha;
    const Matrix<double> post = compose(multiply(a.u0, false, q, false), scaled, multiply(a.v0, false, q, false));
    const auto base_stored = store_linear<T>(a.base, "base.w");
    const auto post_stored = store_linear<T>(post, "post.w");
    const PairMeasures r = compare_one(base_stored.view, post_stored.view, options_for<T>(true));

    EXPECT_EQ(r.rows, m);
    EXPECT_EQ(r.cols, n);
    EXPECT_EQ(r.k, k);
    ASSERT_EQ(r.scaling.size(), static_cast<std::size_t>(k));
    // The smallest sigma (8 * 0.9^69 ~ 5e-3) carries float error ~1e-6 absolute: relative ~2e-4.
    const double ratio_tol = std::is_same<T, float>::value ? 2e-3 : 1e-9;
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_NEAR(r.sigma_base[j], a.spectrum[j], Tolerance<T>::sigma * a.spectrum[0]);
      EXPECT_NEAR(r.scaling[j], alpha, ratio_tol) << "j = " << j;
      EXPECT_NEAR(r.iorth_diag[j], 1.0, tol) << "j = " << j;
    }
    EXPECT_NEAR(r.scaling_stats.mean, alpha, ratio_tol);
    EXPECT_NEAR(r.scaling_stats.std, 0.0, ratio_tol);
    EXPECT_EQ(r.scaling_stats.count, (9 * k + 9) / 10);
    EXPECT_NEAR(r.nf, 0.0, tol);
    // sim_U = |Q1| = |Q| entrywise (the factors carry sign flips only).
    ASSERT_EQ(r.sim_u.rows(), k);
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t row = 0; row < k; ++row) {
        EXPECT_NEAR(r.sim_u(row, c), std::abs(q(row, c)), tol);
        EXPECT_NEAR(r.sim_v(row, c), std::abs(q(row, c)), tol);
        EXPECT_NEAR(r.iorth(row, c), row == c ? 1.0 : 0.0, tol);
      }
    }
  }
}

TYPED_TEST(MeasuresKnownAnswer, DifferentRotationsGiveTheirRelativeRotation) {
  using T = TypeParam;
  const double tol = Tolerance<T>::measure;
  std::mt19937_64 rng(77);
  const int64_t m = 50, n = 36, k = 36;
  const KnownPair a = known_base(m, n, rng);
  const Matrix<double> q = random_orthonormal(k, k, rng);
  const Matrix<double> r_rot = random_orthonormal(k, k, rng);
  const Matrix<double> post = compose(multiply(a.u0, false, q, false), a.spectrum, multiply(a.v0, false, r_rot, false));
  const auto base_stored = store_linear<T>(a.base, "base.w");
  const auto post_stored = store_conv1d<T>(post, "post.w");  // layouts may differ between the two
  const int64_t kk = 7;
  const PairMeasures r = compare_one(base_stored.view, post_stored.view, options_for<T>(true, kk));

  const Matrix<double> expected = multiply(q, true, r_rot, false);  // Q^T R
  double squares = 0;
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t row = 0; row < k; ++row) {
      const double d = expected(row, c) - (row == c ? 1.0 : 0.0);
      squares += d * d;
    }
    EXPECT_NEAR(r.iorth_diag[c], expected(c, c), tol) << "c = " << c;
  }
  EXPECT_NEAR(r.nf, std::sqrt(squares) / k, tol);
  const double ratio_tol = std::is_same<T, float>::value ? 1e-3 : 1e-9;
  for (int64_t j = 0; j < k; ++j) EXPECT_NEAR(r.scaling[j], 1.0, ratio_tol);

  // Leading kk: Q1_kk = |Q[:kk, :kk]|, Q2_kk = |R[:kk, :kk]|, I_orth_kk = Q_kk^T R_kk up to signs.
  ASSERT_EQ(r.q1.rows(), kk);
  ASSERT_EQ(r.q1.cols(), kk);
  ASSERT_EQ(r.iorth.rows(), kk);
  Matrix<double> q_kk(kk, kk), r_kk(kk, kk);
  for (int64_t c = 0; c < kk; ++c) {
    for (int64_t row = 0; row < kk; ++row) {
      q_kk(row, c) = q(row, c);
      r_kk(row, c) = r_rot(row, c);
    }
  }
  const Matrix<double> truncated = multiply(q_kk, true, r_kk, false);
  for (int64_t c = 0; c < kk; ++c) {
    for (int64_t row = 0; row < kk; ++row) {
      EXPECT_NEAR(r.sim_u(row, c), std::abs(q(row, c)), tol);
      EXPECT_NEAR(r.sim_v(row, c), std::abs(r_rot(row, c)), tol);
      EXPECT_NEAR(std::abs(r.q1(row, c)), r.sim_u(row, c), 0.0);
      EXPECT_NEAR(std::abs(r.iorth(row, c)), std::abs(truncated(row, c)), tol);
    }
    EXPECT_NEAR(r.iorth(c, c), truncated(c, c), tol);  // the diagonal carries no sign ambiguity
  }
}

TYPED_TEST(MeasuresKnownAnswer, IdenticalPairGivesIdentity) {
  using T = TypeParam;
  const double tol = Tolerance<T>::measure;
  std::mt19937_64 rng(8);
  const Matrix<double> w = gaussian(45, 25, rng);
  const auto base_stored = store_linear<T>(w, "a");
  const auto post_stored = store_linear<T>(w, "b");
  const PairMeasures r = compare_one(base_stored.view, post_stored.view, options_for<T>(true));
  EXPECT_NEAR(r.nf, 0.0, tol);
  for (int64_t c = 0; c < r.k; ++c) {
    EXPECT_DOUBLE_EQ(r.scaling[c], 1.0);
    for (int64_t row = 0; row < r.k; ++row) {
      EXPECT_NEAR(r.sim_u(row, c), row == c ? 1.0 : 0.0, tol);
      EXPECT_NEAR(r.sim_v(row, c), row == c ? 1.0 : 0.0, tol);
    }
  }
  EXPECT_DOUBLE_EQ(r.scaling_stats.mean, 1.0);
  EXPECT_DOUBLE_EQ(r.scaling_stats.std, 0.0);
}

TYPED_TEST(MeasuresKnownAnswer, UnrelatedPairHasLargeNf) {
  // Square: Q1, Q2 are independent Haar rotations, so I_orth is one too:
  //   NF^2 k^2 = ||I_orth - I||_F^2 = 2k - 2 tr(I_orth), with E tr = 0 and sd(tr) = 1,
  // so NF ~ sqrt(2 / k). tr(I_orth) <= 6 (six standard deviations) gives the sound bound
  // NF >= sqrt(2k - 12) / k. Tall: ||I_orth - I||_F^2 >= k - 2 tr(I_orth), likewise.
  using T = TypeParam;
  std::mt19937_64 rng(31337);
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{64, 64}, {120, 48}}) {
    const int64_t k = std::min(m, n);
    const auto base_stored = store_linear<T>(gaussian(m, n, rng), "a");
    const auto post_stored = store_linear<T>(gaussian(m, n, rng), "b");
    const PairMeasures r = compare_one(base_stored.view, post_stored.view, options_for<T>());
    const double bound = (m == n ? std::sqrt(2.0 * k - 12.0) : std::sqrt(k - 12.0)) / k;
    EXPECT_GT(r.nf, bound) << "shape [" << m << ", " << n << "]";
    EXPECT_GT(r.nf, 0.5 / std::sqrt(static_cast<double>(k)));
    if (m == n) EXPECT_NEAR(r.nf, std::sqrt(2.0 / k), 0.35 * std::sqrt(2.0 / k));
  }
}

TYPED_TEST(MeasuresKnownAnswer, MeasuresFromAgreesWithCompare) {
  using T = TypeParam;
  std::mt19937_64 rng(4);
  const auto base_stored = store_linear<T>(gaussian(30, 20, rng), "a");
  const auto post_stored = store_linear<T>(gaussian(30, 20, rng), "b");
  const PairMeasures via_compare = compare_one(base_stored.view, post_stored.view, options_for<T>());
  const Decomposition<T> a = postsvd::cpu::reduced_svd<T>(base_stored.view);
  const Decomposition<T> b = postsvd::cpu::reduced_svd<T>(post_stored.view);
  const PairMeasures direct = postsvd::measures_from(a, b, options_for<T>());
  EXPECT_DOUBLE_EQ(via_compare.nf, direct.nf);
  EXPECT_EQ(via_compare.scaling, direct.scaling);
  EXPECT_TRUE(direct.q1.empty()) << "full matrices only on request";
}

// ---- measures_from on hand-made decompositions ----

template <class T>
Decomposition<T> axis_decomposition(int64_t m, int64_t n, const std::vector<T>& sigma) {
  const int64_t k = std::min(m, n);
  Decomposition<T> d{Matrix<T>(m, k), sigma, Matrix<T>(n, k)};
  for (int64_t j = 0; j < k; ++j) {
    d.U(j, j) = 1;
    d.V(j, j) = 1;
  }
  return d;
}

TEST(Measures, ZeroBaseSigmaGivesIeeeRatiosAndNonFiniteStats) {
  const auto base = axis_decomposition<double>(4, 3, {2.0, 1.0, 0.0});
  const auto post = axis_decomposition<double>(4, 3, {4.0, 1.0, 0.5});
  const PairMeasures r = postsvd::measures_from(base, post, MeasureOptions{});
  EXPECT_DOUBLE_EQ(r.scaling[0], 2.0);
  EXPECT_DOUBLE_EQ(r.scaling[1], 1.0);
  EXPECT_TRUE(std::isinf(r.scaling[2]));
  EXPECT_TRUE(std::isinf(r.scaling_stats.mean));  // ceil(0.9 * 3) = 3: the inf is inside the top 90 %
  EXPECT_TRUE(std::isnan(r.scaling_stats.std));
  EXPECT_DOUBLE_EQ(r.nf, 0.0);

  const auto post_zero = axis_decomposition<double>(4, 3, {4.0, 1.0, 0.0});
  const PairMeasures r2 = postsvd::measures_from(base, post_zero, MeasureOptions{});
  EXPECT_TRUE(std::isnan(r2.scaling[2]));  // 0 / 0
  EXPECT_TRUE(std::isnan(r2.scaling_stats.mean));
}

TEST(Measures, ZeroSigmaOutsideTheTopNinetyPercentLeavesStatsFinite) {
  std::vector<float> base_sigma(10, 1.0f), post_sigma(10, 2.0f);
  base_sigma[9] = 0.0f;  // index 9 is outside j < ceil(0.9 * 10) = 9
  const auto base = axis_decomposition<float>(10, 10, base_sigma);
  const auto post = axis_decomposition<float>(10, 10, post_sigma);
  const PairMeasures r = postsvd::measures_from(base, post, MeasureOptions{});
  EXPECT_TRUE(std::isinf(r.scaling[9]));
  EXPECT_DOUBLE_EQ(r.scaling_stats.mean, 2.0);
  EXPECT_DOUBLE_EQ(r.scaling_stats.std, 0.0);
  EXPECT_EQ(r.scaling_stats.count, 9);
}

TEST(Measures, SwappedAxesGiveKnownNf) {
  // U_B swaps the first two axes of U_A, V_B does not: I_orth = P (a swap), ||P - I||_F = 2.
  const auto base = axis_decomposition<double>(3, 3, {3.0, 2.0, 1.0});
  auto post = axis_decomposition<double>(3, 3, {3.0, 2.0, 1.0});
  post.U(0, 0) = 0;
  post.U(1, 1) = 0;
  post.U(1, 0) = 1;
  post.U(0, 1) = 1;
  MeasureOptions options;
  options.full_matrices = true;
  const PairMeasures r = postsvd::measures_from(base, post, options);
  EXPECT_DOUBLE_EQ(r.nf, 2.0 / 3.0);
  EXPECT_EQ(r.iorth_diag, (std::vector<double>{0.0, 0.0, 1.0}));
  EXPECT_DOUBLE_EQ(r.iorth(1, 0), 1.0);
  EXPECT_DOUBLE_EQ(r.sim_v(0, 0), 1.0);
}

TEST(Measures, ScalingStatisticsUseTheTopNinetyPercent) {
  // k = 10: j < ceil(9) = 9, so 1..9: mean 5, population variance 60 / 9.
  std::vector<double> ten;
  for (int i = 1; i <= 10; ++i) ten.push_back(i);
  const postsvd::ScalingStats s10 = postsvd::scaling_statistics(ten);
  EXPECT_EQ(s10.count, 9);
  EXPECT_DOUBLE_EQ(s10.mean, 5.0);
  EXPECT_NEAR(s10.std, std::sqrt(60.0 / 9.0), 1e-15);

  const postsvd::ScalingStats s1 = postsvd::scaling_statistics({3.5});
  EXPECT_EQ(s1.count, 1);
  EXPECT_DOUBLE_EQ(s1.mean, 3.5);
  EXPECT_DOUBLE_EQ(s1.std, 0.0);

  // Pooled: each column cut at its own ceil(0.9 k), then one mean / std.
  const postsvd::ScalingStats pooled = postsvd::pooled_scaling_statistics({ten, {2.0, 4.0}});
  const std::vector<double> concatenated = {1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 4};  // ceil(1.8) = 2 keeps both
  double mean = 0;
  for (double x : concatenated) mean += x;
  mean /= concatenated.size();
  double variance = 0;
  for (double x : concatenated) variance += (x - mean) * (x - mean);
  variance /= concatenated.size();
  EXPECT_EQ(pooled.count, 11);
  EXPECT_NEAR(pooled.mean, mean, 1e-15);
  EXPECT_NEAR(pooled.std, std::sqrt(variance), 1e-15);
}

TEST(Measures, TopCountIsExactCeiling) {
  EXPECT_EQ(postsvd::scaling_top_count(0), 0);
  EXPECT_EQ(postsvd::scaling_top_count(1), 1);
  EXPECT_EQ(postsvd::scaling_top_count(9), 9);    // ceil(8.1)
  EXPECT_EQ(postsvd::scaling_top_count(10), 9);   // ceil(9.0), no floating-point overshoot
  EXPECT_EQ(postsvd::scaling_top_count(11), 10);  // ceil(9.9)
  EXPECT_EQ(postsvd::scaling_top_count(256), 231);
  EXPECT_EQ(postsvd::scaling_top_count(1536), 1383);
  EXPECT_EQ(postsvd::scaling_top_count(8960), 8064);
}

TEST(Measures, BadInputIsRejected) {
  expect_error<postsvd::InvalidArgument>([] { postsvd::scaling_statistics({}); }, {"empty"});
  expect_error<postsvd::InvalidArgument>([] { postsvd::pooled_scaling_statistics({}); }, {"none"});
  expect_error<postsvd::InvalidArgument>([] { postsvd::pooled_scaling_statistics({{1.0}, {}}); }, {"column 1"});

  const auto base = axis_decomposition<double>(4, 3, {1.0, 1.0, 1.0});
  const auto post = axis_decomposition<double>(3, 4, {1.0, 1.0, 1.0});
  expect_error<postsvd::InvalidArgument>([&] { postsvd::measures_from(base, post, MeasureOptions{}); },
                                         {"U [4, 3]", "U [3, 3]", "V [4, 3]"});
  MeasureOptions negative;
  negative.leading_k = -1;
  expect_error<postsvd::InvalidArgument>([&] { postsvd::measures_from(base, base, negative); }, {"leading_k", "-1"});
}

TEST(Measures, CompareRejectsShapeMismatchNamingBothTensors) {
  std::mt19937_64 rng(1);
  const auto base_stored = store_linear<float>(gaussian(8, 6, rng), "base/model.layers.2.mlp.down_proj.weight");
  const auto post_stored = store_linear<float>(gaussian(6, 8, rng), "post/model.layers.2.mlp.down_proj.weight");
  auto backend = cpu_backend();
  expect_error<postsvd::InvalidArgument>(
      [&] { backend->compare({PairInput{base_stored.view, post_stored.view}}, MeasureOptions{}); },
      {"base/model.layers.2.mlp.down_proj.weight", "[8, 6]", "post/model.layers.2.mlp.down_proj.weight", "[6, 8]"});
}

TEST(Measures, ComparePrecisionsAgree) {
  std::mt19937_64 rng(10);
  const Matrix<double> a = gaussian(40, 24, rng);
  const Matrix<double> b = gaussian(40, 24, rng);
  const auto a32 = store_linear<float>(a, "a");
  const auto b32 = store_linear<float>(b, "b");
  auto backend = cpu_backend();
  const PairInput pair{a32.view, b32.view};
  const auto r32 = backend->compare({pair, pair}, options_for<float>());
  const auto r64 = backend->compare({pair}, options_for<double>());
  ASSERT_EQ(r32.size(), 2u);
  EXPECT_NEAR(r32[0].nf, r64[0].nf, 1e-5);
  EXPECT_DOUBLE_EQ(r32[0].nf, r32[1].nf);
  for (std::size_t j = 0; j < r64[0].scaling.size(); ++j) {
    EXPECT_NEAR(r32[0].scaling[j], r64[0].scaling[j], 1e-4 * r64[0].scaling[j]);
  }
}


// ---------- intruder dimensions ----------

template <class T>
class Intruders : public ::testing::Test {};
TYPED_TEST_SUITE(Intruders, Precisions);

template <class T>
MeasureOptions intruder_options(int64_t k, double epsilon, postsvd::IntruderSide side) {
  MeasureOptions options = options_for<T>(true);
  options.intruders.k = k;
  options.intruders.epsilon = epsilon;
  options.intruders.side = side;
  return options;
}

TYPED_TEST(Intruders, AddedOrthogonalDirectionsAreCountedOnTheirSide) {
  using T = TypeParam;
  std::mt19937_64 rng(2410);
  const int64_t added = 3;
  for (const bool input : {false, true}) {
    const postsvd::IntruderSide side = input ? postsvd::IntruderSide::Input : postsvd::IntruderSide::Output;
    const postsvd::IntruderSide other = input ? postsvd::IntruderSide::Output : postsvd::IntruderSide::Input;
    SCOPED_TRACE(std::string("intruders on the ") + postsvd::intruder_side_name(side) + " side");
    const IntruderPair pair = intruder_pair(30, 50, added, input, rng);
    // Stored as nn.Linear and as Conv1D: the side is the model's, not the storage's.
    const auto base_linear = store_linear<T>(pair.base, "base.w");
    const auto post_linear = store_linear<T>(pair.post, "post.w");
    const auto base_conv = store_conv1d<T>(pair.base, "base.c");
    const auto post_conv = store_conv1d<T>(pair.post, "post.c");
    for (const auto* views : {&base_linear.view, &base_conv.view}) {
      const postsvd::TensorView& post_view = views == &base_linear.view ? post_linear.view : post_conv.view;
      for (const int64_t k : {int64_t{1}, int64_t{2}, int64_t{10}, int64_t{100}}) {
        for (const double epsilon : {0.2, 0.5, 0.9}) {
          SCOPED_TRACE("k " + std::to_string(k) + ", epsilon " + std::to_string(epsilon));
          const PairMeasures r = compare_one(*views, post_view, intruder_options<T>(k, epsilon, side));
          const int64_t examined = std::min<int64_t>(k, 30);
          ASSERT_EQ(r.intruder_cosines.size(), static_cast<std::size_t>(examined));
          EXPECT_EQ(r.intruders, std::min(k, added));
          for (int64_t j = 0; j < examined; ++j) {
            // The added directions: |cosine| sigma_(m-1-i) / sqrt(sigma_(m-1-i)^2 + s_i^2) < 0.02; the others
            // are base singular triplets left as they were.
            if (j < added) EXPECT_LT(r.intruder_cosines[j], 0.02) << "j = " << j;
            if (j >= added) EXPECT_GT(r.intruder_cosines[j], 0.999) << "j = " << j;
          }
          // The cosines are the column maxima of the similarity matrix the comparison computed.
          const Matrix<double>& similarity = input ? r.sim_u : r.sim_v;
          for (int64_t j = 0; j < examined; ++j) {
            double largest = 0;
            for (int64_t i = 0; i < similarity.rows(); ++i) largest = std::max(largest, similarity(i, j));
            EXPECT_DOUBLE_EQ(r.intruder_cosines[j], largest) << "j = " << j;
          }
        }
      }
      // The other side has no room for a new direction: its top vectors all stay close to base ones.
      const PairMeasures r = compare_one(*views, post_view, intruder_options<T>(10, 0.5, other));
      EXPECT_EQ(r.intruders, 0);
    }
  }
}

TYPED_TEST(Intruders, SlightRotationHasNone) {
  using T = TypeParam;
  std::mt19937_64 rng(1228);
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{40, 40}, {60, 24}, {24, 60}}) {
    SCOPED_TRACE("shape [" + std::to_string(m) + ", " + std::to_string(n) + "]");
    const int64_t k = std::min(m, n);
    const KnownPair a = known_base(m, n, rng);
    const Matrix<double> post = compose(multiply(a.u0, false, small_rotation(k, 0.03, rng), false), a.spectrum,
                                        multiply(a.v0, false, small_rotation(k, 0.03, rng), false));
    const auto base_stored = store_linear<T>(a.base, "base.w");
    const auto post_stored = store_linear<T>(post, "post.w");
    for (const auto side : postsvd::intruder_sides()) {
      const PairMeasures r = compare_one(base_stored.view, post_stored.view, intruder_options<T>(10, 0.5, side));
      EXPECT_EQ(r.intruders, 0) << postsvd::intruder_side_name(side);
      for (double c : r.intruder_cosines) EXPECT_GT(c, 0.9);
      // epsilon = 1 counts every vector that is not exactly a base one (in double: no cosine rounds to 1).
      if (std::is_same<T, double>::value) {
        EXPECT_EQ(compare_one(base_stored.view, post_stored.view, intruder_options<T>(10, 1.0, side)).intruders, 10);
      }
    }
  }
}

TEST(Intruders, CountRuleAndOptions) {
  EXPECT_EQ(postsvd::count_intruders({}, 0.5), 0);
  EXPECT_EQ(postsvd::count_intruders({0.1, 0.5, 0.49, 0.9}, 0.5), 2);  // strictly below
  EXPECT_EQ(postsvd::count_intruders({0.1, 0.5}, 0.0), 0);
  EXPECT_EQ(postsvd::intruder_vectors(postsvd::IntruderOptions{}, 4), 4);
  EXPECT_EQ(postsvd::intruder_vectors(postsvd::IntruderOptions{}, 4096), 10);
  EXPECT_EQ(postsvd::parse_intruder_side("input"), postsvd::IntruderSide::Input);
  EXPECT_STREQ(postsvd::intruder_side_name(postsvd::intruder_sides().front()), "output");
  expect_error<postsvd::InvalidArgument>([] { postsvd::parse_intruder_side("left", "--intruder-side"); },
                                         {"--intruder-side", "'output', 'input'", "'left'"});
  const auto base = axis_decomposition<double>(4, 3, {1.0, 1.0, 1.0});
  for (const auto& [k, epsilon, words] : std::vector<std::tuple<int64_t, double, std::string>>{
           {0, 0.5, "intruder_k"}, {10, -0.1, "intruder_epsilon"}, {10, 1.5, "intruder_epsilon"},
           {10, std::nan(""), "intruder_epsilon"}}) {
    MeasureOptions options;
    options.intruders.k = k;
    options.intruders.epsilon = epsilon;
    expect_error<postsvd::InvalidArgument>([&] { postsvd::measures_from(base, base, options); }, {words});
    std::mt19937_64 rng(3);
    const auto stored = store_linear<float>(gaussian(6, 4, rng), "w");
    expect_error<postsvd::InvalidArgument>(
        [&] { cpu_backend()->compare({PairInput{stored.view, stored.view}}, options); }, {words});
  }
}

}  // namespace

namespace {

TEST(CpuBackendCompare, SideBySideAndSequentialPairsAgree) {
  // num_threads = 2 decomposes base and post side by side; 1 runs them in sequence.
  std::mt19937_64 rng(21);
  const auto a = store_linear<float>(gaussian(90, 50, rng), "a");
  const auto b = store_linear<float>(gaussian(90, 50, rng), "b");
  const std::vector<PairInput> pairs = {{a.view, b.view}, {b.view, a.view}};
  const auto sequential = cpu_backend(1)->compare(pairs, MeasureOptions{});
  const auto side_by_side = cpu_backend(2)->compare(pairs, MeasureOptions{});
  ASSERT_EQ(sequential.size(), 2u);
  ASSERT_EQ(side_by_side.size(), 2u);
  for (std::size_t p = 0; p < pairs.size(); ++p) {
    EXPECT_NEAR(sequential[p].nf, side_by_side[p].nf, 1e-6);
    for (std::size_t j = 0; j < sequential[p].scaling.size(); ++j) {
      EXPECT_NEAR(sequential[p].scaling[j], side_by_side[p].scaling[j], 1e-5 * sequential[p].scaling[j]);
    }
  }
  // Swapping base and post inverts every ratio and keeps NF (||Q^T - I||_F = ||Q - I||_F).
  for (std::size_t j = 0; j < sequential[0].scaling.size(); ++j) {
    EXPECT_NEAR(sequential[0].scaling[j] * sequential[1].scaling[j], 1.0, 1e-5);
  }
  EXPECT_NEAR(sequential[0].nf, sequential[1].nf, 1e-6);
}

TEST(CpuBackendCompare, ErrorsOfEitherSideNameTheTensor) {
  std::mt19937_64 rng(22);
  const auto good = store_linear<float>(gaussian(12, 8, rng), "good.weight");
  auto bad = store_linear<float>(gaussian(12, 8, rng), "post/model.layers.5.self_attn.v_proj.weight");
  bad.storage[17] = std::numeric_limits<float>::infinity();
  for (int threads : {1, 2}) {
    auto backend = cpu_backend(threads);
    expect_error<postsvd::InvalidArgument>([&] { backend->compare({PairInput{good.view, bad.view}}, MeasureOptions{}); },
                                           {"post/model.layers.5.self_attn.v_proj.weight"});
    expect_error<postsvd::InvalidArgument>([&] { backend->compare({PairInput{bad.view, good.view}}, MeasureOptions{}); },
                                           {"post/model.layers.5.self_attn.v_proj.weight"});
  }
}

}  // namespace
