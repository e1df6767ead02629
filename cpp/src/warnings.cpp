#include "postsvd/warnings.h"

#include <cstdio>
#include <mutex>
#include <utility>

namespace postsvd {

namespace {

std::mutex& handler_mutex() {
  static std::mutex mutex;
  return mutex;
}

WarningHandler& current_handler() {
  static WarningHandler handler;
  return handler;
}

}  // namespace

WarningHandler set_warning_handler(WarningHandler handler) {
  std::lock_guard<std::mutex> lock(handler_mutex());
  return std::exchange(current_handler(), std::move(handler));
}

void warn(const std::string& message) {
  WarningHandler handler;
  {
    std::lock_guard<std::mutex> lock(handler_mutex());
    handler = current_handler();
  }
  if (handler) {
    handler(message);  // outside the lock: a handler may take its own locks (the GIL)
  } else {
    std::fprintf(stderr, "postsvd: warning: %s\n", message.c_str());
  }
}

}  // namespace postsvd
