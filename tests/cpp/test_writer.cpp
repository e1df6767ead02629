// CheckpointWriter and the rounding conversions: round trips with known bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "detail/half.h"
#include "postsvd/architecture.h"
#include "postsvd/writer.h"
#include "reader_test_util.h"
#include "safetensors_test_util.h"

namespace postsvd {
namespace {

namespace fs = std::filesystem;

bool f16_is_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(Rounding, F16ExhaustiveRoundTripAndTiesToEven) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = detail::f16_to_float(static_cast<uint16_t>(h));
    const uint16_t back = float_to_f16_rne(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(f16_is_nan(back)) << std::hex << h;
      EXPECT_EQ(back & 0x8000u, h & 0x8000u);
      continue;
    }
    ASSERT_EQ(back, h) << std::hex << h;
    const uint32_t magnitude = h & 0x7fffu;
    if (magnitude >= 0x7bffu) continue;  // the next value up is inf
    const float next = detail::f16_to_float(static_cast<uint16_t>(h + 1));
    const float mid = 0.5f * (f + next);  // exact: 12 significant bits
    const uint16_t even = (h & 1u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    ASSERT_EQ(float_to_f16_rne(mid), even) << std::hex << h;
    ASSERT_EQ(float_to_f16_rne(std::nextafter(mid, 0.0f * mid)), h) << std::hex << h;
    ASSERT_EQ(float_to_f16_rne(std::nextafter(mid, 2.0f * mid)), static_cast<uint16_t>(h + 1))
        << std::hex << h;
  }
  EXPECT_EQ(float_to_f16_rne(65519.0f), 0x7bffu);
  EXPECT_EQ(float_to_f16_rne(65520.0f), 0x7c00u);
  EXPECT_EQ(float_to_f16_rne(-1e30f), 0xfc00u);
  EXPECT_EQ(float_to_f16_rne(std::ldexp(1.0f, -25)), 0x0000u);           // tie with 0 -> even
  EXPECT_EQ(float_to_f16_rne(std::ldexp(1.5f, -25)), 0x0001u);           // above the tie
}

TEST(Rounding, Bf16TiesNanAndSingleRoundingFromDouble) {
  EXPECT_EQ(detail::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80u);                            // tie -> even
  EXPECT_EQ(detail::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82u);                        // tie -> even
  const uint16_t nan = detail::float_to_bf16(-std::nanf(""));
  EXPECT_EQ(nan & 0x7f80u, 0x7f80u);
  EXPECT_NE(nan & 0x7fu, 0u);
  EXPECT_EQ(nan & 0x8000u, 0x8000u);
  // Just above a bf16 tie, but within float rounding of it: double -> float ->
  // bf16 would round twice and land on the even neighbour.
  const double above_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  EXPECT_EQ(double_to_bf16_rne(above_tie), 0x3f81u);
  EXPECT_EQ(double_to_bf16_rne(-above_tie), 0xbf81u);
  EXPECT_EQ(double_to_bf16_rne(1.0 + std::ldexp(1.0, -8)), 0x3f80u);
  EXPECT_EQ(double_to_f16_rne(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)), 0x3c01u);
  EXPECT_EQ(double_to_f16_rne(1.0 + std::ldexp(1.0, -11)), 0x3c00u);
  EXPECT_TRUE(f16_is_nan(double_to_f16_rne(std::nan(""))));
  EXPECT_EQ(double_to_bf16_rne(1e300), 0x7f80u);
  EXPECT_EQ(double_to_f16_rne(1e300), 0x7c00u);
}

class WriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("postsvd_writer_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "src");
    fs::create_directories(root_ / "out");
    std::ofstream(root_ / "src" / "config.json") << R"({"model_type": "llama"})";
  }
  void TearDown() override { fs::remove_all(root_); }

  static std::vector<float> values(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  }
  static std::vector<unsigned char> bytes_of(const SafetensorsFile& file, const std::string& name) {
    const TensorInfo* info = file.find(name);
    EXPECT_NE(info, nullptr) << name;
    const unsigned char* p = static_cast<const unsigned char*>(file.data(*info));
    return std::vector<unsigned char>(p, p + (info->end - info->begin));
  }
  static uint16_t u16_at(const SafetensorsFile& file, const std::string& name, std::size_t index) {
    uint16_t h;
    std::memcpy(&h, static_cast<const unsigned char*>(file.data(*file.find(name))) + 2 * index, 2);
    return h;
  }

  fs::path root_;
};

MatrixSource source(const std::string& tensor, int64_t in, int64_t out, int64_t offset, int64_t fused, bool conv1d) {
  MatrixSource s;
  s.tensor = tensor;
  s.in_features = in;
  s.out_features = out;
  s.out_offset = offset;
  s.fused_out = fused;
  s.conv1d = conv1d;
  return s;
}

TEST_F(WriterTest, SingleFileRoundTripKeepsUntouchedBytesAndLayouts) {
  // Deliberately not alphabetical: the writer keeps the source's order.
  std::vector<postsvd_test::TensorBlob> blobs = {
      postsvd_test::f32_blob("z.embed", {5, 4}, values(20, 1)),
      postsvd_test::bf16_blob("lin", {3, 4}, values(12, 2)),                 // nn.Linear [out 3, in 4]
      {"fused", DType::F16, {6, 4}, postsvd_test::to_bytes(std::vector<uint16_t>(24, 0x3c00u))},  // [out 3 + 3, in 4]
      postsvd_test::bf16_blob("conv", {4, 9}, values(36, 3)),                // Conv1D [in 4, out 3 * 3]
      postsvd_test::f64_blob("wide", {2, 3}, {1, 2, 3, 4, 5, 6}),            // [out 2, in 3]
  };
  postsvd_test::write_safetensors((root_ / "src" / "model.safetensors").string(), blobs, {{"format", "pt"}, {"note", "x"}});
  const Checkpoint checkpoint((root_ / "src").string());

  Matrix<float> w_lin(4, 3), w_fused(4, 3), w_conv(4, 3);
  Matrix<double> w_wide(3, 2);
  const auto v = values(36, 9);
  for (int64_t i = 0; i < 12; ++i) {
    w_lin.data()[i] = v[i];
    w_fused.data()[i] = v[12 + i];
    w_conv.data()[i] = v[24 + i];
  }
  for (int64_t i = 0; i < 6; ++i) w_wide.data()[i] = 1.0 + std::ldexp(1.0, -30) * static_cast<double>(i + 1);

  CheckpointWriter writer(checkpoint, (root_ / "out").string());
  writer.write(source("lin", 4, 3, 0, 3, false), w_lin);
  writer.write(source("fused", 4, 3, 3, 6, false), w_fused);  // second part only
  writer.write(source("conv", 4, 3, 6, 9, true), w_conv);     // third part only
  writer.write(source("wide", 3, 2, 0, 2, false), w_wide);
  EXPECT_THROW(writer.write(source("lin", 3, 4, 0, 4, false), Matrix<float>(3, 4)), InvalidArgument);
  EXPECT_THROW(writer.write(source("lin", 4, 3, 0, 3, false), Matrix<float>(3, 4)), InvalidArgument);
  const std::vector<std::string> written = writer.finish();
  ASSERT_EQ(written, std::vector<std::string>{"model.safetensors"});

  const fs::path out_path = root_ / "out" / "model.safetensors";
  const SafetensorsFile in_file((root_ / "src" / "model.safetensors").string());
  const SafetensorsFile out_file(out_path.string());
  EXPECT_EQ(out_file.header_size() % 8, 0u);
  EXPECT_EQ(out_file.metadata().at("format"), "pt");
  EXPECT_EQ(out_file.metadata().at("note"), "x");
  ASSERT_EQ(out_file.tensors().size(), in_file.tensors().size());
  for (std::size_t t = 0; t < in_file.tensors().size(); ++t) {
    EXPECT_EQ(out_file.tensors()[t].name, in_file.tensors()[t].name);
    EXPECT_EQ(out_file.tensors()[t].begin, in_file.tensors()[t].begin);
    EXPECT_EQ(out_file.tensors()[t].shape, in_file.tensors()[t].shape);
  }
  // The header lists tensors in the source's order.
  std::ifstream raw(out_path, std::ios::binary);
  uint64_t header_len = 0;
  raw.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, ' ');
  raw.read(header.data(), static_cast<std::streamsize>(header_len));
  EXPECT_LT(header.find("__metadata__"), header.find("z.embed"));
  EXPECT_LT(header.find("z.embed"), header.find("\"lin\""));

  EXPECT_EQ(bytes_of(out_file, "z.embed"), bytes_of(in_file, "z.embed"));
  // Linear: stored [out, in] holds W^T.
  for (int64_t o = 0; o < 3; ++o)
    for (int64_t i = 0; i < 4; ++i)
      EXPECT_EQ(u16_at(out_file, "lin", o * 4 + i), detail::float_to_bf16(w_lin(i, o)));
  // Fused: rows 0..2 untouched, rows 3..5 hold the part.
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t i = 0; i < 4; ++i) {
      const uint16_t h = u16_at(out_file, "fused", r * 4 + i);
      if (r < 3) {
        EXPECT_EQ(h, 0x3c00u);
      } else {
        EXPECT_EQ(h, float_to_f16_rne(w_fused(i, r - 3)));
      }
    }
  // Conv1D: stored [in, fused_out]; columns 6..8 hold the part, the rest unchanged.
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t c = 0; c < 9; ++c) {
      const uint16_t h = u16_at(out_file, "conv", i * 9 + c);
      if (c < 6) EXPECT_EQ(h, u16_at(in_file, "conv", i * 9 + c));
      else EXPECT_EQ(h, detail::float_to_bf16(w_conv(i, c - 6)));
    }
  const double* wide = static_cast<const double*>(out_file.data(*out_file.find("wide")));
  for (int64_t o = 0; o < 2; ++o)
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(wide[o * 3 + i], w_wide(i, o));
}

TEST_F(WriterTest, ShardedInputGivesShardedOutputWithIndex) {
  const fs::path src = root_ / "src";
  postsvd_test::write_safetensors((src / "model-00001-of-00002.safetensors").string(),
                            {postsvd_test::bf16_blob("a", {2, 3}, values(6, 4)), postsvd_test::f32_blob("b", {3}, values(3, 5))});
  postsvd_test::write_safetensors((src / "model-00002-of-00002.safetensors").string(),
                            {postsvd_test::bf16_blob("c", {4, 2}, values(8, 6))});
  std::ofstream(src / "model.safetensors.index.json")
      << R"({"metadata": {"total_size": 1, "kept": "yes"}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})";
  const Checkpoint checkpoint(src.string());
  ASSERT_TRUE(checkpoint.sharded());
  CheckpointWriter writer(checkpoint, (root_ / "out").string());
  Matrix<float> w(2, 4);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = 0.25f * static_cast<float>(i);
  writer.write(source("c", 2, 4, 0, 4, false), w);
  const auto written = writer.finish();
  EXPECT_EQ(written.size(), 3u);
  fs::copy_file(src / "config.json", root_ / "out" / "config.json");
  const Checkpoint out((root_ / "out").string());  // needs config.json like any folder
  ASSERT_TRUE(out.sharded());
  EXPECT_EQ(out.files().size(), 2u);
  EXPECT_EQ(bytes_of(out.file_of("a"), "a"), bytes_of(checkpoint.file_of("a"), "a"));
  EXPECT_EQ(bytes_of(out.file_of("b"), "b"), bytes_of(checkpoint.file_of("b"), "b"));
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t i = 0; i < 2; ++i) EXPECT_EQ(u16_at(out.file_of("c"), "c", o * 2 + i), detail::float_to_bf16(w(i, o)));
  std::ifstream index_file(root_ / "out" / "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(index_file);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 6u * 2 + 3u * 4 + 8u * 2);
  EXPECT_EQ(index["metadata"]["kept"], "yes");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"].size(), 3u);
}

// A weight is checked finite in the dtype it is stored in: a finite float past F16's or BF16's range, or a
// value past float32's written as F32, is an error naming the file, the tensor, the element and its cause.
TEST_F(WriterTest, RefusesWeightsThatAreNotFiniteInTheStoredDtype) {
  postsvd_test::write_safetensors(
      (root_ / "src" / "model.safetensors").string(),
      {{"half", DType::F16, {2, 2}, postsvd_test::to_bytes(std::vector<uint16_t>(4, 0x3c00u))},
       postsvd_test::bf16_blob("brain", {2, 2}, values(4, 1)), postsvd_test::f32_blob("single", {2, 2}, values(4, 2))});
  const Checkpoint checkpoint((root_ / "src").string());
  CheckpointWriter writer(checkpoint, (root_ / "out").string());
  auto message = [&](auto write) {
    try {
      write();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "expected InvalidArgument";
    return std::string();
  };
  Matrix<float> fits(2, 2);
  for (int64_t i = 0; i < 4; ++i) fits.data()[i] = 65504.0f;  // F16's largest finite value
  writer.write(source("half", 2, 2, 0, 2, false), fits);
  Matrix<float> too_big(2, 2);
  for (int64_t i = 0; i < 4; ++i) too_big.data()[i] = 1.0f;
  too_big(1, 0) = 65520.0f;  // rounds to inf in F16, finite in float32
  const std::string half = message([&] { writer.write(source("half", 2, 2, 0, 2, false), too_big, "argument x"); });
  for (const char* part : {"model.safetensors", "tensor 'half'", "W[1, 0] = 65520", "not finite as F16", "65504",
                           "it comes from argument x"})
    EXPECT_NE(half.find(part), std::string::npos) << part << " in: " << half;
  Matrix<double> past_bf16(2, 2);
  for (int64_t i = 0; i < 4; ++i) past_bf16.data()[i] = 1.0;
  past_bf16(0, 1) = 3.4e38;  // finite in float32, inf in BF16
  EXPECT_NE(message([&] { writer.write(source("brain", 2, 2, 0, 2, false), past_bf16); }).find("not finite as BF16"),
            std::string::npos);
  Matrix<double> past_f32(2, 2);
  for (int64_t i = 0; i < 4; ++i) past_f32.data()[i] = 1.0;
  past_f32(1, 1) = 1e39;
  EXPECT_NE(message([&] { writer.write(source("single", 2, 2, 0, 2, false), past_f32); }).find("W[1, 1] = 1e+39"),
            std::string::npos);
  Matrix<float> nan(2, 2);
  nan(0, 0) = std::nanf("");
  EXPECT_NE(message([&] { writer.write(source("single", 2, 2, 0, 2, false), nan); }).find("W[0, 0] = nan"),
            std::string::npos);
  EXPECT_DOUBLE_EQ(largest_finite(DType::F16), 65504.0);
  EXPECT_EQ(double_to_bf16_rne(largest_finite(DType::BF16)), 0x7f7fu);
}

// The writer reads the source's headers only until it copies: from a partial Hub copy that holds the headers
// and the tensor written (fused: its other part copied before the write), it writes what it writes from the
// whole source once the rest is fetched; copy_unchanged before that names the first tensor missing.
TEST_F(WriterTest, ReadsTheUntouchedTensorsOnlyWhenItCopiesThem) {
  const std::vector<postsvd_test::TensorBlob> blobs = {
      postsvd_test::f32_blob("keep", {5}, values(5, 1)),
      {"fused", DType::F16, {6, 4}, postsvd_test::to_bytes(std::vector<uint16_t>(24, 0x3c00u))},
      postsvd_test::bf16_blob("after", {3, 4}, values(12, 2)),
  };
  fs::create_directories(root_ / "partial");
  fs::copy_file(root_ / "src" / "config.json", root_ / "partial" / "config.json");
  for (const char* folder : {"src", "partial"})
    postsvd_test::write_safetensors((root_ / folder / "model.safetensors").string(), blobs);
  const SafetensorsFile layout((root_ / "src" / "model.safetensors").string());
  const uint64_t start = 8 + layout.header_size();
  const TensorInfo& fused = *layout.find("fused");
  postsvd_test::write_fetch_manifest((root_ / "partial").string(),
                                     {{"model.safetensors", {{0, start}, {start + fused.begin, start + fused.end}}}});
  Matrix<float> w(4, 3);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = 0.5f * static_cast<float>(i);
  const MatrixSource part = source("fused", 4, 3, 3, 6, false);  // rows 3..5; rows 0..2 are the source's

  const Checkpoint partial((root_ / "partial").string());
  fs::create_directories(root_ / "out-partial");
  CheckpointWriter writer(partial, (root_ / "out-partial").string());
  writer.write(part, w);
  try {
    writer.copy_unchanged();
    ADD_FAILURE() << "expected NotFetched";
  } catch (const NotFetched& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'keep' was not fetched"), std::string::npos) << e.what();
  }
  postsvd_test::write_fetch_manifest((root_ / "partial").string(), {{"model.safetensors", {{0, layout.file_size()}}}});
  writer.copy_unchanged();  // the rest, fetched meanwhile
  writer.finish();

  const Checkpoint whole((root_ / "src").string());
  CheckpointWriter reference(whole, (root_ / "out").string());
  reference.write(part, w);
  reference.finish();
  const std::string written = postsvd_test::read_bytes((root_ / "out-partial" / "model.safetensors").string());
  EXPECT_EQ(written, postsvd_test::read_bytes((root_ / "out" / "model.safetensors").string()));
}

TEST_F(WriterTest, RefusesTheSourceFolderAndAMissingFolder) {
  postsvd_test::write_safetensors((root_ / "src" / "model.safetensors").string(), {postsvd_test::f32_blob("a", {2, 2}, values(4, 1))});
  const Checkpoint checkpoint((root_ / "src").string());
  EXPECT_THROW(CheckpointWriter(checkpoint, (root_ / "src").string()), InvalidArgument);
  EXPECT_THROW(CheckpointWriter(checkpoint, (root_ / "missing").string()), InvalidArgument);
  CheckpointWriter writer(checkpoint, (root_ / "out").string());
  writer.finish();
  EXPECT_THROW(writer.finish(), InvalidArgument);
  EXPECT_THROW(writer.write(source("a", 2, 2, 0, 2, false), Matrix<float>(2, 2)), InvalidArgument);
}

}  // namespace
}  // namespace postsvd
