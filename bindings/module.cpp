// postsvd._core: the pybind11 front door. It only converts, checks and
// forwards to the C++ library (cpp/include/postsvd), releases the GIL around
// heavy calls and maps the postsvd::Error hierarchy onto Python exceptions.
// The public Python surface lives in python/postsvd/.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "postsvd/adapter.h"
#include "postsvd/architecture.h"
#include "postsvd/backend.h"
#include "postsvd/comparator.h"
#include "postsvd/error.h"
#include "postsvd/measures.h"
#include "postsvd/quantization.h"
#include "postsvd/types.h"
#include "postsvd/warnings.h"

#include "module.h"

namespace py = pybind11;
using namespace pybind11::literals;
using postsvd_bindings::backend_options;
using postsvd_bindings::device_name;
using postsvd_bindings::parse_precision;
using postsvd_bindings::precision_name;

namespace {

// ---------------------------------------------------------------- conversions

// Library text as a Python str: undecodable bytes (a file's raw bytes quoted in
// a parse error) become U+FFFD instead of failing the conversion.
py::str utf8_text(const std::string& text) {
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace"));
}

std::string shape_text(const py::array& array) {
  std::string text = "[";
  for (py::ssize_t d = 0; d < array.ndim(); ++d) {
    if (d) text += ", ";
    text += std::to_string(array.shape(d));
  }
  return text + "]";
}

// A strided TensorView over a 2-D float numpy array, without copying. `array`
// may be replaced by a contiguous copy when its strides are not whole elements
// or negative; the caller keeps it alive while the view is used.
postsvd::TensorView view_of_array(py::array& array, const std::string& name) {
  POSTSVD_CHECK(array.ndim() == 2, InvalidArgument,
                name << ": expected a 2-D array [rows, cols], got shape " << shape_text(array));
  const py::dtype dtype = array.dtype();
  postsvd::DType stored;
  if (dtype.kind() == 'f' && dtype.itemsize() == 2) {
    stored = postsvd::DType::F16;
  } else if (dtype.kind() == 'f' && dtype.itemsize() == 4) {
    stored = postsvd::DType::F32;
  } else if (dtype.kind() == 'f' && dtype.itemsize() == 8) {
    stored = postsvd::DType::F64;
  } else {
    POSTSVD_THROW(InvalidArgument, name << ": expected a float16, float32 or float64 array, got dtype "
                                        << std::string(py::str(dtype)));
  }
  POSTSVD_CHECK(array.shape(0) > 0 && array.shape(1) > 0, InvalidArgument,
                name << ": expected a non-empty matrix, got shape " << shape_text(array));
  const py::ssize_t item = dtype.itemsize();
  auto usable = [&](py::ssize_t stride) { return stride >= 0 && stride % item == 0; };
  if (!usable(array.strides(0)) || !usable(array.strides(1))) {
    array = py::module_::import("numpy").attr("ascontiguousarray")(array);
  }
  postsvd::TensorView view;
  view.data = array.data();
  view.dtype = stored;
  view.rows = array.shape(0);
  view.cols = array.shape(1);
  view.row_stride = array.strides(0) / item;
  view.col_stride = array.strides(1) / item;
  view.name = name;
  return view;
}

// Hands an owning column-major Matrix to numpy without copying: [rows, cols], Fortran order.
template <class T>
py::array_t<T> to_numpy(postsvd::Matrix<T>&& matrix) {
  auto* owned = new postsvd::Matrix<T>(std::move(matrix));
  py::capsule release(owned, [](void* p) { delete static_cast<postsvd::Matrix<T>*>(p); });
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  return py::array_t<T>({static_cast<py::ssize_t>(owned->rows()), static_cast<py::ssize_t>(owned->cols())},
                        {item, item * static_cast<py::ssize_t>(owned->rows())}, owned->data(), release);
}

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  py::capsule release(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                        owned->data(), release);
}

template <class T>
py::tuple decomposition_to_python(postsvd::Decomposition<T>&& d) {
  return py::make_tuple(to_numpy(std::move(d.U)), to_numpy(std::move(d.S)), to_numpy(std::move(d.V)));
}

/// A Decomposition<T> from three numpy arrays (U [m, k], S [k], V [n, k]), converted to T.
template <class T>
postsvd::Decomposition<T> decomposition_from_python(py::array u, py::array s, py::array v) {
  const auto as_t = [](py::array a, const char* name) {
    auto typed = py::array_t<T, py::array::f_style | py::array::forcecast>::ensure(a);
    POSTSVD_CHECK(typed, InvalidArgument, "start " << name << ": expected a float array");
    return typed;
  };
  auto tu = as_t(u, "U"), ts = as_t(s, "S"), tv = as_t(v, "V");
  POSTSVD_CHECK(tu.ndim() == 2 && tv.ndim() == 2 && ts.ndim() == 1, InvalidArgument,
                "start: expected U [m, k], S [k], V [n, k], got arrays of " << tu.ndim() << ", " << ts.ndim()
                                                                             << " and " << tv.ndim() << " dimensions");
  postsvd::Decomposition<T> d;
  d.U = postsvd::Matrix<T>(tu.shape(0), tu.shape(1));
  d.V = postsvd::Matrix<T>(tv.shape(0), tv.shape(1));
  std::copy(tu.data(), tu.data() + d.U.size(), d.U.data());
  std::copy(tv.data(), tv.data() + d.V.size(), d.V.data());
  d.S.assign(ts.data(), ts.data() + ts.shape(0));
  return d;
}

py::tuple warm_result(py::tuple factors, const postsvd::WarmReport& report) {
  return py::make_tuple(factors[0], factors[1], factors[2],
                        py::dict("sweeps"_a = report.sweeps, "fell_back"_a = report.fell_back,
                                 "initial_off"_a = report.initial_off));
}

py::dict measures_to_python(postsvd::PairMeasures&& m, bool full_matrices) {
  py::dict out;
  out["rows"] = m.rows;
  out["cols"] = m.cols;
  out["k"] = m.k;
  out["sigma_base"] = to_numpy(std::move(m.sigma_base));
  out["sigma_post"] = to_numpy(std::move(m.sigma_post));
  out["scaling"] = to_numpy(std::move(m.scaling));
  out["scaling_mean"] = m.scaling_stats.mean;
  out["scaling_std"] = m.scaling_stats.std;
  out["scaling_count"] = m.scaling_stats.count;
  out["nf"] = m.nf;
  out["iorth_diag"] = to_numpy(std::move(m.iorth_diag));
  out["warm_sweeps"] = m.warm_sweeps;
  out["intruders"] = m.intruders;
  out["intruder_cosines"] = to_numpy(std::move(m.intruder_cosines));
  if (full_matrices) {
    out["sim_u"] = to_numpy(std::move(m.sim_u));
    out["sim_v"] = to_numpy(std::move(m.sim_v));
    out["q1"] = to_numpy(std::move(m.q1));
    out["q2"] = to_numpy(std::move(m.q2));
    out["iorth"] = to_numpy(std::move(m.iorth));
  }
  return out;
}

postsvd::IntruderOptions intruder_options(int64_t k, double epsilon, const std::string& side) {
  postsvd::IntruderOptions options;
  options.k = k;
  options.epsilon = epsilon;
  options.side = postsvd::parse_intruder_side(side);
  postsvd::check_intruder_options(options);
  return options;
}

const postsvd::IntruderOptions kIntruderDefaults{};

py::dict intruder_options_to_python(const postsvd::IntruderOptions& options) {
  return py::dict("k"_a = options.k, "epsilon"_a = options.epsilon,
                  "side"_a = postsvd::intruder_side_name(options.side));
}

postsvd::MeasureOptions measure_options(const std::string& precision, bool full_matrices, int64_t leading_k,
                                        const std::string& warm_start, const postsvd::IntruderOptions& intruders) {
  POSTSVD_CHECK(leading_k >= 0, InvalidArgument, "leading_k: expected >= 0 (0 = all), got " << leading_k);
  postsvd::MeasureOptions options;
  options.warm_start = postsvd::parse_warm_start_mode(warm_start);
  options.precision = parse_precision(precision);
  options.full_matrices = full_matrices;
  options.leading_k = leading_k;
  options.intruders = intruders;
  return options;
}

py::dict source_to_python(const postsvd::MatrixSource& s) {
  return py::dict("layer"_a = s.layer, "kind"_a = postsvd::kind_name(s.kind), "expert"_a = s.expert,
                  "tensor"_a = s.tensor, "conv1d"_a = s.conv1d, "in_features"_a = s.in_features,
                  "out_features"_a = s.out_features, "out_offset"_a = s.out_offset, "fused_out"_a = s.fused_out,
                  "out_step"_a = s.out_step, "out_group"_a = s.out_group, "out_group_stride"_a = s.out_group_stride,
                  "stacked"_a = s.stacked, "stacked_index"_a = s.stacked_index, "mxfp4_scales"_a = s.mxfp4_scales);
}

postsvd::MatrixSource source_from_python(const py::dict& d) {
  postsvd::MatrixSource s;
  try {
    s.layer = d["layer"].cast<int>();
    s.kind = postsvd::parse_kind(d["kind"].cast<std::string>());
    s.expert = d.contains("expert") ? d["expert"].cast<int>() : -1;
    s.tensor = d["tensor"].cast<std::string>();
    s.conv1d = d["conv1d"].cast<bool>();
    s.in_features = d["in_features"].cast<int64_t>();
    s.out_features = d["out_features"].cast<int64_t>();
    s.out_offset = d["out_offset"].cast<int64_t>();
    s.fused_out = d["fused_out"].cast<int64_t>();
    // Absent in dicts written before strided, grouped and stacked parts: a plain range.
    auto optional = [&d](const char* key, int64_t fallback) {
      return d.contains(key) ? d[key].cast<int64_t>() : fallback;
    };
    s.out_step = optional("out_step", 1);
    s.out_group = optional("out_group", 0);
    s.out_group_stride = optional("out_group_stride", 0);
    s.stacked = optional("stacked", 0);
    s.stacked_index = optional("stacked_index", 0);
    s.mxfp4_scales = d.contains("mxfp4_scales") ? d["mxfp4_scales"].cast<std::string>() : std::string();
  } catch (const py::error_already_set& e) {
    POSTSVD_THROW(InvalidArgument, "source: expected a dict from detect_architecture()['matrices'], "
                                   "missing or bad key: " << e.what());
  } catch (const py::cast_error& e) {
    POSTSVD_THROW(InvalidArgument, "source: expected a dict from detect_architecture()['matrices'] ("
                                       << e.what() << ")");
  }
  return s;
}

py::dict architecture_to_python(const postsvd::Architecture& arch) {
  py::list matrices;
  for (const auto& s : arch.matrices) matrices.append(source_to_python(s));
  py::list warnings;
  for (const auto& message : arch.warnings) warnings.append(utf8_text(message));
  return py::dict("model_type"_a = arch.model_type, "num_layers"_a = arch.num_layers, "matrices"_a = matrices,
                  "warnings"_a = warnings);
}

py::dict family_to_python(const postsvd::ArchitectureFamily& f) {
  py::object text_config = py::none();
  if (!f.text_config.empty()) text_config = py::str(f.text_config);
  py::dict defaults;
  for (const auto& entry : f.text_config_defaults) defaults[py::str(entry.first)] = entry.second;
  py::object lineage = py::none();
  if (!f.lineage.empty()) {
    const postsvd::LineageNames& n = f.lineage;
    lineage = py::dict("embedding"_a = n.embedding, "unembedding"_a = n.unembedding, "final_norm"_a = n.final_norm,
                       "norm"_a = n.norm, "norm_before_attention"_a = n.norm_before_attention,
                       "norm_before_mlp"_a = n.norm_before_mlp, "norm_after_attention"_a = n.norm_after_attention,
                       "norm_after_mlp"_a = n.norm_after_mlp, "q_norm"_a = n.q_norm, "k_norm"_a = n.k_norm,
                       "q_latent_norm"_a = n.q_latent_norm, "kv_latent_norm"_a = n.kv_latent_norm,
                       "router"_a = n.router);
  }
  return py::dict("model_type"_a = f.model_type, "text_config"_a = text_config, "text_config_defaults"_a = defaults,
                  "prefixes"_a = f.prefixes, "layer_container"_a = f.layer_container,
                  "layer_count_key"_a = f.layer_count_key, "lineage"_a = lineage);
}

// A parsed JSON value as Python data (dict, list, str, int, float, bool, None). The
// parse bounded its nesting (limits::kMaxJsonDepth), so the recursion is bounded too.
py::object json_to_python(const nlohmann::ordered_json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: {
      py::dict out;
      for (const auto& item : value.items()) out[utf8_text(item.key())] = json_to_python(item.value());
      return std::move(out);
    }
    case nlohmann::json::value_t::array: {
      py::list out;
      for (const auto& element : value) out.append(json_to_python(element));
      return std::move(out);
    }
    case nlohmann::json::value_t::string: return utf8_text(value.get_ref<const std::string&>());
    case nlohmann::json::value_t::boolean: return py::bool_(value.get<bool>());
    case nlohmann::json::value_t::number_integer: return py::int_(value.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: return py::int_(value.get<uint64_t>());
    case nlohmann::json::value_t::number_float: return py::float_(value.get<double>());
    default: return py::none();  // null (and discarded, which a parse never gives)
  }
}

// A view (dequantized when quantized) as float32 / float64 numpy, converted without the GIL.
py::object view_to_numpy(const postsvd::TensorView& view, postsvd::Precision precision) {
  if (precision == postsvd::Precision::F64) {
    postsvd::Matrix<double> matrix;
    {
      py::gil_scoped_release release;
      matrix = postsvd::to_matrix<double>(view);
    }
    return to_numpy(std::move(matrix));
  }
  postsvd::Matrix<float> matrix;
  {
    py::gil_scoped_release release;
    matrix = postsvd::to_matrix<float>(view);
  }
  return to_numpy(std::move(matrix));
}

const char* scheme_name(postsvd::QuantScheme scheme) {
  switch (scheme) {
    case postsvd::QuantScheme::ScaledFP8: return "scaled-fp8";
    case postsvd::QuantScheme::MXFP4: return "mxfp4";
    case postsvd::QuantScheme::None: break;
  }
  return "none";
}

// A stored tensor as a flat view in storage order: [numel] contiguous.
py::dict adapter_to_python(const postsvd::AdapterSummary& a) {
  py::list skipped;
  for (const auto& item : a.skipped) skipped.append(py::dict("tensor"_a = item.first, "reason"_a = item.second));
  return py::dict("folder"_a = a.folder, "weights_file"_a = a.weights_file, "base_folder"_a = a.base_folder,
                  "base_model_name_or_path"_a = a.base_model_name_or_path, "revision"_a = a.revision, "r"_a = a.r,
                  "lora_alpha"_a = a.lora_alpha, "use_rslora"_a = a.use_rslora, "use_dora"_a = a.use_dora,
                  "fan_in_fan_out"_a = a.fan_in_fan_out, "init_lora_weights"_a = a.init_lora_weights,
                  "residual_base"_a = a.residual_base, "adapted"_a = a.adapted, "replaced"_a = a.replaced,
                  "replaced_tensors"_a = a.replaced_tensors, "skipped"_a = skipped);
}

postsvd::TensorView flat_view(const postsvd::Checkpoint& checkpoint, const std::string& name) {
  const postsvd::TensorInfo& info = checkpoint.info(name);
  int64_t numel = 1;
  for (int64_t d : info.shape) numel *= d;
  postsvd::TensorView view;
  view.data = checkpoint.file_of(name).data(info);
  view.dtype = info.dtype;
  view.rows = numel;
  view.cols = 1;
  view.row_stride = 1;
  view.col_stride = numel;
  view.name = name;
  return view;
}

// ---------------------------------------------------------------- Backend

// One backend, usable from Python for single matrices and pairs of arrays.
class PyBackend {
 public:
  PyBackend(const std::string& device, const std::vector<int>& device_ids, std::size_t memory_budget_bytes,
            int num_threads)
      : backend_(postsvd::make_backend(backend_options(device, device_ids, memory_budget_bytes, num_threads))) {}

  std::string name() const { return backend_->name(); }
  std::string device() const { return device_name(backend_->device()); }

  py::tuple svd(py::array array, const std::string& precision) {
    const postsvd::Precision p = parse_precision(precision);
    const postsvd::TensorView view = view_of_array(array, "array");
    if (p == postsvd::Precision::F64) {
      postsvd::Decomposition<double> d;
      {
        py::gil_scoped_release release;
        d = backend_->decompose_f64(view);
      }
      return decomposition_to_python(std::move(d));
    }
    postsvd::Decomposition<float> d;
    {
      py::gil_scoped_release release;
      d = backend_->decompose_f32(view);
    }
    return decomposition_to_python(std::move(d));
  }

  // W from the factors of a close matrix (Backend::decompose_warm_*): (U, S, V, report).
  py::tuple svd_warm(py::array array, py::array start_u, py::array start_s, py::array start_v,
                     const std::string& precision) {
    const postsvd::Precision p = parse_precision(precision);
    const postsvd::TensorView view = view_of_array(array, "array");
    postsvd::WarmReport report;
    if (p == postsvd::Precision::F64) {
      postsvd::Decomposition<double> start = decomposition_from_python<double>(start_u, start_s, start_v);
      postsvd::Decomposition<double> d;
      {
        py::gil_scoped_release release;
        d = backend_->decompose_warm_f64(view, start, &report);
      }
      return warm_result(decomposition_to_python(std::move(d)), report);
    }
    postsvd::Decomposition<float> start = decomposition_from_python<float>(start_u, start_s, start_v);
    postsvd::Decomposition<float> d;
    {
      py::gil_scoped_release release;
      d = backend_->decompose_warm_f32(view, start, &report);
    }
    return warm_result(decomposition_to_python(std::move(d)), report);
  }

  py::dict measures(py::array base, py::array post, const std::string& precision, bool full_matrices,
                    int64_t leading_k, const std::string& warm_start, int64_t intruder_k, double intruder_epsilon,
                    const std::string& intruder_side) {
    const postsvd::MeasureOptions options = measure_options(
        precision, full_matrices, leading_k, warm_start, intruder_options(intruder_k, intruder_epsilon, intruder_side));
    std::vector<postsvd::PairInput> pairs(1);
    pairs[0].base = view_of_array(base, "base");
    pairs[0].post = view_of_array(post, "post");
    POSTSVD_CHECK(pairs[0].base.rows == pairs[0].post.rows && pairs[0].base.cols == pairs[0].post.cols,
                  InvalidArgument,
                  "post: expected the shape of base " << shape_text(base) << ", got " << shape_text(post));
    std::vector<postsvd::PairMeasures> result;
    {
      py::gil_scoped_release release;
      result = backend_->compare(pairs, options);
    }
    return measures_to_python(std::move(result.at(0)), full_matrices);
  }

  postsvd::Backend& backend() { return *backend_; }

 private:
  std::unique_ptr<postsvd::Backend> backend_;
};

// ---------------------------------------------------------------- errors

// Python exception classes with two bases each (PostsvdError and the builtin
// a caller would naturally catch), created once at import.
struct ErrorTypes {
  PyObject* base = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* bad_checkpoint = nullptr;
  PyObject* backend = nullptr;
  PyObject* not_built_with_cuda = nullptr;
};
ErrorTypes g_errors;

void set_error(PyObject* type, const char* what) {
  PyObject* message = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
  if (message == nullptr) return;  // MemoryError is set
  PyErr_SetObject(type, message);
  Py_DECREF(message);
}

// postsvd::warn -> Python's warnings.warn(UserWarning), from whichever thread
// warns (library code runs with the GIL released). A warnings filter that turns
// it into an error raises it out of the call that warned.
void route_warnings_to_python() {
  postsvd::set_warning_handler([](const std::string& message) {
    py::gil_scoped_acquire gil;
    py::module_::import("warnings").attr("warn")(utf8_text(message), py::handle(PyExc_UserWarning), 2);
  });
  // Back to stderr before the interpreter goes away.
  py::module_::import("atexit").attr("register")(py::cpp_function([] { postsvd::set_warning_handler({}); }));
}

PyObject* new_error_type(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("postsvd.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (!type) throw py::error_already_set();
  m.add_object(name, py::reinterpret_borrow<py::object>(type));
  return type;
}

void register_errors(py::module_& m) {
  g_errors.base = new_error_type(m, "PostsvdError", PyExc_Exception, "Base of every error postsvd raises.");
  py::tuple value_bases = py::make_tuple(py::handle(g_errors.base), py::handle(PyExc_ValueError));
  py::tuple runtime_bases = py::make_tuple(py::handle(g_errors.base), py::handle(PyExc_RuntimeError));
  g_errors.invalid_argument = new_error_type(m, "InvalidArgumentError", value_bases.ptr(),
                                             "An argument cannot be used (bad shape, unknown kind, NaN weight, ...).");
  g_errors.bad_checkpoint = new_error_type(m, "BadCheckpointError", value_bases.ptr(),
                                           "A checkpoint folder or safetensors file is malformed, incomplete or "
                                           "does not match the other model.");
  g_errors.backend = new_error_type(m, "BackendError", runtime_bases.ptr(),
                                    "A numerical backend (LAPACK, cuSOLVER, cuBLAS, CUDA) reported a failure.");
  g_errors.not_built_with_cuda = new_error_type(
      m, "NotBuiltWithCudaError", runtime_bases.ptr(),
      "CUDA was requested but this build has none; build the GPU variant with POSTSVD_ENABLE_CUDA=ON pip install .");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const postsvd::InvalidArgument& e) {
      set_error(g_errors.invalid_argument, e.what());
    } catch (const postsvd::BadCheckpoint& e) {
      set_error(g_errors.bad_checkpoint, e.what());
    } catch (const postsvd::BackendError& e) {
      set_error(g_errors.backend, e.what());
    } catch (const postsvd::NotBuiltWithCuda& e) {
      set_error(g_errors.not_built_with_cuda, e.what());
    } catch (const postsvd::Error& e) {
      set_error(g_errors.base, e.what());
    }
  });
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "postsvd C++ core (private; import postsvd instead)";
  register_errors(m);
  route_warnings_to_python();

  m.def("has_cuda", &postsvd::has_cuda, "True when this build has the CUDA backend and sees at least one GPU.");
  m.def("built_with_cuda", &postsvd::built_with_cuda,
        "True when this build has the CUDA backend (POSTSVD_ENABLE_CUDA=ON), whether or not a GPU is visible.");
  m.def("cuda_device_count", &postsvd::cuda_device_count,
        "Number of visible CUDA devices (0 where none or not built with CUDA).");
  m.def("build_info", &postsvd::build_info, "Compiler, BLAS/LAPACK and CUDA versions of this build.");
  m.def("supported_model_types", &postsvd::supported_model_types,
        "The config.json model_type values postsvd maps (architecture_families()'s model_type column).");
  m.def(
      "architecture_families",
      [] {
        py::list out;
        for (const postsvd::ArchitectureFamily& f : postsvd::architecture_families()) out.append(family_to_python(f));
        return out;
      },
      "The architecture table, one dict per model_type: {model_type, text_config (None or the key of the nested "
      "text config), text_config_defaults, prefixes, layer_container, layer_count_key, lineage (None or "
      "{embedding, unembedding, final_norm, norm, norm_before_attention, norm_before_mlp, norm_after_attention, "
      "norm_after_mlp, q_norm, k_norm, q_latent_norm, kv_latent_norm, router}: LineageNames)}.");
  m.def(
      "precisions",
      [] {
        py::list out;
        for (const postsvd::PrecisionInfo& info : postsvd::precision_table()) {
          py::list spellings;
          for (const char* spelling : info.spellings) spellings.append(spelling);
          out.append(py::make_tuple(info.name, spellings));
        }
        return out;
      },
      "The working precisions as (name, [every accepted spelling, the name first]) (the core's one table).");
  m.def(
      "dtypes",
      [] {
        py::list out;
        for (const postsvd::DTypeInfo& info : postsvd::dtype_table()) {
          out.append(py::dict("name"_a = info.name, "size"_a = info.size, "float"_a = postsvd::is_float_dtype(info.dtype),
                              "weight"_a = postsvd::is_weight_dtype(info.dtype)));
        }
        return out;
      },
      "The safetensors dtypes as {name, size (bytes), float (F16, BF16, F32, F64), weight (a float or FP8: what a "
      "projection may be stored in)} (the core's one table).");
  m.def(
      "kinds",
      [] {
        py::list out;
        for (const postsvd::KindInfo& info : postsvd::kind_table()) out.append(py::make_tuple(info.name, info.group));
        return out;
      },
      "The projection kinds as (name, group) pairs, attention kinds first (the one kind table of the core).");
  m.def(
      "warm_start_modes",
      [] {
        std::vector<std::string> out;
        for (postsvd::WarmStartMode mode : postsvd::warm_start_modes()) out.push_back(postsvd::warm_start_mode_name(mode));
        return out;
      },
      "The warm-start modes by name, the default first (the core's one list).");
  m.def(
      "intruder_sides",
      [] {
        std::vector<std::string> out;
        for (postsvd::IntruderSide side : postsvd::intruder_sides()) out.push_back(postsvd::intruder_side_name(side));
        return out;
      },
      "The sides the intruder count reads, by name, the default first: 'output' (V, |Q2|), 'input' (U, |Q1|).");
  m.def("count_intruders", &postsvd::count_intruders, "cosines"_a, "epsilon"_a,
        "How many of the largest |cosines| are below epsilon (the intruder rule of the core, in one place).");
  m.def(
      "intruder_options",
      [](int64_t k, double epsilon, const std::string& side) {
        return intruder_options_to_python(intruder_options(k, epsilon, side));
      },
      "k"_a = kIntruderDefaults.k, "epsilon"_a = kIntruderDefaults.epsilon,
      "side"_a = postsvd::intruder_side_name(kIntruderDefaults.side),
      "The intruder options {k, epsilon, side} checked by the core (InvalidArgumentError naming the option); "
      "called without arguments, the defaults (the paper's k = 10, epsilon = 0.5, the output side).");
  m.attr("SHARED_EXPERT") = postsvd::kSharedExpert;
  m.def(
      "svd",
      [](py::array array, const std::string& precision, const std::string& device, int num_threads) {
        PyBackend backend(device, {}, 0, num_threads);
        return backend.svd(std::move(array), precision);
      },
      "array"_a, "precision"_a = "float32", "device"_a = "cpu", "num_threads"_a = 0,
      "Reduced SVD of a 2-D float array W [m, n] -> (U [m, k], S [k], V [n, k]), sign rule applied; "
      "a fresh backend per call (use Backend to reuse one).");

  py::class_<PyBackend>(m, "Backend", "A numerical backend (CPU LAPACK or CUDA) for single matrices and pairs.")
      .def(py::init<const std::string&, const std::vector<int>&, std::size_t, int>(), "device"_a = "cpu",
           "device_ids"_a = std::vector<int>{}, "memory_budget_bytes"_a = 0, "num_threads"_a = 0,
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("name", &PyBackend::name, "Description, e.g. \"cpu (OpenBLAS ..., 2 threads)\".")
      .def_property_readonly("device", &PyBackend::device, "\"cpu\" or \"cuda\".")
      .def("svd", &PyBackend::svd, "array"_a, "precision"_a = "float32",
           "Reduced SVD of a 2-D float array W [m, n] -> (U [m, k], S [k], V [n, k]), sign rule applied.")
      .def("svd_warm", &PyBackend::svd_warm, "array"_a, "start_u"_a, "start_s"_a, "start_v"_a,
           "precision"_a = "float32",
           "Reduced SVD of W started from the factors (U, S, V) of a close matrix of its shape -> (U, S, V, "
           "{sweeps, fell_back, initial_off}); the cold SVD when W is not close (sweeps = -1).")
      .def("measures", &PyBackend::measures, "base"_a, "post"_a, "precision"_a = "float32",
           "full_matrices"_a = false, "leading_k"_a = 0, "warm_start"_a = "auto", "intruder_k"_a = kIntruderDefaults.k,
           "intruder_epsilon"_a = kIntruderDefaults.epsilon,
           "intruder_side"_a = postsvd::intruder_side_name(kIntruderDefaults.side),
           "Measures of one pair of equal-shape arrays (paper orientation [in, out]) as a dict.");

  py::class_<postsvd::Checkpoint>(m, "Checkpoint",
                                  "A validated, memory-mapped Hugging Face model folder, or a PEFT adapter folder "
                                  "applied to its base.")
      .def(py::init([](const std::string& folder, const std::string& base, bool residual_base) {
             postsvd::AdapterOptions options;
             options.residual_base = residual_base;
             py::gil_scoped_release release;
             return std::make_unique<postsvd::Checkpoint>(postsvd::open_post_model(folder, base, options));
           }),
           "folder"_a, "base"_a = "", "residual_base"_a = false,
           "A model folder; or an adapter folder applied to the model folder `base` (\"\" = the adapter's "
           "base_model_name_or_path when a local folder). residual_base: `base` is the residual model of an "
           "initialization that changed the base weights (PiSSA, OLoRA, ...).")
      .def_property_readonly("folder", &postsvd::Checkpoint::folder, "The folder opened (an adapter's own folder).")
      .def_property_readonly("weights_folder", &postsvd::Checkpoint::weights_folder,
                             "The folder of config.json and the weights: folder, or an adapter's base.")
      .def_property_readonly(
          "adapter",
          [](const postsvd::Checkpoint& cp) -> py::object {
            return cp.adapter() == nullptr ? py::object(py::none()) : adapter_to_python(cp.adapter()->summary());
          },
          "What a PEFT adapter applies (a dict: r, lora_alpha, use_dora, adapted, replaced, skipped, ...); None "
          "for a model folder.")
      .def_property_readonly(
          "config", [](const postsvd::Checkpoint& cp) { return json_to_python(cp.config()); },
          "config.json as a dict (parsed once when the folder was opened; a fresh copy on each access).")
      .def_property_readonly("sharded", &postsvd::Checkpoint::sharded,
                             "True when the folder has model.safetensors.index.json.")
      .def("files", &postsvd::Checkpoint::files, "Paths of the safetensors files, in index order.")
      .def("tensor_names", &postsvd::Checkpoint::tensor_names, "All tensor names, sorted.")
      .def("__contains__", &postsvd::Checkpoint::contains, "name"_a, "True when the checkpoint has tensor `name`.")
      .def(
          "info",
          [](const postsvd::Checkpoint& cp, const std::string& name) {
            const postsvd::TensorInfo& info = cp.info(name);
            return py::dict("name"_a = info.name, "dtype"_a = postsvd::dtype_name(info.dtype), "shape"_a = info.shape,
                            "file"_a = cp.file_of(name).path(), "begin"_a = info.begin, "end"_a = info.end);
          },
          "name"_a,
          "One tensor's entry: {name, dtype (safetensors spelling, e.g. \"BF16\"), shape, file, begin, end}; "
          "BadCheckpointError when absent.")
      .def(
          "read",
          [](const postsvd::Checkpoint& cp, const std::string& name) {
            const postsvd::TensorView view = flat_view(cp, name);
            std::vector<py::ssize_t> shape(cp.info(name).shape.begin(), cp.info(name).shape.end());
            postsvd::Matrix<float> flat;
            {
              py::gil_scoped_release release;
              flat = postsvd::to_matrix<float>(view);
            }
            return to_numpy(std::move(flat)).attr("reshape")(shape);
          },
          "name"_a, "A stored float tensor as float32 numpy in its stored shape (for tests and inspection).")
      .def("__repr__", [](const postsvd::Checkpoint& cp) { return "<postsvd.Checkpoint '" + cp.folder() + "'>"; });

  m.def(
      "detect_architecture",
      [](const postsvd::Checkpoint& cp) { return architecture_to_python(postsvd::detect_architecture(cp)); },
      "checkpoint"_a, "The (layer, kind) -> tensor map of a checkpoint: {model_type, num_layers, matrices: [dict]}.");
  m.def(
      "check_checkpoint",
      [](const postsvd::Checkpoint& cp, bool read_values) {
        postsvd::CheckpointCheck check;
        {
          py::gil_scoped_release release;  // reads every projection with read_values
          check = postsvd::check_checkpoint(cp, read_values);
        }
        return py::dict("mapped"_a = check.mapped,
                        "architecture"_a = check.mapped ? py::object(architecture_to_python(check.architecture))
                                                        : py::object(py::none()),
                        "problems"_a = check.problems, "not_fetched"_a = check.not_fetched);
      },
      "checkpoint"_a, "read_values"_a = true,
      "The checks a comparison runs on one model, without decomposing: {mapped, architecture (None when "
      "config.json does not map), problems: [one line each, naming file and tensor], not_fetched: sources "
      "a partial Hub copy lacks the bytes of}.");
  m.def(
      "read_matrix",
      [](const postsvd::Checkpoint& cp, const py::dict& source_dict, const std::string& precision) -> py::object {
        const postsvd::MatrixSource source = source_from_python(source_dict);
        return view_to_numpy(postsvd::view_of(cp, source), parse_precision(precision));
      },
      "checkpoint"_a, "source"_a, "precision"_a = "float32",
      "One matrix in paper orientation [in, out] (W_hf^T; fused parts split; quantized weights dequantized), "
      "as numpy.");
  m.def(
      "read_mxfp4",
      [](const postsvd::Checkpoint& cp, const std::string& blocks, const std::string& scales, int64_t first,
         int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride, const std::string& precision) {
        return view_to_numpy(postsvd::mxfp4_view(cp, blocks, scales, first, rows, cols, row_stride, col_stride),
                             parse_precision(precision));
      },
      "checkpoint"_a, "blocks"_a, "scales"_a, "first"_a, "rows"_a, "cols"_a, "row_stride"_a, "col_stride"_a,
      "precision"_a = "float32",
      "A [rows, cols] matrix of an MXFP4 tensor pair, dequantized: element (r, c) is value first + r * row_stride + "
      "c * col_stride of the row-major dequantized tensor [..., G * 32].");
  m.def(
      "source_tensors",
      [](const postsvd::Checkpoint& cp, const py::dict& source_dict) {
        return postsvd::source_tensors(cp, source_from_python(source_dict));
      },
      "checkpoint"_a, "source"_a,
      "The stored tensors reading a source touches: its tensor, then its FP8 scale or MXFP4 *_scales (names and "
      "headers only, no tensor data).");
  m.def(
      "stored_format",
      [](const postsvd::Checkpoint& cp, const py::dict& source_dict) {
        const postsvd::TensorView view = postsvd::view_of(cp, source_from_python(source_dict));
        return py::dict("dtype"_a = postsvd::dtype_name(view.dtype), "scheme"_a = scheme_name(view.scales.scheme),
                        "scale_tensor"_a = view.scales.name,
                        "relative_bound"_a = postsvd::quantization_relative_bound(view.dtype, view.scales.scheme));
      },
      "checkpoint"_a, "source"_a,
      "How a matrix is stored: {dtype, scheme ('none', 'scaled-fp8', 'mxfp4'), scale_tensor, relative_bound "
      "(largest relative change of one weight that rounding to this format causes)}.");

  py::class_<postsvd::Comparator>(m, "Comparator",
                                  "Two checkpoints of one architecture and the backend that compares their pairs.")
      .def(py::init([](const std::string& base, const std::string& post, const std::string& device,
                       const std::string& precision, const std::vector<int>& device_ids,
                       std::size_t memory_budget_bytes, int num_threads, const std::string& factor_cache,
                       const std::string& warm_start, const std::string& warm_from, int64_t intruder_k,
                       double intruder_epsilon, const std::string& intruder_side, bool residual_base) {
             // The GIL is released around the C++ work only: pybind11 registers the
             // returned instance after this returns, which must run with the GIL held
             // (a call_guard would release it there too; pybind11 issue 5473).
             const postsvd::BackendOptions options = backend_options(device, device_ids, memory_budget_bytes, num_threads);
             const postsvd::Precision p = parse_precision(precision);
             const postsvd::WarmStartMode warm = postsvd::parse_warm_start_mode(warm_start);
             const postsvd::IntruderOptions intruders = intruder_options(intruder_k, intruder_epsilon, intruder_side);
             postsvd::AdapterOptions adapter;
             adapter.residual_base = residual_base;
             py::gil_scoped_release release;
             auto comparator = std::make_unique<postsvd::Comparator>(base, post, options, p, factor_cache, adapter);
             comparator->set_warm_start(warm);
             comparator->set_warm_from(warm_from);
             comparator->set_intruder_options(intruders);
             return comparator;
           }),
           "base"_a, "post"_a, "device"_a = "cpu", "precision"_a = "float32", "device_ids"_a = std::vector<int>{},
           "memory_budget_bytes"_a = 0, "num_threads"_a = 0, "factor_cache"_a = "", "warm_start"_a = "auto",
           "warm_from"_a = "", "intruder_k"_a = kIntruderDefaults.k, "intruder_epsilon"_a = kIntruderDefaults.epsilon,
           "intruder_side"_a = postsvd::intruder_side_name(kIntruderDefaults.side), "residual_base"_a = false)
      .def_property_readonly(
          "warm_start", [](const postsvd::Comparator& c) { return postsvd::warm_start_mode_name(c.warm_start()); },
          "'off', 'auto' or 'always': when post matrices start from the base's (or warm_from's cached) factors.")
      .def_property_readonly(
          "intruder_options",
          [](const postsvd::Comparator& c) { return intruder_options_to_python(c.intruder_options()); },
          "{k, epsilon, side}: the intruder count of every compared pair.")
      .def_property_readonly(
          "architecture", [](const postsvd::Comparator& c) { return architecture_to_python(c.architecture()); },
          "The base model's {model_type, num_layers, matrices: [dict]} (the post model matches it).")
      .def_property_readonly(
          "backend_name", [](const postsvd::Comparator& c) { return c.backend().name(); }, "The backend's description.")
      .def_property_readonly(
          "precision", [](const postsvd::Comparator& c) { return precision_name(c.precision()); },
          "\"float32\" or \"float64\".")
      .def_property_readonly(
          "device", [](const postsvd::Comparator& c) { return device_name(c.backend().device()); },
          "\"cpu\" or \"cuda\".")
      .def_property_readonly("factor_cache", &postsvd::Comparator::factor_cache,
                             "The factor cache folder (\"\" = none).")
      .def_property_readonly(
          "cache_counts",
          [](const postsvd::Comparator& c) {
            return py::dict("computed"_a = c.cache_counts().computed, "loaded"_a = c.cache_counts().loaded);
          },
          "Decompositions computed and loaded through the factor cache so far.")
      .def_property_readonly("base", &postsvd::Comparator::base, py::return_value_policy::reference_internal,
                             "The base Checkpoint.")
      .def_property_readonly("post", &postsvd::Comparator::post, py::return_value_policy::reference_internal,
                             "The post Checkpoint.")
      .def(
          "compare",
          [](postsvd::Comparator& c, const std::vector<int64_t>& indices, bool full_matrices, int64_t leading_k) {
            std::vector<postsvd::PairMeasures> result;
            {
              py::gil_scoped_release release;
              result = c.compare(indices, full_matrices, leading_k);
            }
            py::list out;
            for (auto& m : result) out.append(measures_to_python(std::move(m), full_matrices));
            return out;
          },
          "indices"_a, "full_matrices"_a = false, "leading_k"_a = 0,
          "Measures of the pairs architecture['matrices'][i] for i in indices, as a list of dicts.");

  postsvd_bindings::bind_constructions(m);
}
