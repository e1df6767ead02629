// Guarded JSON: a scan that bounds nesting and size before nlohmann builds a
// document, and excerpts of parsed values for error messages. nlohmann's
// dump(), copy and comparison recurse once per nesting level, so a deeply
// nested file would overflow the stack while its error is being formatted;
// everything postsvd parses goes through parse_guarded first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "postsvd/limits.h"

namespace postsvd {
namespace detail {

/// What a scan of JSON text saw, without parsing it.
struct JsonScan {
  int max_depth = 0;           // deepest nesting of [ and { outside strings (stops at the bound + 1)
  uint64_t root_members = 0;   // members (or elements) of the outermost container
  uint64_t values = 0;         // containers plus their elements: an upper bound on the values a parse creates
};

/// Scans `text` [n bytes]; stops as soon as the nesting exceeds `depth_bound`.
JsonScan scan_json(const char* text, std::size_t n, int depth_bound);

/// Parses `text` after scan_json (or `scan`, when the caller already has it):
/// BadCheckpoint naming `where` (a path) when it nests deeper than
/// limits::kMaxJsonDepth or is not valid JSON.
template <class Json>
Json parse_guarded(const char* text, std::size_t n, const std::string& where, const JsonScan* scan = nullptr);

/// A JSON value for an error message: its dump, cut to about
/// limits::kMaxQuotedChars characters ("..." marks the cut).
template <class Json>
std::string json_excerpt(const Json& value);

/// A name (tensor, key) for an error message, cut to limits::kMaxQuotedChars
/// with a note of its full size.
std::string name_excerpt(const std::string& name);

/// The whole of a small text file (config.json, the index), at most `max_bytes`:
/// BadCheckpoint naming the file when it is larger, not a regular file, or unreadable.
std::string read_bounded_text(const std::string& path, uint64_t max_bytes, const char* what);

}  // namespace detail
}  // namespace postsvd
