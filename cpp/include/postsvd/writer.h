// Writing a modified copy of a checkpoint's safetensors files: same file
// names, same tensors in the same order with the same offsets, untouched
// tensors copied bit for bit, modified matrices written back in their stored
// dtype and layout. Sharded input gives sharded output with an index.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "postsvd/architecture.h"
#include "postsvd/types.h"

namespace postsvd {

/// Copies every safetensors file of a checkpoint into a folder and lets the
/// caller overwrite matrices in place. Move-only.
///
/// The constructor reads the source's headers only: it lays out and creates
/// the files (headers written, data sections reserved on disk). A tensor's
/// data is copied from the source when write() first touches it, the rest by
/// copy_unchanged() (or finish()), so that a caller may write the tensors it
/// changes before the source holds the others (a Hub model's partial files,
/// fetched meanwhile: postsvd.hub).
///
/// Files: the header is rewritten as JSON with "__metadata__" first (the
/// source's metadata with "format": "pt"), then the tensors in the order of
/// their offsets, padded with spaces to a multiple of 8 bytes; the data
/// section is the source's, byte for byte, until write() replaces a tensor.
/// Sharded checkpoints also get model.safetensors.index.json with the source's
/// weight_map and metadata.total_size.
///
/// Quantized sources (FP8 weights with scales, MXFP4 experts; see
/// quantization.h, copy_as) are copied as BF16: every FP8 weight dequantized
/// in float32 and rounded to BF16, the scale tensors (weight_scale_inv,
/// weight_scale, input_scale) left out; each MXFP4 pair X_blocks / X_scales
/// becomes one BF16 tensor X [E, G * 32, R] (unpacked_mxfp4: the layout of
/// unquantized gpt-oss), written in X_blocks' place and file, expert by expert;
/// later tensors move; the index names X instead of the pair; and finish()
/// writes config.json without quantization_config.
class CheckpointWriter {
 public:
  /// `out_folder` must exist; files of the same names in it are replaced.
  CheckpointWriter(const Checkpoint& source, const std::string& out_folder);
  ~CheckpointWriter();
  CheckpointWriter(CheckpointWriter&&) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) noexcept;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  /// Writes W [in, out] (paper orientation) into `source`'s tensor (copied
  /// from the source first, when no write touched it yet): as W^T
  /// into [out, in] storage (rows out_offset.. of a fused tensor), or as is
  /// into Conv1D [in, out] storage (columns out_offset..), as the latter into
  /// the BF16 X [E, in, out] of an MXFP4 source's X_blocks. Converts to the
  /// stored dtype with round-to-nearest-even (F32 -> BF16 / F16; F64 ->
  /// 16-bit rounds once, correctly). Throws InvalidArgument when shapes do not
  /// match the source, or when an element is not finite once stored (inf or
  /// NaN in W, or a finite value past the dtype's range, largest_finite): the
  /// message names the file, the tensor, the element and `produced_by` (what
  /// made W, e.g. "construction 9 with alpha' = 40 for kind 'q'"); the file
  /// then holds the rounded values and is the caller's to remove.
  /// BadCheckpoint for non-float tensors.
  template <class T>
  void write(const MatrixSource& source, const Matrix<T>& w, const std::string& produced_by = "");

  /// Copies every tensor of the source that no write() touched, bit for bit
  /// (quantized ones dequantized as above); reads those tensors only.
  /// Throws as the source's reads do (e.g. NotFetched for a tensor of a
  /// partial Hub file not fetched yet). Calling it again copies nothing.
  void copy_unchanged();

  /// Copies what copy_unchanged() would, flushes and closes the files, writes
  /// the index when sharded; returns the file names written (relative to
  /// out_folder). No write() after finish().
  std::vector<std::string> finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// float32 -> IEEE binary16, round-to-nearest-even; overflow gives +-inf,
/// NaN stays NaN (payload's top bits kept, quiet bit set).
uint16_t float_to_f16_rne(float value);
/// The largest finite value of a float dtype: 65504 (F16), 3.3895e38 (BF16),
/// FLT_MAX, DBL_MAX; 0 for other dtypes.
double largest_finite(DType dtype);
/// float64 -> bfloat16 / binary16 rounding once (via round-to-odd to float32).
uint16_t double_to_bf16_rne(double value);
uint16_t double_to_f16_rne(double value);

}  // namespace postsvd
