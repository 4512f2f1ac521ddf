#include "shards/synthetic.h"

#include <cmath>
#include <atomic>
#include <thread>

#include "common/error.h"

namespace rwkvpp {

namespace {

struct Shape {
  const char* name;
  int64_t layers, embd, vocab;
};
// Official RWKV-4 Pile shapes (vocab 50277) and a tiny one for tests and the quickstart.
constexpr Shape kShapes[] = {{"tiny", 6, 128, 512},      {"169m", 12, 768, 50277},  {"430m", 24, 1024, 50277},
                             {"1.5b", 24, 2048, 50277},  {"3b", 32, 2560, 50277},   {"7b", 32, 4096, 50277},
                             {"14b", 40, 5120, 50277}};

// A fast, seedable generator (splitmix64) so that 14B of weights generate in seconds.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
};

uint64_t mix(uint64_t seed, const std::string& name) {
  uint64_t h = seed ^ 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return h;
}

// Values uniform in [lo, hi) (or, for `normal`, uniform with standard deviation `scale`: the
// shape of the distribution does not matter for speed tests, its scale keeps activations sane).
// Generated in 1 Mi-element blocks on all cores, each block seeded by (tensor, block), so the
// values do not depend on the thread count; written directly in `dtype`.
HostTensor make(const std::string& name, std::vector<int64_t> shape, DType dtype, uint64_t seed,
                float lo, float hi, bool normal, float scale) {
  if (normal) {
    lo = -scale * 1.7320508f;
    hi = scale * 1.7320508f;
  }
  HostTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  const int64_t n = t.numel();
  t.data.resize(size_t(n) * dtype_size(dtype));
  constexpr int64_t kBlock = 1 << 20;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const uint64_t base = mix(seed, name);
  auto fill = [&](int64_t b) {
    Rng r{base + uint64_t(b) * 0x632be59bd9b4e019ull};
    float buf[1024];
    for (int64_t i0 = b * kBlock; i0 < std::min(n, (b + 1) * kBlock); i0 += 1024) {
      int64_t m = std::min<int64_t>(1024, n - i0);
      for (int64_t i = 0; i < m; ++i) buf[i] = lo + (hi - lo) * r.uniform();
      from_f32(dtype, buf, t.data.data() + size_t(i0) * dtype_size(dtype), size_t(m));
    }
  };
  int threads = int(std::min<int64_t>(blocks, std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  std::atomic<int64_t> next{0};
  for (int k = 0; k < threads; ++k)
    pool.emplace_back([&] {
      for (int64_t b; (b = next++) < blocks;) fill(b);
    });
  for (auto& th : pool) th.join();
  return t;
}

}  // namespace

std::vector<std::string> synthetic_shapes() {
  std::vector<std::string> v;
  for (auto& s : kShapes) v.push_back(s.name);
  return v;
}

ModelConfig synthetic_config(const std::string& shape, DType dtype) {
  for (auto& s : kShapes)
    if (shape == s.name) {
      ModelConfig c;
      c.version = RwkvVersion::V4;
      c.n_layer = s.layers;
      c.n_embd = s.embd;
      c.ffn_dim = 4 * s.embd;
      c.vocab_size = s.vocab;
      c.dtype = dtype;
      return c;
    }
  std::string names;
  for (auto& s : kShapes) names += std::string(names.empty() ? "" : ", ") + s.name;
  fail("unknown synthetic shape '{}' (known: {})", shape, names);
}

SyntheticSource::SyntheticSource(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg), seed_(seed) {
  if (cfg.version != RwkvVersion::V4) fail("synthetic models are RWKV-4 only");
}

std::map<std::string, HostTensor> SyntheticSource::layer(int i) {
  if (i < 0 || i >= cfg_.n_layer) fail("synthetic model: layer {} out of range", i);
  const int64_t C = cfg_.n_embd, F = cfg_.ffn_dim;
  const DType d = cfg_.dtype;
  const uint64_t s = seed_ + uint64_t(i) * 1000003u;
  std::map<std::string, HostTensor> t;
  auto vec = [&](const std::string& n, std::vector<int64_t> shape, float lo, float hi) {
    t[n] = make(n, std::move(shape), DType::F32, s, lo, hi, false, 0);
  };
  auto mat = [&](const std::string& n, int64_t rows, int64_t cols) {
    t[n] = make(n, {rows, cols}, d, s, 0, 0, true, 1.0f / std::sqrt(float(cols)));
  };
  if (i == 0) {
    vec("ln0.weight", {C}, 0.9f, 1.1f);
    vec("ln0.bias", {C}, -0.1f, 0.1f);
  }
  for (const char* ln : {"ln1", "ln2"}) {
    vec(std::string(ln) + ".weight", {C}, 0.9f, 1.1f);
    vec(std::string(ln) + ".bias", {C}, -0.1f, 0.1f);
  }
  vec("att.time_decay", {C}, -5.0f, 1.0f);
  vec("att.time_first", {C}, -1.0f, 1.0f);
  for (const char* m : {"att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k", "ffn.time_mix_r"})
    vec(m, {1, 1, C}, 0.0f, 1.0f);
  for (const char* m : {"att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
                        "ffn.receptance.weight"})
    mat(m, C, C);
  mat("ffn.key.weight", F, C);
  mat("ffn.value.weight", C, F);
  return t;
}

HostTensor SyntheticSource::tensor(const std::string& name) {
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  if (name == "emb.weight") return make(name, {V, C}, cfg_.dtype, seed_, 0, 0, true, 0.1f);
  if (name == "head.weight") return make(name, {V, C}, cfg_.dtype, seed_, 0, 0, true, 1.0f / std::sqrt(float(C)));
  if (name == "ln_out.weight") return make(name, {C}, DType::F32, seed_, 0.9f, 1.1f, false, 0);
  if (name == "ln_out.bias") return make(name, {C}, DType::F32, seed_, -0.1f, 0.1f, false, 0);
  if (name.rfind("blocks.", 0) == 0) {
    auto rest = name.substr(7);
    auto dot = rest.find('.');
    auto l = layer(std::stoi(rest.substr(0, dot)));
    auto it = l.find(rest.substr(dot + 1));
    if (it != l.end()) return it->second;
  }
  fail("synthetic model: no tensor '{}'", name);
}

Checkpoint synthetic_checkpoint(const ModelConfig& cfg, uint64_t seed) {
  SyntheticSource src(cfg, seed);
  Checkpoint ck;
  ck.source = "synthetic";
  ck.format = "synthetic";
  for (const char* n : {"emb.weight", "head.weight", "ln_out.weight", "ln_out.bias"}) ck.tensors[n] = src.tensor(n);
  for (int i = 0; i < cfg.n_layer; ++i)
    for (auto& [k, v] : src.layer(i)) ck.tensors["blocks." + std::to_string(i) + "." + k] = std::move(v);
  return ck;
}

}  // namespace rwkvpp
