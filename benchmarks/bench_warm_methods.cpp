// The warm-start candidates on the CPU, one BLAS thread, one call each: cold ?gesdd, the block
// Jacobi (the default) and LAPACK dgesvj with JOBV = 'A' (candidate a), on close pairs of
// tests/cpp/warm_test_util.h (rotations ~1e-2). Prints Markdown rows. From a dev build:
//   g++ -O2 -std=c++17 -Icpp/include -Icpp/src -Itests/cpp benchmarks/bench_warm_methods.cpp \
//       build/dev/libpostsvd_core.a -lopenblas -lgtest -lpthread -o /tmp/bench_warm_methods
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
#include "cpu/cpu_backend.h"
#include "cpu/warm_svd.h"
#include "warm_test_util.h"  // tests/cpp: close pairs with a known answer
using namespace postsvd;
int main() {
  cpu::set_blas_threads(1);
  for (auto shape : std::vector<std::pair<int64_t,int64_t>>{{1536, 256}, {768, 768}}) {
    auto pair = postsvd_test::close_pair(shape.first, shape.second, 1e-2, 3);
    auto base = postsvd_test::store_linear<float>(pair.base, "base");
    auto post = postsvd_test::store_linear<float>(pair.post, "post");
    auto start = cpu::reduced_svd<float>(base.view);
    auto t0 = std::chrono::steady_clock::now();
    auto cold = cpu::reduced_svd<float>(post.view);
    auto t1 = std::chrono::steady_clock::now();
    WarmReport r1, r2;
    auto s1 = cpu::default_warm_settings<float>();
    auto w1 = cpu::warm_svd<float>(post.view, start, s1, &r1);
    auto t2 = std::chrono::steady_clock::now();
    s1.method = cpu::WarmMethod::Gesvj;
    auto w2 = cpu::warm_svd<float>(post.view, start, s1, &r2);
    auto t3 = std::chrono::steady_clock::now();
    auto d = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    std::printf("| [%ld, %ld] | %.3f | %.3f (%ld sweeps) | %.3f (%ld sweeps) |\n", shape.first, shape.second, d(t0, t1),
                d(t1, t2), r1.sweeps, d(t2, t3), r2.sweeps);
  }
}
