// Device probes of the CUDA build: how many devices the runtime sees and a
// line on the toolkit, driver, libraries and devices. No CUDA type here, so
// the library's plain C++ probes (probes.cpp) call them.
#pragma once

#include <string>

namespace postsvd {
namespace cuda {

/// Number of CUDA devices; 0 where the driver or the device is missing (never throws).
int device_count();
/// "CUDA 13.0 (build), runtime 13.0, driver 13.0, cuBLAS ..., cuSOLVER ..., N devices: ..."
std::string build_info();

}  // namespace cuda
}  // namespace postsvd
