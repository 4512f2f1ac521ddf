// The released shapes behind `synth --shape` and `bench --synthetic`, with the sources they
// were taken from. Parameter counts (checked in tests/shards/test_synthetic.cpp against the
// published sizes) follow from these and the tensors synthetic.cpp generates.
#include <cmath>

#include "common/error.h"
#include "shards/synthetic.h"

namespace rwkvpp {

namespace {

struct Shape {
  const char* name;
  RwkvVersion version;
  int64_t layers, embd, ffn, vocab;
};

// RWKV-5.2 and 6 channel mix: int(C * 3.5) // 32 * 32 (RWKV-LM x052/x060 dim_ffn; llama.cpp
// convert_hf_to_gguf.py Rwkv6Model uses the same default for intermediate_size).
constexpr int64_t ffn_3_5(int64_t c) { return c * 7 / 2 / 32 * 32; }

// RWKV-4: the Pile models (vocab 50277): 169M 12x768, 430M 24x1024, 1.5B 24x2048, 3B 32x2560,
// 7B 32x4096, 14B 40x5120, ffn 4C.
// RWKV-5 "Eagle" World (5.2, vocab 65536, heads of 64): 0.4B 24x1024, 1.5B 24x2048, 3B
// 32x2560, 7B 32x4096 (BlinkDL/rwkv-5-world, RWKV-5-World-*-v2; Eagle 7B).
// RWKV-6 "Finch" World (vocab 65536, heads of 64): 1.6B 24x2048, 3B 32x2560, 7B 32x4096, 14B
// 61x4096 (BlinkDL/rwkv-6-world; llama.cpp llama-model.cpp maps RWKV6 24 layers to 1.6B,
// 32x2560 to 3B, 32x4096 to 7B, 61 layers to 14B).
// RWKV-7 "Goose" G1 (x070, vocab 65536, heads of 64, ffn 4C): 0.1B 12x768, 0.4B 24x1024,
// 1.5B 24x2048, 2.9B 32x2560, 7.2B 32x4096, 13.3B 61x4096 (BlinkDL/rwkv7-g1 file names;
// hidden_size / num_hidden_layers / intermediate_size in the Hugging Face configs of
// fla-hub/rwkv7-0.4B-world and fla-hub/rwkv7-1.5B-world; llama.cpp maps RWKV7 12x768 to 190M,
// 24x1024 to 450M, 24x2048 to 1.5B, 32 layers to 2.9B).
// The tiny ones (2 heads of 64) are for tests and the quickstart.
constexpr Shape kShapes[] = {
    {"tiny", RwkvVersion::V4, 6, 128, 512, 512},
    {"169m", RwkvVersion::V4, 12, 768, 3072, 50277},
    {"430m", RwkvVersion::V4, 24, 1024, 4096, 50277},
    {"1.5b", RwkvVersion::V4, 24, 2048, 8192, 50277},
    {"3b", RwkvVersion::V4, 32, 2560, 10240, 50277},
    {"7b", RwkvVersion::V4, 32, 4096, 16384, 50277},
    {"14b", RwkvVersion::V4, 40, 5120, 20480, 50277},
    {"v5-tiny", RwkvVersion::V5_2, 4, 128, ffn_3_5(128), 512},
    {"v5-0.4b", RwkvVersion::V5_2, 24, 1024, ffn_3_5(1024), 65536},
    {"v5-1.5b", RwkvVersion::V5_2, 24, 2048, ffn_3_5(2048), 65536},
    {"v5-3b", RwkvVersion::V5_2, 32, 2560, ffn_3_5(2560), 65536},
    {"v5-7b", RwkvVersion::V5_2, 32, 4096, ffn_3_5(4096), 65536},
    {"v6-tiny", RwkvVersion::V6, 4, 128, ffn_3_5(128), 512},
    {"v6-1.6b", RwkvVersion::V6, 24, 2048, ffn_3_5(2048), 65536},
    {"v6-3b", RwkvVersion::V6, 32, 2560, ffn_3_5(2560), 65536},
    {"v6-7b", RwkvVersion::V6, 32, 4096, ffn_3_5(4096), 65536},
    {"v6-14b", RwkvVersion::V6, 61, 4096, ffn_3_5(4096), 65536},
    {"v7-tiny", RwkvVersion::V7, 4, 128, 512, 512},
    {"v7-0.1b", RwkvVersion::V7, 12, 768, 3072, 65536},
    {"v7-0.4b", RwkvVersion::V7, 24, 1024, 4096, 65536},
    {"v7-1.5b", RwkvVersion::V7, 24, 2048, 8192, 65536},
    {"v7-2.9b", RwkvVersion::V7, 32, 2560, 10240, 65536},
    {"v7-7.2b", RwkvVersion::V7, 32, 4096, 16384, 65536},
    {"v7-13.3b", RwkvVersion::V7, 61, 4096, 16384, 65536},
};

constexpr int64_t kHeadSize = 64;  // every released RWKV-5, 6 and 7 model

// max(32, round(x / 32) * 32): how RWKV-LM's x070 model.py sizes its low-rank maps.
int64_t round32(double x) { return std::max<int64_t>(32, int64_t(std::lround(x / 32)) * 32); }

LowRanks v7_ranks(int64_t c) {
  // Released checkpoints (decay w, in-context rate a, value residual v, gate g), from the
  // Hugging Face configs (decay_low_rank_dim, a_low_rank_dim, v_low_rank_dim,
  // gate_low_rank_dim): 768 wide (0.1B): 64, 64, 32, 128 (fla-hub/rwkv7-168M-pile, the same
  // x070 sizes); 1024 (0.4B): 64, 64, 32, 128 (fla-hub/rwkv7-0.4B-world); 2048 (1.5B): 96, 96,
  // 64, 256 (fla-hub/rwkv7-1.5B-world); 2560 (2.9B): 96, 96, 64, 320 (the config of
  // rwkv7-g1i-2.9b as converted for vllm-rwkv).
  struct Row {
    int64_t c;
    LowRanks r;
  };
  static const Row kReleased[] = {{768, {64, 64, 32, 128, 0, 0}},
                                  {1024, {64, 64, 32, 128, 0, 0}},
                                  {2048, {96, 96, 64, 256, 0, 0}},
                                  {2560, {96, 96, 64, 320, 0, 0}}};
  for (const Row& row : kReleased)
    if (row.c == c) return row.r;
  // Otherwise (4096: 7.2B and 13.3B, and the tiny shapes) the rule of RWKV-LM's x070 training
  // code, which gives the released values above at 768, 2048 and 2560 (at 1024 it gives a gate
  // of 160, where the released 0.4B has 128): w = a = 1.8 sqrt(C), v = 1.3 sqrt(C),
  // g = 0.6 C^0.8, each rounded to a multiple of 32. At 4096: 128, 128, 96, 480.
  const double s = std::sqrt(double(c));
  LowRanks r;
  r.w = r.a = round32(1.8 * s);
  r.v = round32(1.3 * s);
  r.g = round32(0.6 * std::pow(double(c), 0.8));
  return r;
}

const Shape* find_shape(const std::string& name) {
  for (const Shape& s : kShapes)
    if (name == s.name) return &s;
  return nullptr;
}

std::string known_names() {
  std::string names;
  for (const Shape& s : kShapes) names += std::string(names.empty() ? "" : ", ") + s.name;
  return names;
}

// "v7-1.5b" -> '7'; "1.5b" -> 0.
char version_prefix(const std::string& name) {
  if (name.size() > 3 && name[0] == 'v' && name[1] >= '4' && name[1] <= '7' && name[2] == '-') return name[1];
  return 0;
}

}  // namespace

LowRanks released_low_ranks(const ModelConfig& cfg) {
  LowRanks r;
  if (cfg.version == RwkvVersion::V7) return v7_ranks(cfg.n_embd);
  if (cfg.version == RwkvVersion::V6) {
    // RWKV-LM x060: TIME_MIX_EXTRA_DIM 32, TIME_DECAY_EXTRA_DIM 64, both doubled for the
    // 4096-wide 7B and 14B (llama.cpp convert_hf_to_gguf.py Rwkv6Model: 64 / 128 if
    // hidden_size == 4096 else 32 / 64).
    r.mix = cfg.n_embd == 4096 ? 64 : 32;
    r.decay = cfg.n_embd == 4096 ? 128 : 64;
  }
  return r;
}

std::vector<std::string> synthetic_shapes() {
  std::vector<std::string> v;
  for (const Shape& s : kShapes) v.push_back(s.name);
  return v;
}

std::string synthetic_shape_name(const std::string& shape, const std::string& version) {
  if (!version.empty() && (version.size() != 1 || version[0] < '4' || version[0] > '7'))
    fail("--version: '{}' is not one of 4, 5, 6, 7", version);
  std::string name = shape;
  const char prefix = version_prefix(shape);
  if (!version.empty() && prefix && prefix != version[0])
    fail("synthetic shape '{}' is RWKV-{}, not RWKV-{} as --version says", shape, prefix, version);
  if (!version.empty() && !prefix && version != "4") name = "v" + version + "-" + shape;
  if (version_prefix(name) == '4') name = name.substr(3);  // RWKV-4 names have no prefix
  if (!find_shape(name)) fail("unknown synthetic shape '{}' (known: {})", shape, known_names());
  return name;
}

ModelConfig synthetic_config(const std::string& shape, DType dtype) {
  const Shape* s = find_shape(version_prefix(shape) == '4' ? shape.substr(3) : shape);
  if (!s) fail("unknown synthetic shape '{}' (known: {})", shape, known_names());
  ModelConfig c;
  c.version = s->version;
  c.n_layer = s->layers;
  c.n_embd = s->embd;
  c.ffn_dim = s->ffn;
  c.vocab_size = s->vocab;
  if (c.version != RwkvVersion::V4) {
    c.head_size = kHeadSize;
    c.n_head = s->embd / kHeadSize;
  }
  c.dtype = dtype;
  return c;
}

}  // namespace rwkvpp
