// Constructions 9-16 and Eq. 13 against direct (naive loop) computations and
// identities with known answers, in double and float.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "detail/lapack.h"
#include "linalg_test_util.h"
#include "postsvd/constructions.h"

namespace postsvd {
namespace {

using Mat = Matrix<double>;
using postsvd_test::compose;
using postsvd_test::multiply;
using postsvd_test::random_orthonormal;

Decomposition<double> random_decomposition(int64_t in, int64_t out, std::mt19937_64& rng, double scale = 1.0) {
  const int64_t k = std::min(in, out);
  Decomposition<double> d;
  d.U = random_orthonormal(in, k, rng);
  d.V = random_orthonormal(out, k, rng);
  d.S.resize(static_cast<std::size_t>(k));
  for (int64_t j = 0; j < k; ++j) d.S[static_cast<std::size_t>(j)] = scale * (3.0 + static_cast<double>(k - j));
  return d;
}

Decomposition<double> copy_of(const Decomposition<double>& d) { return {d.U.clone(), d.S, d.V.clone()}; }

template <class T>
Decomposition<T> cast(const Decomposition<double>& d) {
  Decomposition<T> out;
  out.U = Matrix<T>(d.U.rows(), d.U.cols());
  out.V = Matrix<T>(d.V.rows(), d.V.cols());
  for (int64_t i = 0; i < d.U.size(); ++i) out.U.data()[i] = static_cast<T>(d.U.data()[i]);
  for (int64_t i = 0; i < d.V.size(); ++i) out.V.data()[i] = static_cast<T>(d.V.data()[i]);
  for (double s : d.S) out.S.push_back(static_cast<T>(s));
  return out;
}

template <class T>
double max_abs_diff(const Matrix<T>& a, const Mat& b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  double worst = 0;
  for (int64_t i = 0; i < b.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]));
  return worst;
}

// The reference formulas of the constructions (docs/measures.md), by loops.
Mat direct(int number, const Decomposition<double>& base, const Decomposition<double>& post,
           const Decomposition<double>& ref, double alpha) {
  std::vector<double> scaled = base.S;
  for (double& s : scaled) s *= alpha;
  switch (number) {
    case 9: return compose(post.U, scaled, post.V);
    case 14: return compose(post.U, base.S, post.V);
    case 10: return compose(post.U, post.S, base.V);
    case 11: return compose(post.U, post.S, multiply(base.V, false, multiply(base.U, true, post.U, false), false));
    case 12: return compose(post.U, post.S, multiply(ref.V, false, multiply(ref.U, true, post.U, false), false));
    case 15: return compose(base.U, post.S, post.V);
    case 16: return compose(multiply(base.U, false, multiply(base.V, true, post.V, false), false), post.S, post.V);
  }
  ADD_FAILURE() << "no direct formula for " << number;
  return Mat();
}

template <class T>
class ConstructionTyped : public ::testing::Test {};
using Precisions = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ConstructionTyped, Precisions);

TYPED_TEST(ConstructionTyped, EveryConstructionMatchesDirectComputation) {
  using T = TypeParam;
  const double tolerance = std::is_same<T, float>::value ? 2e-4 : 1e-11;
  std::mt19937_64 rng(7);
  for (auto shape : {std::pair<int64_t, int64_t>{7, 5}, {5, 7}, {6, 6}}) {
    const auto base = random_decomposition(shape.first, shape.second, rng);
    const auto post = random_decomposition(shape.first, shape.second, rng, 0.9);
    const auto ref = random_decomposition(shape.first, shape.second, rng, 1.1);
    for (int number : {9, 10, 11, 12, 14, 15, 16}) {
      const double alpha = 0.7;
      const Decomposition<T> b = cast<T>(base), p = cast<T>(post), r = cast<T>(ref);
      const Matrix<T> w = construct_weight(parse_construction(number), b, p, &r, alpha);
      const Mat expected = direct(number, base, post, ref, alpha);
      EXPECT_LT(max_abs_diff(w, expected), tolerance * 10)
          << "construction " << number << " shape [" << shape.first << ", " << shape.second << "]";
    }
  }
}

TEST(Construction, NineWithAlphaOneEqualsFourteen) {
  std::mt19937_64 rng(1);
  const auto base = random_decomposition(8, 5, rng), post = random_decomposition(8, 5, rng);
  const Mat nine = construct_weight(Construction::ReplaceScaled, base, post, 1.0);
  const Mat fourteen = construct_weight(Construction::Replace, base, post, 123.0);  // alpha ignored
  EXPECT_EQ(max_abs_diff(nine, fourteen), 0.0);
  const Mat scaled = construct_weight(Construction::ReplaceScaled, base, post, 0.5);
  EXPECT_LT(max_abs_diff(scaled, [&] {
              Mat half = fourteen.clone();
              for (int64_t i = 0; i < half.size(); ++i) half.data()[i] *= 0.5;
              return half;
            }()),
            1e-13);
}

// Post built as (U Q)(alpha S)(V Q)^T: 11 and 16 give the post weights back.
TEST(Construction, RestorationReturnsPostOnACoRotatedPair) {
  std::mt19937_64 rng(3);
  for (auto shape : {std::pair<int64_t, int64_t>{9, 6}, {6, 9}, {7, 7}}) {
    const int64_t k = std::min(shape.first, shape.second);
    const auto base = random_decomposition(shape.first, shape.second, rng);
    const Mat q = random_orthonormal(k, k, rng);
    Decomposition<double> post;
    post.U = multiply(base.U, false, q, false);
    post.V = multiply(base.V, false, q, false);
    post.S = base.S;
    for (double& s : post.S) s *= 0.9;
    const Mat w_post = compose(post.U, post.S, post.V);
    for (Construction c : {Construction::RestoreOutput, Construction::RestoreInput}) {
      const Mat w = construct_weight(c, base, post, 1.0);
      EXPECT_LT(max_abs_diff(w, w_post), 1e-12) << construction_name(c);
    }
    // 12 with ref = post restores post too; 10 and 15 do not (Q is not I).
    const Mat w12 = construct_weight(Construction::RestoreFromRef, base, post, &post, 1.0);
    EXPECT_LT(max_abs_diff(w12, w_post), 1e-12);
    EXPECT_GT(max_abs_diff(construct_weight(Construction::AblateOutput, base, post, 1.0), w_post), 1e-3);
    // Eq. 13 on this pair: Q1 = Q2 = Q, zero residual angles.
    const SharedRotation rot = shared_rotation(base, post, true);
    EXPECT_LT(max_abs_diff(rot.q, q), 1e-10);
    EXPECT_LT(rot.residual1.max_deg, 1e-5);
    EXPECT_LT(rot.residual2.max_deg, 1e-5);
  }
}

// 11 and 16 do not depend on the signs of singular pairs: flip some in post.
TEST(Construction, RestorationIsSignInvariant) {
  std::mt19937_64 rng(5);
  const auto base = random_decomposition(8, 6, rng), post = random_decomposition(8, 6, rng);
  auto flipped = copy_of(post);
  for (int64_t j : {0, 3}) {
    for (int64_t i = 0; i < flipped.U.rows(); ++i) flipped.U(i, j) = -flipped.U(i, j);
    for (int64_t i = 0; i < flipped.V.rows(); ++i) flipped.V(i, j) = -flipped.V(i, j);
  }
  auto base_flipped = copy_of(base);
  for (int64_t i = 0; i < base_flipped.U.rows(); ++i) base_flipped.U(i, 2) = -base_flipped.U(i, 2);
  for (int64_t i = 0; i < base_flipped.V.rows(); ++i) base_flipped.V(i, 2) = -base_flipped.V(i, 2);
  for (Construction c : {Construction::RestoreOutput, Construction::RestoreInput}) {
    const Mat a = construct_weight(c, base, post, 1.0);
    const Mat b = construct_weight(c, base_flipped, flipped, 1.0);
    EXPECT_LT(max_abs_diff(a, b), 1e-12) << construction_name(c);
  }
}

// A model constructed with itself: 10, 11, 14, 15, 16 (and 9 with alpha' = 1) give W back.
TYPED_TEST(ConstructionTyped, ConstructionOfAModelWithItselfReturnsIt) {
  using T = TypeParam;
  const double tolerance = std::is_same<T, float>::value ? 1e-5 : 1e-13;
  std::mt19937_64 rng(11);
  const auto d = random_decomposition(7, 4, rng);
  const Mat w = compose(d.U, d.S, d.V);
  const Decomposition<T> same = cast<T>(d);
  for (int number : {9, 10, 11, 12, 14, 15, 16}) {
    const Matrix<T> out = construct_weight(parse_construction(number), same, same, &same, 1.0);
    EXPECT_LT(max_abs_diff(out, w), tolerance * 20) << "construction " << number;
  }
}

TEST(Construction, InvalidArguments) {
  std::mt19937_64 rng(2);
  const auto a = random_decomposition(6, 4, rng), b = random_decomposition(6, 5, rng), c = random_decomposition(6, 4, rng);
  EXPECT_THROW(construct_weight(Construction::AblateOutput, a, b, 1.0), InvalidArgument);
  EXPECT_THROW(construct_weight<double>(Construction::RestoreFromRef, a, c, nullptr, 1.0), InvalidArgument);
  EXPECT_THROW(construct_weight(Construction::RestoreFromRef, a, c, &b, 1.0), InvalidArgument);
  for (double alpha : {0.0, -1.0, std::nan(""), double(INFINITY)})
    EXPECT_THROW(construct_weight(Construction::ReplaceScaled, a, c, alpha), InvalidArgument) << alpha;
  for (int number : {0, 8, 13, 17, -9}) EXPECT_THROW(parse_construction(number), InvalidArgument) << number;
  try {
    parse_construction(13);
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("9, 10, 11, 12, 14, 15, 16"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(construction_needs_ref(Construction::RestoreFromRef));
  EXPECT_FALSE(construction_needs_ref(Construction::RestoreOutput));
  EXPECT_TRUE(construction_uses_alpha(Construction::ReplaceScaled));
  EXPECT_FALSE(construction_uses_alpha(Construction::Replace));
}

TEST(Construction, Table4Rounding) {
  EXPECT_DOUBLE_EQ(table4_alpha(0.9071), 0.9);
  EXPECT_DOUBLE_EQ(table4_alpha(0.9710), 1.0);
  EXPECT_DOUBLE_EQ(table4_alpha(1.3551), 1.4);
  EXPECT_DOUBLE_EQ(table4_alpha(0.9513), 1.0);
  EXPECT_DOUBLE_EQ(table4_alpha(1.0041), 1.0);
}

// Rotation by theta in the (0, 1) plane and by phi in the (2, 3) plane, conjugated by P.
Mat plane_rotation(int64_t k, double theta, double phi, const Mat& p) {
  Mat r(k, k);
  for (int64_t i = 0; i < k; ++i) r(i, i) = 1.0;
  r(0, 0) = std::cos(theta); r(1, 0) = std::sin(theta); r(0, 1) = -std::sin(theta); r(1, 1) = std::cos(theta);
  if (k >= 4) { r(2, 2) = std::cos(phi); r(3, 2) = std::sin(phi); r(2, 3) = -std::sin(phi); r(3, 3) = std::cos(phi); }
  return multiply(multiply(p, false, r, false), false, p, true);
}

TEST(Eq13, RotationAnglesOfAKnownRotation) {
  std::mt19937_64 rng(4);
  const int64_t k = 6;
  const Mat p = random_orthonormal(k, k, rng);
  const double deg = M_PI / 180.0;
  const std::vector<double> angles = rotation_angles_deg(plane_rotation(k, 30 * deg, 5 * deg, p));
  const std::vector<double> expected = {0, 0, 5, 5, 30, 30};
  ASSERT_EQ(angles.size(), expected.size());
  for (std::size_t i = 0; i < angles.size(); ++i) EXPECT_NEAR(angles[i], expected[i], 1e-5) << i;
  // A reflection: eigenvalue -1 gives 180 degrees.
  Mat reflection(3, 3);
  reflection(0, 0) = -1; reflection(1, 1) = 1; reflection(2, 2) = 1;
  EXPECT_NEAR(rotation_angles_deg(reflection).back(), 180.0, 1e-9);
}

TEST(Eq13, SharedRotationIsTheMidpoint) {
  std::mt19937_64 rng(8);
  const int64_t k = 8;
  const Mat q = random_orthonormal(k, k, rng);
  const Mat p = random_orthonormal(k, k, rng);
  const double deg = M_PI / 180.0;
  // Q1 = Q R(+t), Q2 = Q R(-t): shared Q, residual angles t (twice) and s (twice).
  // Small angles take the Newton-Schulz path for polar((P1 + P2) / 2); large ones the SVD.
  for (const auto& ts : {std::pair<double, double>{12, 4}, std::pair<double, double>{70, 50}}) {
    SCOPED_TRACE(ts.first);
    const Mat q1 = multiply(q, false, plane_rotation(k, ts.first * deg, ts.second * deg, p), false);
    const Mat q2 = multiply(q, false, plane_rotation(k, -ts.first * deg, -ts.second * deg, p), false);
    const SharedRotation rot = shared_rotation(q1, q2, true);
    EXPECT_LT(max_abs_diff(rot.q, q), 1e-9);
    EXPECT_NEAR(rot.residual1.max_deg, ts.first, 1e-6);
    EXPECT_NEAR(rot.residual2.max_deg, ts.first, 1e-6);
    EXPECT_NEAR(rot.residual1.mean_deg, (2 * ts.first + 2 * ts.second) / k, 1e-6);
    EXPECT_NEAR(rot.defect1, 0.0, 1e-12);
    // Q1 = Q dQ1 exactly.
    EXPECT_LT(max_abs_diff(multiply(rot.q, false, rot.dq1, false), q1), 1e-12);
    EXPECT_LT(max_abs_diff(multiply(rot.q, false, rot.dq2, false), q2), 1e-12);
  }
}

TEST(Eq13, EqualRotationsGiveZeroAnglesAndNearOrthogonalInputsUsePolarFactors) {
  std::mt19937_64 rng(9);
  const int64_t k = 10;
  const Mat q = random_orthonormal(k, k, rng);
  const SharedRotation same = shared_rotation(q, q, true);
  EXPECT_LT(max_abs_diff(same.q, q), 1e-12);
  EXPECT_LT(same.residual1.max_deg, 1e-5);
  EXPECT_LT(same.residual2.max_deg, 1e-5);
  // Q1 = 0.9 Q (a shrunken, non-orthogonal side) and Q2 = Q: polar(Q1) = Q.
  Mat shrunk = q.clone();
  for (int64_t i = 0; i < shrunk.size(); ++i) shrunk.data()[i] *= 0.9;
  const SharedRotation polar = shared_rotation(shrunk, q, true);
  EXPECT_LT(max_abs_diff(polar.q, q), 1e-10);
  EXPECT_LT(polar.residual1.max_deg, 1e-5);
  EXPECT_NEAR(polar.defect1, 0.19 * std::sqrt(double(k)) / k, 1e-12);
  EXPECT_LT(max_abs_diff(multiply(polar.q, false, polar.dq1, false), shrunk), 1e-12);
  EXPECT_THROW(shared_rotation(Mat(3, 3), Mat(4, 4), false), InvalidArgument);
}

TEST(Eq13, PolarFactorMatchesBothPaths) {
  std::mt19937_64 rng(12);
  const int64_t k = 9;
  // Far from orthogonal: the SVD path. Near: Newton-Schulz. Both must give an
  // orthogonal P with P^T A symmetric positive definite.
  const Mat far = postsvd_test::gaussian(k, k, rng);
  Mat near = random_orthonormal(k, k, rng);
  const Mat noise = postsvd_test::gaussian(k, k, rng);
  for (int64_t i = 0; i < near.size(); ++i) near.data()[i] += 0.01 * noise.data()[i];
  for (const Mat* a : {&far, static_cast<const Mat*>(&near)}) {
    const Mat p = polar_factor(*a);
    const Mat gram = multiply(p, true, p, false);
    const Mat h = multiply(p, true, *a, false);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < k; ++c) {
        EXPECT_NEAR(gram(r, c), r == c ? 1.0 : 0.0, 1e-11);
        EXPECT_NEAR(h(r, c), h(c, r), 1e-10);
      }
    for (int64_t r = 0; r < k; ++r) EXPECT_GT(h(r, r), 0.0);
  }
}

// Eq. 13 for the decompositions of a non-square pair: Q1 on the long side is
// only near-orthogonal; the summary is still finite and Q orthogonal.
TEST(Eq13, NonSquarePair) {
  std::mt19937_64 rng(13);
  const auto base = random_decomposition(12, 5, rng), post = random_decomposition(12, 5, rng);
  const SharedRotation rot = shared_rotation(base, post, true);
  EXPECT_EQ(rot.k, 5);
  EXPECT_GT(rot.defect1, 1e-3);  // two random 5-frames in R^12
  EXPECT_LT(rot.defect2, 1e-12);  // the square side
  EXPECT_TRUE(std::isfinite(rot.residual1.mean_deg));
  const Mat gram = multiply(rot.q, true, rot.q, false);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 5; ++c) EXPECT_NEAR(gram(r, c), r == c ? 1.0 : 0.0, 1e-11);
}

}  // namespace
}  // namespace postsvd
