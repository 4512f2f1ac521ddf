// Writes a checkpoint in the rwkvpp HDF5 format (shards/model_format.h, docs/format.md).
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "shards/h5util.h"
#include "shards/model_format.h"

namespace rwkvpp {

namespace fs = std::filesystem;

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

std::string shard_name(int k, int n) {
  return fmt::format("model-{:05d}-of-{:05d}.h5", k + 1, n);
}

// Matrices named *.weight are stored in the chosen dtype; every vector, decay, mix and
// low-rank factor stays fp32 (they are small and precision-sensitive).
HostTensor storage_form(const std::string& name, const HostTensor& t, const WriteOptions& opt) {
  bool matrix = t.shape.size() == 2 && name.size() > 7 && name.ends_with(".weight");
  if (!matrix) return t.converted(DType::F32);
  return opt.dtype_from_source ? t : t.converted(opt.dtype);
}

std::string dataset_path(const std::string& name) {
  std::string p = "/" + name;
  for (char& c : p)
    if (c == '.') c = '/';
  return p;
}

h5::Id create_file(const std::string& path) {
  h5::Id f(H5Fcreate(path.c_str(), H5F_ACC_EXCL, h5::untimed(H5P_FILE_CREATE), H5P_DEFAULT));
  if (!f.valid()) fail("cannot create '{}'", path);
  return f;
}

}  // namespace

void write_model(const Checkpoint& ck, const ModelConfig& cfg, const std::string& outdir,
                 const WriteOptions& opt) {
  h5::quiet();
  require_storage_dtype(opt.dtype_from_source ? cfg.dtype : opt.dtype, "write_model");
  if (fs::exists(outdir)) fail("output directory '{}' already exists; choose a new one", outdir);
  if (opt.shards < 1 || opt.shards > cfg.n_layer)
    fail("--shards {} is out of range: the model has {} layers (1..{} shards)", opt.shards, cfg.n_layer, cfg.n_layer);
  fs::path tmp = fs::path(outdir).lexically_normal();
  if (tmp.filename().empty()) tmp = tmp.parent_path();
  tmp = tmp.parent_path() / (tmp.filename().string() + ".tmp-" + std::to_string(getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) || ec) fail("cannot create directory '{}': {}", tmp.string(), ec.message());
  try {
    // Layer ranges: contiguous, sizes differing by at most one.
    std::vector<ShardInfo> shards;
    for (int k = 0, first = 0; k < opt.shards; ++k) {
      int count = int(cfg.n_layer / opt.shards + (k < cfg.n_layer % opt.shards ? 1 : 0));
      shards.push_back({shard_name(k, opt.shards), first, first + count});
      first += count;
    }
    std::vector<std::pair<std::string, const HostTensor*>> top;
    std::vector<std::vector<std::pair<std::string, const HostTensor*>>> per_shard(shards.size());
    for (auto& [name, t] : ck.tensors) {
      if (const int64_t layer = block_index(name); layer != -1) {
        for (size_t k = 0; k < shards.size(); ++k)
          if (layer >= shards[k].first && layer < shards[k].last) per_shard[k].emplace_back(name, &t);
      } else {
        top.emplace_back(name, &t);
      }
    }
    uint64_t total_bytes = 0, done_bytes = 0;
    size_t done_tensors = 0;
    for (auto& [name, t] : ck.tensors) total_bytes += t.data.size();
    auto progressed = [&](const HostTensor& t) {
      done_bytes += t.data.size();
      ++done_tensors;
      if (opt.on_progress) opt.on_progress(done_bytes, total_bytes, done_tensors, ck.tensors.size());
    };
    // Fingerprint: over every tensor name and checksum of what is stored.
    uint64_t fp = 0xcbf29ce484222325ull;
    int64_t params = 0;
    auto account = [&](const std::string& name, const HostTensor& s) {
      fp = fnv1a64(name.data(), name.size(), fp);
      uint64_t c = fnv1a64(s.data.data(), s.data.size());
      fp = fnv1a64(&c, 8, fp);
      params += s.numel();
    };
    for (size_t k = 0; k < shards.size(); ++k) {
      std::string file = (tmp / shards[k].file).string();
      h5::Id f = create_file(file);
      for (auto& [name, t] : per_shard[k]) {
        HostTensor s = storage_form(name, *t, opt);
        h5::write_tensor(f, dataset_path(name), s, file);
        account(name, s);
        progressed(*t);
      }
      h5::set_attr(f, "format", std::string("rwkvpp-shard"));
      h5::set_attr(f, "format_version", int64_t(kFormatVersion));
      h5::set_attr(f, "first_layer", int64_t(shards[k].first));
      h5::set_attr(f, "last_layer", int64_t(shards[k].last));
    }
    std::string main_file = (tmp / "model.h5").string();
    h5::Id f = create_file(main_file);
    for (auto& [name, t] : top) {
      HostTensor s = storage_form(name, *t, opt);
      h5::write_tensor(f, dataset_path(name), s, main_file);
      account(name, s);
      progressed(*t);
    }
    {
      h5::Id g(H5Gcreate2(f, "/blocks", H5P_DEFAULT, h5::untimed(H5P_GROUP_CREATE), H5P_DEFAULT));
      for (auto& sh : shards)
        for (int i = sh.first; i < sh.last; ++i) {
          std::string obj = "/blocks/" + std::to_string(i);
          if (H5Lcreate_external(sh.file.c_str(), obj.c_str(), g, std::to_string(i).c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0)
            fail("'{}': cannot create external link for layer {}", main_file, i);
        }
    }
    if (!opt.tokenizer.kind.empty()) {
      h5::Id g(
          H5Gcreate2(f, "/tokenizer", H5P_DEFAULT, h5::untimed(H5P_GROUP_CREATE), H5P_DEFAULT));
      h5::set_attr(g, "kind", opt.tokenizer.kind);
      hsize_t n = opt.tokenizer.data.size();
      if (n > 0) {
        h5::Id space(H5Screate_simple(1, &n, nullptr));
        h5::Id ds(H5Dcreate2(g, "data", H5T_STD_U8LE, space, H5P_DEFAULT,
                             h5::untimed(H5P_DATASET_CREATE), H5P_DEFAULT));
        if (!ds.valid() || H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, opt.tokenizer.data.data()) < 0)
          fail("'{}': cannot write the tokenizer", main_file);
        h5::set_attr_u64(ds, "checksum", fnv1a64(opt.tokenizer.data.data(), opt.tokenizer.data.size()));
      }
    }
    nlohmann::json js = nlohmann::json::array();
    for (auto& sh : shards) js.push_back({{"file", sh.file}, {"first", sh.first}, {"last", sh.last}});
    DType matrix_dtype = opt.dtype_from_source ? cfg.dtype : opt.dtype;
    h5::set_attr(f, "format", std::string("rwkvpp"));
    h5::set_attr(f, "format_version", int64_t(kFormatVersion));
    h5::set_attr(f, "rwkv_version", std::string(version_name(cfg.version)));
    h5::set_attr(f, "n_layer", cfg.n_layer);
    h5::set_attr(f, "n_embd", cfg.n_embd);
    h5::set_attr(f, "n_head", cfg.n_head);
    h5::set_attr(f, "head_size", cfg.head_size);
    h5::set_attr(f, "ffn_dim", cfg.ffn_dim);
    h5::set_attr(f, "vocab_size", cfg.vocab_size);
    h5::set_attr(f, "dtype", std::string(dtype_name(matrix_dtype)));
    h5::set_attr(f, "layer_norm_eps", double(cfg.layer_norm_eps));
    h5::set_attr(f, "tokenizer", opt.tokenizer.kind.empty() ? std::string("none") : opt.tokenizer.kind);
    h5::set_attr(f, "shards", js.dump());
    h5::set_attr_u64(f, "fingerprint", fp);
    h5::set_attr(f, "param_count", params);
    h5::set_attr(f, "source", fs::path(ck.source).filename().string());
    f.reset();
    fs::rename(tmp, outdir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace rwkvpp
