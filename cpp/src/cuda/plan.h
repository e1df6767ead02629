// Planning a lane's memory: the bytes each buffer needs for a pair of one
// shape (cuSOLVER workspace queries included), and reserving them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/cuda_backend.h"
#include "cuda/lane.h"
#include "postsvd/types.h"

namespace postsvd {
namespace cuda {

struct Shape {
  int64_t m = 0;  // rows (in)
  int64_t n = 0;  // cols (out)
  int64_t k() const { return std::min(m, n); }
};

// Bytes a lane holds for one pair of `shape` with stored spans `raw_bytes`.
struct LanePlan {
  std::size_t raw = 0, work = 0, u = 0, v = 0, s = 0, square = 0, solver_ws = 0, host_ws = 0, results = 0;
  std::size_t total() const { return raw + work + 2 * (u + v + s) + square + solver_ws + results; }
};

/// Bytes of one working-precision element: float64 for Gram64 or a float64 compare, else float32.
std::size_t compute_elem(SvdMethod method, Precision precision);
/// The buffers `lane` needs for one pair of `shape` whose stored bytes span `raw_bytes`.
LanePlan plan_for(Lane& lane, const Shape& shape, std::size_t raw_bytes, SvdMethod method, Precision precision);
/// Grows the lane's buffers to `p` (they never shrink here).
void reserve_plan(Lane& lane, const LanePlan& p);

}  // namespace cuda
}  // namespace postsvd
