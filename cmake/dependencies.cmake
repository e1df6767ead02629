# The C++ core's third-party dependencies: nlohmann-json (header only) and a
# LAPACK. Both come from PyPI by default, so `pip install .` and the wheel need
# no system package but a C++ compiler:
#   nlohmann-json:     the system's CMake package where present, else the PyPI
#                      wheel `nlohmann-json` (its headers, found through Python).
#   POSTSVD_BLAS:      scipy-openblas32   OpenBLAS with LAPACK from the PyPI wheel numpy and
#                                         scipy build against; its symbols carry a `scipy_`
#                                         prefix (detail/lapack.h names them through
#                                         POSTSVD_BLAS_NAME). The wheel bundles this library.
#                      system             the system's OpenBLAS (Debian: libopenblas-dev), any
#                                         LAPACK as a fallback.
#                      auto (default)     scipy-openblas32 where Python can import it, else system.
# Defines POSTSVD_LAPACK_TARGET (link it), POSTSVD_BLAS_SYMBOL_PREFIX and
# POSTSVD_BLAS_SOURCE (a line for build_info).

set(POSTSVD_BLAS "auto" CACHE STRING "BLAS/LAPACK: scipy-openblas32 (PyPI), system, or auto")
set_property(CACHE POSTSVD_BLAS PROPERTY STRINGS auto scipy-openblas32 system)

find_package(Python 3.9 COMPONENTS Interpreter)

# The folder of a Python package, without importing it (nlohmann_json's __init__
# imports importlib_resources, which a build environment may lack).
function(postsvd_python_package_dir package out_var)
  set(${out_var} "" PARENT_SCOPE)
  if(NOT Python_Interpreter_FOUND)
    return()
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"
            "${package}"
    OUTPUT_VARIABLE dir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE result ERROR_QUIET)
  if(result EQUAL 0 AND dir)
    set(${out_var} "${dir}" PARENT_SCOPE)
  endif()
endfunction()

# --- nlohmann-json
find_package(nlohmann_json 3 QUIET)
if(NOT TARGET nlohmann_json::nlohmann_json)
  postsvd_python_package_dir(nlohmann_json postsvd_nlohmann_dir)
  if(NOT postsvd_nlohmann_dir OR NOT EXISTS "${postsvd_nlohmann_dir}/include/nlohmann/json.hpp")
    message(FATAL_ERROR "nlohmann-json not found: `pip install nlohmann-json` (PyPI) for ${Python_EXECUTABLE}, "
                        "or install the system package (Debian: nlohmann-json3-dev)")
  endif()
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  target_include_directories(nlohmann_json::nlohmann_json INTERFACE "${postsvd_nlohmann_dir}/include")
  message(STATUS "postsvd: nlohmann-json from PyPI (${postsvd_nlohmann_dir}/include)")
endif()

# --- BLAS / LAPACK
if(NOT POSTSVD_BLAS MATCHES "^(auto|scipy-openblas32|system)$")
  message(FATAL_ERROR "POSTSVD_BLAS: expected auto, scipy-openblas32 or system, got '${POSTSVD_BLAS}'")
endif()
set(postsvd_scipy_openblas_dir "")
if(NOT POSTSVD_BLAS STREQUAL "system")
  postsvd_python_package_dir(scipy_openblas32 postsvd_scipy_openblas_dir)
endif()
if(POSTSVD_BLAS STREQUAL "scipy-openblas32" AND NOT postsvd_scipy_openblas_dir)
  message(FATAL_ERROR "POSTSVD_BLAS=scipy-openblas32: the package is not importable by ${Python_EXECUTABLE}; "
                      "`pip install scipy-openblas32`, or choose -DPOSTSVD_BLAS=system")
endif()

if(postsvd_scipy_openblas_dir)
  # The wheel's own CMake package: OpenBLAS_LIBRARIES (the .so), OpenBLAS_VERSION. The library
  # file alone is linked: detail/lapack.h declares what is called, its headers are not needed.
  find_package(OpenBLAS CONFIG REQUIRED PATHS "${postsvd_scipy_openblas_dir}/lib/cmake/openblas" NO_DEFAULT_PATH)
  add_library(postsvd_lapack INTERFACE)
  target_link_libraries(postsvd_lapack INTERFACE "${OpenBLAS_LIBRARIES}")
  set(POSTSVD_BLAS_SYMBOL_PREFIX "scipy_")
  set(POSTSVD_BLAS_SOURCE "scipy-openblas32 ${OpenBLAS_VERSION}")
  message(STATUS "postsvd: BLAS/LAPACK from scipy-openblas32 ${OpenBLAS_VERSION} (${OpenBLAS_LIBRARIES})")
else()
  # An optimized LAPACK: OpenBLAS (Debian: libopenblas-dev), the reference LAPACK as a fallback.
  set(BLA_VENDOR OpenBLAS)
  find_package(LAPACK)
  if(NOT LAPACK_FOUND)
    message(WARNING "OpenBLAS not found; falling back to any LAPACK (slower)")
    unset(BLA_VENDOR)
    find_package(LAPACK)
  endif()
  if(NOT LAPACK_FOUND)
    message(FATAL_ERROR "No LAPACK found: `pip install scipy-openblas32` (PyPI, then -DPOSTSVD_BLAS=scipy-openblas32) "
                        "or install the system's OpenBLAS (Debian: libopenblas-dev)")
  endif()
  add_library(postsvd_lapack INTERFACE)
  target_link_libraries(postsvd_lapack INTERFACE ${LAPACK_LIBRARIES})
  set(POSTSVD_BLAS_SYMBOL_PREFIX "")
  # LAPACK_LIBRARIES is a list (e.g. libopenblas.so twice): join it so it stays one definition.
  list(REMOVE_DUPLICATES LAPACK_LIBRARIES)
  string(REPLACE ";" " " POSTSVD_BLAS_SOURCE "system ${LAPACK_LIBRARIES}")
  message(STATUS "postsvd: BLAS/LAPACK from the system (${LAPACK_LIBRARIES})")
endif()
set(POSTSVD_LAPACK_TARGET postsvd_lapack)
