// rwkv.cpp model files (.bin, versions 100 and 101, FP32 and FP16) into a Checkpoint with the
// official names and shapes.
//
// Layout (rwkv.cpp docs/FILE_FORMAT.md), all little-endian int32:
//   magic 0x67676d66, version, n_vocab, n_embed, n_layer, data_type,
//   then until EOF, per parameter: dim_count, key_length, data_type, dim_count dims in ggml
//   (reversed) order, key_length bytes of UTF-8 name, the data (no padding).
//
// rwkv.cpp's converter (python/convert_pytorch_to_ggml.py) changed parameters on the way in;
// this reader undoes each change so that the result equals the .pth it came from:
//   all        `.time_*` tensors were squeezed (unit axes dropped)
//   RWKV-4     time_decay stored as -exp(raw)
//   RWKV-5.x   time_decay stored as exp(-exp(raw)) (5.2 + trailing unit axis, 5.1 as [H,1,1]);
//              time_first stored as exp(raw) as [H,1,1]; time_faaaa + trailing unit axis
//   RWKV-6     time_faaaa + trailing unit axis; time_maa_w1, time_decay_w1/_w2 transposed;
//              time_maa_w2 transposed (1,2); time_decay reshaped to [H, N, 1]
//   RWKV-7     att.x_{r,w,k,v,a,g} concatenated along dim 0 into att.x_rwkvag;
//              w1, w2, a1, a2, v1, v2, g1, g2 transposed
// The converter tells 5.2 from 5.1 by `att.gate.weight` (so "5.1" here is the gate-less
// preview architecture).
#include <cmath>
#include <cstring>
#include <string_view>

#include "common/error.h"
#include "shards/checkpoint.h"
#include "shards/mapped_file.h"

namespace rwkvpp {
namespace {

constexpr uint32_t kMagic = 0x67676d66u;

const char* rwkvcpp_type_name(int32_t t) {
  static const char* const kNames[] = {"FP32", "FP16", "Q4_0", "Q4_1", "Q4_1_O",
                                       "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0"};
  return t >= 0 && t < 10 ? kNames[t] : "unknown";
}

enum class Arch { V4, V5_1, V5_2, V6, V7 };

struct Importer {
  std::string path;
  std::map<std::string, HostTensor> tensors;  // as stored, shapes in C order

  [[noreturn]] void bad_shape(const std::string& name, const HostTensor& t,
                              const char* want) const {
    fail("'{}': tensor '{}' has shape {}, expected {} in an rwkv.cpp file", path, name,
         t.shape_str(), want);
  }

  void reshape(const std::string& name, HostTensor& t, std::vector<int64_t> shape) const {
    if (shape_numel(shape) != t.numel())
      fail("'{}': tensor '{}' has shape {}, which cannot be reshaped to {}", path, name,
           t.shape_str(), shape_to_string(shape));
    t.shape = std::move(shape);
  }

  // Drops the trailing unit axes the converter appended (keeps at least one axis).
  static void drop_trailing_units(HostTensor& t) {
    while (t.shape.size() > 1 && t.shape.back() == 1) t.shape.pop_back();
  }

  // Replaces every value v by f(v), computed in double and stored as fp32. `ok` says which
  // stored values the converter can have produced; anything else is a corrupt file.
  template <typename F, typename Ok>
  void map_values(const std::string& name, HostTensor& t, F f, Ok ok, const char* domain) const {
    std::vector<float> v = t.to_f32();
    for (float& x : v) {
      if (!ok(double(x)))
        fail("'{}': tensor '{}' holds {}, outside {} (what rwkv.cpp's converter stores)", path,
             name, x, domain);
      x = float(f(double(x)));
    }
    t = HostTensor::from_f32(v, t.shape);
  }

  // [a, b, c] -> [a, c, b] (a == 1 for a plain matrix transpose), any dtype.
  void transpose_last2(const std::string& name, HostTensor& t) const {
    if (t.shape.size() != 2 && t.shape.size() != 3) bad_shape(name, t, "a 2-D or 3-D tensor");
    const int64_t b = t.shape[t.shape.size() - 2], c = t.shape.back(),
                  a = t.numel() / std::max<int64_t>(b * c, 1);
    const size_t es = dtype_size(t.dtype);
    std::vector<uint8_t> out(t.data.size());
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j)
        for (int64_t k = 0; k < c; ++k)
          std::memcpy(&out[size_t((i * c + k) * b + j) * es],
                      &t.data[size_t((i * b + j) * c + k) * es], es);
    t.data = std::move(out);
    std::swap(t.shape[t.shape.size() - 2], t.shape.back());
  }

  void read(const MappedFile& f);
  Arch detect_arch() const;
  void undo_transforms(Arch arch);
};

void Importer::read(const MappedFile& f) {
  auto h = f.bytes(0, 24, "the rwkv.cpp header");
  uint32_t magic = load_u32(h.data());
  if (magic != kMagic)
    fail("'{}': bad magic 0x{:08x}, expected 0x{:08x}: not an rwkv.cpp model file", path, magic,
         kMagic);
  int32_t version = int32_t(load_u32(h.data() + 4)), n_vocab = int32_t(load_u32(h.data() + 8)),
          n_embed = int32_t(load_u32(h.data() + 12)), n_layer = int32_t(load_u32(h.data() + 16)),
          file_type = int32_t(load_u32(h.data() + 20));
  if (version != 100 && version != 101)
    fail("'{}': unsupported rwkv.cpp file version {} (supported: 100, 101)", path, version);
  if (n_vocab <= 0 || n_embed <= 0 || n_layer <= 0)
    fail("'{}': corrupt rwkv.cpp header (n_vocab {}, n_embed {}, n_layer {})", path, n_vocab,
         n_embed, n_layer);
  if (file_type < 0 || file_type > 9)
    fail("'{}': unknown rwkv.cpp data type {} in the header", path, file_type);

  uint64_t pos = 24;
  for (int index = 0; pos < f.size(); ++index) {
    auto ph = f.bytes(pos, 12, fmt::format("the header of parameter #{}", index));
    int32_t dims = int32_t(load_u32(ph.data())), key_len = int32_t(load_u32(ph.data() + 4)),
            type = int32_t(load_u32(ph.data() + 8));
    pos += 12;
    if (dims < 1 || dims > 4)
      fail("'{}': parameter #{} has {} dimensions (corrupt file?)", path, index, dims);
    if (key_len < 1 || key_len > 4096)
      fail("'{}': parameter #{} has a name of {} bytes (corrupt file?)", path, index, key_len);
    auto dim_bytes =
        f.bytes(pos, uint64_t(dims) * 4, fmt::format("the shape of parameter #{}", index));
    pos += uint64_t(dims) * 4;
    auto key = f.bytes(pos, uint64_t(key_len), fmt::format("the name of parameter #{}", index));
    pos += uint64_t(key_len);
    std::string name(reinterpret_cast<const char*>(key.data()), key.size());

    HostTensor t;
    if (type == 0)
      t.dtype = DType::F32;
    else if (type == 1)
      t.dtype = DType::F16;
    else
      fail(
          "'{}': tensor '{}' is stored as {} (data type {}); only FP32 and FP16 "
          "rwkv.cpp files can be imported (convert the original .pth instead)",
          path, name, rwkvcpp_type_name(type), type);
    uint64_t numel = 1;
    for (int d = dims - 1; d >= 0; --d) {  // ggml order is innermost first
      int32_t n = int32_t(load_u32(dim_bytes.data() + 4 * d));
      if (n < 1) fail("'{}': tensor '{}' has dimension {} (corrupt file?)", path, name, n);
      if (__builtin_mul_overflow(numel, uint64_t(n), &numel) || numel > (uint64_t(1) << 40))
        fail("'{}': tensor '{}' is impossibly large (corrupt file?)", path, name);
      t.shape.push_back(n);
    }
    const uint64_t nbytes = numel * dtype_size(t.dtype);
    auto data = f.bytes(pos, nbytes, fmt::format("the data of tensor '{}'", name));
    t.data.assign(data.begin(), data.end());
    f.release(pos, nbytes);
    pos += nbytes;
    if (!tensors.emplace(name, std::move(t)).second)
      fail("'{}': tensor '{}' appears twice", path, name);
  }
  if (tensors.empty()) fail("'{}': rwkv.cpp file has no tensors", path);

  // The format has no tensor count, so a file cut at a tensor boundary parses; the converter
  // writes emb first and head last, and the header knows the layer count.
  const std::string last_layer = "blocks." + std::to_string(n_layer - 1) + ".ln1.weight";
  for (const std::string& n : {std::string("emb.weight"), std::string("head.weight"), last_layer})
    if (!tensors.count(n))
      fail("'{}': tensor '{}' is missing (the header says {} layers); truncated file?", path, n,
           n_layer);
  auto it = tensors.find("emb.weight");
  if (it->second.shape != std::vector<int64_t>{n_vocab, n_embed})
    fail("'{}': tensor 'emb.weight' has shape {}, but the header says n_vocab {} and n_embed {}",
         path, it->second.shape_str(), n_vocab, n_embed);
}

Arch Importer::detect_arch() const {
  auto has = [&](const char* n) { return tensors.count(n) > 0; };
  if (has("blocks.0.att.k_k") || has("blocks.0.att.x_rwkvag")) return Arch::V7;
  if (has("blocks.0.att.time_maa_x")) return Arch::V6;
  if (has("blocks.0.att.gate.weight")) return Arch::V5_2;
  if (has("blocks.0.att.ln_x.weight")) return Arch::V5_1;
  return Arch::V4;
}

// The parameter name below its block ("att.time_decay" for "blocks.3.att.time_decay").
std::string_view block_suffix(std::string_view name) {
  if (name.rfind("blocks.", 0) != 0) return name;
  auto dot = name.find('.', 7);
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

void Importer::undo_transforms(Arch arch) {
  std::map<std::string, HostTensor> out;
  for (auto& [name, t] : tensors) {
    const std::string_view s = block_suffix(name);
    const bool squeezed = name.find(".time_") != std::string::npos;
    const int64_t n = t.numel();
    switch (arch) {
      case Arch::V4:
        if (s == "att.time_decay") {  // -exp(raw) -> raw
          map_values(
              name, t, [](double x) { return std::log(-x); }, [](double x) { return x <= 0; },
              "(-inf, 0]");
          reshape(name, t, {n});
        } else if (s == "att.time_first") {
          reshape(name, t, {n});
        } else if (squeezed) {  // time_mix_*: [1, 1, C]
          reshape(name, t, {1, 1, n});
        }
        break;
      case Arch::V5_1:
      case Arch::V5_2:
        // ChatRWKV's RWKV-5 .pth files keep time_decay/time_first per head as [H] in the
        // gate-less preview (5.1 here) and time_decay/time_faaaa as [H, N] in 5.2, as their
        // training code creates them; dropping the converter's trailing unit axes gives
        // exactly that.
        if (s == "att.time_decay") {  // exp(-exp(raw)) -> raw
          map_values(
              name, t, [](double x) { return std::log(-std::log(x)); },
              [](double x) { return x >= 0 && x <= 1; }, "[0, 1]");
          drop_trailing_units(t);
        } else if (s == "att.time_first") {  // exp(raw) -> raw
          map_values(
              name, t, [](double x) { return std::log(x); }, [](double x) { return x >= 0; },
              "[0, inf)");
          drop_trailing_units(t);
        } else if (s == "att.time_faaaa") {
          drop_trailing_units(t);
        } else if (squeezed) {  // time_mix_{k,v,r,g}: [1, 1, C]
          reshape(name, t, {1, 1, n});
        }
        break;
      case Arch::V6:
        if (s == "att.time_faaaa") {  // [H, N, 1] -> [H, N]
          if (t.shape.size() != 3 || t.shape[2] != 1) bad_shape(name, t, "[H, N, 1]");
          t.shape.pop_back();
        } else if (s == "att.time_maa_w1" || s == "att.time_decay_w1" || s == "att.time_decay_w2") {
          if (t.shape.size() != 2) bad_shape(name, t, "a matrix");
          transpose_last2(name, t);
        } else if (s == "att.time_maa_w2") {  // [5, C, D] -> [5, D, C]
          if (t.shape.size() != 3) bad_shape(name, t, "[5, C, D]");
          transpose_last2(name, t);
        } else if (squeezed) {  // time_decay ([H, N, 1]) and every time_maa_*: [1, 1, C]
          reshape(name, t, {1, 1, n});
        }
        break;
      case Arch::V7:
        if (s == "att.x_rwkvag") {  // [6, 1, C] -> x_r, x_w, x_k, x_v, x_a, x_g as [1, 1, C]
          if (n % 6 != 0) bad_shape(name, t, "[6, 1, C]");
          static const char* const kParts[] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
          const std::string prefix =
              name.substr(0, name.size() - std::string_view("x_rwkvag").size());
          const size_t part = t.data.size() / 6;
          for (int i = 0; i < 6; ++i) {
            HostTensor p;
            p.dtype = t.dtype;
            p.shape = {1, 1, n / 6};
            p.data.assign(t.data.begin() + int64_t(part * i),
                          t.data.begin() + int64_t(part * (i + 1)));
            if (!out.emplace(prefix + kParts[i], std::move(p)).second)
              fail("'{}': tensor '{}' appears twice", path, prefix + kParts[i]);
          }
          continue;
        }
        if (s == "att.w1" || s == "att.w2" || s == "att.a1" || s == "att.a2" || s == "att.v1" ||
            s == "att.v2" || s == "att.g1" || s == "att.g2") {
          if (t.shape.size() != 2) bad_shape(name, t, "a matrix");
          transpose_last2(name, t);
        }
        break;
    }
    if (!out.emplace(name, std::move(t)).second)
      fail("'{}': tensor '{}' appears twice", path, name);
  }
  tensors = std::move(out);
}

}  // namespace

namespace {

Checkpoint read_rwkvcpp_from(const MappedFile& f) {
  const std::string& path = f.path();
  Importer im{path, {}};
  im.read(f);
  im.undo_transforms(im.detect_arch());
  Checkpoint ck;
  ck.tensors = std::move(im.tensors);
  ck.source = path;
  ck.format = "rwkv.cpp";
  return ck;
}

}  // namespace

Checkpoint read_rwkvcpp(const std::string& path) { return read_rwkvcpp_from(MappedFile(path)); }

Checkpoint read_rwkvcpp_bytes(std::span<const uint8_t> bytes, const std::string& name) {
  return read_rwkvcpp_from(MappedFile(bytes, name));
}

}  // namespace rwkvpp
