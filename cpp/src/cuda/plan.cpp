#include "cuda/plan.h"

#include <algorithm>

#include "cuda/solver.h"
#include "detail/int_range.h"

namespace postsvd {
namespace cuda {

using detail::as_int;

namespace {

std::size_t direct_workspace(Lane& lane, SvdMethod method, cudaDataType_t type, std::size_t elem, int64_t tall, int64_t k,
                             std::size_t* host_bytes) {
  // The direct methods always see the tall orientation [tall, k].
  std::size_t device_bytes = 0;
  std::size_t host = 0;
  switch (method) {
    case SvdMethod::Gesvd:
      POSTSVD_CUSOLVER_TRY(cusolverDnXgesvd_bufferSize(lane.solver, lane.solver_params, 'S', 'S', tall, k, type, nullptr,
                                                       tall, type, nullptr, type, nullptr, tall, type, nullptr, k, type,
                                                       &device_bytes, &host));
      break;
    case SvdMethod::Gesvdp:
      POSTSVD_CUSOLVER_TRY(cusolverDnXgesvdp_bufferSize(lane.solver, lane.solver_params, CUSOLVER_EIG_MODE_VECTOR, 1, tall,
                                                        k, type, nullptr, tall, type, nullptr, type, nullptr, tall, type,
                                                        nullptr, k, type, &device_bytes, &host));
      break;
    case SvdMethod::Gesvdj: {
      int lwork = 0;
      if (elem == sizeof(float))
        POSTSVD_CUSOLVER_TRY(Blas<float>::gesvdj_buffer(lane.solver, as_int(tall, "rows"), as_int(k, "cols"), lane.jacobi, &lwork));
      else
        POSTSVD_CUSOLVER_TRY(Blas<double>::gesvdj_buffer(lane.solver, as_int(tall, "rows"), as_int(k, "cols"), lane.jacobi, &lwork));
      device_bytes = static_cast<std::size_t>(lwork) * elem;
      break;
    }
    case SvdMethod::Gram64: {
      int lwork = 0;
      POSTSVD_CUSOLVER_TRY(Blas<double>::syevd_buffer(lane.solver, as_int(k, "k"), &lwork));
      int warm_lwork = 0;  // the warm start's syevj shares the workspace
      POSTSVD_CUSOLVER_TRY(Blas<double>::syevj_buffer(lane.solver, as_int(k, "k"), lane.warm_jacobi, &warm_lwork));
      device_bytes = static_cast<std::size_t>(std::max(lwork, warm_lwork)) * sizeof(double);
      break;
    }
  }
  *host_bytes = std::max(*host_bytes, host);
  return device_bytes;
}

}  // namespace

std::size_t compute_elem(SvdMethod method, Precision precision) {
  if (method == SvdMethod::Gram64 || precision == Precision::F64) return sizeof(double);
  return sizeof(float);
}

LanePlan plan_for(Lane& lane, const Shape& shape, std::size_t raw_bytes, SvdMethod method, Precision precision) {
  const std::size_t e = compute_elem(method, precision);
  const int64_t k = shape.k();
  const int64_t tall = std::max(shape.m, shape.n);
  LanePlan p;
  p.raw = raw_bytes;
  p.work = align_up(static_cast<std::size_t>(shape.m * shape.n) * e);
  p.u = align_up(static_cast<std::size_t>(shape.m * k) * e);
  p.v = align_up(static_cast<std::size_t>(shape.n * k) * e);
  p.s = align_up(static_cast<std::size_t>(k) * e);
  p.square = 3 * align_up(static_cast<std::size_t>(k * k) * e);
  p.results = align_up(static_cast<std::size_t>(4 * k) * sizeof(double));  // 3 [k] vectors, <= k intruder cosines
  const cudaDataType_t type = e == sizeof(double) ? CUDA_R_64F : CUDA_R_32F;
  p.solver_ws = direct_workspace(lane, method, type, e, tall, k, &p.host_ws);
  if (method == SvdMethod::Gram64)  // the float64 gesvd fallback
    p.solver_ws = std::max(p.solver_ws, direct_workspace(lane, SvdMethod::Gesvd, CUDA_R_64F, sizeof(double), tall, k, &p.host_ws));
  p.solver_ws = align_up(p.solver_ws);
  return p;
}

void reserve_plan(Lane& lane, const LanePlan& p) {
  lane.raw.reserve(p.raw, "stored weights");
  lane.work.reserve(p.work, "working matrix");
  for (int i = 0; i < 2; ++i) {
    lane.u[i].reserve(p.u, "U");
    lane.v[i].reserve(p.v, "V");
    lane.s[i].reserve(p.s, "sigma");
  }
  lane.square.reserve(p.square, "k x k products");
  lane.solver_ws.reserve(std::max<std::size_t>(p.solver_ws, kAlign), "solver workspace");
  lane.results.reserve(p.results, "results");
  lane.host_results.reserve(p.results, "results (host)");
  if (lane.host_ws.size() < p.host_ws) lane.host_ws.resize(p.host_ws);
}

}  // namespace cuda
}  // namespace postsvd
