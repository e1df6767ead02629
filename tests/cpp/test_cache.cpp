// compare_cached: the same measures as Backend::compare, each decomposition
// computed once and then loaded, in both layouts and precisions.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <atomic>
#include <vector>

#include "backend_test_util.h"
#include "linalg_test_util.h"
#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/error.h"
#include "reader_test_util.h"

namespace postsvd {
namespace {

namespace fs = std::filesystem;
using postsvd_test::compose;
using postsvd_test::cpu_backend;
using postsvd_test::decaying_spectrum;
using postsvd_test::random_orthonormal;
using postsvd_test::store_conv1d;
using postsvd_test::store_linear;

template <class T>
class CompareCached : public ::testing::Test {};
using Precisions = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CompareCached, Precisions);

TYPED_TEST(CompareCached, MatchesBackendCompareAndLoadsOnTheSecondCall) {
  using T = TypeParam;
  std::mt19937_64 rng(42);
  // A tall pair (linear layout) and a wide pair (Conv1D layout); post = base rotated and scaled.
  const auto s = decaying_spectrum(24);
  const auto u = random_orthonormal(40, 24, rng), v = random_orthonormal(24, 24, rng);
  const auto r = random_orthonormal(24, 24, rng);
  std::vector<double> scaled(s);
  for (double& x : scaled) x *= 0.9;
  const auto w_base = compose(u, s, v);
  const auto w_post = compose(postsvd_test::multiply(u, false, r, false), scaled, postsvd_test::multiply(v, false, r, false));
  const auto wide_base = compose(random_orthonormal(24, 24, rng), s, random_orthonormal(56, 24, rng));
  const auto wide_post = compose(random_orthonormal(24, 24, rng), scaled, random_orthonormal(56, 24, rng));
  const auto a = store_linear<T>(w_base, "tall.base"), b = store_linear<T>(w_post, "tall.post");
  const auto c = store_conv1d<T>(wide_base, "wide.base"), d = store_conv1d<T>(wide_post, "wide.post");
  const std::vector<PairInput> pairs = {{a.view, b.view}, {c.view, d.view}};

  MeasureOptions options;
  options.precision = std::is_same<T, float>::value ? Precision::F32 : Precision::F64;
  options.full_matrices = true;
  const double tol = std::is_same<T, float>::value ? 2e-5 : 1e-11;

  auto backend = cpu_backend();
  const auto plain = backend->compare(pairs, options);
  const postsvd_test::TempDir temp;
  const fs::path folder = temp.file(std::is_same<T, float>::value ? "f32" : "f64");
  FactorCache cache(folder.string());
  CacheCounts cold_counts, warm_counts;
  const auto cold = compare_cached(*backend, cache, pairs, options, &cold_counts);
  const auto warm = compare_cached(*backend, cache, pairs, options, &warm_counts);
  EXPECT_EQ(cold_counts.computed, 4);
  EXPECT_EQ(cold_counts.loaded, 0);
  EXPECT_EQ(warm_counts.computed, 0);
  EXPECT_EQ(warm_counts.loaded, 4);
  ASSERT_EQ(cold.size(), 2u);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    EXPECT_NEAR(cold[i].nf, plain[i].nf, tol);
    EXPECT_NEAR(cold[i].scaling_stats.mean, plain[i].scaling_stats.mean, tol);
    EXPECT_EQ(warm[i].nf, cold[i].nf);  // the same factors, loaded
    for (int64_t j = 0; j < cold[i].k; ++j) {
      EXPECT_NEAR(cold[i].sigma_base[j], plain[i].sigma_base[j], tol * plain[i].sigma_base[0]);
      EXPECT_EQ(warm[i].sigma_post[j], cold[i].sigma_post[j]);
      EXPECT_NEAR(cold[i].iorth_diag[j], plain[i].iorth_diag[j], 50 * tol);
    }
    ASSERT_EQ(warm[i].iorth.size(), cold[i].iorth.size());
    for (int64_t e = 0; e < cold[i].iorth.size(); ++e) EXPECT_EQ(warm[i].iorth.data()[e], cold[i].iorth.data()[e]);
  }
  EXPECT_NEAR(cold[0].nf, 0.0, 1e3 * tol);     // related by one rotation: NF ~ 0
  EXPECT_GT(cold[1].nf, 0.05);                 // unrelated
  fs::remove_all(folder);
}

TEST(CompareCachedErrors, MismatchedShapesNameBothTensors) {
  std::mt19937_64 rng(7);
  const auto a = store_linear<float>(postsvd_test::gaussian(8, 6, rng), "layer.0.base");
  const auto b = store_linear<float>(postsvd_test::gaussian(6, 8, rng), "layer.0.post");
  const postsvd_test::TempDir temp;
  const fs::path folder = temp.file("errors");
  FactorCache cache(folder.string());
  auto backend = cpu_backend();
  try {
    compare_cached(*backend, cache, {{a.view, b.view}}, MeasureOptions{});
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("layer.0.base"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("layer.0.post"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(folder));  // nothing written for a refused call
  fs::remove_all(folder);
}

// Threads storing the same key at once (two comparisons of one base in one
// process): each write goes through its own temporary file, the last rename wins,
// and the file is always whole.
TEST(FactorCacheStore, ConcurrentStoresOfOneKeyLeaveAWholeFile) {
  std::mt19937_64 rng(3);
  const auto a = store_linear<float>(postsvd_test::gaussian(20, 12, rng), "shared");
  auto backend = cpu_backend();
  const Decomposition<float> d = backend->decompose_f32(a.view);
  const postsvd_test::TempDir temp;
  const fs::path folder = temp.file("threads");
  FactorCache cache(folder.string());
  const std::string key = FactorCache::key(a.view, Precision::F32);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 40; ++i) {
        try {
          cache.store(key, d);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  Decomposition<float> loaded;
  ASSERT_TRUE(cache.load(key, loaded));
  EXPECT_EQ(loaded.S, d.S);
  int files = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);  // no temporary left behind
  fs::remove_all(folder);
}

// Backend::decompose_pair: side by side on two threads, one after the other on
// one; the same factors either way, and the base's error wins.
TEST(DecomposePair, SideBySideEqualsOneAfterTheOther) {
  std::mt19937_64 rng(5);
  const auto a = store_linear<double>(postsvd_test::gaussian(30, 20, rng), "pair.base");
  const auto b = store_conv1d<double>(postsvd_test::gaussian(30, 20, rng), "pair.post");
  BackendOptions two, one;
  two.num_threads = 2;
  one.num_threads = 1;
  auto side_by_side = make_backend(two);
  auto in_turn = make_backend(one);
  const auto p = side_by_side->decompose_pair_f64(a.view, b.view);
  const auto q = in_turn->decompose_pair_f64(a.view, b.view);
  const auto single = in_turn->decompose_f64(b.view);
  for (std::size_t j = 0; j < p.first.S.size(); ++j) {
    EXPECT_NEAR(p.first.S[j], q.first.S[j], 1e-12 * q.first.S[0]);
    EXPECT_NEAR(p.second.S[j], single.S[j], 1e-12 * single.S[0]);
  }
  EXPECT_LT(postsvd_test::orthogonality_error(postsvd_test::to_double(p.second.U)), 1e-12);

  auto bad_a = a;
  auto bad_b = b;
  bad_a.storage[3] = std::nan("");
  bad_b.storage[4] = std::nan("");
  bad_a.view.data = bad_a.storage.data();
  bad_b.view.data = bad_b.storage.data();
  for (Backend* backend : {side_by_side.get(), in_turn.get()}) {
    try {
      backend->decompose_pair_f32(bad_a.view, bad_b.view);
      FAIL() << "expected an error for NaN weights";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("pair.base"), std::string::npos) << e.what();
    }
  }
}

// The cache is shared across backends: factors computed on the GPU serve a CPU comparison.
TEST(CudaCompareCached, GpuFactorsServeACpuComparison) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device here (or a CPU-only build); run with ctest -L gpu";
  std::mt19937_64 rng(11);
  const auto a = store_linear<float>(postsvd_test::gaussian(64, 40, rng), "base");
  const auto b = store_linear<float>(postsvd_test::gaussian(64, 40, rng), "post");
  const std::vector<PairInput> pairs = {{a.view, b.view}};
  BackendOptions gpu_options;
  gpu_options.device = Device::CUDA;
  auto gpu = make_backend(gpu_options);
  auto host = cpu_backend();
  const postsvd_test::TempDir temp;
  const fs::path folder = temp.file("cuda");
  FactorCache cache(folder.string());
  CacheCounts on_gpu, on_cpu;
  const auto first = compare_cached(*gpu, cache, pairs, MeasureOptions{}, &on_gpu);
  const auto second = compare_cached(*host, cache, pairs, MeasureOptions{}, &on_cpu);
  const auto plain = host->compare(pairs, MeasureOptions{});
  EXPECT_EQ(on_gpu.computed, 2);
  EXPECT_EQ(on_cpu.loaded, 2);
  EXPECT_EQ(second[0].nf, first[0].nf);
  EXPECT_NEAR(second[0].nf, plain[0].nf, 1e-4);
  for (int64_t j = 0; j < plain[0].k; ++j) EXPECT_NEAR(second[0].sigma_base[j], plain[0].sigma_base[j], 1e-5 * plain[0].sigma_base[0]);
  fs::remove_all(folder);
}

}  // namespace
}  // namespace postsvd
