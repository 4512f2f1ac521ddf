// Writes rwkvpp's synthetic RWKV-4 weights (shards/synthetic.h: SyntheticSource, an official
// shape, a seed) as an rwkv.cpp model file, so that rwkv.cpp and rwkvpp can run the same bytes
// side by side (scripts/bench_rwkvcpp.sh; `rwkvpp convert FILE` reads it back). Not in the
// default build: `ninja rwkvcpp_write` in the build folder.
//   rwkvcpp_write --shape 169m|430m|... --dtype fp32|fp16 [--seed 1] -o FILE.bin
//
// The file is what rwkv.cpp's converter (python/convert_pytorch_to_ggml.py) writes from a
// .pth (format: /work/shared/fixtures/README.md, rwkv.cpp docs/FILE_FORMAT.md), little-endian:
//   header   int32 magic 0x67676d66, version 101, n_vocab, n_embed, n_layer, data type
//            (0 FP32, 1 FP16)
//   tensors  int32 dim_count, key_length, data type; dims innermost first; the name; the data
// with the converter's changes to the parameters: every `.time_*` tensor squeezed (unit axes
// dropped), RWKV-4's time_decay stored as -exp(time_decay); in an FP16 file only the tensors
// of two or more axes other than `.time_*` are FP16 (emb, head and the matrices), the rest FP32.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "shards/synthetic.h"

using namespace rwkvpp;

namespace {

constexpr uint32_t kMagic = 0x67676d66u;
constexpr int32_t kVersion = 101;

void put_i32(std::ofstream& f, int32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; ++i) b[i] = uint8_t(uint32_t(v) >> (8 * i));
  f.write(reinterpret_cast<const char*>(b), 4);
}

// One parameter as rwkv.cpp's converter would have stored it (see the file comment).
void write_tensor(std::ofstream& f, const std::string& name, HostTensor t, bool fp16_file) {
  if (name.find(".time_") != std::string::npos) {
    std::vector<int64_t> kept;
    for (int64_t d : t.shape)
      if (d != 1) kept.push_back(d);
    if (kept.empty()) kept.push_back(1);
    t.shape = kept;
  }
  if (name.size() > 15 && name.compare(name.size() - 15, 15, ".att.time_decay") == 0) {
    std::vector<float> v = t.to_f32();
    for (float& x : v) x = float(-std::exp(double(x)));
    t = HostTensor::from_f32(v, t.shape);
  }
  const bool half = fp16_file && t.shape.size() > 1 && name.find(".time_") == std::string::npos;
  t = t.converted(half ? DType::F16 : DType::F32);
  put_i32(f, int32_t(t.shape.size()));
  put_i32(f, int32_t(name.size()));
  put_i32(f, half ? 1 : 0);
  for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) put_i32(f, int32_t(*d));
  f.write(name.data(), std::streamsize(name.size()));
  f.write(reinterpret_cast<const char*>(t.data.data()), std::streamsize(t.data.size()));
}

void write_model(const std::string& shape, const std::string& dtype, uint64_t seed,
                 const std::string& path) {
  if (dtype != "fp32" && dtype != "fp16") fail("--dtype: '{}'; fp32 or fp16", dtype);
  const bool fp16 = dtype == "fp16";
  // Generated in the file's dtype, as `rwkvpp synth --dtype` would: fp16 values are the fp32
  // ones rounded to nearest even.
  SyntheticSource src(synthetic_config(shape, fp16 ? DType::F16 : DType::F32), seed);
  const ModelConfig& c = src.config();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail("'{}': cannot open for writing", path);
  put_i32(f, int32_t(kMagic));
  put_i32(f, kVersion);
  put_i32(f, int32_t(c.vocab_size));
  put_i32(f, int32_t(c.n_embd));
  put_i32(f, int32_t(c.n_layer));
  put_i32(f, fp16 ? 1 : 0);
  write_tensor(f, "emb.weight", src.tensor("emb.weight"), fp16);
  for (int i = 0; i < c.n_layer; ++i)
    for (auto& [k, t] : src.layer(i))
      write_tensor(f, "blocks." + std::to_string(i) + "." + k, std::move(t), fp16);
  for (const char* n : {"ln_out.weight", "ln_out.bias", "head.weight"})
    write_tensor(f, n, src.tensor(n), fp16);
  f.close();
  if (!f) fail("'{}': write failed (disk full?)", path);
}

uint64_t parse_seed(const std::string& v) {
  char* end = nullptr;
  const unsigned long long s = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || v[0] == '-') fail("--seed: '{}' is not a whole number", v);
  return s;
}

const char kUsage[] =
    "usage: rwkvcpp_write --shape SHAPE --dtype fp32|fp16 [--seed N] -o FILE.bin\n"
    "Writes rwkvpp's synthetic RWKV-4 weights (the same as `rwkvpp synth --shape SHAPE --seed N`)\n"
    "in rwkv.cpp's model file format. SHAPE: tiny, 169m, 430m, 1.5b, 3b, 7b, 14b. Seed default "
    "1.\n";

}  // namespace

int main(int argc, char** argv) {
  std::string shape, dtype, out;
  uint64_t seed = 1;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      }
      if (i + 1 >= argc) fail("{}: needs a value (or unknown argument)\n{}", a, kUsage);
      const std::string v = argv[++i];
      if (a == "--shape")
        shape = v;
      else if (a == "--dtype")
        dtype = v;
      else if (a == "--seed")
        seed = parse_seed(v);
      else if (a == "-o" || a == "--out")
        out = v;
      else
        fail("unknown argument '{}'\n{}", a, kUsage);
    }
    if (shape.empty() || dtype.empty() || out.empty())
      fail("--shape, --dtype and -o are needed\n{}", kUsage);
    write_model(shape, dtype, seed, out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rwkvcpp_write: %s\n", e.what());
    return 1;
  }
  return 0;
}
