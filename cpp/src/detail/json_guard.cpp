#include "detail/json_guard.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "postsvd/error.h"

namespace postsvd {
namespace detail {

JsonScan scan_json(const char* text, std::size_t n, int depth_bound) {
  JsonScan scan;
  std::vector<uint64_t> elements;  // per open container: elements so far (commas + 1 once non-empty)
  std::vector<bool> nonempty;
  bool in_string = false;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, whatever it is
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        [[fallthrough]];
      default:
        if (!elements.empty() && !nonempty.back() && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
          nonempty.back() = true;
          ++elements.back();
          ++scan.values;
        }
        break;
      case '[':
      case '{':
        if (!elements.empty() && !nonempty.back()) {
          nonempty.back() = true;
          ++elements.back();
        }
        ++scan.values;
        elements.push_back(0);
        nonempty.push_back(false);
        if (static_cast<int>(elements.size()) > scan.max_depth) scan.max_depth = static_cast<int>(elements.size());
        if (scan.max_depth > depth_bound) return scan;
        break;
      case ']':
      case '}':
        if (!elements.empty()) {
          if (elements.size() == 1) scan.root_members = elements.back();
          elements.pop_back();
          nonempty.pop_back();
        }
        break;
      case ',':
        if (!elements.empty()) {
          ++elements.back();
          ++scan.values;
        }
        break;
    }
  }
  if (!elements.empty()) scan.root_members = elements.front();  // unterminated: the parse reports it
  return scan;
}

template <class Json>
Json parse_guarded(const char* text, std::size_t n, const std::string& where, const JsonScan* precomputed) {
  const JsonScan scan = precomputed != nullptr ? *precomputed : scan_json(text, n, limits::kMaxJsonDepth);
  if (scan.max_depth > limits::kMaxJsonDepth) {
    POSTSVD_THROW(BadCheckpoint, where << ": JSON nests deeper than " << limits::kMaxJsonDepth
                                       << " levels; expected a flat document (real files nest 3 to 5 deep)");
  }
  try {
    return Json::parse(text, text + n);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann quotes the offending token whole: a megabyte number stays a megabyte.
    POSTSVD_THROW(BadCheckpoint, where << ": not valid JSON: " << name_excerpt(e.what()));
  }
}

template nlohmann::json parse_guarded<nlohmann::json>(const char*, std::size_t, const std::string&,
                                                      const JsonScan*);
template nlohmann::ordered_json parse_guarded<nlohmann::ordered_json>(const char*, std::size_t, const std::string&,
                                                                      const JsonScan*);

namespace {

std::size_t utf8_boundary(const std::string& text, std::size_t i) {
  while (i > 0 && i < text.size() && (static_cast<unsigned char>(text[i]) & 0xc0) == 0x80) --i;
  return i;
}

// Appends `value` to `out` until `out` reaches `budget` characters; true when all of it fit.
template <class Json>
bool append_excerpt(const Json& value, std::string& out, std::size_t budget) {
  if (out.size() >= budget) return false;
  if (value.is_array() || value.is_object()) {
    const bool object = value.is_object();
    out += object ? '{' : '[';
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      if (out.size() >= budget) return false;
      if (object) {
        if (!append_excerpt(Json(it.key()), out, budget)) return false;
        out += ": ";
      }
      if (!append_excerpt(*it, out, budget)) return false;
    }
    out += object ? '}' : ']';
    return true;
  }
  if (value.is_string()) {
    const auto& text = value.template get_ref<const std::string&>();
    if (text.size() > budget) {
      out += Json(text.substr(0, utf8_boundary(text, budget))).dump();
      return false;
    }
  }
  out += value.dump();
  return out.size() <= budget;
}

}  // namespace

template <class Json>
std::string json_excerpt(const Json& value) {
  std::string out;
  if (!append_excerpt(value, out, limits::kMaxQuotedChars)) {
    out.resize(utf8_boundary(out, std::min(out.size(), limits::kMaxQuotedChars)));
    out += "...";
  }
  return out;
}

template std::string json_excerpt<nlohmann::json>(const nlohmann::json&);
template std::string json_excerpt<nlohmann::ordered_json>(const nlohmann::ordered_json&);

std::string name_excerpt(const std::string& name) {
  if (name.size() <= limits::kMaxQuotedChars) return name;
  return name.substr(0, utf8_boundary(name, limits::kMaxQuotedChars)) + "... (" + std::to_string(name.size()) +
         " bytes)";
}

std::string read_bounded_text(const std::string& path, uint64_t max_bytes, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    POSTSVD_THROW(BadCheckpoint, path << ": cannot read the " << what << ": " << std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    POSTSVD_THROW(BadCheckpoint, path << ": the " << what << " is not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    POSTSVD_THROW(BadCheckpoint, path << ": the " << what << " is " << st.st_size << " bytes, over the limit of "
                                      << max_bytes << " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) POSTSVD_THROW(BadCheckpoint, path << ": cannot open the " << what << " for reading");
  // Read at most max_bytes + 1: the file may have grown since stat.
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (in.peek() != std::char_traits<char>::eof()) {
    POSTSVD_THROW(BadCheckpoint, path << ": the " << what << " changed while being read");
  }
  return text;
}

}  // namespace detail
}  // namespace postsvd
