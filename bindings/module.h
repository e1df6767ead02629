// What the binding files share: the argument conversions every binding uses
// (one spelling of each rule) and the bind_* functions module.cpp calls.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>
#include <vector>

#include "postsvd/backend.h"
#include "postsvd/error.h"
#include "postsvd/types.h"

namespace postsvd_bindings {

/// Precision spellings: the core's one table (types.h).
using postsvd::parse_precision;
using postsvd::precision_name;

inline postsvd::Device parse_device(const std::string& name) {
  if (name == "cpu") return postsvd::Device::CPU;
  if (name == "cuda") return postsvd::Device::CUDA;
  POSTSVD_THROW(InvalidArgument, "device: expected \"cpu\" or \"cuda\", got \"" << name << "\"");
}

inline const char* device_name(postsvd::Device device) { return device == postsvd::Device::CUDA ? "cuda" : "cpu"; }

/// The BackendOptions of the Python arguments, checked (threads >= 0, device ids >= 0).
inline postsvd::BackendOptions backend_options(const std::string& device, const std::vector<int>& device_ids,
                                               std::size_t memory_budget_bytes, int num_threads) {
  POSTSVD_CHECK(num_threads >= 0, InvalidArgument, "num_threads: expected >= 0 (0 = all cores), got " << num_threads);
  for (int id : device_ids) {
    POSTSVD_CHECK(id >= 0, InvalidArgument, "device_ids: expected non-negative CUDA device indices, got " << id);
  }
  postsvd::BackendOptions options;
  options.device = parse_device(device);
  options.device_ids = device_ids;
  options.memory_budget_bytes = memory_budget_bytes;
  options.num_threads = num_threads;
  return options;
}

/// Constructions 9-16, Table 4's alpha' and construct_checkpoint (constructions.cpp).
void bind_constructions(pybind11::module_& m);

}  // namespace postsvd_bindings
