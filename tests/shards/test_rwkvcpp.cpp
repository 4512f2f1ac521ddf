// rwkv.cpp .bin import: the tiny trained models of ../shared/fixtures/rwkv-cpp-tiny, their
// expected logits (RWKV-4), the official names and shapes after undoing the converter's
// transforms (RWKV-5.1, 5.2, 7), and corrupt files.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "catch.h"
#include "common/error.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"
#include "writers/checkpoint_writers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::string tiny(const std::string& v) {
  return fixture("rwkv-cpp-tiny/tiny-rwkv-" + v + "-FP32.bin");
}

// The message of the Error that `f` throws ("" when it throws none).
const HostTensor& get(const Checkpoint& ck, const std::string& name) {
  INFO("tensor " << name);
  REQUIRE(ck.tensors.count(name) == 1);
  return ck.tensors.at(name);
}

// Every tensor of `want` is in `got` with the same shape and values within `tol`.
void check_same(const Checkpoint& got, const Checkpoint& want, double tol) {
  CHECK(got.tensors.size() == want.tensors.size());
  for (auto& [name, t] : want.tensors) {
    INFO("tensor " << name);
    auto it = got.tensors.find(name);
    REQUIRE(it != got.tensors.end());
    CHECK(it->second.shape == t.shape);
    if (it->second.shape == t.shape) CHECK(max_abs_diff(it->second.to_f32(), t.to_f32()) <= tol);
  }
}

}  // namespace

TEST_CASE("rwkv.cpp RWKV-4 tiny model reproduces rwkv.cpp's expected logits",
          "[shards][rwkvcpp][v4]") {
  Checkpoint ck = read_checkpoint(tiny("4v0-660K"));
  CHECK(ck.format == "rwkv.cpp");
  ModelConfig c = infer_config(ck);
  CHECK(c.version == RwkvVersion::V4);
  CHECK(c.n_layer == 4);
  CHECK(c.n_embd == 128);
  CHECK(c.vocab_size == 256);
  CHECK(get(ck, "blocks.0.att.time_mix_k").shape == Shape{1, 1, 128});
  CHECK(get(ck, "blocks.3.ffn.time_mix_r").shape == Shape{1, 1, 128});
  CHECK(get(ck, "blocks.0.att.time_decay").shape == Shape{128});
  CHECK(get(ck, "blocks.0.att.time_first").shape == Shape{128});
  CHECK(get(ck, "blocks.0.ffn.key.weight").shape == Shape{256, 128});
  // The file stores -exp(time_decay); the first stored value is -1.0001506805419922.
  float td0 = get(ck, "blocks.0.att.time_decay").to_f32()[0];
  CHECK(std::abs(-std::exp(double(td0)) - -1.0001506805419922) < 1e-7);

  CheckpointSource src(std::move(ck));
  LocalModel m(src, DType::F32);
  auto logits = m.run(0, {34, 105, 110}, 1);
  auto ref = read_f32(fixture("rwkv-cpp-tiny/expected-logits-4v0-660K.bin"));
  REQUIRE(ref.size() == 256);
  REQUIRE(logits.size() == 3 * 256);
  std::vector<float> last(logits.end() - 256, logits.end());
  CHECK(max_abs_diff(last, ref) < 1e-4);
}

TEST_CASE("rwkv.cpp RWKV-5.1 tiny model gets the official names and shapes",
          "[shards][rwkvcpp][v5]") {
  Checkpoint ck = read_rwkvcpp(tiny("5v1-730K"));
  ModelConfig c = infer_config(ck);
  CHECK(c.version == RwkvVersion::V5_1);
  CHECK(c.n_layer == 12);
  CHECK(c.n_embd == 64);
  CHECK(c.n_head == 8);
  CHECK(c.head_size == 8);
  CHECK(c.ffn_dim == 256);
  // Per-head decay and bonus as ChatRWKV's RWKV-5 preview checkpoints hold them: [H].
  const HostTensor& td = get(ck, "blocks.0.att.time_decay");
  const HostTensor& tf = get(ck, "blocks.0.att.time_first");
  CHECK(td.shape == Shape{8});
  CHECK(tf.shape == Shape{8});
  // Stored as exp(-exp(raw)) = 0.3266514241695404 and exp(raw) = 1.0649009943008423.
  CHECK(std::abs(std::exp(-std::exp(double(td.to_f32()[0]))) - 0.3266514241695404) < 1e-7);
  CHECK(std::abs(std::exp(double(tf.to_f32()[0])) - 1.0649009943008423) < 1e-7);
  CHECK(get(ck, "blocks.0.att.time_mix_r").shape == Shape{1, 1, 64});
  CHECK(ck.tensors.count("blocks.0.att.gate.weight") == 0);
}

TEST_CASE("rwkv.cpp RWKV-5.2 tiny model gets the official names and shapes",
          "[shards][rwkvcpp][v5]") {
  Checkpoint ck = read_rwkvcpp(tiny("5v2-730K"));
  ModelConfig c = infer_config(ck);
  CHECK(c.version == RwkvVersion::V5_2);
  CHECK(c.n_layer == 12);
  CHECK(c.n_embd == 64);
  CHECK(c.n_head == 8);
  CHECK(c.head_size == 8);
  const HostTensor& td = get(ck, "blocks.0.att.time_decay");
  CHECK(td.shape == Shape{8, 8});
  CHECK(std::abs(std::exp(-std::exp(double(td.to_f32()[0]))) - 0.33556506037712097) < 1e-7);
  const HostTensor& tf = get(ck, "blocks.0.att.time_faaaa");
  CHECK(tf.shape == Shape{8, 8});
  CHECK(tf.to_f32()[1] == -0.007586285006254911f);  // stored raw
  CHECK(get(ck, "blocks.0.att.time_mix_g").shape == Shape{1, 1, 64});
  CHECK(get(ck, "blocks.0.att.gate.weight").shape == Shape{64, 64});
}

TEST_CASE("rwkv.cpp RWKV-7 tiny model gets the official names and shapes",
          "[shards][rwkvcpp][v7]") {
  Checkpoint ck = read_rwkvcpp(tiny("7v0-834K"));
  ModelConfig c = infer_config(ck);
  CHECK(c.version == RwkvVersion::V7);
  CHECK(c.n_layer == 12);
  CHECK(c.n_embd == 64);
  CHECK(c.n_head == 1);
  CHECK(c.head_size == 64);
  CHECK(ck.tensors.count("blocks.0.att.x_rwkvag") == 0);
  // x_rwkvag [6, 1, 64] split back in the order of its name; x_r starts the stored data and
  // x_w the second sixth of it.
  for (const char* x : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"})
    CHECK(get(ck, std::string("blocks.5.att.") + x).shape == Shape{1, 1, 64});
  CHECK(get(ck, "blocks.0.att.x_r").to_f32()[0] == 1.0078125f);
  // The low-rank matrices back to [C, D] / [D, C]: stored w1 (ggml [64, 32], C order [32, 64])
  // starts 0.002960205078125, 0.003814697265625, which are w1[0][0] and w1[1][0].
  const HostTensor& w1 = get(ck, "blocks.0.att.w1");
  CHECK(w1.shape == Shape{64, 32});
  CHECK(w1.to_f32()[0] == 0.002960205078125f);
  CHECK(w1.to_f32()[32] == 0.003814697265625f);
  CHECK(get(ck, "blocks.0.att.w2").shape == Shape{32, 64});
  CHECK(get(ck, "blocks.0.att.g1").shape == Shape{64, 32});
  CHECK(get(ck, "blocks.1.att.v2").shape == Shape{32, 64});
  CHECK(ck.tensors.count("blocks.0.att.v1") == 0);  // layer 0 takes v_first = v
  CHECK(get(ck, "blocks.0.att.w0").shape == Shape{1, 1, 64});
  CHECK(get(ck, "blocks.0.att.r_k").shape == Shape{1, 64});
  CHECK(get(ck, "blocks.0.ffn.x_k").shape == Shape{1, 1, 64});
}

TEST_CASE("rwkv.cpp import undoes the converter's transforms exactly (v4, v6, v7)",
          "[shards][rwkvcpp]") {
  TempDir dir;
  struct Case {
    const char* file;
    int version;
    double tol;  // v4 round-trips time_decay through -exp and log
  };
  for (Case c : {Case{"hf-rwkv4/hf-rwkv4-small.safetensors", 4, 1e-6},
                 Case{"pip-rwkv/pip-rwkv6-small.safetensors", 6, 0.0},
                 Case{"pip-rwkv/pip-rwkv7-small.safetensors", 7, 0.0}}) {
    INFO(c.file);
    Checkpoint official = read_safetensors(fixture(c.file));
    std::string p = dir / ("v" + std::to_string(c.version) + ".bin");
    write_file(p, rwkvcpp_bytes(official, c.version));
    Checkpoint back = read_rwkvcpp(p);
    check_same(back, official, c.tol);
    CHECK(infer_config(back) == infer_config(official));
  }
}

TEST_CASE("rwkv.cpp reader survives every truncation and single-byte corruption",
          "[shards][rwkvcpp]") {
  // A tiny RWKV-4-shaped checkpoint, written as rwkv.cpp would.
  Checkpoint ck;
  auto put = [&](const std::string& name, Shape shape, float scale) {
    std::vector<float> v(size_t(shape_numel(shape)));
    for (size_t i = 0; i < v.size(); ++i) v[i] = scale * float(i % 7) - 0.5f;
    ck.tensors[name] = HostTensor::from_f32(v, shape);
  };
  put("emb.weight", {4, 8}, 0.1f);
  put("blocks.0.ln1.weight", {8}, 1);
  put("blocks.0.att.time_decay", {8}, 0.3f);
  put("blocks.0.att.time_mix_k", {1, 1, 8}, 0.1f);
  put("head.weight", {4, 8}, 0.2f);
  TempDir dir;
  const std::string good_path = dir / "good.bin";
  write_file(good_path, rwkvcpp_bytes(ck, 4));
  const std::string good = read_file(good_path);
  check_same(read_rwkvcpp(good_path), ck, 1e-6);

  int threw = 0;
  auto attempt = [&](const std::string& bytes) {
    const std::string p = dir / ("bad" + std::to_string(threw) + ".bin");
    write_file(p, bytes);
    try {
      read_rwkvcpp(p);
    } catch (const Error& e) {
      ++threw;
      if (std::string(e.what()).find(p) == std::string::npos)
        FAIL("message without the file name: " << e.what());
    }
    std::filesystem::remove(p);
  };
  for (size_t n = 0; n < good.size(); ++n) attempt(good.substr(0, n));
  CHECK(threw == int(good.size()));  // every truncation is detected
  for (size_t i = 0; i < good.size(); ++i)
    for (unsigned char x : {0x01, 0x80, 0xff}) {
      std::string b = good;
      b[i] = char(b[i] ^ x);
      attempt(b);
    }
  CHECK(threw > int(good.size()));
}

TEST_CASE("rwkv.cpp reader rejects corrupt files with the file's name", "[shards][rwkvcpp]") {
  TempDir dir;
  const std::string good = read_file(tiny("4v0-660K"));

  SECTION("truncated inside a tensor's data") {
    std::string p = dir / "truncated.bin";
    write_file(p, good.substr(0, good.size() - 1000));
    std::string msg = error_of([&] { read_rwkvcpp(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("head.weight") != std::string::npos);  // the last tensor
  }
  SECTION("truncated inside the header and inside a parameter header") {
    for (size_t n : {size_t(10), size_t(24 + 5)}) {
      std::string p = dir / "short.bin";
      write_file(p, good.substr(0, n));
      std::string msg = error_of([&] { read_checkpoint(p); });
      INFO(msg);
      CHECK(msg.find(p) != std::string::npos);
    }
  }
  SECTION("flipped magic") {
    std::string bad = good;
    bad[0] ^= 0x01;
    std::string p = dir / "magic.bin";
    write_file(p, bad);
    std::string msg = error_of([&] { read_rwkvcpp(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("magic") != std::string::npos);
  }
  SECTION("unsupported version") {
    std::string bad = good;
    bad[4] = char(102);
    std::string p = dir / "version.bin";
    write_file(p, bad);
    std::string msg = error_of([&] { read_rwkvcpp(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("version 102") != std::string::npos);
  }
  SECTION("quantized tensor") {
    std::string bad = good;
    bad[24 + 8] = char(9);  // the first parameter's data type: Q8_0
    std::string p = dir / "q8.bin";
    write_file(p, bad);
    std::string msg = error_of([&] { read_rwkvcpp(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("'emb.weight'") != std::string::npos);
    CHECK(msg.find("Q8_0") != std::string::npos);
  }
  SECTION("huge dimension") {
    std::string bad = good;
    uint32_t big = 0x7fffffff;
    std::memcpy(&bad[24 + 12], &big, 4);
    std::string p = dir / "huge.bin";
    write_file(p, bad);
    std::string msg = error_of([&] { read_rwkvcpp(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("emb.weight") != std::string::npos);
  }
}
