// safetensors: round trips, the exact byte layout, files in the reference layout, and every
// malformed-file error naming the path.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace mh {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mh_safetensors_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  static std::string read_bytes(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  static void write_bytes(const std::string& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  static std::string le64(uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
    return s;
  }
  // A file: length field, header, data.
  static std::string file_bytes(const std::string& header, const std::string& data) {
    return le64(header.size()) + header + data;
  }
  static std::string floats(std::initializer_list<float> v) {
    std::string s(v.size() * 4, '\0');
    std::memcpy(s.data(), std::data(v), s.size());
    return s;
  }

  // Writes `bytes` and expects load_safetensors to throw a UserError naming the path and `what`.
  void expect_bad(const std::string& bytes, const std::string& what) {
    std::string p = path("bad.safetensors");
    write_bytes(p, bytes);
    try {
      load_safetensors(p);
      ADD_FAILURE() << "no error for: " << what;
    } catch (const UserError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }

  std::string dir_;
};

Tensor filled(const Shape& shape, DType dtype, int salt) {
  Tensor t = Tensor::empty(shape, dtype);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(i * 7 + salt);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST_F(SafetensorsTest, RoundTripsEveryDtypeScalarEmptyAndMetadata) {
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"encoder.layers.0.ffn.fc1.weight", filled({3, 5}, DType::f32, 1)},
      {"f64", filled({4}, DType::f64, 2)},
      {"bf16", filled({2, 3}, DType::bf16, 3)},
      {"f16", filled({7}, DType::f16, 4)},
      {"ids", filled({2, 2}, DType::i32, 5)},
      {"bytes", filled({3}, DType::u8, 6)},
      {"scalar", filled({}, DType::f32, 7)},
      {"empty", filled({0, 4}, DType::f32, 8)},
      {"name with \"quotes\" and \\ and \xC3\xA9", filled({1}, DType::f32, 9)},
  };
  std::map<std::string, std::string> meta = {
      {"step", "1200"}, {"config", "model:\n  d_model: 64\n\ttab \"q\""}, {"ctl", "\x01\x1f"}};
  std::string p = path("model.safetensors");
  save_safetensors(p, tensors, meta);
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  SafetensorsFile f = load_safetensors(p);
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(f.tensors.count(name)) << name;
    EXPECT_TRUE(same_bytes(f.tensors.at(name), t)) << name;
    EXPECT_EQ(f.tensors.at(name).device(), Device::cpu);
  }
  EXPECT_EQ(f.tensors.at("scalar").numel(), 1);
  EXPECT_EQ(f.tensors.at("scalar").ndim(), 0);
  EXPECT_EQ(f.tensors.at("empty").numel(), 0);
  EXPECT_EQ(f.tensors.at("empty").shape(), (Shape{0, 4}));

  // The data section starts 8-byte aligned.
  std::string bytes = read_bytes(p);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(SafetensorsTest, SavesARowViewAndOverwritesAtomically) {
  Tensor big = filled({4, 3}, DType::f32, 11);
  std::string p = path("view.safetensors");
  save_safetensors(p, {{"w", big}});
  save_safetensors(p, {{"w", big.rows(1, 3)}});  // replaces the first file
  SafetensorsFile f = load_safetensors(p);
  ASSERT_EQ(f.tensors.size(), 1u);
  EXPECT_TRUE(same_bytes(f.tensors.at("w"), big.rows(1, 3)));
  EXPECT_TRUE(f.metadata.empty());
}

TEST_F(SafetensorsTest, ExactByteLayoutOfATinyFile) {
  Tensor a = Tensor::empty({2}, DType::f32);
  a.data<float>()[0] = 1.0f;
  a.data<float>()[1] = -2.0f;
  Tensor b = Tensor::empty({}, DType::i32);
  b.data<int32_t>()[0] = 7;
  std::string p = path("tiny.safetensors");
  save_safetensors(p, {{"b", b}, {"a", a}});  // the given order, not sorted

  const std::string json = R"({"b":{"dtype":"I32","shape":[],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  ASSERT_EQ(json.size(), 107u);
  const std::string header = json + std::string(5, ' ');  // padded to 112 = 14 * 8
  const std::string data = std::string("\x07\x00\x00\x00", 4) + floats({1.0f, -2.0f});
  std::string expected = file_bytes(header, data);
  EXPECT_EQ(std::string(expected.data(), 8), std::string("\x70\0\0\0\0\0\0\0", 8));
  EXPECT_EQ(read_bytes(p), expected);

  // With metadata, "__metadata__" comes first, as in the reference implementation.
  save_safetensors(p, {{"a", a}}, {{"format", "pt"}});
  const std::string json2 =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string header2 = json2 + std::string((8 - json2.size() % 8) % 8, ' ');
  EXPECT_EQ(read_bytes(p), file_bytes(header2, floats({1.0f, -2.0f})));
}

TEST_F(SafetensorsTest, ReadsFilesInTheReferenceLayout) {
  // As Python's safetensors writes them: tensors listed in a different order than their data,
  // the header padded with spaces; and as a hand-written json.dumps header with spaces.
  const std::string data =
      floats({1, 2, 3, 4}) + std::string("\x05\x00\x00\x00\xff\xff\xff\xff", 8);
  for (std::string json : {
           std::string(R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],)"
                       R"("data_offsets":[0,16]},"b":{"dtype":"I32","shape":[2],)"
                       R"("data_offsets":[16,24]}})"),
           std::string("{\"b\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [16, 24]},\n"
                       " \"w\": {\"data_offsets\": [0, 16], \"shape\": [2, 2], \"dtype\": \"F32\"},"
                       " \"__metadata__\": {\"format\": \"p\\u0074\"}}"),
       }) {
    json += std::string((8 - json.size() % 8) % 8, ' ');
    std::string p = path("py.safetensors");
    write_bytes(p, file_bytes(json, data));
    SafetensorsFile f = load_safetensors(p);
    ASSERT_EQ(f.tensors.size(), 2u);
    EXPECT_EQ(f.metadata.at("format"), "pt");
    const Tensor& w = f.tensors.at("w");
    EXPECT_EQ(w.shape(), (Shape{2, 2}));
    EXPECT_EQ(w.item(3), 4.0);
    const Tensor& b = f.tensors.at("b");
    EXPECT_EQ(b.dtype(), DType::i32);
    EXPECT_EQ(b.item(0), 5.0);
    EXPECT_EQ(b.item(1), -1.0);
  }
}

TEST_F(SafetensorsTest, MalformedFilesThrowUserErrorNamingThePath) {
  auto tensor = [](const std::string& body) { return "{\"t\":{" + body + "}}"; };
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::string eight = floats({1, 2});

  expect_bad("", "0 bytes");
  expect_bad("abc", "3 bytes");
  expect_bad(le64(100) + "{}", "truncated");
  expect_bad(le64(200'000'000) + "{}", "limit");
  expect_bad(le64(0), "empty header");
  expect_bad(file_bytes("{\"t\":{", ""), "unexpected end");
  expect_bad(file_bytes("[1,2]", ""), "expected a JSON object");
  expect_bad(file_bytes("{\"t\":1.5}", ""), "integers");
  expect_bad(file_bytes("{\"t\":true}", ""), "unsupported value");
  expect_bad(file_bytes("{\"a\":{},}", ""), "expected a string key");
  expect_bad(file_bytes("{} x", ""), "after the header");
  expect_bad(file_bytes("{\"a\":\"\\q\"}", ""), "unknown escape");
  expect_bad(file_bytes("{\"a\":\"\\ud800\"}", ""), "surrogate");
  expect_bad(file_bytes(std::string(100, '[') + std::string(100, ']'), ""), "too deep");
  expect_bad(file_bytes(tensor(ok_entry + ",\"dtype\":\"F32\""), eight), "duplicate key");
  expect_bad(file_bytes(R"({"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", eight),
             "tensor 't': unsupported dtype \"I64\"");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), eight),
             "needs 12 bytes");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), eight),
             "non-negative");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[2],"data_offsets":[8,16])"), eight),
             "past the data section");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[2],"data_offsets":[0])"), eight),
             "data_offsets must be");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[2])"), eight), "missing data_offsets");
  expect_bad(file_bytes(tensor(ok_entry + ",\"extra\":1"), eight), "unknown key \"extra\"");
  expect_bad(file_bytes(tensor(R"("dtype":"F32","shape":[4294967296,4294967296],)"
                               R"("data_offsets":[0,8])"),
                        eight),
             "too many");
  expect_bad(file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        eight + eight),
             "overlap");
  expect_bad(file_bytes(R"({"__metadata__":{"step":12}})", ""), "must be a string");
  expect_bad(file_bytes(R"({"__metadata__":[]})", ""), "must be an object");

  std::string missing = path("nope.safetensors");
  try {
    load_safetensors(missing);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), missing + ": cannot read file (No such file or directory)");
  }
  EXPECT_THROW(load_safetensors(dir_), UserError);  // a directory
}

TEST_F(SafetensorsTest, FailedSaveLeavesNoFile) {
  Tensor t = filled({4}, DType::f32, 1);
  std::string p = path("no/such/dir/model.safetensors");
  try {
    save_safetensors(p, {{"t", t}});
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  // The temporary file can be written but the rename fails (the target is a directory).
  std::string d = path("occupied");
  fs::create_directory(d);
  EXPECT_THROW(save_safetensors(d, {{"t", t}}), UserError);
  EXPECT_TRUE(fs::is_directory(d));
  EXPECT_FALSE(fs::exists(d + ".tmp"));
}

}  // namespace
}  // namespace mh
