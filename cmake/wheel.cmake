# What the Python wheel carries beside postsvd._core (included from CMakeLists.txt
# when POSTSVD_BUILD_PYTHON is on; scikit-build-core installs into the wheel).
#   POSTSVD_BUNDLE_BLAS  ON (pyproject.toml): install the scipy-openblas32 library
#                        next to _core and point _core's RPATH at it ($ORIGIN), so the
#                        wheel (and `pip install .`) needs no OpenBLAS at run time.
#                        auditwheel repair leaves a library that is already inside
#                        the wheel where it is.
#   postsvd/_build_config.py: the build's facts for the Python side (which CUDA
#                        libraries to preload before _core loads, the bundled BLAS).
option(POSTSVD_BUNDLE_BLAS "Install the scipy-openblas32 library beside postsvd._core (wheels)" OFF)

set(postsvd_bundled_blas "")
if(POSTSVD_BUNDLE_BLAS AND NOT POSTSVD_BLAS_SYMBOL_PREFIX STREQUAL "scipy_")
  message(STATUS "postsvd: the system's BLAS/LAPACK is not bundled into the wheel (${POSTSVD_BLAS_SOURCE})")
elseif(POSTSVD_BUNDLE_BLAS)
  install(FILES "${OpenBLAS_LIBRARIES}" DESTINATION postsvd)
  set_target_properties(_core PROPERTIES INSTALL_RPATH "$ORIGIN")
  get_filename_component(postsvd_bundled_blas "${OpenBLAS_LIBRARIES}" NAME)
endif()

if(POSTSVD_ENABLE_CUDA)
  set(POSTSVD_PY_CUDA "True")
  set(POSTSVD_PY_CUDA_VERSION "${CUDAToolkit_VERSION}")
else()
  set(POSTSVD_PY_CUDA "False")
  set(POSTSVD_PY_CUDA_VERSION "")
endif()
set(POSTSVD_PY_BUNDLED_BLAS "${postsvd_bundled_blas}")
set(POSTSVD_PY_BLAS_SOURCE "${POSTSVD_BLAS_SOURCE}")
configure_file("${CMAKE_CURRENT_LIST_DIR}/build_config.py.in" "${CMAKE_CURRENT_BINARY_DIR}/_build_config.py" @ONLY)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/_build_config.py" DESTINATION postsvd)
