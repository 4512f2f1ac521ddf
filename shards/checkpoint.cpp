// Checkpoint kind detection, transformers' name mapping and config inference.
#include "shards/checkpoint.h"

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/limits.h"
#include "shards/file_bytes.h"

namespace rwkvpp {

std::string read_whole_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open '{}': {}", path, std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("error reading '{}'", path);
  return ss.str();
}

CheckpointKind detect_checkpoint_kind(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open '{}': {}", path, std::strerror(errno));
  unsigned char b[9] = {};
  f.read(reinterpret_cast<char*>(b), 9);
  auto got = f.gcount();
  if (got >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) return CheckpointKind::Pth;
  if (got >= 4) {
    uint32_t magic;
    std::memcpy(&magic, b, 4);
    if (magic == 0x67676d66u) return CheckpointKind::RwkvCpp;
  }
  if (got >= 9 && b[8] == '{') return CheckpointKind::Safetensors;
  if (got >= 4 && std::memcmp(b, "\x89HDF", 4) == 0)
    fail("'{}' is already an HDF5 file (a converted model?); convert takes a checkpoint", path);
  fail("'{}' is not a recognised checkpoint (expected safetensors, a PyTorch .pth zip, or an "
       "rwkv.cpp .bin)",
       path);
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint ck;
  switch (detect_checkpoint_kind(path)) {
    case CheckpointKind::Safetensors: ck = read_safetensors(path); break;
    case CheckpointKind::Pth: ck = read_pth(path); break;
    case CheckpointKind::RwkvCpp: ck = read_rwkvcpp(path); break;
  }
  normalize_hf_names(ck);
  return ck;
}

void normalize_hf_names(Checkpoint& ck) {
  bool hf = false;
  for (auto& [k, v] : ck.tensors)
    if (k.rfind("rwkv.", 0) == 0) hf = true;
  if (!hf) return;
  static const std::pair<const char*, const char*> kSub[] = {
      {"attention.time_mix_key", "att.time_mix_k"},
      {"attention.time_mix_value", "att.time_mix_v"},
      {"attention.time_mix_receptance", "att.time_mix_r"},
      {"attention.", "att."},
      {"feed_forward.time_mix_key", "ffn.time_mix_k"},
      {"feed_forward.time_mix_receptance", "ffn.time_mix_r"},
      {"feed_forward.", "ffn."},
      {"pre_ln.", "ln0."},
  };
  std::map<std::string, HostTensor> out;
  for (auto& [k, v] : ck.tensors) {
    std::string n = k;
    if (n == "rwkv.embeddings.weight") {
      n = "emb.weight";
    } else if (n.rfind("rwkv.ln_out.", 0) == 0) {
      n = n.substr(5);
    } else if (n.rfind("rwkv.blocks.", 0) == 0) {
      n = n.substr(5);
      for (auto [from, to] : kSub) {
        auto p = n.find(from);
        if (p != std::string::npos) {
          n.replace(p, std::strlen(from), to);
          break;
        }
      }
    }
    if (out.count(n)) fail("'{}': tensor '{}' appears twice after name mapping", ck.source, n);
    out.emplace(n, std::move(v));
  }
  ck.tensors = std::move(out);
  ck.format = "safetensors-hf";
}

int64_t block_index(const std::string& name) {
  if (name.rfind("blocks.", 0) != 0) return -1;
  int64_t i = 0;
  size_t p = 7;
  for (; p < name.size() && name[p] >= '0' && name[p] <= '9'; ++p) {
    i = i * 10 + (name[p] - '0');
    if (i >= kMaxLayers) return -2;
  }
  if (p == 7 || p >= name.size() || name[p] != '.') return -1;
  return i;
}

static const HostTensor& need(const Checkpoint& ck, const std::string& name) {
  auto it = ck.tensors.find(name);
  if (it == ck.tensors.end()) fail("'{}': tensor '{}' is missing", ck.source, name);
  return it->second;
}

ModelConfig infer_config(const Checkpoint& ck) {
  ModelConfig c;
  const HostTensor& emb = need(ck, "emb.weight");
  if (emb.shape.size() != 2) fail("'{}': tensor 'emb.weight' has shape {}, expected 2-D", ck.source, emb.shape_str());
  c.vocab_size = emb.shape[0];
  c.n_embd = emb.shape[1];
  // Layers: blocks.<i>.* must cover 0..n-1 without gaps.
  int64_t max_layer = -1;
  std::set<int64_t> seen;
  for (auto& [k, v] : ck.tensors) {
    const int64_t i = block_index(k);
    if (i == -2) fail("'{}': tensor '{}' has a layer number over {}", ck.source, k, kMaxLayers - 1);
    if (i < 0) continue;
    seen.insert(i);
    max_layer = std::max(max_layer, i);
  }
  if (max_layer < 0) fail("'{}': no 'blocks.N.*' tensors found", ck.source);
  for (int64_t i = 0; i <= max_layer; ++i)
    if (!seen.count(i)) fail("'{}': layer {} is missing (found layers up to {})", ck.source, i, max_layer);
  c.n_layer = max_layer + 1;

  auto has = [&](const std::string& n) { return ck.tensors.count(n) > 0; };
  // Version, in the order the reference implementations test for it.
  if (has("blocks.0.att.r_k") || has("blocks.0.att.x_r") || has("blocks.0.att.x_rwkvag")) {
    c.version = RwkvVersion::V7;
  } else if (has("blocks.0.att.time_maa_x")) {
    c.version = RwkvVersion::V6;
  } else if (has("blocks.0.att.ln_x.weight")) {
    const HostTensor& td = need(ck, "blocks.0.att.time_decay");
    bool per_channel = td.shape.size() >= 2 && td.shape[1] > 1;
    c.version = (has("blocks.0.att.time_faaaa") || per_channel) ? RwkvVersion::V5_2 : RwkvVersion::V5_1;
  } else {
    c.version = RwkvVersion::V4;
  }

  const HostTensor& fk = need(ck, "blocks.0.ffn.key.weight");
  if (fk.shape.size() != 2 || fk.shape[1] != c.n_embd)
    fail("'{}': tensor 'blocks.0.ffn.key.weight' has shape {}, expected [ffn, {}]", ck.source, fk.shape_str(), c.n_embd);
  c.ffn_dim = fk.shape[0];

  if (c.version != RwkvVersion::V4) {
    // Head count from a per-head tensor: [H, N] (or [H, N, 1], [H, 1, 1]).
    const char* per_head = c.version == RwkvVersion::V7 ? "blocks.0.att.r_k"
                           : has("blocks.0.att.time_faaaa") ? "blocks.0.att.time_faaaa"
                                                            : "blocks.0.att.time_decay";
    const HostTensor& t = need(ck, per_head);
    if (t.shape.empty()) fail("'{}': tensor '{}' is a scalar", ck.source, per_head);
    c.n_head = t.shape[0];
    if (c.n_head <= 0 || c.n_embd % c.n_head != 0)
      fail("'{}': tensor '{}' has shape {}, which does not divide n_embd {} into heads", ck.source,
           per_head, t.shape_str(), c.n_embd);
    c.head_size = c.n_embd / c.n_head;
  }
  const HostTensor& head = need(ck, "head.weight");
  if (head.shape != std::vector<int64_t>{c.vocab_size, c.n_embd})
    fail("'{}': tensor 'head.weight' has shape {}, expected [{}, {}]", ck.source, head.shape_str(), c.vocab_size, c.n_embd);
  // Matrix dtype: the dtype of the first layer's key matrix.
  c.dtype = need(ck, c.version == RwkvVersion::V7 ? "blocks.0.att.key.weight" : "blocks.0.att.key.weight").dtype;
  return c;
}

}  // namespace rwkvpp
