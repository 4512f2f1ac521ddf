// Opens a converted model and reads parts of it (shards/model_reader.h).
#include "shards/model_reader.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/limits.h"
#include "shards/h5util.h"

namespace rwkvpp {

namespace fs = std::filesystem;

std::string resolve_model_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path f = fs::path(path) / "model.h5";
    if (!fs::exists(f)) fail("'{}' is a directory without model.h5 (convert a checkpoint with `rwkvpp convert` first)", path);
    return f.string();
  }
  if (!fs::exists(path, ec)) fail("model '{}' does not exist", path);
  return path;
}

ModelReader::ModelReader(const std::string& path) {
  h5::quiet();
  file_ = resolve_model_file(path);
  dir_ = fs::path(file_).parent_path().string();
  if (dir_.empty()) dir_ = ".";
  if (H5Fis_hdf5(file_.c_str()) <= 0)
    fail("'{}' is not an HDF5 file (a checkpoint? convert it with `rwkvpp convert`)", file_);
  // Closed again if a check below throws (a destructor does not run for a failed constructor).
  h5::Id file(H5Fopen(file_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!file.valid()) fail("cannot open '{}': corrupt or unreadable HDF5 file", file_);
  const hid_t fid = file;
  opened_.insert(file_);
  const std::string& w = file_;
  std::string format = h5::get_attr_str(fid, "format", "'" + w + "'");
  if (format != "rwkvpp") fail("'{}' is not an rwkvpp model (format '{}')", w, format);
  int64_t version = h5::get_attr_i64(fid, "format_version", "'" + w + "'");
  if (version != kFormatVersion)
    fail("'{}' has format version {}, this rwkvpp reads version {}", w, version, kFormatVersion);
  auto i64 = [&](const char* n) { return h5::get_attr_i64(fid, n, "'" + w + "'"); };
  cfg_.version = parse_version(h5::get_attr_str(fid, "rwkv_version", "'" + w + "'"));
  cfg_.n_layer = i64("n_layer");
  cfg_.n_embd = i64("n_embd");
  cfg_.n_head = i64("n_head");
  cfg_.head_size = i64("head_size");
  cfg_.ffn_dim = i64("ffn_dim");
  cfg_.vocab_size = i64("vocab_size");
  cfg_.dtype = parse_storage_dtype(h5::get_attr_str(fid, "dtype", "'" + w + "'"), "'" + w + "'");
  cfg_.layer_norm_eps = float(h5::get_attr_f64(fid, "layer_norm_eps", "'" + w + "'"));
  params_ = i64("param_count");
  fingerprint_ = h5::get_attr_u64(fid, "fingerprint", "'" + w + "'");
  if (cfg_.n_layer <= 0 || cfg_.n_embd <= 0 || cfg_.vocab_size <= 0 || cfg_.ffn_dim <= 0)
    fail("'{}': attributes give an impossible shape (n_layer {}, n_embd {}, vocab {}, ffn {})", w,
         cfg_.n_layer, cfg_.n_embd, cfg_.vocab_size, cfg_.ffn_dim);
  if (cfg_.n_layer > kMaxLayers)
    fail("'{}': n_layer {} is over the limit of {}", w, cfg_.n_layer, kMaxLayers);
  try {
    const std::string text = h5::get_attr_str(fid, "shards", "'" + w + "'");
    check_json_depth(text, "'" + w + "': attribute 'shards'");
    auto js = nlohmann::json::parse(text);
    if (!js.is_array()) fail("'{}': attribute 'shards' is not a list", w);
    auto layer = [&](const nlohmann::json& v) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > cfg_.n_layer)
        fail("'{}': attribute 'shards' holds a layer number {}", w, v.dump().substr(0, 40));
      return int(v.get<int64_t>());
    };
    int expect = 0;
    for (auto& s : js) {
      ShardInfo si{s.at("file").get<std::string>(), layer(s.at("first")), layer(s.at("last"))};
      // A shard is a plain file name in the model's directory: never a path elsewhere.
      if (si.first != expect || si.last <= si.first || si.file.empty() || si.file == "." ||
          si.file == ".." || si.file.find('/') != std::string::npos)
        fail("'{}': attribute 'shards' lists a bad layer range [{}, {}) for '{}'", w, si.first,
             si.last, si.file.substr(0, 200));
      expect = si.last;
      shards_.push_back(si);
    }
    if (expect != cfg_.n_layer) fail("'{}': the shards cover {} layers, the model has {}", w, expect, cfg_.n_layer);
  } catch (const nlohmann::json::exception& e) {
    fail("'{}': attribute 'shards' is malformed: {}", w, e.what());
  }
  // Stored bytes of every tensor, from the shard files' sizes plus model.h5's datasets.
  std::error_code ec;
  for (auto& s : shards_) weight_bytes_ += fs::file_size(fs::path(dir_) / s.file, ec);
  weight_bytes_ += fs::file_size(file_, ec);
  fid_ = file.release();
}

ModelReader::~ModelReader() {
  if (fid_ >= 0) H5Fclose(hid_t(fid_));
}

HostTensor ModelReader::read_dataset(const std::string& h5path, const std::string& what) {
  (void)what;
  return h5::read_tensor(hid_t(fid_), h5path, file_, &bytes_read_);
}

namespace {

struct VisitCtx {
  std::vector<std::string> datasets;
};

herr_t visit_cb(hid_t, const char* name, const H5O_info_t* info, void* data) {
  if (info->type == H5O_TYPE_DATASET) static_cast<VisitCtx*>(data)->datasets.emplace_back(name);
  return 0;
}

}  // namespace

LayerTensors ModelReader::read_layer(int i) {
  if (i < 0 || i >= cfg_.n_layer)
    fail("'{}': layer {} is out of range (0..{})", file_, i, cfg_.n_layer - 1);
  const ShardInfo* sh = nullptr;
  for (auto& s : shards_)
    if (i >= s.first && i < s.last) sh = &s;
  std::string path = (fs::path(dir_) / sh->file).string();
  if (!fs::exists(path)) fail("shard file '{}' (layers {}..{}) is missing", path, sh->first, sh->last - 1);
  h5::Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!f.valid()) fail("cannot open shard '{}': corrupt or unreadable HDF5 file", path);
  opened_.insert(path);
  std::string group = "/blocks/" + std::to_string(i);
  h5::Id g = h5::open_group(f, group, "shard '" + path + "'");
  VisitCtx ctx;
  if (H5Ovisit(g, H5_INDEX_NAME, H5_ITER_NATIVE, visit_cb, &ctx) < 0)
    fail("shard '{}': cannot list group '{}' (corrupt file?)", path, group);
  if (ctx.datasets.empty()) fail("shard '{}': layer {} has no tensors", path, i);
  LayerTensors out;
  for (auto& d : ctx.datasets) {
    std::string name = d;
    for (char& c : name)
      if (c == '/') c = '.';
    out.emplace(name, h5::read_tensor(f, group + "/" + d, path, &bytes_read_));
  }
  return out;
}

HostTensor ModelReader::read_tensor(const std::string& name) {
  if (name.rfind("blocks.", 0) == 0) {
    auto rest = name.substr(7);
    auto dot = rest.find('.');
    int layer = std::stoi(rest.substr(0, dot));
    auto t = read_layer(layer);
    auto it = t.find(rest.substr(dot + 1));
    if (it == t.end()) fail("'{}': tensor '{}' is missing", file_, name);
    return std::move(it->second);
  }
  std::string p = "/" + name;
  for (char& c : p)
    if (c == '.') c = '/';
  return read_dataset(p, name);
}

TokenizerBlob ModelReader::read_tokenizer() {
  TokenizerBlob b;
  hid_t fid = hid_t(fid_);
  if (H5Lexists(fid, "/tokenizer", H5P_DEFAULT) <= 0) return b;
  h5::Id g = h5::open_group(fid, "/tokenizer", "'" + file_ + "'");
  b.kind = h5::get_attr_str(g, "kind", "'" + file_ + "' /tokenizer");
  if (H5Lexists(g, "data", H5P_DEFAULT) > 0) {
    h5::Id ds = h5::open_dataset(g, "data", "'" + file_ + "' /tokenizer");
    h5::Id space(H5Dget_space(ds));
    hssize_t n = H5Sget_simple_extent_npoints(space);
    if (n < 0 || uint64_t(n) > kMaxTokenizerBytes || uint64_t(n) > H5Dget_storage_size(ds))
      fail("'{}': the embedded tokenizer claims {} bytes (the file stores {}, at most {} are read)",
           file_, int64_t(n), uint64_t(H5Dget_storage_size(ds)), kMaxTokenizerBytes);
    b.data.resize(size_t(n));
    if (H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, b.data.data()) < 0)
      fail("'{}': cannot read the embedded tokenizer", file_);
    if (h5::get_attr_u64(ds, "checksum", "'" + file_ + "' /tokenizer/data") != fnv1a64(b.data.data(), b.data.size()))
      fail("'{}': the embedded tokenizer's checksum does not match: the file is corrupt", file_);
  }
  return b;
}

}  // namespace rwkvpp
