// One channel for warnings from the library: something was done that the
// caller should know about but that is not an error (a corrupt factor-cache
// entry recomputed, weight layers the config does not count). The default
// handler prints "postsvd: warning: ..." to stderr; the Python module routes
// warnings to Python's `warnings` module.
#pragma once

#include <functional>
#include <string>

namespace postsvd {

using WarningHandler = std::function<void(const std::string& message)>;

/// Replaces the handler (an empty one restores the stderr default); returns the previous one.
/// Handlers may be called from any thread that runs library code.
WarningHandler set_warning_handler(WarningHandler handler);

/// Sends `message` to the current handler.
void warn(const std::string& message);

}  // namespace postsvd
