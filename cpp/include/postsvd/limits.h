// Limits on what postsvd reads, in one place. Every file postsvd opens is
// checked against these before anything is allocated for it, so a malformed
// or hostile file costs a bounded amount of memory and time and ends in a
// BadCheckpoint (or a recomputed cache entry), never a crash. Real checkpoints
// sit far below each limit (comments give the largest seen in practice).
#pragma once

#include <cstddef>
#include <cstdint>

namespace postsvd {
namespace limits {

/// Bytes of a safetensors header (the JSON after the 8-byte length). Same bound
/// as the official safetensors library (MAX_HEADER_SIZE); Hub shards have
/// headers of 10 KB to 300 KB.
constexpr uint64_t kMaxHeaderBytes = 100000000;

/// Tensors in one safetensors file. The largest Hub shards hold a few
/// thousand (MoE experts); a whole 235B MoE model has under 100,000.
constexpr uint64_t kMaxTensorsPerFile = 131072;

/// Tensors in one checkpoint (all shards together, and weight_map entries of
/// model.safetensors.index.json).
constexpr uint64_t kMaxTensorsPerCheckpoint = 1048576;

/// JSON values (objects, arrays, numbers, strings, ...) in one safetensors
/// header: about 10 per tensor. Bounds the parsed header's memory (about
/// 100 bytes per value) whatever the header's byte size.
constexpr uint64_t kMaxHeaderJsonValues = 16 * kMaxTensorsPerFile;

/// Dimensions of one tensor's shape (weights have 1 to 4).
constexpr std::size_t kMaxTensorRank = 16;

/// Nesting depth of any JSON postsvd reads (safetensors header, config.json,
/// index). Real files nest 3 to 5 deep; the bound keeps every recursive walk
/// over a parsed value (formatting, copying) far from the stack's end.
constexpr int kMaxJsonDepth = 64;

/// Bytes of config.json (Hub configs: 1 to 100 KB) and of
/// model.safetensors.index.json (a 91,000-tensor model's index: 9 MB).
constexpr uint64_t kMaxConfigBytes = 16u << 20;
constexpr uint64_t kMaxIndexBytes = 256u << 20;

/// Integer sizes in config.json (hidden_size, heads, head_dim, intermediate
/// sizes, expert counts): products of two stay far inside int64. The largest
/// real values are about 10^5.
constexpr int64_t kMaxConfigInteger = int64_t{1} << 24;

/// Characters of a JSON value or a name quoted in an error message; longer
/// ones are cut with a note of their size.
constexpr std::size_t kMaxQuotedChars = 200;

/// Characters of an error message (postsvd::Error cuts the middle beyond this).
constexpr std::size_t kMaxErrorMessageChars = 8192;

/// A compressed-tensors `ignore` pattern ("re:..."): its characters, its group nesting and the states
/// its automaton may have once {m,n} repetitions are expanded (real patterns: under 100 characters,
/// 2 groups deep, a few dozen states). Past them the pattern is refused; within them it matches in
/// time linear in the module name (quantization.cpp).
constexpr std::size_t kMaxPatternChars = 1024;
constexpr int kMaxPatternDepth = 16;
constexpr double kMaxPatternStates = 10000;

/// Rows or columns of a factor-cache entry (a matrix dimension; LAPACK's
/// 32-bit bound).
constexpr int64_t kMaxFactorDim = 2147483647;

}  // namespace limits
}  // namespace postsvd
