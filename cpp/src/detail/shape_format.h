// Formatting of shapes for error messages: "[2, 3]".
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace postsvd {
namespace detail {

inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

}  // namespace detail
}  // namespace postsvd
