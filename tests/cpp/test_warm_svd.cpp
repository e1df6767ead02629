// The warm-started SVD (cpu/warm_svd.h) against known answers: a post matrix
// U0 R_u diag(s') (V0 R_v)^T whose rotations R are near the identity, started
// from the base U0 diag(s) V0^T; pairs that are not close fall back to the cold
// SVD; the measures match the cold path's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "backend_test_util.h"
#include "cpu/cpu_backend.h"
#include "cpu/warm_svd.h"
#include "linalg_test_util.h"
#include "warm_test_util.h"
#include "postsvd/backend.h"
#include "postsvd/error.h"
#include "postsvd/measures.h"

namespace {

using namespace postsvd_test;
using postsvd::Decomposition;
using postsvd::WarmReport;

/// The post of `pair` decomposed warm from the base's cold factors, in precision T.
template <class T>
Decomposition<T> warm_from_base(const ClosePair& pair, WarmReport& report,
                                const postsvd::cpu::WarmSettings& settings = postsvd::cpu::default_warm_settings<T>()) {
  auto backend = cpu_backend();
  const auto base = store_linear<T>(pair.base, "base");
  const auto post = store_linear<T>(pair.post, "post");
  return postsvd::cpu::warm_svd<T>(post.view, decompose<T>(*backend, base.view), settings, &report);
}

template <class T>
class CpuWarmSvd : public ::testing::Test {};
using Precisions = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CpuWarmSvd, Precisions);

TYPED_TEST(CpuWarmSvd, ClosePairsConvergeInAFewSweepsToTheKnownAnswer) {
  using T = TypeParam;
  // Tall, wide, square; q above and below the block size (64); the A-route and the Gram route (p > 3q).
  for (const auto& shape : std::vector<std::pair<int64_t, int64_t>>{{150, 90}, {90, 150}, {40, 40}, {300, 70}}) {
    SCOPED_TRACE(::testing::Message() << "shape " << shape.first << "x" << shape.second);
    for (double epsilon : {1e-3, 1e-2}) {
      const ClosePair pair = close_pair(shape.first, shape.second, epsilon, 7);
      WarmReport report;
      const Decomposition<T> warm = warm_from_base<T>(pair, report);
      EXPECT_FALSE(report.fell_back) << "initial off " << report.initial_off;
      EXPECT_GE(report.sweeps, 1);
      EXPECT_LE(report.sweeps, 6);
      EXPECT_LT(report.initial_off, 0.2);
      expect_valid_svd(warm, pair.post, pair.s_post);
      // The bar in float32: orthogonality and reconstruction <= 1e-5, sigma within 1e-5 relative.
      EXPECT_LE(orthogonality_error(to_double(warm.U)), 1e-5);
      EXPECT_LE(orthogonality_error(to_double(warm.V)), 1e-5);
      for (std::size_t j = 0; j < warm.S.size(); ++j)
        EXPECT_NEAR(warm.S[j], pair.s_post[j], 1e-5 * pair.s_post[j]) << "sigma " << j;
    }
  }
}

TYPED_TEST(CpuWarmSvd, MeasuresMatchTheFloat64ColdPath) {
  using T = TypeParam;
  auto backend = cpu_backend();
  const ClosePair pair = close_pair(120, 80, 1e-2, 11);
  const auto base = store_linear<T>(pair.base, "base");
  const auto post = store_linear<T>(pair.post, "post");
  postsvd::MeasureOptions options;
  options.full_matrices = true;
  options.precision = postsvd::Precision::F64;  // the reference: cold, float64
  options.warm_start = postsvd::WarmStartMode::Off;
  const auto cold = std::move(backend->compare({{base.view, post.view}}, options).at(0));
  options.precision = precision_of<T>();
  options.warm_start = postsvd::WarmStartMode::Always;
  const auto warm = std::move(backend->compare({{base.view, post.view}}, options).at(0));
  EXPECT_EQ(cold.warm_sweeps, -1);
  EXPECT_GE(warm.warm_sweeps, 1);
  EXPECT_NEAR(warm.nf, cold.nf, 1e-4 * std::max(1.0, cold.nf));
  for (std::size_t j = 0; j < cold.scaling.size(); ++j) {
    EXPECT_NEAR(warm.scaling[j], cold.scaling[j], 1e-4) << j;
    EXPECT_NEAR(warm.iorth_diag[j], cold.iorth_diag[j], 1e-4) << j;
  }
  for (int64_t i = 0; i < cold.sim_u.size(); ++i) {
    EXPECT_NEAR(warm.sim_u.data()[i], cold.sim_u.data()[i], 1e-4);
    EXPECT_NEAR(warm.sim_v.data()[i], cold.sim_v.data()[i], 1e-4);
  }
}

TYPED_TEST(CpuWarmSvd, APairThatIsNotCloseFallsBackToTheColdSvd) {
  using T = TypeParam;
  ClosePair pair = close_pair(100, 70, 1e-3, 3);
  pair.base = close_pair(100, 70, 1e-3, 4).base;  // other random factors: like base vs base_alt
  WarmReport report;
  const Decomposition<T> warm = warm_from_base<T>(pair, report);
  EXPECT_TRUE(report.fell_back);
  EXPECT_EQ(report.sweeps, -1);
  EXPECT_GT(report.initial_off, postsvd::cpu::default_warm_settings<T>().max_initial_off);
  expect_valid_svd(warm, pair.post, pair.s_post);
}

TYPED_TEST(CpuWarmSvd, ExactlyRankDeficientPostStaysExact) {
  using T = TypeParam;
  const ClosePair pair = close_pair(110, 80, 1e-3, 5, /*zero_tail=*/10);
  WarmReport report;
  const Decomposition<T> warm = warm_from_base<T>(pair, report);
  // The zero singular values leave U's null-space columns undetermined by W V: the
  // orthogonality rule sends it to the cold SVD, which completes U.
  EXPECT_TRUE(report.fell_back);
  expect_valid_svd(warm, pair.post, pair.s_post);
}

TYPED_TEST(CpuWarmSvd, OneSidedJacobiCandidateGivesTheSameAnswer) {
  using T = TypeParam;
  postsvd::cpu::WarmSettings settings = postsvd::cpu::default_warm_settings<T>();
  settings.method = postsvd::cpu::WarmMethod::Gesvj;
  const ClosePair pair = close_pair(130, 90, 1e-2, 9);
  WarmReport report;
  const Decomposition<T> warm = warm_from_base<T>(pair, report, settings);
  EXPECT_FALSE(report.fell_back);
  EXPECT_GE(report.sweeps, 1);
  expect_valid_svd(warm, pair.post, pair.s_post);
}

TEST(CpuWarmSvdErrors, NanWeightsAndMismatchedStartsNameTheTensor) {
  auto backend = cpu_backend();
  const ClosePair pair = close_pair(30, 20, 1e-3, 1);
  auto post = store_linear<float>(pair.post, "layers.0.post");
  const auto base = store_linear<float>(pair.base, "layers.0.base");
  const Decomposition<float> start = backend->decompose_f32(base.view);
  post.storage[17] = std::numeric_limits<float>::quiet_NaN();
  try {
    backend->decompose_warm_f32(post.view, start, nullptr);
    FAIL() << "expected InvalidArgument";
  } catch (const postsvd::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("layers.0.post"), std::string::npos) << e.what();
  }
  const auto other = store_linear<float>(close_pair(20, 30, 1e-3, 2).base, "other");
  try {
    backend->decompose_warm_f32(other.view, start, nullptr);
    FAIL() << "expected InvalidArgument";
  } catch (const postsvd::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("warm start of tensor 'other'"), std::string::npos) << e.what();
  }
}

TEST(CpuWarmSvdErrors, ModeNamesParseBackAndABadNameListsThemAll) {
  const auto& modes = postsvd::warm_start_modes();
  ASSERT_EQ(modes.size(), 3u);
  EXPECT_EQ(modes.front(), postsvd::WarmStartMode::Auto);  // the default, first for the CLI and the bindings
  for (postsvd::WarmStartMode mode : modes)
    EXPECT_EQ(postsvd::parse_warm_start_mode(postsvd::warm_start_mode_name(mode)), mode);
  try {
    postsvd::parse_warm_start_mode("sometimes", "--warm-start");
    FAIL() << "expected InvalidArgument";
  } catch (const postsvd::InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--warm-start"), std::string::npos) << what;
    EXPECT_NE(what.find("'sometimes'"), std::string::npos) << what;
    for (postsvd::WarmStartMode mode : modes)
      EXPECT_NE(what.find(std::string("'") + postsvd::warm_start_mode_name(mode) + "'"), std::string::npos) << what;
  }
}

}  // namespace
