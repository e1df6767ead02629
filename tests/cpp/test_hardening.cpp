// Hostile and degenerate inputs (issue 16): deeply nested JSON, oversized
// headers and names, files that are folders or broken links, corrupt or
// lying factor-cache entries, finite weights whose SVD overflows float32, and
// weights with more layers than config.json counts. Each must end in a clear
// error or warning, never a crash, a huge allocation or a silent wrong number.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "detail/json_guard.h"
#include "postsvd/backend.h"
#include "postsvd/cache.h"
#include "postsvd/architecture.h"
#include "postsvd/checkpoint.h"
#include "postsvd/comparator.h"
#include "postsvd/limits.h"
#include "postsvd/quantization.h"
#include "postsvd/warnings.h"
#include "reader_test_util.h"
#include "safetensors_test_util.h"

namespace {

namespace fs = std::filesystem;
using postsvd::BadCheckpoint;
using postsvd::Checkpoint;
using postsvd::InvalidArgument;
using postsvd::SafetensorsFile;
using postsvd_test::f32_blob;
using postsvd_test::write_raw_safetensors;
using postsvd_test::write_safetensors;
using postsvd_test::expect_error;
using postsvd_test::TempDir;
using postsvd_test::write_text;

std::string nested(int depth, const std::string& inner = "1") {
  return std::string(static_cast<std::size_t>(depth), '[') + inner + std::string(static_cast<std::size_t>(depth), ']');
}

// The message of the BadCheckpoint that opening `path` throws ("" when it opens).
std::string rejection_of(const std::string& path) {
  try {
    SafetensorsFile file(path);
  } catch (const BadCheckpoint& e) {
    return e.what();
  }
  ADD_FAILURE() << path << ": expected BadCheckpoint";
  return "";
}

// Collects postsvd::warn messages while alive.
class WarningCapture {
 public:
  WarningCapture() {
    previous_ = postsvd::set_warning_handler([this](const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex_);
      messages_.push_back(m);
    });
  }
  ~WarningCapture() { postsvd::set_warning_handler(previous_); }
  std::vector<std::string> messages() {
    std::lock_guard<std::mutex> lock(mutex_);
    return messages_;
  }

 private:
  postsvd::WarningHandler previous_;
  std::mutex mutex_;
  std::vector<std::string> messages_;
};

// A 1-layer llama folder (hidden 4, 2 heads, 1 KV head, MLP 6) holding `layers` layers of weights.
void write_tiny_llama(const std::string& folder, int config_layers, int layers, float value = 0.5f) {
  write_text(folder + "/config.json", R"({"model_type":"llama","hidden_size":4,"num_attention_heads":2,)"
                                      R"("num_key_value_heads":1,"intermediate_size":6,"num_hidden_layers":)" +
                                          std::to_string(config_layers) + "}");
  std::vector<postsvd_test::TensorBlob> blobs;
  int serial = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> values(static_cast<std::size_t>(shape[0] * shape[1]));
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = value * static_cast<float>((i * 7 + serial) % 5 + 1);
    ++serial;
    blobs.push_back(f32_blob(name, std::move(shape), values));
  };
  for (int i = 0; i < layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "self_attn.q_proj.weight", {4, 4});
    add(p + "self_attn.k_proj.weight", {2, 4});
    add(p + "self_attn.v_proj.weight", {2, 4});
    add(p + "self_attn.o_proj.weight", {4, 4});
    add(p + "mlp.gate_proj.weight", {6, 4});
    add(p + "mlp.up_proj.weight", {6, 4});
    add(p + "mlp.down_proj.weight", {4, 6});
  }
  write_safetensors(folder + "/model.safetensors", blobs);
}

// A 2-layer qwen3_moe folder (hidden 4, MoE intermediate 2) whose config declares `config_experts` experts
// and makes `dense_layer` (-1: none) a dense MLP; the weights hold `file_experts` experts in every layer
// (and the dense layer's MLP too).
void write_tiny_moe(const std::string& folder, int config_experts, int file_experts, int dense_layer = -1) {
  write_text(folder + "/config.json",
             R"({"model_type":"qwen3_moe","hidden_size":4,"num_attention_heads":2,"num_key_value_heads":1,)"
             R"("intermediate_size":6,"moe_intermediate_size":2,"num_hidden_layers":2,"num_experts":)" +
                 std::to_string(config_experts) + R"(,"mlp_only_layers":[)" +
                 (dense_layer >= 0 ? std::to_string(dense_layer) : std::string()) + "]}");
  std::vector<postsvd_test::TensorBlob> blobs;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> values(static_cast<std::size_t>(shape[0] * shape[1]));
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>((i * 7 + blobs.size()) % 5 + 1);
    blobs.push_back(f32_blob(name, std::move(shape), values));
  };
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "self_attn.q_proj.weight", {4, 4});
    add(p + "self_attn.k_proj.weight", {2, 4});
    add(p + "self_attn.v_proj.weight", {2, 4});
    add(p + "self_attn.o_proj.weight", {4, 4});
    if (i == dense_layer) {
      add(p + "mlp.gate_proj.weight", {6, 4});
      add(p + "mlp.up_proj.weight", {6, 4});
      add(p + "mlp.down_proj.weight", {4, 6});
    }
    for (int e = 0; e < file_experts; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      add(x + "gate_proj.weight", {2, 4});
      add(x + "up_proj.weight", {2, 4});
      add(x + "down_proj.weight", {4, 2});
    }
  }
  write_safetensors(folder + "/model.safetensors", blobs);
}

// ---------------------------------------------------------------- nesting and message size

TEST(JsonScan, CountsDepthOutsideStringsOnly) {
  const std::string text = R"({"a": "[[[{{{\"]]", "b": [[1, 2], {"c": []}]})";
  const auto scan = postsvd::detail::scan_json(text.data(), text.size(), 64);
  EXPECT_EQ(scan.max_depth, 4);
  EXPECT_EQ(scan.root_members, 2u);
  const std::string deep = nested(1000);
  EXPECT_EQ(postsvd::detail::scan_json(deep.data(), deep.size(), 64).max_depth, 65);  // stops past the bound
}

TEST(DeepJson, SafetensorsMetadataAndShapeAreRefused) {
  TempDir dir;
  const std::string path = dir.file("deep.safetensors");
  // 200,000 levels: nlohmann parses it, but formatting it for the error recursed off the stack.
  write_raw_safetensors(path, R"({"__metadata__":{"a":)" + nested(200000) + "}}", {});
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {path, "nests deeper than 64"});
  write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":)" + nested(200000) + R"(,"data_offsets":[0,4]}})",
                        std::vector<unsigned char>(4, 0));
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {path, "nests deeper"});
}

TEST(DeepJson, WithinTheBoundTheMessageQuotesAnExcerpt) {
  TempDir dir;
  const std::string path = dir.file("nested.safetensors");
  write_raw_safetensors(path, R"({"__metadata__":{"a":)" + nested(60, "\"" + std::string(5000, '7') + "\"") + "}}", {});
  const std::string message = rejection_of(path);
  EXPECT_NE(message.find("value of key 'a' is a JSON array"), std::string::npos) << message;
  EXPECT_NE(message.find("..."), std::string::npos) << message;
  EXPECT_LT(message.size(), 600u) << message;
}

TEST(DeepJson, ConfigAndIndexAreRefusedNamingTheFile) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 1, 1);
  write_text(folder + "/config.json", R"({"model_type":"llama","x":)" + nested(100000) + "}");  // 200 KB
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {"config.json", "nests deeper"});

  const std::string sharded = dir.folder("sharded");
  write_tiny_llama(sharded, 1, 1);
  fs::rename(sharded + "/model.safetensors", sharded + "/model-00001-of-00001.safetensors");
  write_text(sharded + "/model.safetensors.index.json", R"({"weight_map":)" + nested(100000) + "}");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(sharded); }, {"model.safetensors.index.json", "nests deeper"});
}

TEST(ErrorMessages, ParseErrorsQuoteAnExcerptOfTheToken) {
  TempDir dir;
  const std::string path = dir.file("digits.safetensors");
  write_raw_safetensors(path, R"({"w":)" + std::string(100000, '7') + "}", {});
  const std::string message = rejection_of(path);
  EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
  EXPECT_LT(message.size(), 600u) << message;
}

TEST(ErrorMessages, AreBoundedWhateverTheNameLength) {
  TempDir dir;
  const std::string path = dir.file("long.safetensors");
  const std::string name(1 << 20, 'n');
  write_raw_safetensors(path, R"({")" + name + R"(":{"dtype":"XX","shape":[1],"data_offsets":[0,4]}})",
                        std::vector<unsigned char>(4, 0));
  const std::string message = rejection_of(path);
  EXPECT_LE(message.size(), postsvd::limits::kMaxErrorMessageChars + 64);
  EXPECT_NE(message.find(path), std::string::npos);
  EXPECT_NE(message.find("bytes cut"), std::string::npos);
  EXPECT_NE(message.find("unknown dtype 'XX'"), std::string::npos);
  // The cut never splits a UTF-8 character: every 2-byte "\xc3\xa9" stays whole.
  std::string accents;
  for (int i = 0; i < 5001; ++i) accents += "\xc3\xa9";
  const std::string text = postsvd::bounded_message("x" + accents);
  ASSERT_LT(text.size(), accents.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\xc3') EXPECT_EQ(text[i + 1], '\xa9') << "at " << i;
    if (text[i] == '\xa9') EXPECT_EQ(text[i - 1], '\xc3') << "at " << i;
  }
}

// ---------------------------------------------------------------- sizes checked before allocating

TEST(HeaderLimits, AMillionZeroSizeTensorsAreRefusedQuickly) {
  TempDir dir;
  const std::string path = dir.file("many.safetensors");
  std::string header = "{";
  for (int i = 0; i < 1000000; ++i) {
    header += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  header += "}";
  write_raw_safetensors(path, header, {});
  const auto start = std::chrono::steady_clock::now();
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {path, "1000000 entries", "131072"});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0) << "the count is checked before the header is parsed";
}

TEST(HeaderLimits, RankAndValueCountAreBounded) {
  TempDir dir;
  const std::string path = dir.file("rank.safetensors");
  write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})",
                        std::vector<unsigned char>(4, 0));
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {"tensor 'w'", "17 dimensions", "limit of 16"});
  std::string zeros_shape = "[0";
  for (int i = 0; i < 3000000; ++i) zeros_shape += ",0";
  write_raw_safetensors(path, R"({"w":{"dtype":"F32","shape":)" + zeros_shape + R"(],"data_offsets":[0,0]}})", {});
  expect_error<BadCheckpoint>([&] { SafetensorsFile file(path); }, {path, "JSON values"});
}

TEST(HeaderLimits, OversizedConfigIsRefusedBeforeReading) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 1, 1);
  {
    std::ofstream out(folder + "/config.json", std::ios::binary | std::ios::trunc);
    out << R"({"model_type":"llama","pad":")";
  }
  fs::resize_file(folder + "/config.json", postsvd::limits::kMaxConfigBytes + 1);
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {"config.json", "over the limit"});
}

TEST(HeaderLimits, ConfigSizesThatWouldOverflowAProductAreRefused) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 1, 1);
  // heads x head_dim = 2^80 would overflow int64 while the expected shapes are built.
  write_text(folder + "/config.json", R"({"model_type":"llama","hidden_size":4,"num_attention_heads":1099511627776,)"
                                      R"("head_dim":1099511627776,"intermediate_size":6,"num_hidden_layers":1})");
  expect_error<BadCheckpoint>([&] { postsvd::detect_architecture(Checkpoint(folder)); },
                              {"config.json", "num_attention_heads", "over the limit"});
}

// ---------------------------------------------------------------- files that are not files

TEST(FileKinds, FolderDanglingLinkAndLinkLoopAreNamed) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 1, 1);
  const std::string weights = folder + "/model.safetensors";
  fs::remove(weights);

  fs::create_directory(weights);
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {weights, "is a directory"});
  fs::remove(weights);

  fs::create_symlink(folder + "/nowhere.safetensors", weights);
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {weights, "dangling symbolic link", "nowhere"});
  fs::remove(weights);

  fs::create_symlink(folder + "/loop_b", folder + "/loop_a");
  fs::create_symlink(folder + "/loop_a", folder + "/loop_b");
  fs::create_symlink(folder + "/loop_a", weights);
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {weights, "symbolic link loop"});

  const std::string config = folder + "/config.json";
  fs::remove(config);
  fs::create_directory(config);
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {config, "is a directory"});
}

TEST(FileKinds, ShardThatIsAFolderIsNamed) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 1, 1);
  fs::remove(folder + "/model.safetensors");
  fs::create_directory(folder + "/model-00001-of-00001.safetensors");
  write_text(folder + "/model.safetensors.index.json",
             R"({"weight_map":{"model.layers.0.self_attn.q_proj.weight":"model-00001-of-00001.safetensors"}})");
  expect_error<BadCheckpoint>([&] { Checkpoint ck(folder); }, {"model-00001-of-00001.safetensors", "is a directory"});
}

// ---------------------------------------------------------------- factor cache

class FactorCacheEntries : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = std::make_unique<postsvd::FactorCache>(dir_.folder("cache"));
    d_.U = postsvd::Matrix<float>(3, 2);
    d_.V = postsvd::Matrix<float>(2, 2);
    d_.S = {2.0f, 1.0f};
    for (int64_t i = 0; i < d_.U.size(); ++i) d_.U.data()[i] = 0.1f * static_cast<float>(i + 1);
    for (int64_t i = 0; i < d_.V.size(); ++i) d_.V.data()[i] = -0.2f * static_cast<float>(i + 1);
    cache_->store("entry", d_);
    path_ = dir_.file("cache/entry.svd");
  }
  std::vector<char> bytes() {
    std::ifstream in(path_, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  }
  void put(const std::vector<char>& b) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  // Loads; expects a refusal with one warning containing `part` (or none when empty).
  void expect_refused(const std::string& part) {
    WarningCapture warnings;
    postsvd::Decomposition<float> d;
    EXPECT_FALSE(cache_->load("entry", d));
    const auto messages = warnings.messages();
    if (part.empty()) {
      EXPECT_TRUE(messages.empty()) << messages.front();
      return;
    }
    ASSERT_EQ(messages.size(), 1u);
    EXPECT_NE(messages[0].find(part), std::string::npos) << messages[0];
    EXPECT_NE(messages[0].find(path_), std::string::npos) << messages[0];
    EXPECT_NE(messages[0].find("recomputing"), std::string::npos) << messages[0];
  }
  TempDir dir_;
  std::unique_ptr<postsvd::FactorCache> cache_;
  postsvd::Decomposition<float> d_;
  std::string path_;
};

TEST_F(FactorCacheEntries, RoundTripLoadsExactly) {
  postsvd::Decomposition<float> d;
  ASSERT_TRUE(cache_->load("entry", d));
  EXPECT_EQ(std::memcmp(d.U.data(), d_.U.data(), sizeof(float) * 6), 0);
  EXPECT_EQ(d.S, d_.S);
}

TEST_F(FactorCacheEntries, AFlippedPayloadBitIsRecomputedWithAWarning) {
  auto b = bytes();
  b[36 + 5] ^= 0x01;  // inside U
  put(b);
  expect_refused("checksum mismatch");
}

TEST_F(FactorCacheEntries, HugeClaimedDimensionsAllocateNothing) {
  auto b = bytes();
  const int64_t huge[3] = {int64_t{1} << 30, int64_t{1} << 30, int64_t{1} << 30};
  std::memcpy(b.data() + 8, huge, sizeof(huge));
  put(b);
  expect_refused("the file has");  // [2^30, 2^30] would need 8 EB; checked against the file first
  const int64_t negative[3] = {-1, 5, -1};
  std::memcpy(b.data() + 8, negative, sizeof(negative));
  put(b);
  expect_refused("impossible dimensions");
}

TEST_F(FactorCacheEntries, TruncatedAndForeignFilesAreRecomputed) {
  auto b = bytes();
  b.resize(b.size() - 3);
  put(b);
  expect_refused("the file has");
  put(std::vector<char>{'h', 'e', 'l', 'l', 'o', '!', '!', '!', '!'});
  expect_refused("bad magic");
}

TEST_F(FactorCacheEntries, FormatOneEntriesAreRecomputedSilently) {
  auto b = bytes();
  b[7] = '1';
  b.resize(b.size() - 16);  // format 1 had no checksum
  put(b);
  expect_refused("");
}

// ---------------------------------------------------------------- numbers that would overflow

TEST(Overflow, Float32SvdOfHugeFiniteWeightsNamesTheTensor) {
  const std::vector<float> values = {3e38f, -3e38f, 3e38f, 3e38f};
  postsvd::TensorView view;
  view.data = values.data();
  view.dtype = postsvd::DType::F32;
  view.rows = 2;
  view.cols = 2;
  view.row_stride = 2;
  view.col_stride = 1;
  view.name = "huge.weight";
  auto backend = postsvd::make_backend(postsvd::BackendOptions{});
  expect_error<InvalidArgument>([&] { backend->decompose_f32(view); },
                                {"huge.weight", "[2, 2]", "float32", "overflow", "float64"});
  const auto d = backend->decompose_f64(view);  // the same weights fit float64
  EXPECT_TRUE(std::isfinite(d.S[0]));
  EXPECT_NEAR(d.S[0] / static_cast<double>(3e38f), std::sqrt(2.0), 1e-12);
  postsvd::MeasureOptions options;
  expect_error<InvalidArgument>([&] { backend->compare({{view, view}}, options); }, {"huge.weight", "overflow"});
}

TEST(Overflow, ComparatorRefusesAndFloat64Works) {
  TempDir dir;
  const std::string base = dir.folder("base"), post = dir.folder("post");
  write_tiny_llama(base, 1, 1, 5e37f);  // finite float32 values up to 2.5e38, norms past 3.4e38
  write_tiny_llama(post, 1, 1, 5e37f);
  postsvd::Comparator f32(base, post, postsvd::BackendOptions{}, postsvd::Precision::F32);
  expect_error<InvalidArgument>([&] { f32.compare({0}); }, {"model.layers.0.self_attn.q_proj.weight", "float64"});
  postsvd::Comparator f64(base, post, postsvd::BackendOptions{}, postsvd::Precision::F64);
  const auto result = f64.compare({0});
  EXPECT_TRUE(std::isfinite(result[0].sigma_base[0]));
  EXPECT_NEAR(result[0].scaling_stats.mean, 1.0, 1e-12);
}

// ---------------------------------------------------------------- bad weights name their file

TEST(BadWeights, NonFiniteWeightsNameTheFileOfTheirModel) {
  TempDir dir;
  const std::string base = dir.folder("base"), post = dir.folder("post");
  write_tiny_llama(base, 1, 1);
  write_tiny_llama(post, 1, 1, std::numeric_limits<float>::infinity());
  postsvd::Comparator comparator(base, post, postsvd::BackendOptions{});
  std::string message;
  try {
    comparator.compare({0});
  } catch (const InvalidArgument& e) {
    message = e.what();
  }
  for (const std::string part : {std::string("tensor 'model.layers.0.self_attn.q_proj.weight' in ") + post +
                                     "/model.safetensors",
                                 std::string("non-finite value inf")}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " in: " << message;
  }
  EXPECT_EQ(message.find(base), std::string::npos) << message;
}

// ---------------------------------------------------------------- layers config.json does not count

TEST(UncountedLayers, AreReportedInTheArchitectureAndWarnedByComparator) {
  TempDir dir;
  const std::string base = dir.folder("base"), post = dir.folder("post");
  write_tiny_llama(base, 1, 3);
  write_tiny_llama(post, 1, 3, 0.25f);
  const Checkpoint ck(base);
  const postsvd::Architecture arch = postsvd::detect_architecture(ck);
  EXPECT_EQ(arch.num_layers, 1);
  ASSERT_EQ(arch.warnings.size(), 1u);
  for (const char* part : {"num_hidden_layers\" is 1", "layers up to 2", "14 tensors", "model.layers.2.", "left out"}) {
    EXPECT_NE(arch.warnings[0].find(part), std::string::npos) << arch.warnings[0];
  }
  WarningCapture warnings;
  postsvd::Comparator comparator(base, post, postsvd::BackendOptions{});
  EXPECT_EQ(warnings.messages().size(), 2u);  // base and post

  const std::string exact = dir.folder("exact");
  write_tiny_llama(exact, 3, 3);
  EXPECT_TRUE(postsvd::detect_architecture(Checkpoint(exact)).warnings.empty());
}

// ---------------------------------------------------------------- experts config.json does not declare

TEST(UncountedExperts, BeyondTheCountAreWarnedNamingThem) {
  TempDir dir;
  const std::string more = dir.folder("more"), post = dir.folder("post");
  write_tiny_moe(more, 4, 8);
  write_tiny_moe(post, 4, 8);
  const postsvd::Architecture arch = postsvd::detect_architecture(Checkpoint(more));
  int64_t read = 0;
  for (const postsvd::MatrixSource& s : arch.matrices) read = std::max<int64_t>(read, s.expert + 1);
  EXPECT_EQ(read, 4);
  ASSERT_EQ(arch.warnings.size(), 1u);
  for (const char* part : {"config.json", "\"num_experts\" is 4", "routed experts up to 7", "layers 0-1",
                           "24 tensors", "model.layers.", ".mlp.experts.7.", "only experts 0 to 3", "left out"}) {
    EXPECT_NE(arch.warnings[0].find(part), std::string::npos) << part << " in: " << arch.warnings[0];
  }
  WarningCapture warnings;
  postsvd::Comparator comparator(more, post, postsvd::BackendOptions{});
  EXPECT_EQ(warnings.messages().size(), 2u);  // base and post

  const std::string exact = dir.folder("exact");
  write_tiny_moe(exact, 8, 8);
  EXPECT_TRUE(postsvd::detect_architecture(Checkpoint(exact)).warnings.empty());
}

TEST(UncountedExperts, InALayerTheConfigMakesDenseAreWarned) {
  TempDir dir;
  const std::string folder = dir.folder("dense");
  write_tiny_moe(folder, 3, 3, 1);  // layer 1: dense by mlp_only_layers, with 3 experts' weights beside its MLP
  const postsvd::Architecture arch = postsvd::detect_architecture(Checkpoint(folder));
  ASSERT_EQ(arch.warnings.size(), 1u);
  for (const char* part : {"layer 1 dense", "routed experts there", "9 tensors", "model.layers.1.mlp.experts.2."}) {
    EXPECT_NE(arch.warnings[0].find(part), std::string::npos) << part << " in: " << arch.warnings[0];
  }
}

// ---------------------------------------------------------------- info: every problem, not the first

TEST(CheckCheckpoint, ListsEveryProblemThatDetectArchitectureStopsAt) {
  TempDir dir;
  const std::string folder = dir.folder("model");
  write_tiny_llama(folder, 2, 2);
  EXPECT_TRUE(postsvd::check_checkpoint(Checkpoint(folder)).problems.empty());
  // config.json's MLP size no longer matches: gate, up and down of both layers are misshapen.
  write_text(folder + "/config.json", R"({"model_type":"llama","hidden_size":4,"num_attention_heads":2,)"
                                      R"("num_key_value_heads":1,"intermediate_size":5,"num_hidden_layers":2})");
  const Checkpoint ck(folder);
  EXPECT_THROW(postsvd::detect_architecture(ck), BadCheckpoint);
  const postsvd::CheckpointCheck check = postsvd::check_checkpoint(ck);
  EXPECT_TRUE(check.mapped);
  EXPECT_EQ(check.architecture.matrices.size(), 8u);  // the attention sources
  ASSERT_EQ(check.problems.size(), 6u);
  EXPECT_NE(check.problems[0].find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << check.problems[0];
  EXPECT_NE(check.problems[5].find("model.layers.1.mlp.down_proj.weight"), std::string::npos) << check.problems[5];
  EXPECT_THROW(postsvd::detect_architecture(ck), BadCheckpoint);  // collecting stopped with check_checkpoint

  write_text(folder + "/config.json", R"({"model_type":"nothing_known"})");
  const postsvd::CheckpointCheck unmapped = postsvd::check_checkpoint(Checkpoint(folder));
  EXPECT_FALSE(unmapped.mapped);
  ASSERT_EQ(unmapped.problems.size(), 1u);
  EXPECT_NE(unmapped.problems[0].find("unsupported model_type 'nothing_known'"), std::string::npos);
}

// ---------------------------------------------------------------- compressed-tensors ignore patterns

TEST(IgnorePatterns, MatchInLinearTimeAndTooComplexOnesAreRefused) {
  postsvd::QuantizationConfig config;
  config.method = postsvd::QuantizationConfig::Method::CompressedTensors;
  const std::string long_name = "model.layers." + std::string(300, 'a') + ".mlp.gate.weight";
  const auto started = std::chrono::steady_clock::now();
  // A backtracking matcher takes minutes (the first) to centuries on these.
  for (const char* pattern : {"re:(.*)*x", "re:(a|a)*x", "re:(.*.*.*.*.*.*.*.*)*x", "re:(a*)*b"}) {
    config.not_converted = {pattern};
    EXPECT_FALSE(postsvd::module_not_converted(config, long_name)) << pattern;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), 5.0);
  config.not_converted = {"re:model\\.layers\\.a{1,300}\\.mlp\\.gate$"};
  EXPECT_TRUE(postsvd::module_not_converted(config, long_name));
  for (const std::string& pattern :
       {"re:" + std::string(100, '(') + "a" + std::string(100, ')'), std::string("re:(a{200}){200}"),
        "re:" + std::string(2000, 'a')}) {
    config.not_converted = {pattern};
    expect_error<BadCheckpoint>([&] { postsvd::module_not_converted(config, long_name); },
                                {"quantization_config.ignore", "too complex"});
  }
  config.not_converted = {"re:(a"};
  expect_error<BadCheckpoint>([&] { postsvd::module_not_converted(config, long_name); }, {"not a valid regular expression"});
}

}  // namespace
