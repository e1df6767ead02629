// The safetensors reader and checkpoint folders: malformed files of every kind
// the official library rejects, exact round trips of F32/F64/F16/BF16, strided
// conversion, and sharded folders. Files are generated in a temporary folder.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "detail/half.h"
#include "postsvd/checkpoint.h"
#include "postsvd/quantization.h"
#include "postsvd/types.h"
#include "reader_test_util.h"
#include "safetensors_test_util.h"

namespace {

using postsvd::BadCheckpoint;
using postsvd::Checkpoint;
using postsvd::DType;
using postsvd::InvalidArgument;
using postsvd::SafetensorsFile;
using postsvd::TensorView;
using postsvd_test::write_raw_safetensors;
using postsvd_test::write_safetensors;
using postsvd_test::expect_error;
using postsvd_test::TempDir;
using postsvd_test::write_text;

std::vector<unsigned char> zeros(std::size_t n) { return std::vector<unsigned char>(n, 0); }

// A header with one F32 tensor "w" of shape [2, 2] at the given offsets.
std::string one_tensor_header(const std::string& offsets) {
  return R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":)" + offsets + "}}";
}

class SafetensorsMalformed : public ::testing::Test {
 protected:
  // Writes `header` + `data` and expects BadCheckpoint naming the file and `parts`.
  void expect_rejected(const std::string& header, const std::vector<unsigned char>& data,
                       std::initializer_list<std::string> parts) {
    const std::string path = dir_.file("bad.safetensors");
    write_raw_safetensors(path, header, data);
    expect_rejected_file(path, parts);
  }
  void expect_rejected_file(const std::string& path, std::initializer_list<std::string> parts) {
    expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {path});
    expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, parts);
  }
  TempDir dir_;
};

TEST_F(SafetensorsMalformed, ShorterThanEightBytes) {
  const std::string path = dir_.file("short.safetensors");
  write_text(path, "abc");
  expect_rejected_file(path, {"3 bytes", "shorter than the 8-byte header length"});
}

TEST_F(SafetensorsMalformed, EmptyFile) {
  const std::string path = dir_.file("empty.safetensors");
  write_text(path, "");
  expect_rejected_file(path, {"0 bytes"});
}

TEST_F(SafetensorsMalformed, HeaderLengthLargerThanFile) {
  const std::string path = dir_.file("bad.safetensors");
  const std::string header = one_tensor_header("[0,16]");
  write_raw_safetensors(path, header, zeros(16), 5000);
  expect_rejected_file(path, {"header length 5000", "larger than"});
}

TEST_F(SafetensorsMalformed, HeaderTooLarge) {
  const std::string path = dir_.file("bad.safetensors");
  write_raw_safetensors(path, "{}", {}, 100000001);
  expect_rejected_file(path, {"header length 100000001", "too large"});
}

TEST_F(SafetensorsMalformed, HeaderNotJson) {
  expect_rejected(R"({"w":{"dtype":"F32",)", {}, {"not valid JSON"});
}

TEST_F(SafetensorsMalformed, HeaderNotUtf8) {
  std::string header = R"({"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"x)";
  header += '\xff';
  header += R"(":{}})";
  expect_rejected(header, zeros(4), {"not valid UTF-8"});
}

TEST_F(SafetensorsMalformed, HeaderNotAnObject) {
  expect_rejected("[1, 2, 3]", {}, {"expected a JSON object"});
}

TEST_F(SafetensorsMalformed, EntryNotAnObject) {
  expect_rejected(R"({"w": 3})", {}, {"tensor 'w'", "number"});
}

TEST_F(SafetensorsMalformed, MissingDtype) {
  expect_rejected(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", zeros(8), {"tensor 'w'", "\"dtype\""});
}

TEST_F(SafetensorsMalformed, MissingDataOffsets) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2]}})", zeros(8), {"tensor 'w'", "\"data_offsets\""});
}

TEST_F(SafetensorsMalformed, DtypeNotAString) {
  expect_rejected(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", zeros(4), {"tensor 'w'", "\"dtype\""});
}

TEST_F(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(R"({"w":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", zeros(8),
                  {"tensor 'w'", "unknown dtype 'F17'", "BF16"});
}

TEST_F(SafetensorsMalformed, NegativeShape) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", zeros(8),
                  {"tensor 'w'", "-1", "non-negative"});
}

TEST_F(SafetensorsMalformed, NonIntegerShape) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", zeros(8), {"tensor 'w'", "2.5"});
}

TEST_F(SafetensorsMalformed, ShapeOverflow) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", zeros(8),
                  {"tensor 'w'", "overflow"});
}

TEST_F(SafetensorsMalformed, OffsetsWrongType) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", zeros(8),
                  {"tensor 'w'", "data_offsets"});
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", zeros(8),
                  {"tensor 'w'", "data_offsets"});
}

TEST_F(SafetensorsMalformed, OffsetsEndBeforeBegin) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", zeros(8),
                  {"tensor 'w'", "end before they begin"});
}

TEST_F(SafetensorsMalformed, OverlappingOffsets) {
  expect_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  zeros(12), {"tensor 'b'", "overlap tensor 'a'"});
}

TEST_F(SafetensorsMalformed, GappedOffsets) {
  expect_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                  zeros(20), {"tensor 'b'", "gap of 4 bytes", "tensor 'a'"});
}

TEST_F(SafetensorsMalformed, OffsetsNotStartingAtZero) {
  expect_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", zeros(12),
                  {"tensor 'w'", "do not start at 0"});
}

TEST_F(SafetensorsMalformed, ByteSizeNotDtypeTimesShape) {
  expect_rejected(one_tensor_header("[0,12]"), zeros(12), {"tensor 'w'", "span 12 bytes", "expected 16", "[2, 2]"});
}

TEST_F(SafetensorsMalformed, TruncatedBuffer) {
  expect_rejected(one_tensor_header("[0,16]"), zeros(10), {"truncated", "16", "10", "'w'"});
}

TEST_F(SafetensorsMalformed, TrailingBytes) {
  expect_rejected(one_tensor_header("[0,16]"), zeros(20), {"4 trailing bytes", "'w'"});
}

TEST_F(SafetensorsMalformed, MetadataValueNotAString) {
  expect_rejected(R"({"__metadata__":{"format":"pt","step":1},)" + one_tensor_header("[0,16]").substr(1), zeros(16),
                  {"__metadata__", "'step'", "expected a string"});
}

TEST_F(SafetensorsMalformed, MetadataNotAnObject) {
  expect_rejected(R"({"__metadata__":[1],)" + one_tensor_header("[0,16]").substr(1), zeros(16),
                  {"__metadata__", "array"});
}

// ------------------------------------------------------------------ valid files

TEST(SafetensorsValid, RoundTripsEveryFloatDtypeExactly) {
  TempDir dir;
  const std::vector<float> f32 = {1.0f, -2.5f, 3.1415927f, 1e-30f, -0.0f, 65504.0f};
  const std::vector<double> f64 = {1.0, -2.5, 3.141592653589793, 1e-300, 1e300, -7.25};
  // float16 bits: 1, -2, 0.5, 65504 (largest), 2^-24 (smallest subnormal), 0x3555.
  const std::vector<uint16_t> f16_bits = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x3555};
  const std::vector<double> f16_values = {1.0, -2.0, 0.5, 65504.0, std::ldexp(1.0, -24), std::ldexp(1365.0, -12)};
  // bfloat16 bits: 1, -2.5, 3.140625, 1.5 * 2^-126, 2^-133 (subnormal), -65536.
  const std::vector<uint16_t> bf16_bits = {0x3F80, 0xC020, 0x4049, 0x00C0, 0x0001, 0xC780};
  const std::vector<double> bf16_values = {1.0, -2.5, 3.140625, 1.5 * std::ldexp(1.0, -126), std::ldexp(1.0, -133),
                                           -65536.0};
  std::vector<postsvd_test::TensorBlob> blobs = {
      postsvd_test::f32_blob("f32", {2, 3}, f32),
      postsvd_test::f64_blob("f64", {3, 2}, f64),
      {"f16", DType::F16, {6}, postsvd_test::to_bytes(f16_bits)},
      {"bf16", DType::BF16, {1, 6}, postsvd_test::to_bytes(bf16_bits)},
  };
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, blobs, {{"format", "pt"}});
  SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 4u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.file_size(), 8 + file.header_size() + 24 + 48 + 12 + 12);
  EXPECT_EQ(file.header_size() % 8, 0u);
  // Entries come in offset order.
  EXPECT_EQ(file.tensors()[0].name, "f32");
  EXPECT_EQ(file.tensors()[3].name, "bf16");
  ASSERT_NE(file.find("f64"), nullptr);
  EXPECT_EQ(file.find("nope"), nullptr);
  EXPECT_EQ(file.find("f64")->shape, (std::vector<int64_t>{3, 2}));

  // Read each as a [1, 6] row view (contiguous) into float64 and compare exactly.
  auto flat = [&](const std::string& name) {
    const postsvd::TensorInfo& info = *file.find(name);
    return postsvd::to_matrix<double>(TensorView{file.data(info), info.dtype, 1, 6, 6, 1, name});
  };
  const auto m32 = flat("f32");
  const auto m64 = flat("f64");
  const auto m16 = flat("f16");
  const auto mb16 = flat("bf16");
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(m32(0, j), static_cast<double>(f32[j])) << j;
    EXPECT_EQ(m64(0, j), f64[j]) << j;
    EXPECT_EQ(m16(0, j), f16_values[j]) << j;
    EXPECT_EQ(mb16(0, j), bf16_values[j]) << j;
  }
  EXPECT_TRUE(std::signbit(m32(0, 4)));
}

TEST(SafetensorsValid, HalfConversionCoversSpecialValues) {
  using postsvd::detail::f16_to_float;
  EXPECT_TRUE(std::isinf(f16_to_float(0x7C00)) && f16_to_float(0x7C00) > 0);
  EXPECT_TRUE(std::isinf(f16_to_float(0xFC00)) && f16_to_float(0xFC00) < 0);
  EXPECT_TRUE(std::isnan(f16_to_float(0x7E00)));
  EXPECT_EQ(f16_to_float(0x03FF), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_float(0x0400), std::ldexp(1.0f, -14));     // smallest normal
  // Every finite half value converts to the float that rounds back to it.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    const float f = f16_to_float(static_cast<uint16_t>(h));
    const int exponent = static_cast<int>((h >> 10) & 0x1f);
    const double mantissa = (h & 0x3ff);
    const double expected = (exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024.0 + mantissa, exponent - 25));
    ASSERT_EQ(static_cast<double>(std::fabs(f)), expected) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
  }
}

TEST(SafetensorsValid, AcceptsEmptyHeaderPaddingAndZeroSizedTensors) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  write_raw_safetensors(path, "{}      ", {});
  EXPECT_EQ(SafetensorsFile(path).tensors().size(), 0u);
  write_raw_safetensors(path,
                        R"({"__metadata__":null,"e":{"dtype":"BF16","shape":[0,4],"data_offsets":[0,0]},)"
                        R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}   )",
                        zeros(4));
  SafetensorsFile file(path);
  EXPECT_EQ(file.tensors().size(), 2u);
  EXPECT_TRUE(file.metadata().empty());
}

TEST(SafetensorsValid, FileIsMovable) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, {postsvd_test::f32_blob("w", {2}, {7.0f, 8.0f})});
  SafetensorsFile a(path);
  const void* data = a.data(*a.find("w"));
  SafetensorsFile b(std::move(a));
  EXPECT_EQ(b.path(), path);
  EXPECT_EQ(b.data(*b.find("w")), data);  // same mapping, nothing copied
  float value;
  std::memcpy(&value, static_cast<const char*>(data) + 4, 4);
  EXPECT_EQ(value, 8.0f);
}

// ------------------------------------------------------------------ to_matrix and views

TEST(TensorViewConversion, StridedViewsAndByteSpan) {
  // Stored [3, 4] row-major float32 with value 10 * r + c.
  std::vector<float> stored(12);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) stored[r * 4 + c] = static_cast<float>(10 * r + c);
  // nn.Linear [out = 3, in = 4] -> W [4, 3] = stored^T
  const TensorView linear{stored.data(), DType::F32, 4, 3, 1, 4, "linear"};
  const auto w = postsvd::to_matrix<float>(linear);
  ASSERT_EQ(w.rows(), 4);
  ASSERT_EQ(w.cols(), 3);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(w(r, c), stored[c * 4 + r]);
  EXPECT_EQ(linear.byte_span(), (std::pair<int64_t, int64_t>(0, 48)));

  // Conv1D-style [in = 3, out = 4] with a column part [1, 3) of the output.
  const TensorView conv{stored.data() + 1, DType::F32, 3, 2, 4, 1, "conv"};
  const auto p = postsvd::to_matrix<double>(conv);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 2; ++c) EXPECT_EQ(p(r, c), stored[r * 4 + 1 + c]);
  EXPECT_EQ(conv.byte_span(), (std::pair<int64_t, int64_t>(0, (2 * 4 + 1 + 1) * 4)));

  // A large transposing view takes the tiled path; check it against direct indexing.
  const int64_t in = 70, out = 45;
  std::vector<double> big(static_cast<std::size_t>(in * out));
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i) * 0.5;
  TensorView tiled{big.data(), DType::F64, in, out, out, 1, "tiled"};
  const auto t = postsvd::to_matrix<double>(tiled);
  for (int64_t r = 0; r < in; ++r)
    for (int64_t c = 0; c < out; ++c) ASSERT_EQ(t(r, c), big[static_cast<std::size_t>(r * out + c)]);
  TensorView empty;
  EXPECT_EQ(empty.byte_span(), (std::pair<int64_t, int64_t>(0, 0)));
}

TEST(TensorViewConversion, RejectsNonFloatDtypes) {
  std::vector<int32_t> stored = {1, 2, 3, 4};
  TensorView v{stored.data(), DType::I32, 2, 2, 1, 2, "model.layers.0.int_weight"};
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<float>(v); },
                                {"model.layers.0.int_weight", "I32", "not a float dtype"});
}

TEST(TensorViewConversion, RejectsNaNAndInfNamingTheFirstBadEntry) {
  // BF16 NaN (0x7FC0) at stored [out = 1, in = 2] of a [2, 3] nn.Linear -> W (row 2, col 1).
  std::vector<uint16_t> bf16(6, 0x3F80);
  bf16[1 * 3 + 2] = 0x7FC0;
  bf16[1 * 3 + 0] = postsvd::detail::float_to_bf16(std::numeric_limits<float>::quiet_NaN());
  TensorView v{bf16.data(), DType::BF16, 3, 2, 1, 3, "w.bf16"};
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<float>(v); }, {"w.bf16", "row 0, col 1", "BF16"});
  bf16[1 * 3 + 0] = 0x3F80;
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<double>(v); }, {"w.bf16", "row 2, col 1"});

  std::vector<float> f32 = {1.0f, std::numeric_limits<float>::infinity(), 2.0f, 3.0f};
  TensorView f{f32.data(), DType::F32, 2, 2, 2, 1, "w.f32"};
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<double>(f); }, {"w.f32", "row 0, col 1", "inf"});

  // A finite F64 that overflows float32 is rejected in F32 but kept in F64.
  std::vector<double> f64 = {1e300, 1.0};
  TensorView d{f64.data(), DType::F64, 1, 2, 2, 1, "w.f64"};
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<float>(d); }, {"w.f64", "row 0, col 0", "F32"});
  EXPECT_EQ(postsvd::to_matrix<double>(d)(0, 0), 1e300);
}

TEST(DTypes, NamesSizesAndParsing) {
  EXPECT_EQ(postsvd::dtype_size(DType::BF16), 2u);
  EXPECT_EQ(postsvd::dtype_size(DType::F64), 8u);
  EXPECT_EQ(postsvd::dtype_size(DType::F8_E4M3), 1u);
  EXPECT_STREQ(postsvd::dtype_name(DType::F8_E5M2), "F8_E5M2");
  for (DType d : {DType::BOOL, DType::U8, DType::I8, DType::I16, DType::U16, DType::F16, DType::BF16, DType::I32,
                  DType::U32, DType::F32, DType::F64, DType::I64, DType::U64, DType::F8_E4M3, DType::F8_E5M2}) {
    EXPECT_EQ(postsvd::parse_dtype(postsvd::dtype_name(d), "ctx"), d);
  }
  EXPECT_TRUE(postsvd::is_float_dtype(DType::BF16));
  EXPECT_FALSE(postsvd::is_float_dtype(DType::I64));
  EXPECT_FALSE(postsvd::is_float_dtype(DType::F8_E4M3));
  expect_error<BadCheckpoint>([] { postsvd::parse_dtype("float32", "file.safetensors: tensor 'x'"); },
                              {"file.safetensors: tensor 'x'", "'float32'"});
}

TEST(DTypes, OneTableGivesNamesSizesAndTheListsMessagesShow) {
  std::set<std::string> names;
  for (const postsvd::DTypeInfo& info : postsvd::dtype_table()) {
    EXPECT_TRUE(names.insert(info.name).second) << info.name;
    EXPECT_STREQ(postsvd::dtype_name(info.dtype), info.name);
    EXPECT_EQ(postsvd::dtype_size(info.dtype), info.size);
  }
  EXPECT_EQ(names.size(), 15u);
  EXPECT_EQ(postsvd::dtype_names(postsvd::is_float_dtype), "F16, BF16, F32, F64");
  EXPECT_EQ(postsvd::dtype_names(postsvd::is_weight_dtype), "F16, BF16, F32, F64, F8_E4M3, F8_E5M2");
  expect_error<BadCheckpoint>([] { postsvd::parse_dtype("F4", "ctx"); },
                              {"'F4'", "BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2"});
  // A weight of a dtype no weight may have: the message lists what the check accepts.
  std::vector<int32_t> ints = {1, 2};
  TensorView i32{ints.data(), DType::I32, 1, 2, 2, 1, "w.i32"};
  expect_error<InvalidArgument>([&] { postsvd::to_matrix<float>(i32); },
                                {"w.i32", "I32", postsvd::dtype_names(postsvd::is_weight_dtype)});
}

TEST(Precisions, EverySpellingParsesAndABadOneListsThemAll) {
  std::vector<std::string> all;
  for (const postsvd::PrecisionInfo& info : postsvd::precision_table()) {
    ASSERT_FALSE(info.spellings.empty());
    EXPECT_STREQ(info.spellings.front(), info.name);
    EXPECT_STREQ(postsvd::precision_name(info.precision), info.name);
    for (const char* spelling : info.spellings) {
      EXPECT_EQ(postsvd::parse_precision(spelling), info.precision) << spelling;
      all.push_back(spelling);
    }
  }
  EXPECT_EQ(all, (std::vector<std::string>{"float32", "f32", "fp32", "single", "float64", "f64", "fp64", "double"}));
  expect_error<InvalidArgument>([] { postsvd::parse_precision("half"); },
                                {"precision: expected \"float32\" or \"float64\", got \"half\"",
                                 "float32, f32, fp32, single; float64, f64, fp64, double"});
  expect_error<InvalidArgument>([] { postsvd::parse_precision(""); }, {"got \"\""});
}

// ------------------------------------------------------------------ checkpoint folders

class CheckpointFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = dir_.folder("ckpt");
    write_text(folder_ + "/config.json", R"({"model_type": "llama"})");
  }
  void write_shard(const std::string& name, const std::vector<std::string>& tensors) {
    std::vector<postsvd_test::TensorBlob> blobs;
    float value = 1.0f;
    for (const auto& t : tensors) blobs.push_back(postsvd_test::f32_blob(t, {2}, {value, value + 0.5f})), value += 1;
    write_safetensors(folder_ + "/" + name, blobs);
  }
  void write_index(const std::string& weight_map) {
    write_text(folder_ + "/model.safetensors.index.json",
               R"({"metadata": {"total_size": 32}, "weight_map": )" + weight_map + "}");
  }
  TempDir dir_;
  std::string folder_;
};

TEST_F(CheckpointFolder, SingleFile) {
  write_shard("model.safetensors", {"b", "a"});
  Checkpoint ck(folder_);
  EXPECT_FALSE(ck.sharded());
  EXPECT_EQ(ck.tensor_names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(ck.files(), (std::vector<std::string>{folder_ + "/model.safetensors"}));
  EXPECT_EQ(ck.config_json(), R"({"model_type": "llama"})");
  EXPECT_EQ(ck.config().at("model_type"), "llama");  // parsed once, when the folder opened
  EXPECT_EQ(ck.config_path(), folder_ + "/config.json");
  EXPECT_TRUE(ck.contains("a"));
  EXPECT_EQ(ck.info("a").shape, (std::vector<int64_t>{2}));
  expect_error<BadCheckpoint>([&] { ck.info("zzz"); }, {folder_, "'zzz'"});
}

TEST_F(CheckpointFolder, ShardedRoundTrip) {
  write_shard("model-00001-of-00002.safetensors", {"a", "b"});
  write_shard("model-00002-of-00002.safetensors", {"c"});
  write_index(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                  "c": "model-00002-of-00002.safetensors"})");
  Checkpoint ck(folder_);
  EXPECT_TRUE(ck.sharded());
  EXPECT_EQ(ck.tensor_names(), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_EQ(ck.files().size(), 2u);
  EXPECT_EQ(ck.file_of("c").path(), folder_ + "/model-00002-of-00002.safetensors");
  const auto& info = ck.info("c");
  float values[2];
  std::memcpy(values, ck.file_of("c").data(info), 8);
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], 1.5f);
  // Moving the checkpoint keeps its mappings.
  Checkpoint moved(std::move(ck));
  EXPECT_EQ(moved.info("b").end, 16u);
}

TEST_F(CheckpointFolder, MissingShard) {
  write_shard("model-00001-of-00002.safetensors", {"a"});
  write_index(R"({"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {"model-00002-of-00002.safetensors", "does not exist", "tensor 'c'"});
}

TEST_F(CheckpointFolder, IndexNamesTensorAbsentFromShard) {
  write_shard("model-00001-of-00001.safetensors", {"a"});
  write_index(R"({"a": "model-00001-of-00001.safetensors", "ghost": "model-00001-of-00001.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {"model.safetensors.index.json", "tensor 'ghost'", "model-00001-of-00001.safetensors",
                               "no such tensor"});
}

TEST_F(CheckpointFolder, TensorInShardAbsentFromIndex) {
  write_shard("model-00001-of-00001.safetensors", {"a", "stray"});
  write_index(R"({"a": "model-00001-of-00001.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {"model-00001-of-00001.safetensors", "tensor 'stray'", "not listed"});
}

TEST_F(CheckpointFolder, DuplicateTensorAcrossShards) {
  write_shard("model-00001-of-00002.safetensors", {"a", "dup"});
  write_shard("model-00002-of-00002.safetensors", {"dup"});
  write_index(R"({"a": "model-00001-of-00002.safetensors", "dup": "model-00002-of-00002.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {"duplicate tensor 'dup'", "model-00001-of-00002.safetensors",
                               "model-00002-of-00002.safetensors"});
}

TEST_F(CheckpointFolder, BadIndex) {
  write_shard("model-00001-of-00001.safetensors", {"a"});
  write_text(folder_ + "/model.safetensors.index.json", R"({"weights": {}})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {"model.safetensors.index.json", "weight_map"});
  write_index(R"({"a": "../elsewhere.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {"tensor 'a'", "../elsewhere.safetensors"});
  write_text(folder_ + "/model.safetensors.index.json", "{not json");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {"model.safetensors.index.json", "not valid JSON"});
}

TEST_F(CheckpointFolder, MalformedShardNamesTheShard) {
  write_shard("model-00001-of-00001.safetensors", {"a"});
  write_raw_safetensors(folder_ + "/model-00001-of-00001.safetensors", one_tensor_header("[0,16]"), zeros(8));
  write_index(R"({"w": "model-00001-of-00001.safetensors"})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {"model-00001-of-00001.safetensors", "truncated", "'w'"});
}

TEST_F(CheckpointFolder, MissingConfig) {
  write_shard("model.safetensors", {"a"});
  std::filesystem::remove(folder_ + "/config.json");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {folder_, "config.json"});
}

TEST_F(CheckpointFolder, BadConfig) {
  write_shard("model.safetensors", {"a"});
  write_text(folder_ + "/config.json", "{");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {"config.json", "not valid JSON"});
}

TEST_F(CheckpointFolder, MissingFolder) {
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_ + "/nope"); }, {folder_ + "/nope", "does not exist"});
}

TEST_F(CheckpointFolder, OnlyOtherSafetensorsFiles) {
  write_shard("pytorch_weights.safetensors", {"a"});
  write_shard("adapter.safetensors", {"a"});
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); },
                              {folder_, "adapter.safetensors, pytorch_weights.safetensors",
                               "model.safetensors.index.json"});
}

TEST_F(CheckpointFolder, NoWeightsAtAll) {
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder_); }, {folder_, "no model.safetensors"});
}

// ---------------------------------------------------------------- partial copies of Hub files

// A file of two F32 [2, 2] tensors "a" then "b" beside a .postsvd-fetch.json (postsvd.hub's manifest)
// that lists `ranges` of it as present.
class PartialHubFile : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("model.safetensors");
    write_safetensors(path_, {postsvd_test::f32_blob("a", {2, 2}, {1, 2, 3, 4}),
                              postsvd_test::f32_blob("b", {2, 2}, {5, 6, 7, 8})});
    SafetensorsFile whole(path_);
    start_ = 8 + whole.header_size();
    size_ = whole.file_size();
  }
  void manifest(const std::string& ranges, uint64_t size, bool complete = false) {
    write_text(dir_.file(".postsvd-fetch.json"),
               R"({"format":1,"files":{"model.safetensors":{"size":)" + std::to_string(size) +
                   R"(,"complete":)" + (complete ? "true" : "false") + R"(,"ranges":)" + ranges + "}}}");
  }
  std::string range(uint64_t begin, uint64_t end) {
    return "[" + std::to_string(begin) + "," + std::to_string(end) + ",\"checksum\"]";
  }
  TempDir dir_;
  std::string path_;
  uint64_t start_ = 0, size_ = 0;
};

TEST_F(PartialHubFile, ReadsFetchedTensorsAndRefusesTheOthers) {
  // the header in two ranges (as fetched: length, then header), tensor "a" in a third
  manifest("[" + range(0, 8) + "," + range(8, start_) + "," + range(start_, start_ + 16) + "]", size_);
  SafetensorsFile file(path_);
  EXPECT_EQ(static_cast<const float*>(file.data(*file.find("a")))[3], 4.0f);
  expect_error<BadCheckpoint>([&] { file.data(*file.find("b")); },
                              {path_, "tensor 'b' was not fetched", ".postsvd-fetch.json"});
}

TEST_F(PartialHubFile, RefusesAMissingHeaderOrAWrongSize) {
  manifest("[" + range(0, 8) + "]", size_);
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path_); }, {path_, "header was not fetched"});
  manifest("[" + range(0, start_) + "]", size_ + 1);
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path_); }, {path_, "partial copy", "postsvd cache clear"});
}

TEST_F(PartialHubFile, SeesRangesFetchedAfterItWasOpened) {
  // postsvd.hub fetches the next matrices while the file is open: the reader reads the manifest again
  // before it refuses a tensor
  manifest("[" + range(0, start_) + "]", size_);
  SafetensorsFile file(path_);
  expect_error<BadCheckpoint>([&] { file.data(*file.find("b")); }, {path_, "tensor 'b' was not fetched"});
  manifest("[" + range(0, start_) + "," + range(start_ + 16, start_ + 32) + "]", size_);
  EXPECT_EQ(static_cast<const float*>(file.data(*file.find("b")))[1], 6.0f);
  expect_error<BadCheckpoint>([&] { file.data(*file.find("a")); }, {path_, "tensor 'a' was not fetched"});
}

TEST_F(PartialHubFile, AWholeFileReplacingThePartialCopyIsMappedAnew) {
  // a whole-file fetch replaces the partial copy (here: only its header) by a link to the complete file: the
  // reader maps the complete file
  const std::string sparse = dir_.file("sparse.bin");
  {
    std::ifstream in(path_, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(start_), bytes.end(), '\0');  // only the header
    write_text(sparse, bytes);
  }
  const std::string whole = dir_.file("whole.bin");
  std::filesystem::rename(path_, whole);
  std::filesystem::rename(sparse, path_);
  manifest("[" + range(0, start_) + "]", size_);
  SafetensorsFile file(path_);
  std::filesystem::remove(path_);
  std::filesystem::create_symlink(whole, path_);
  manifest("[]", size_, /*complete=*/true);
  EXPECT_EQ(static_cast<const float*>(file.data(*file.find("a")))[0], 1.0f);
  EXPECT_EQ(static_cast<const float*>(file.data(*file.find("b")))[3], 8.0f);
}

TEST_F(PartialHubFile, CompleteOrUnlistedFilesAreWhole) {
  manifest("[]", size_, /*complete=*/true);
  SafetensorsFile complete(path_);
  EXPECT_EQ(static_cast<const float*>(complete.data(*complete.find("b")))[0], 5.0f);
  write_text(dir_.file(".postsvd-fetch.json"), R"({"format":1,"files":{"other.safetensors":{"complete":false}}})");
  SafetensorsFile unlisted(path_);
  EXPECT_EQ(static_cast<const float*>(unlisted.data(*unlisted.find("b")))[0], 5.0f);
}

}  // namespace
