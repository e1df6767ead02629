// The CUDA backend: stored bytes go to the device (pinned staging, a copy
// stream), are converted there by kernels.cu into the working precision,
// decomposed with cuSOLVER and measured with cuBLAS; only sigma vectors and
// small results come back. Worker lanes (lane.h: a host thread, two streams,
// handles and buffers each; several per GPU, one set per GPU listed) take
// pairs from a shared counter, so one pair's transfer and host work overlap
// another's compute. The parts: check.h (status checks), buffers.h, lane.h,
// plan.h (memory per lane), pipeline.h (one pair on one lane), probes.h.
// Method choice and measurements: benchmarks/RESULTS.md, "GPU results".
#include "cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "cuda/check.h"
#include "cuda/lane.h"
#include "cuda/pipeline.h"
#include "cuda/plan.h"
#include "cuda/probes.h"
#include "cuda/quantized.h"
#include "postsvd/error.h"

namespace postsvd {
namespace cuda {

const char* method_name(SvdMethod method) {
  switch (method) {
    case SvdMethod::Gram64: return "gram64";
    case SvdMethod::Gesvd: return "gesvd";
    case SvdMethod::Gesvdj: return "gesvdj";
    case SvdMethod::Gesvdp: return "gesvdp";
  }
  return "?";
}

SvdMethod parse_method(const std::string& name) {
  for (SvdMethod m : {SvdMethod::Gram64, SvdMethod::Gesvd, SvdMethod::Gesvdj, SvdMethod::Gesvdp})
    if (name == method_name(m)) return m;
  POSTSVD_THROW(InvalidArgument, "unknown CUDA SVD method '" << name << "'; expected gram64, gesvd, gesvdj or gesvdp");
}

namespace {

void check_view(const TensorView& v, const std::string& role) {
  POSTSVD_CHECK(v.data != nullptr, InvalidArgument, role << " '" << v.name << "': view has no data (null pointer)");
  POSTSVD_CHECK(v.rows > 0 && v.cols > 0, InvalidArgument,
                role << " '" << v.name << "': expected a non-empty matrix, got shape " << shape_of(v));
  POSTSVD_CHECK(is_float_dtype(v.dtype) || is_quantized_view(v), InvalidArgument,
                role << " '" << v.name << "': expected a dtype of " << dtype_names(is_weight_dtype)
                     << " (or a quantized view), got " << dtype_name(v.dtype));
}

}  // namespace

class CudaBackendImpl final : public CudaBackend {
 public:
  CudaBackendImpl(const BackendOptions& options, const CudaConfig& config) : options_(options), config_(config) {
    const int count = device_count();
    POSTSVD_CHECK(count > 0, BackendError, "device=cuda: no CUDA device is available (cudaGetDeviceCount reports none)");
    devices_ = options.device_ids.empty() ? std::vector<int>{0} : options.device_ids;
    for (int id : devices_)
      POSTSVD_CHECK(id >= 0 && id < count, InvalidArgument,
                    "device_ids: CUDA device " << id << " does not exist; expected ids in [0, " << count << ")");
    POSTSVD_CHECK(config.lanes_per_device >= 1, InvalidArgument,
                  "lanes_per_device: expected >= 1, got " << config.lanes_per_device);
    for (int d : devices_)
      for (int i = 0; i < config.lanes_per_device; ++i) lanes_.push_back(std::make_unique<Lane>(d, i));
    for (int d : devices_) {
      cudaDeviceProp prop{};
      POSTSVD_CUDA_TRY(cudaGetDeviceProperties(&prop, d));
      if (!device_names_.empty()) device_names_ += ", ";
      device_names_ += "cuda:" + std::to_string(d) + " (" + prop.name + ")";
    }
  }

  Device device() const override { return Device::CUDA; }
  std::string name() const override {
    return device_names_ + ", " + method_name(config_.method) + ", " + std::to_string(config_.lanes_per_device) +
           " lanes per device";
  }
  const CudaConfig& config() const override { return config_; }
  CudaStats last_stats() const override {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    return stats_;
  }

  Matrix<double> converted(const TensorView& stored, Precision precision) override {
    return on_first_lane(stored, precision, 1, [&](Lane& lane, const TensorView& w) {
      if (compute_elem(config_.method, precision) == sizeof(double)) return converted_typed<double>(lane, w, precision);
      return converted_typed<float>(lane, w, precision);
    });
  }

  Decomposition<float> decompose_f32(const TensorView& w) override { return decompose_one<float>(w, Precision::F32); }
  Decomposition<double> decompose_f64(const TensorView& w) override { return decompose_one<double>(w, Precision::F64); }
  Decomposition<float> decompose_warm_f32(const TensorView& w, const Decomposition<float>& start,
                                          WarmReport* report) override {
    return decompose_warm_one<float>(w, start, Precision::F32, report);
  }
  Decomposition<double> decompose_warm_f64(const TensorView& w, const Decomposition<double>& start,
                                           WarmReport* report) override {
    return decompose_warm_one<double>(w, start, Precision::F64, report);
  }
  // Gram64's warm start replaces syevd by GEMMs and a few syevj sweeps, but it has not yet run on a
  // device: `auto` stays cold here until `benchmarks/run_gpu.sh warm` has measured it (accuracy and
  // time); warm_start='always' runs it. Once measured, return true where it wins.
  bool warm_start_pays(int64_t, int64_t, Precision) const override { return false; }

  std::vector<PairMeasures> compare(const std::vector<PairInput>& pairs, const MeasureOptions& options) override {
    check_compare_arguments(pairs, options);
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      check_view(pairs[i].base, "pair " + std::to_string(i) + " base");
      check_view(pairs[i].post, "pair " + std::to_string(i) + " post");
    }
    std::vector<PairMeasures> out(pairs.size());
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_ = CudaStats{};
    }
    if (pairs.empty()) return out;

    // Plan: each buffer sized for the largest need over the distinct shapes (U is largest for a
    // tall pair, V for a wide one, the k x k products for the largest k); the budget fixes how
    // many lanes run per device.
    LanePlan plan;
    std::vector<std::pair<int64_t, int64_t>> seen;
    for (const auto& p : pairs) {
      plan.raw = std::max(plan.raw, align_up(staged_bytes(p.base, options.precision, on_device())) +
                                        align_up(staged_bytes(p.post, options.precision, on_device())));
      const std::pair<int64_t, int64_t> key{p.base.rows, p.base.cols};
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
      seen.push_back(key);
      const LanePlan q = plan_for(*lanes_.front(), Shape{key.first, key.second}, 0, config_.method, options.precision);
      plan.work = std::max(plan.work, q.work);
      plan.u = std::max(plan.u, q.u);
      plan.v = std::max(plan.v, q.v);
      plan.s = std::max(plan.s, q.s);
      plan.square = std::max(plan.square, q.square);
      plan.solver_ws = std::max(plan.solver_ws, q.solver_ws);
      plan.host_ws = std::max(plan.host_ws, q.host_ws);
      plan.results = std::max(plan.results, q.results);
    }
    const int lanes_per_device = lanes_within_budget(plan, pairs.size());
    std::vector<Lane*> active;
    for (auto& lane : lanes_) {
      if (lane->index < lanes_per_device) active.push_back(lane.get());
      // Idle lanes, and lanes holding more than this call needs, give their memory back (budget).
      if (lane->index >= lanes_per_device || lane->held_bytes() > plan.total()) {
        POSTSVD_CUDA_TRY(cudaSetDevice(lane->device));
        lane->release_big();
      }
    }
    {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.lanes_used = static_cast<int>(active.size());
      stats_.bytes_per_lane = plan.total();
    }

    std::atomic<std::size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&](Lane* lane) {
      try {
        POSTSVD_CUDA_TRY(cudaSetDevice(lane->device));
        reserve_plan(*lane, plan);
        lane->staging.reserve(plan.raw, "pinned staging");
        while (!failed.load()) {
          const std::size_t i = next.fetch_add(1);
          if (i >= pairs.size()) break;
          out[i] = run_pair(*lane, pairs[i], options);
        }
      } catch (...) {
        failed.store(true);
        cudaStreamSynchronize(lane->stream);
        cudaStreamSynchronize(lane->copy_stream);
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    };
    if (active.size() == 1) {
      worker(active.front());
    } else {
      std::vector<std::thread> threads;
      threads.reserve(active.size());
      for (Lane* lane : active) threads.emplace_back(worker, lane);
      for (auto& t : threads) t.join();
    }
    if (first_error) std::rethrow_exception(first_error);
    return out;
  }

 private:
  bool on_device() const { return config_.dequantize_on_device; }

  int lanes_within_budget(const LanePlan& plan, std::size_t pairs) {
    const std::size_t need = plan.total();
    int fit = config_.lanes_per_device;
    for (int d : devices_) {
      POSTSVD_CUDA_TRY(cudaSetDevice(d));
      std::size_t free_bytes = 0, total_bytes = 0;
      POSTSVD_CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
      std::size_t ours = 0;
      for (auto& lane : lanes_)
        if (lane->device == d) ours += lane->held_bytes();
      const std::size_t budget = options_.memory_budget_bytes != 0
                                     ? options_.memory_budget_bytes
                                     : static_cast<std::size_t>(0.9 * static_cast<double>(free_bytes + ours));
      const int lanes = static_cast<int>(std::min<std::size_t>(budget / std::max<std::size_t>(need, 1), 1 << 20));
      POSTSVD_CHECK(lanes >= 1, BackendError,
                    "cuda:" << d << ": the largest pair needs " << need << " bytes of GPU memory, but the budget is "
                            << budget << " bytes (memory_budget_bytes = " << options_.memory_budget_bytes
                            << ", free = " << free_bytes << ")");
      fit = std::min(fit, lanes);
    }
    const std::size_t per_device_pairs = (pairs + devices_.size() - 1) / devices_.size();
    return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(fit), per_device_pairs)));
  }

  double tolerance(Precision p) const { return p == Precision::F32 ? config_.orth_tolerance_f32 : config_.orth_tolerance_f64; }

  template <class C>
  PairMeasures run_pair_typed(Lane& lane, const PairInput& pair, const MeasureOptions& options) {
    Pipeline<C> pipe(lane, config_.method, options.precision, tolerance(options.precision));
    const TensorView* views[2] = {&pair.base, &pair.post};
    const Shape shape{pair.base.rows, pair.base.cols};
    const int64_t k = shape.k();
    lane.reset_scalars();
    // The host copies the post matrix into staging while the device works on the base.
    pipe.stage(pair.base, 0);
    pipe.decompose(pair.base, 0);
    pipe.stage(pair.post, 1);
    const bool warm = config_.method == SvdMethod::Gram64 &&
                      use_warm_start(*this, options.warm_start, pair.post.rows, pair.post.cols, options.precision);
    if (warm)
      pipe.decompose_warm(pair.post, 1, 0);  // from the base's factors, queued before it on this stream
    else
      pipe.decompose(pair.post, 1);
    lane.finish_round();
    const int64_t sweeps = warm ? pipe.warm_sweeps() : -1;
    bool redone_slots[2] = {false, false};
    const int redone = pipe.settle(views, 2, redone_slots);
    lane.reset_scalars();
    pipe.sign_rule(pair.base, 0);
    pipe.sign_rule(pair.post, 1);
    pipe.measure(shape, options.intruders);
    lane.finish_round();
    const double* host = lane.host_results.get<double>();
    PairMeasures m;
    m.rows = shape.m;
    m.cols = shape.n;
    m.k = k;
    m.sigma_base.assign(host, host + k);
    m.sigma_post.assign(host + k, host + 2 * k);
    for (int64_t j = 1; j < k; ++j) {  // rounding-level ties from column norms
      m.sigma_base[j] = std::min(m.sigma_base[j], m.sigma_base[j - 1]);
      m.sigma_post[j] = std::min(m.sigma_post[j], m.sigma_post[j - 1]);
    }
    m.iorth_diag.assign(host + 2 * k, host + 3 * k);
    m.scaling.resize(static_cast<std::size_t>(k));
    for (int64_t j = 0; j < k; ++j) m.scaling[j] = m.sigma_post[j] / m.sigma_base[j];
    m.scaling_stats = scaling_statistics(m.scaling);
    m.nf = std::sqrt(lane.readback()->nf_squared) / static_cast<double>(k);
    m.warm_sweeps = warm && !redone_slots[1] ? sweeps : -1;
    const int64_t examined = intruder_vectors(options.intruders, k);
    m.intruder_cosines.assign(host + 3 * k, host + 3 * k + examined);
    m.intruders = count_intruders(m.intruder_cosines, options.intruders.epsilon);
    std::size_t back = static_cast<std::size_t>(3 * k + examined) * sizeof(double);
    if (options.full_matrices) {
      const int64_t kk = options.leading_k > 0 ? std::min(options.leading_k, k) : k;
      m.q1 = pipe.leading_block(0, k, kk);
      m.q2 = pipe.leading_block(1, k, kk);
      if (kk == k) {
        m.iorth = pipe.leading_block(2, k, kk);
      } else {  // I_orth of the truncated factors, Q1_kk^T Q2_kk (as measures_from)
        pipe.truncated_iorth(k, kk);
        m.iorth = pipe.leading_block(2, kk, kk);
      }
      m.sim_u = Matrix<double>(kk, kk);
      m.sim_v = Matrix<double>(kk, kk);
      for (int64_t i = 0; i < kk * kk; ++i) {
        m.sim_u.data()[i] = std::fabs(m.q1.data()[i]);
        m.sim_v.data()[i] = std::fabs(m.q2.data()[i]);
      }
      back += static_cast<std::size_t>(3 * kk * kk) * sizeof(C);
    }
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.pairs += 1;
    stats_.decompositions += 2 + redone;
    stats_.gram_fallbacks += redone;
    stats_.warm_starts += warm ? 1 : 0;
    stats_.warm_fallbacks += warm && redone_slots[1] ? 1 : 0;
    stats_.warm_sweeps += m.warm_sweeps > 0 ? m.warm_sweeps : 0;
    stats_.bytes_to_device += staging_of(pair.base).total + staging_of(pair.post).total;
    stats_.bytes_to_host += back;
    return m;
  }

  PairMeasures run_pair(Lane& lane, const PairInput& stored, const MeasureOptions& options) {
    const HostDequantized base(stored.base, options.precision, on_device()), post(stored.post, options.precision, on_device());
    const PairInput pair{base.view(), post.view()};
    if (compute_elem(config_.method, options.precision) == sizeof(double)) return run_pair_typed<double>(lane, pair, options);
    return run_pair_typed<float>(lane, pair, options);
  }

  template <class C>
  Matrix<double> converted_typed(Lane& lane, const TensorView& w, Precision precision) {
    Pipeline<C> pipe(lane, config_.method, precision, tolerance(precision));
    lane.reset_scalars();
    pipe.stage(w, 0);
    pipe.convert(w, 0, false);
    std::vector<C> host(static_cast<std::size_t>(w.rows * w.cols));
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(host.data(), lane.work.get<C>(), host.size() * sizeof(C), cudaMemcpyDeviceToHost,
                                     lane.stream));
    POSTSVD_CUDA_TRY(cudaStreamSynchronize(lane.stream));
    Matrix<double> out(w.rows, w.cols);
    std::copy(host.begin(), host.end(), out.data());
    return out;
  }

  template <class T, class C>
  Decomposition<T> decompose_typed(Lane& lane, const TensorView& w, Precision precision) {
    Pipeline<C> pipe(lane, config_.method, precision, tolerance(precision));
    const TensorView* views[1] = {&w};
    lane.reset_scalars();
    pipe.stage(w, 0);
    pipe.decompose(w, 0);
    lane.finish_round();
    pipe.settle(views, 1);
    pipe.sign_rule(w, 0);
    return pipe.template download<T>(w, 0);
  }

  // One matrix on the first lane (decompose, its warm start, converted): checked, dequantized on
  // the host where the config says so, the lane sized for `copies` staged copies of it; then
  // f(lane, w). A throw waits for the lane's streams before it leaves.
  template <class F>
  auto on_first_lane(const TensorView& stored, Precision precision, std::size_t copies, F&& f)
      -> decltype(f(std::declval<Lane&>(), std::declval<const TensorView&>())) {
    check_view(stored, "matrix");
    const HostDequantized dequantized(stored, precision, on_device());
    const TensorView& w = dequantized.view();
    std::lock_guard<std::mutex> lock(decompose_mutex_);
    Lane& lane = *lanes_.front();
    POSTSVD_CUDA_TRY(cudaSetDevice(lane.device));
    const std::size_t raw = copies * align_up(staging_of(w).total);  // w: as it goes to the device
    reserve_plan(lane, plan_for(lane, Shape{w.rows, w.cols}, raw, config_.method, precision));
    lane.staging.reserve(raw, "pinned staging");
    try {
      return f(lane, w);
    } catch (...) {
      cudaStreamSynchronize(lane.stream);
      cudaStreamSynchronize(lane.copy_stream);
      throw;
    }
  }

  template <class T>
  Decomposition<T> decompose_one(const TensorView& stored, Precision precision) {
    return on_first_lane(stored, precision, 1, [&](Lane& lane, const TensorView& w) {
      if (compute_elem(config_.method, precision) == sizeof(double)) return decompose_typed<T, double>(lane, w, precision);
      return decompose_typed<T, float>(lane, w, precision);
    });
  }

  // decompose_one from `start`: its eig-side factor ([k, k], V when tall, U when wide) goes to
  // slot 0, the matrix to slot 1 (decompose_warm). Non-Gram methods decompose cold.
  template <class T, class C>
  Decomposition<T> decompose_warm_typed(Lane& lane, const TensorView& w, const Decomposition<T>& start,
                                        Precision precision, WarmReport* report) {
    Pipeline<C> pipe(lane, config_.method, precision, tolerance(precision));
    const TensorView* views[2] = {&w, &w};
    const bool tall = w.rows >= w.cols;
    const Matrix<T>& side = tall ? start.V : start.U;  // [k, k]
    std::vector<C> host(static_cast<std::size_t>(side.size()));
    std::transform(side.data(), side.data() + side.size(), host.begin(), [](T x) { return static_cast<C>(x); });
    DeviceBuffer& target = tall ? lane.v[0] : lane.u[0];
    POSTSVD_CUDA_TRY(cudaMemcpyAsync(target.get(), host.data(), host.size() * sizeof(C), cudaMemcpyHostToDevice, lane.stream));
    lane.reset_scalars();
    pipe.stage(w, 1);
    pipe.decompose_warm(w, 1, 0);
    lane.finish_round();
    const int64_t sweeps = pipe.warm_sweeps();
    bool redone_slots[2] = {false, false};
    LaneScalars* r = lane.readback();
    r->orth[0] = 0;  // slot 0 holds only the start
    r->warm_info[0] = 0;
    r->first_bad[0] = kNoBadElement;
    pipe.settle(views, 2, redone_slots);
    if (report != nullptr) {
      *report = WarmReport{};
      report->sweeps = redone_slots[1] ? -1 : sweeps;
      report->fell_back = redone_slots[1];
    }
    pipe.sign_rule(w, 1);
    return pipe.template download<T>(w, 1);
  }

  template <class T>
  Decomposition<T> decompose_warm_one(const TensorView& stored, const Decomposition<T>& start, Precision precision,
                                      WarmReport* report) {
    if (config_.method != SvdMethod::Gram64) {
      if (report != nullptr) *report = WarmReport{};
      return decompose_one<T>(stored, precision);
    }
    check_view(stored, "matrix");
    const int64_t k = std::min(stored.rows, stored.cols);
    POSTSVD_CHECK(start.U.rows() == stored.rows && start.U.cols() == k && start.V.rows() == stored.cols &&
                      start.V.cols() == k && static_cast<int64_t>(start.S.size()) == k,
                  InvalidArgument,
                  "warm start of tensor '" << stored.name << "' " << shape_of(stored) << ": expected start factors U ["
                                           << stored.rows << ", " << k << "], V [" << stored.cols << ", " << k
                                           << "], got U [" << start.U.rows() << ", " << start.U.cols() << "], V ["
                                           << start.V.rows() << ", " << start.V.cols() << "]");
    // Slot 1 holds the matrix, slot 0 only the start: two staged copies' room, as before.
    return on_first_lane(stored, precision, 2, [&](Lane& lane, const TensorView& w) {
      return decompose_warm_typed<T, double>(lane, w, start, precision, report);
    });
  }

  BackendOptions options_;
  CudaConfig config_;
  std::vector<int> devices_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::string device_names_;
  mutable std::mutex stats_mutex_;
  std::mutex decompose_mutex_;
  CudaStats stats_;
};

std::unique_ptr<CudaBackend> make_cuda_backend_with(const BackendOptions& options, const CudaConfig& config) {
  return std::make_unique<CudaBackendImpl>(options, config);
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return cuda::make_cuda_backend_with(options, cuda::CudaConfig{});
}

}  // namespace postsvd
