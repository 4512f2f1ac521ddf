// PyTorch .pth import: the released-checkpoint fixture against its safetensors twin and the
// transformers logits, archives written here the way torch.save writes them (views, shared
// storages, bf16/fp32, ZIP64 records, deflated entries, big-endian), and corrupt files.
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "common/error.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"
#include "writers/checkpoint_writers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

const std::string kPth = "hf-rwkv4/hf-rwkv4-small.fp16.pth";

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string u16_bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

std::string swap_each(std::string s, size_t es) {
  for (size_t i = 0; i < s.size(); i += es)
    std::reverse(s.begin() + int64_t(i), s.begin() + int64_t(i + es));
  return s;
}

// A small checkpoint with views: storage 0 (fp32, 0..11) seen as a [3,4] matrix, its
// transpose, a strided slice and a scalar; storage 1 (bf16) as a parameter; storage 2 (fp16).
struct Sample {
  std::vector<FakeTensor> tensors = {
      {"m", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1}},
      {"m.T", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4}},
      {"slice", "FloatStorage", "0", 12, 5, {2}, {3}},
      {"scalar", "FloatStorage", "0", 12, 7, {}, {}},
      {"empty", "FloatStorage", "0", 12, 0, {0, 4}, {4, 1}},
      {"bf", "BFloat16Storage", "1", 4, 0, {2, 2}, {2, 1}, true},
      {"half", "HalfStorage", "2", 3, 0, {1, 1, 3}, {3, 3, 1}},
  };
  std::vector<float> f32 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  std::vector<uint16_t> bf16 = {0x3fc0, 0xc000, 0x3e80, 0x4040};  // 1.5, -2, 0.25, 3
  std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff};           // 1, -2, 65504

  std::vector<ZipFile> files(bool big_endian = false, const std::string& extra_op = "") const {
    std::string order = big_endian ? "big" : "little";
    return {{"sample/data.pkl", make_pickle(tensors, extra_op)},
            {"sample/byteorder", order},
            {"sample/data/0", big_endian ? swap_each(f32_bytes(f32), 4) : f32_bytes(f32)},
            {"sample/data/1", big_endian ? swap_each(u16_bytes(bf16), 2) : u16_bytes(bf16)},
            {"sample/data/2", big_endian ? swap_each(u16_bytes(f16), 2) : u16_bytes(f16)},
            {"sample/version", "3\n"}};
  }
};

void check_sample(const Checkpoint& ck) {
  REQUIRE(ck.tensors.size() == 7);
  auto at = [&](const char* n) -> const HostTensor& {
    INFO("tensor " << n);
    REQUIRE(ck.tensors.count(n) == 1);
    return ck.tensors.at(n);
  };
  CHECK(at("m").shape == Shape{3, 4});
  CHECK(at("m").to_f32() == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  CHECK(at("m.T").shape == Shape{4, 3});
  CHECK(at("m.T").to_f32() == std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK(at("slice").to_f32() == std::vector<float>{5, 8});
  CHECK(at("scalar").shape.empty());
  CHECK(at("scalar").to_f32() == std::vector<float>{7});
  CHECK(at("empty").shape == Shape{0, 4});
  CHECK(at("empty").data.empty());
  CHECK(at("bf").dtype == DType::BF16);
  CHECK(at("bf").to_f32() == std::vector<float>{1.5f, -2, 0.25f, 3});
  CHECK(at("half").dtype == DType::F16);
  CHECK(at("half").shape == Shape{1, 1, 3});
  CHECK(at("half").to_f32() == std::vector<float>{1, -2, 65504});
}

}  // namespace

TEST_CASE("pth fixture matches its safetensors twin exactly", "[shards][pth]") {
  Checkpoint pth = read_checkpoint(fixture(kPth));
  Checkpoint ref = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
  CHECK(pth.format == "pth");
  REQUIRE(pth.tensors.size() == ref.tensors.size());
  for (auto& [name, t] : ref.tensors) {
    INFO("tensor " << name);
    REQUIRE(pth.tensors.count(name) == 1);
    const HostTensor& p = pth.tensors.at(name);
    CHECK(p.dtype == DType::F16);
    CHECK(p.shape == t.shape);
    CHECK(p.to_f32() == t.to_f32());  // the fixture's values are exact in fp16
  }
  CHECK(infer_config(pth) == [&] {
    ModelConfig c = infer_config(ref);
    c.dtype = DType::F16;
    return c;
  }());
}

TEST_CASE("RWKV-4 from the .pth fixture matches transformers", "[shards][pth][v4]") {
  CheckpointSource src(read_checkpoint(fixture(kPth)));
  auto ref = read_f64(fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"));
  auto tokens = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json")))
                    .at("tokens")
                    .get<std::vector<int32_t>>();
  REQUIRE(tokens.size() == 48);
  REQUIRE(ref.size() == 48 * 300);
  LocalModel m(src, DType::F32);
  CHECK(max_abs_diff(m.run(0, tokens, 1), ref) < 5e-5);
}

TEST_CASE("pth reader handles views, dtypes, ZIP64, deflate and byte order", "[shards][pth]") {
  TempDir dir;
  Sample s;
  for (bool zip64 : {false, true})
    for (bool deflate : {false, true})
      for (bool big : {false, true}) {
        INFO("zip64 " << zip64 << " deflate " << deflate << " big-endian " << big);
        std::string p = dir / "sample.pth";
        write_file(p, make_zip(s.files(big), zip64, deflate));
        check_sample(read_checkpoint(p));
      }
}

TEST_CASE("pth reader survives every truncation and single-byte corruption", "[shards][pth]") {
  TempDir dir;
  const std::string good = make_zip(Sample().files(), true, false);
  const std::string p = dir / "bad.pth";
  int threw = 0, read = 0;
  auto attempt = [&](const std::string& bytes) {
    std::filesystem::remove(p);  // rewriting through truncation is slow on ext4 (auto_da_alloc)
    write_file(p, bytes);
    try {
      read_pth(p);
      ++read;
    } catch (const Error& e) {
      ++threw;
      if (std::string(e.what()).find(p) == std::string::npos)
        FAIL("message without the file name: " << e.what());
    }
  };
  for (size_t n = 0; n < good.size(); ++n) attempt(good.substr(0, n));
  CHECK(read == 0);  // every truncation is detected (the EOCD is at the very end)
  for (size_t i = 0; i < good.size(); ++i)
    for (unsigned char x : {0x01, 0x80, 0xff}) {
      std::string b = good;
      b[i] = char(b[i] ^ x);
      attempt(b);
    }
  CHECK(threw > 0);
}

TEST_CASE("pth reader rejects corrupt files with the file's name", "[shards][pth]") {
  TempDir dir;
  const std::string p = dir / "bad.pth";
  auto check_error = [&](const std::string& bytes, std::vector<std::string> want) {
    write_file(p, bytes);
    std::string msg = error_of([&] { read_checkpoint(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    for (auto& w : want) CHECK(msg.find(w) != std::string::npos);
  };
  const std::string good = read_file(fixture(kPth));

  SECTION("truncated") {
    for (size_t n : {size_t(10), size_t(4000), good.size() / 2, good.size() - 30, good.size() - 1})
      check_error(good.substr(0, n), {});
  }
  SECTION("a zip with a missing data entry") {
    // Rename the record of head.weight's storage (data/77) in its local header and in the
    // central directory, keeping every length and offset valid.
    std::string b = good;
    size_t renamed = 0;
    for (size_t at = b.find("fp16/data/77"); at != std::string::npos;
         at = b.find("fp16/data/77", at + 1))
      b[at + 11] = 'x', ++renamed;
    REQUIRE(renamed == 2);
    check_error(b, {"'head.weight'", "data/77"});
  }
  SECTION("corrupt storage bytes fail the CRC check") {
    std::string b = good;
    size_t at = b.find("fp16/data/0");
    REQUIRE(at != std::string::npos);
    b[at + 200] ^= 0x10;  // inside emb.weight's data (the local header pads to 64 bytes)
    check_error(b, {"data/0", "CRC"});
  }
  SECTION("synthetic archives") {
    Sample s;
    auto files = s.files();
    files.erase(files.begin() + 3);  // sample/data/1
    check_error(make_zip(files, false, false), {"'bf'", "sample/data/1"});
    check_error(make_zip(s.files(false, "\xfe"), false, false),
                {"data.pkl", "unknown pickle opcode 0xfe"});
    s.tensors[1].offset = 1;  // the transpose now reads past its storage
    check_error(make_zip(s.files(), false, false), {"'m.T'", "storage '0'"});
    s.tensors[1].offset = 0;
    s.tensors[3].sizes = {1000000};  // expanded: one element repeated
    s.tensors[3].strides = {0};
    check_error(make_zip(s.files(), false, false), {"'scalar'", "expanded"});
    s.tensors[3].sizes = {};
    s.tensors[3].strides = {};
    s.tensors[2].storage_type = "LongStorage";
    check_error(make_zip(s.files(), false, false), {"'slice'", "torch.LongStorage"});
  }
}
