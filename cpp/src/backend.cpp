// What every backend shares: the default decompose_pair (one matrix after the
// other) and the argument checks every compare starts with. The factory is in
// factory.cpp, the capability probes in probes.cpp.
#include <utility>

#include "postsvd/backend.h"
#include "postsvd/error.h"

namespace postsvd {

std::pair<Decomposition<float>, Decomposition<float>> Backend::decompose_pair_f32(const TensorView& base,
                                                                                  const TensorView& post) {
  Decomposition<float> first = decompose_f32(base);
  return {std::move(first), decompose_f32(post)};
}

std::pair<Decomposition<double>, Decomposition<double>> Backend::decompose_pair_f64(const TensorView& base,
                                                                                    const TensorView& post) {
  Decomposition<double> first = decompose_f64(base);
  return {std::move(first), decompose_f64(post)};
}

Decomposition<float> Backend::decompose_warm_f32(const TensorView& w, const Decomposition<float>&, WarmReport* report) {
  if (report != nullptr) *report = WarmReport{};
  return decompose_f32(w);
}

Decomposition<double> Backend::decompose_warm_f64(const TensorView& w, const Decomposition<double>&,
                                                  WarmReport* report) {
  if (report != nullptr) *report = WarmReport{};
  return decompose_f64(w);
}

bool Backend::warm_start_pays(int64_t, int64_t, Precision) const { return false; }

bool use_warm_start(const Backend& backend, WarmStartMode mode, int64_t rows, int64_t cols, Precision precision) {
  switch (mode) {
    case WarmStartMode::Off: return false;
    case WarmStartMode::Always: return true;
    case WarmStartMode::Auto: return backend.warm_start_pays(rows, cols, precision);
  }
  return false;
}

const char* warm_start_mode_name(WarmStartMode mode) {
  switch (mode) {
    case WarmStartMode::Off: return "off";
    case WarmStartMode::Auto: return "auto";
    case WarmStartMode::Always: return "always";
  }
  return "?";
}

const std::vector<WarmStartMode>& warm_start_modes() {
  static const std::vector<WarmStartMode> modes = {WarmStartMode::Auto, WarmStartMode::Always, WarmStartMode::Off};
  return modes;
}

WarmStartMode parse_warm_start_mode(const std::string& name, const std::string& argument) {
  std::string expected;
  for (WarmStartMode mode : warm_start_modes()) {
    if (name == warm_start_mode_name(mode)) return mode;
    expected += std::string(expected.empty() ? "'" : ", '") + warm_start_mode_name(mode) + "'";
  }
  POSTSVD_THROW(InvalidArgument, argument << ": expected one of " << expected << ", got '" << name << "'");
}

void check_compare_arguments(const std::vector<PairInput>& pairs, const MeasureOptions& options) {
  POSTSVD_CHECK(options.leading_k >= 0, InvalidArgument,
                "compare: leading_k: expected >= 0 (0 = all), got " << options.leading_k);
  check_intruder_options(options.intruders);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const TensorView& a = pairs[i].base;
    const TensorView& b = pairs[i].post;
    POSTSVD_CHECK(a.rows == b.rows && a.cols == b.cols, InvalidArgument,
                  "compare: pair " << i << ": base tensor '" << a.name << "' has shape [" << a.rows << ", " << a.cols
                                   << "] but post tensor '" << b.name << "' has shape [" << b.rows << ", " << b.cols
                                   << "]; expected equal shapes");
  }
}

}  // namespace postsvd
