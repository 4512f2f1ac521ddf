// SyntheticSource: every tensor a layer of each RWKV version loads, generated on demand.
//
// Value ranges (what keeps a random model's activations finite and its kernels on the paths a
// trained model takes; the distribution's shape does not matter for speed tests, its scale
// does). Matrices `*.weight` [out, in]: standard deviation 1/sqrt(in), so a projection keeps
// the unit variance that layer and group norms give its input; the embedding 0.1 (ln0
// normalises it). Layer and group norms: weights in [0.9, 1.1], biases in [-0.1, 0.1]. Static
// mixes (time_mix_*, time_maa_*, x_*): [0, 1], as the lerp weights of trained models.
// - RWKV-4: time_decay in [-5, 1] (w = -exp(decay)), time_first in [-1, 1].
// - RWKV-5: time_decay [H, N] in [-6, 1]: w = exp(-exp(decay)) in [0.066, 0.9975], the slow to
//   fast spread of trained heads (RWKV-LM initialises -6 .. -1); time_faaaa (bonus u) in [-1, 1].
// - RWKV-6: the same static decay [1, 1, C] in [-6, 0] plus its low-rank term: time_decay_w1
//   [C, D] with deviation 1/sqrt(C) (tanh's input of unit scale), time_decay_w2 [D, C] with
//   0.5/sqrt(D), which moves the exponent by about 0.3; time_maa_w1 / w2 alike, moving each
//   mix by about 0.3 around its [0, 1] base.
// - RWKV-7: w = exp(-exp(-0.5) sigmoid(w0 + tanh(xw w1) w2)) lies in (0.545, 1) for any input,
//   so w0 only spreads the decays: [-6, 1]. a0, v0 in [-1, 1] (a and the value-residual gate
//   are sigmoids around 0.5); w1, a1, v1, g1 [C, D] with deviation 1/sqrt(C); w2 and g2 [D, C]
//   with 1/sqrt(D), a2 and v2 with 0.5/sqrt(D). k_k in [0.5, 1] (kk = normalize(k k_k) stays a
//   unit vector), k_a in [0.8, 1.2] (k = k (1 + (a - 1) k_a), near trained values around 1),
//   r_k [H, N] in [-0.1, 0.1] (the bonus (r k r_k) v stays a fraction of the group-normed output).
// Layer 0 of RWKV-7 has no v0/v1/v2 (it defines v_first), as the loaders expect.
#include "shards/synthetic.h"

#include <atomic>
#include <cmath>
#include <thread>

#include "common/error.h"

namespace rwkvpp {

namespace {

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

// One tensor to generate: uniform in [lo, hi), or (std > 0) uniform with that standard
// deviation. Stored in the model's dtype when it is a matrix `*.weight`, else fp32 (the rule of
// the model writer, so a synthetic source holds what a converted model would).
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  float lo = 0, hi = 0, std = 0;
};

bool is_matrix(const Spec& s) { return s.shape.size() == 2 && s.name.ends_with(".weight"); }

int64_t numel(const Spec& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  return n;
}

// Generated in 1 Mi-element blocks on all cores, each block seeded by (tensor, block), so the
// values do not depend on the thread count; written directly in `dtype`.
HostTensor make(const Spec& s, DType dtype, uint64_t seed) {
  float lo = s.lo, hi = s.hi;
  if (s.std > 0) {
    lo = -s.std * 1.7320508f;
    hi = s.std * 1.7320508f;
  }
  HostTensor t;
  t.dtype = dtype;
  t.shape = s.shape;
  const int64_t n = t.numel();
  t.data.resize(size_t(n) * dtype_size(dtype));
  constexpr int64_t kBlock = 1 << 20;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const uint64_t base = mix(seed, s.name);
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

// Builds a layer's list of specs.
struct Specs {
  std::vector<Spec> v;
  void uniform(const std::string& n, std::vector<int64_t> shape, float lo, float hi) {
    v.push_back({n, std::move(shape), lo, hi, 0});
  }
  void normal(const std::string& n, std::vector<int64_t> shape, float std) {
    v.push_back({n, std::move(shape), 0, 0, std});
  }
  // [rows, cols] matrix applied as W x: deviation 1/sqrt(cols).
  void mat(const std::string& n, int64_t rows, int64_t cols) {
    normal(n, {rows, cols}, 1.0f / std::sqrt(float(cols)));
  }
  void norm(const std::string& n, int64_t c) {
    uniform(n + ".weight", {c}, 0.9f, 1.1f);
    uniform(n + ".bias", {c}, -0.1f, 0.1f);
  }
  void mixes(std::initializer_list<const char*> names, int64_t c) {
    for (const char* m : names) uniform(m, {1, 1, c}, 0.0f, 1.0f);
  }
  // A low-rank pair x @ p1 @ p2 (p1 [C, D], p2 [D, C]), named p1 / p2 as given.
  void low_rank(const std::string& p1, const std::string& p2, int64_t c, int64_t d, float scale2) {
    normal(p1, {c, d}, 1.0f / std::sqrt(float(c)));
    normal(p2, {d, c}, scale2 / std::sqrt(float(d)));
  }
};

void v4_layer(Specs& s, const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, F = cfg.ffn_dim;
  s.uniform("att.time_decay", {C}, -5.0f, 1.0f);
  s.uniform("att.time_first", {C}, -1.0f, 1.0f);
  s.mixes({"att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k", "ffn.time_mix_r"}, C);
  for (const char* m : {"att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
                        "ffn.receptance.weight"})
    s.mat(m, C, C);
  s.mat("ffn.key.weight", F, C);
  s.mat("ffn.value.weight", C, F);
}

// RWKV-5.2 as the World models: per-channel decay and bonus [H, N], the gate.
void v5_layer(Specs& s, const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, F = cfg.ffn_dim, H = cfg.n_head, N = cfg.head_size;
  s.norm("att.ln_x", C);
  s.mixes({"att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g", "ffn.time_mix_k",
           "ffn.time_mix_r"},
          C);
  s.uniform("att.time_decay", {H, N}, -6.0f, 1.0f);
  s.uniform("att.time_faaaa", {H, N}, -1.0f, 1.0f);
  for (const char* m : {"att.key.weight", "att.value.weight", "att.receptance.weight", "att.gate.weight",
                        "att.output.weight", "ffn.receptance.weight"})
    s.mat(m, C, C);
  s.mat("ffn.key.weight", F, C);
  s.mat("ffn.value.weight", C, F);
}

void v6_layer(Specs& s, const ModelConfig& cfg, const LowRanks& r) {
  const int64_t C = cfg.n_embd, F = cfg.ffn_dim, H = cfg.n_head, N = cfg.head_size;
  s.norm("att.ln_x", C);
  s.mixes({"att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r",
           "att.time_maa_g", "ffn.time_maa_k", "ffn.time_maa_r"},
          C);
  s.normal("att.time_maa_w1", {C, 5 * r.mix}, 1.0f / std::sqrt(float(C)));
  s.normal("att.time_maa_w2", {5, r.mix, C}, 0.5f / std::sqrt(float(r.mix)));
  s.uniform("att.time_decay", {1, 1, C}, -6.0f, 0.0f);
  s.low_rank("att.time_decay_w1", "att.time_decay_w2", C, r.decay, 0.5f);
  s.uniform("att.time_faaaa", {H, N}, -1.0f, 1.0f);
  for (const char* m : {"att.key.weight", "att.value.weight", "att.receptance.weight", "att.gate.weight",
                        "att.output.weight", "ffn.receptance.weight"})
    s.mat(m, C, C);
  s.mat("ffn.key.weight", F, C);
  s.mat("ffn.value.weight", C, F);
}

void v7_layer(Specs& s, const ModelConfig& cfg, const LowRanks& r, int layer) {
  const int64_t C = cfg.n_embd, F = cfg.ffn_dim, H = cfg.n_head, N = cfg.head_size;
  s.norm("att.ln_x", C);
  s.mixes({"att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g", "ffn.x_k"}, C);
  s.uniform("att.w0", {1, 1, C}, -6.0f, 1.0f);
  s.low_rank("att.w1", "att.w2", C, r.w, 1.0f);
  s.uniform("att.a0", {1, 1, C}, -1.0f, 1.0f);
  s.low_rank("att.a1", "att.a2", C, r.a, 0.5f);
  if (layer > 0) {  // layer 0 defines v_first and has no value residual
    s.uniform("att.v0", {1, 1, C}, -1.0f, 1.0f);
    s.low_rank("att.v1", "att.v2", C, r.v, 0.5f);
  }
  s.low_rank("att.g1", "att.g2", C, r.g, 1.0f);
  s.uniform("att.k_k", {1, 1, C}, 0.5f, 1.0f);
  s.uniform("att.k_a", {1, 1, C}, 0.8f, 1.2f);
  s.uniform("att.r_k", {H, N}, -0.1f, 0.1f);
  for (const char* m : {"att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight"})
    s.mat(m, C, C);
  s.mat("ffn.key.weight", F, C);
  s.mat("ffn.value.weight", C, F);
}

std::vector<Spec> layer_specs(const ModelConfig& cfg, const LowRanks& r, int layer) {
  Specs s;
  const int64_t C = cfg.n_embd;
  if (layer == 0) s.norm("ln0", C);
  s.norm("ln1", C);
  s.norm("ln2", C);
  switch (cfg.version) {
    case RwkvVersion::V4: v4_layer(s, cfg); break;
    case RwkvVersion::V5_1: fail("synthetic models: RWKV-5.1 is not generated (the released RWKV-5 models are 5.2)");
    case RwkvVersion::V5_2: v5_layer(s, cfg); break;
    case RwkvVersion::V6: v6_layer(s, cfg, r); break;
    case RwkvVersion::V7: v7_layer(s, cfg, r, layer); break;
  }
  return std::move(s.v);
}

std::vector<Spec> top_specs(const ModelConfig& cfg) {
  const int64_t C = cfg.n_embd, V = cfg.vocab_size;
  Specs s;
  s.normal("emb.weight", {V, C}, 0.1f);
  s.normal("head.weight", {V, C}, 1.0f / std::sqrt(float(C)));
  s.norm("ln_out", C);
  return std::move(s.v);
}

}  // namespace

SyntheticSource::SyntheticSource(const ModelConfig& cfg, uint64_t seed)
    : cfg_(cfg), ranks_(released_low_ranks(cfg)), seed_(seed) {
  if (cfg.n_layer <= 0 || cfg.n_embd <= 0 || cfg.ffn_dim <= 0 || cfg.vocab_size <= 0)
    fail("synthetic model: impossible shape (n_layer {}, n_embd {}, ffn {}, vocab {})", cfg.n_layer, cfg.n_embd,
         cfg.ffn_dim, cfg.vocab_size);
  if (cfg.version != RwkvVersion::V4 && (cfg.n_head <= 0 || cfg.n_head * cfg.head_size != cfg.n_embd))
    fail("synthetic RWKV-{} model: n_head {} x head_size {} is not n_embd {}", version_name(cfg.version),
         cfg.n_head, cfg.head_size, cfg.n_embd);
  layer_specs(cfg_, ranks_, 0);  // refuses a version it cannot generate now, not at the first layer
}

std::map<std::string, HostTensor> SyntheticSource::layer(int i) {
  if (i < 0 || i >= cfg_.n_layer) fail("synthetic model: layer {} out of range", i);
  const uint64_t s = seed_ + uint64_t(i) * 1000003u;
  std::map<std::string, HostTensor> t;
  for (const Spec& sp : layer_specs(cfg_, ranks_, i))
    t[sp.name] = make(sp, is_matrix(sp) ? cfg_.dtype : DType::F32, s);
  return t;
}

HostTensor SyntheticSource::tensor(const std::string& name) {
  for (const Spec& sp : top_specs(cfg_))
    if (sp.name == name) return make(sp, is_matrix(sp) ? cfg_.dtype : DType::F32, seed_);
  if (name.rfind("blocks.", 0) == 0) {
    const std::string rest = name.substr(7);
    const auto dot = rest.find('.');
    int i = -1;
    if (dot != std::string::npos && dot > 0 && dot < 6 && rest.find_first_not_of("0123456789") == dot)
      i = std::stoi(rest.substr(0, dot));
    if (i >= 0 && i < cfg_.n_layer)
      for (const Spec& sp : layer_specs(cfg_, ranks_, i))
        if (sp.name == rest.substr(dot + 1))
          return make(sp, is_matrix(sp) ? cfg_.dtype : DType::F32, seed_ + uint64_t(i) * 1000003u);
  }
  fail("synthetic model: no tensor '{}'", name);
}

uint64_t SyntheticSource::param_count() const {
  uint64_t n = 0;
  for (const Spec& sp : top_specs(cfg_)) n += uint64_t(numel(sp));
  for (int i = 0; i < cfg_.n_layer; ++i)
    for (const Spec& sp : layer_specs(cfg_, ranks_, i)) n += uint64_t(numel(sp));
  return n;
}

Checkpoint synthetic_checkpoint(const ModelConfig& cfg, uint64_t seed) {
  SyntheticSource src(cfg, seed);
  Checkpoint ck;
  ck.source = "synthetic";
  ck.format = "synthetic";
  for (const Spec& sp : top_specs(cfg)) ck.tensors[sp.name] = src.tensor(sp.name);
  for (int i = 0; i < cfg.n_layer; ++i)
    for (auto& [k, v] : src.layer(i)) ck.tensors["blocks." + std::to_string(i) + "." + k] = std::move(v);
  return ck;
}

}  // namespace rwkvpp
