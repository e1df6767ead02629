// Bindings of the constructions (cpp/include/postsvd/constructions.h): their
// descriptions, Table 4's alpha' and construct_checkpoint. Called from
// module.cpp; errors map through module.cpp's translator (postsvd::Error).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <vector>

#include "postsvd/constructions.h"

#include "module.h"

namespace py = pybind11;
using namespace pybind11::literals;
using postsvd_bindings::backend_options;
using postsvd_bindings::parse_precision;

namespace {

template <class T>
py::array_t<T> to_array(const postsvd::Matrix<T>& m) {
  py::array_t<T, py::array::f_style> out({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  std::copy(m.data(), m.data() + m.size(), out.mutable_data());
  return out;
}

py::dict angles_to_python(const postsvd::AngleSummary& a) {
  return py::dict("mean_deg"_a = a.mean_deg, "max_deg"_a = a.max_deg);
}

py::dict rotation_to_python(const postsvd::SharedRotation& r) {
  py::dict out("k"_a = r.k, "residual1"_a = angles_to_python(r.residual1),
               "residual2"_a = angles_to_python(r.residual2), "shared"_a = angles_to_python(r.shared),
               "defect1"_a = r.defect1, "defect2"_a = r.defect2);
  if (!r.q.empty()) {
    out["q"] = to_array(r.q);
    out["dq1"] = to_array(r.dq1);
    out["dq2"] = to_array(r.dq2);
  }
  return out;
}

}  // namespace

namespace postsvd_bindings {

void bind_constructions(py::module_& m) {
  m.def(
      "construction_info",
      [](int number) {
        const postsvd::Construction c = postsvd::parse_construction(number);
        return py::dict("number"_a = number, "name"_a = postsvd::construction_name(c),
                        "formula"_a = postsvd::construction_formula(c),
                        "needs_ref"_a = postsvd::construction_needs_ref(c),
                        "uses_alpha"_a = postsvd::construction_uses_alpha(c));
      },
      "number"_a, "Name, formula and needs of a construction (9, 10, 11, 12, 14, 15, 16).");
  m.def("table4_alpha", &postsvd::table4_alpha, "pooled_mean"_a, "Table 4 rule: the mean rounded to one decimal.");
  m.def(
      "default_alpha",
      [](const std::string& base, const std::string& post, const std::vector<int>& layers,
         const std::vector<std::string>& kinds, const std::string& precision, const std::string& device,
         const std::vector<int>& device_ids, int num_threads, const std::string& factor_cache, bool residual_base) {
        postsvd::AlphaChoice choice;
        postsvd::AdapterOptions adapter;
        adapter.residual_base = residual_base;
        {
          py::gil_scoped_release release;
          choice = postsvd::default_alpha(base, post, layers, kinds, parse_precision(precision),
                                          backend_options(device, device_ids, 0, num_threads), factor_cache, adapter);
        }
        return py::dict("alpha"_a = choice.alpha, "pooled_mean"_a = choice.pooled_mean);
      },
      "base"_a, "post"_a, "layers"_a = std::vector<int>{}, "kinds"_a = std::vector<std::string>{},
      "precision"_a = "float32", "device"_a = "cpu", "device_ids"_a = std::vector<int>{}, "num_threads"_a = 0,
      "factor_cache"_a = "", "residual_base"_a = false, "Table 4 alpha' per kind: pooled top-90 % mean scaling, rounded to one decimal.");
  m.def(
      "construct_checkpoint",
      [](int number, const std::string& base, const std::string& post, const std::string& out_folder,
         const std::string& ref, const std::map<std::string, double>& alpha, const std::vector<int>& layers,
         const std::vector<std::string>& kinds, const std::string& precision, const std::string& device,
         const std::vector<int>& device_ids, int num_threads, const std::string& factor_cache, bool rotations,
         const py::object& progress, const std::string& warm_start, bool residual_base) {
        postsvd::ConstructionRequest request;
        request.number = number;
        request.base = base;
        request.post = post;
        request.ref = ref;
        request.out_folder = out_folder;
        request.alpha = alpha;
        request.layers = layers;
        request.kinds = kinds;
        request.precision = parse_precision(precision);
        request.backend = backend_options(device, device_ids, 0, num_threads);
        request.factor_cache = factor_cache;
        request.rotations = rotations;
        request.warm_start = postsvd::parse_warm_start_mode(warm_start);
        request.adapter.residual_base = residual_base;
        // Called between matrices with the GIL held: reports progress and lets
        // Ctrl-C (KeyboardInterrupt) or an exception in `progress` stop the run.
        const postsvd::ProgressCallback callback = [&progress](int64_t done, int64_t total, const std::string& what) {
          py::gil_scoped_acquire acquire;
          if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          if (!progress.is_none()) progress(done, total, what);
        };
        postsvd::ConstructionReport report;
        {
          py::gil_scoped_release release;
          report = postsvd::construct_checkpoint(request, callback);
        }
        py::list rows;
        for (const postsvd::ConstructionRow& row : report.rows) {
          rows.append(py::dict("layer"_a = row.layer, "kind"_a = row.kind, "expert"_a = row.expert,
                               "tensor"_a = row.tensor, "rows"_a = row.rows, "cols"_a = row.cols,
                               "alpha"_a = row.alpha, "relative_change"_a = row.relative_change,
                               "rotation"_a = rotation_to_python(row.rotation),
                               "from_cache"_a = row.decompositions_from_cache));
        }
        return py::dict("rows"_a = rows, "backend"_a = report.backend_name, "written_files"_a = report.written_files,
                        "seconds_decompose"_a = report.seconds_decompose,
                        "seconds_construct"_a = report.seconds_construct, "seconds_write"_a = report.seconds_write,
                        "decompositions_computed"_a = report.decompositions_computed,
                        "decompositions_loaded"_a = report.decompositions_loaded);
      },
      "number"_a, "base"_a, "post"_a, "out_folder"_a, "ref"_a = "", "alpha"_a = std::map<std::string, double>{},
      "layers"_a = std::vector<int>{}, "kinds"_a = std::vector<std::string>{}, "precision"_a = "float32",
      "device"_a = "cpu", "device_ids"_a = std::vector<int>{}, "num_threads"_a = 0, "factor_cache"_a = "",
      "rotations"_a = true, "progress"_a = py::none(), "warm_start"_a = "auto", "residual_base"_a = false,
      "Builds a construction's safetensors files (and index) into an existing folder; returns the table rows.");
}

}  // namespace postsvd_bindings
