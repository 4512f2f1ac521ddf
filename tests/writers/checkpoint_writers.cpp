// Checkpoint files written the way their outside tools write them (torch.save, rwkv.cpp's
// converter, safetensors), independently of the readers under test: for the reader tests
// (tests/shards/) and the fuzz seed corpora (tests/fuzz/). See checkpoint_writers.h.
#include "writers/checkpoint_writers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

namespace rwkvpp::test {

namespace {

uint32_t crc32_of(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return ~c;
}

// Little-endian byte writer.
struct Out {
  std::string s;
  Out& u8(uint64_t v) {
    s += char(v);
    return *this;
  }
  Out& u16(uint64_t v) { return u8(v & 0xff).u8((v >> 8) & 0xff); }
  Out& u32(uint64_t v) { return u16(v & 0xffff).u16((v >> 16) & 0xffff); }
  Out& u64(uint64_t v) { return u32(v & 0xffffffffu).u32(v >> 32); }
  Out& raw(const std::string& b) {
    s += b;
    return *this;
  }
};

// Deflate made of uncompressed ("stored") blocks: valid input for any inflater.
std::string deflate_stored(const std::string& d) {
  Out o;
  size_t i = 0;
  do {
    size_t n = std::min<size_t>(d.size() - i, 65535);
    o.u8(i + n == d.size() ? 1 : 0).u16(n).u16(~n & 0xffff);  // BFINAL, BTYPE 00; LEN, NLEN
    o.raw(d.substr(i, n));
    i += n;
  } while (i < d.size());
  return o.s;
}

// A tensor as rwkv.cpp's converter holds it: fp32 values in C order.
struct Param {
  std::string name;
  Shape shape;
  std::vector<float> v;
};

Param transpose(Param p, size_t d0, size_t d1) {
  Shape s = p.shape;
  std::swap(s[d0], s[d1]);
  std::vector<int64_t> stride(p.shape.size(), 1);
  for (size_t i = p.shape.size() - 1; i > 0; --i) stride[i - 1] = stride[i] * p.shape[i];
  std::vector<float> out(p.v.size());
  std::vector<int64_t> idx(s.size(), 0);
  for (size_t o = 0; o < out.size(); ++o) {
    int64_t src = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      size_t j = i == d0 ? d1 : i == d1 ? d0 : i;
      src += idx[i] * stride[j];
    }
    out[o] = p.v[size_t(src)];
    for (size_t i = s.size(); i-- > 0;) {
      if (++idx[i] < s[i]) break;
      idx[i] = 0;
    }
  }
  p.shape = s;
  p.v = std::move(out);
  return p;
}

}  // namespace

std::string make_zip(const std::vector<ZipFile>& files, bool zip64, bool deflate) {
  Out o, cd;
  const uint64_t sat32 = 0xffffffffu, method = deflate ? 8 : 0;
  for (const ZipFile& f : files) {
    const uint64_t at = o.s.size();
    const std::string body = deflate ? deflate_stored(f.data) : f.data;
    const uint32_t crc = crc32_of(f.data);
    // signature, version needed, flags (data descriptor, UTF-8), method, time, date
    o.u32(0x04034b50).u16(45).u16(0x0808).u16(method).u16(0).u16(0);
    o.u32(0).u32(0).u32(0).u16(f.name.size()).u16(0);  // crc, sizes (in the descriptor)
    o.raw(f.name).raw(body);
    o.u32(0x08074b50).u32(crc).u64(body.size()).u64(f.data.size());  // data descriptor
    // signature, made by, needed, flags, method, time, date, crc
    cd.u32(0x02014b50).u16(0x031e).u16(45).u16(0x0808).u16(method).u16(0).u16(0).u32(crc);
    cd.u32(zip64 ? sat32 : body.size()).u32(zip64 ? sat32 : f.data.size());
    // name length, extra length, comment length, disk, internal and external attributes
    cd.u16(f.name.size()).u16(zip64 ? 28 : 0).u16(0).u16(0).u16(0).u32(0);
    cd.u32(zip64 ? sat32 : at).raw(f.name);
    if (zip64) cd.u16(1).u16(24).u64(f.data.size()).u64(body.size()).u64(at);
  }
  const uint64_t cd_at = o.s.size(), n = files.size();
  o.raw(cd.s);
  if (zip64) {
    const uint64_t z_at = o.s.size();
    o.u32(0x06064b50).u64(44).u16(0x031e).u16(45).u32(0).u32(0);  // ZIP64 end record
    o.u64(n).u64(n).u64(cd.s.size()).u64(cd_at);
    o.u32(0x07064b50).u32(0).u64(z_at).u32(1);  // its locator
  }
  o.u32(0x06054b50).u16(0).u16(0).u16(zip64 ? 0xffff : n).u16(zip64 ? 0xffff : n);
  o.u32(zip64 ? sat32 : cd.s.size()).u32(zip64 ? sat32 : cd_at).u16(0);
  return o.s;
}

std::string make_pickle(const std::vector<FakeTensor>& ts, const std::string& extra_op) {
  Out o;
  o.raw(std::string("\x80\x02}q\x00(", 6));  // PROTO 2, EMPTY_DICT, BINPUT 0, MARK
  std::map<std::string, int> memo;
  auto str = [&](const std::string& s) { o.raw("X").u32(s.size()).raw(s); };
  auto num = [&](int64_t v) {
    if (v >= 0 && v < 256)
      o.raw("K").u8(uint64_t(v));
    else if (v >= 0 && v < 65536)
      o.raw("M").u16(uint64_t(v));
    else
      o.u8(0x8a).u8(8).u64(uint64_t(v));  // LONG1
  };
  auto global = [&](const std::string& mod, const std::string& name) {
    auto it = memo.find(mod + name);
    if (it != memo.end()) {
      o.raw("h").u8(uint64_t(it->second));  // BINGET
      return;
    }
    int id = int(memo.size()) + 1;
    memo[mod + name] = id;
    o.raw("c" + mod + "\n" + name + "\n").raw("q").u8(uint64_t(id));  // GLOBAL, BINPUT
  };
  auto ints = [&](const Shape& s) {
    o.raw("(");
    for (int64_t v : s) num(v);
    o.raw("t");
  };
  auto empty_ordered_dict = [&] {
    global("collections", "OrderedDict");
    o.raw(")R");  // EMPTY_TUPLE, REDUCE
  };
  for (const FakeTensor& t : ts) {
    str(t.name);
    if (t.parameter) {
      global("torch._utils", "_rebuild_parameter");
      o.raw("(");
    }
    global("torch._utils", "_rebuild_tensor_v2");
    o.raw("((");
    str("storage");
    global("torch", t.storage_type);
    str(t.key);
    str("cpu");
    num(t.storage_numel);
    o.raw("tQ");  // TUPLE, BINPERSID
    num(t.offset);
    ints(t.sizes);
    ints(t.strides);
    o.u8(0x89);            // NEWFALSE: requires_grad
    empty_ordered_dict();  // backward hooks
    o.raw("tR");
    if (t.parameter) {
      o.u8(0x89);
      empty_ordered_dict();
      o.raw("tR");
    }
  }
  o.raw("u" + extra_op + ".");  // SETITEMS, STOP
  return o.s;
}

std::string rwkvcpp_bytes(const Checkpoint& ck, int version) {
  std::vector<Param> params;
  int64_t n_head = 0;
  if (version == 6) n_head = ck.tensors.at("blocks.0.att.time_faaaa").shape[0];
  for (auto& [name, t] : ck.tensors) {
    if (version == 7 && name.find("att.x_") != std::string::npos) {
      if (name.substr(name.size() - 3) != "x_r") continue;
      Param p{name.substr(0, name.size() - 3) + "x_rwkvag", {6, 1, t.shape[2]}, {}};
      for (const char* x : {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"}) {
        auto v = ck.tensors.at(name.substr(0, name.size() - 3) + x).to_f32();
        p.v.insert(p.v.end(), v.begin(), v.end());
      }
      params.push_back(std::move(p));
      continue;
    }
    Param p{name, t.shape, t.to_f32()};
    const std::string& tensor_name = name;  // clang 14 cannot capture a structured binding
    auto has = [&](const char* s) { return tensor_name.find(s) != std::string::npos; };
    if (has(".time_")) std::erase(p.shape, 1);  // squeeze
    if (version == 4 && has(".time_decay"))
      for (float& x : p.v) x = -std::exp(x);
    if (version == 6) {
      if (has(".time_faaaa")) p.shape.push_back(1);
      if (has(".time_maa_w1") || has(".time_decay_w")) p = transpose(std::move(p), 0, 1);
      if (has(".time_maa_w2")) p = transpose(std::move(p), 1, 2);
      if (has(".time_decay") && !has("_w")) p.shape = {n_head, int64_t(p.v.size()) / n_head, 1};
    }
    if (version == 7)
      for (const char* m : {".w1", ".w2", ".a1", ".a2", ".v1", ".v2", ".g1", ".g2"})
        if (has(m)) p = transpose(std::move(p), 0, 1);
    params.push_back(std::move(p));
  }
  const HostTensor& emb = ck.tensors.at("emb.weight");
  int64_t n_layer = 0;
  while (ck.tensors.count("blocks." + std::to_string(n_layer) + ".ln1.weight")) ++n_layer;
  std::string out;
  auto put = [&](int32_t x) { out.append(reinterpret_cast<const char*>(&x), 4); };
  for (int32_t x : {int32_t(0x67676d66), 101, int32_t(emb.shape[0]), int32_t(emb.shape[1]),
                    int32_t(n_layer), 0})
    put(x);
  for (auto& p : params) {
    put(int32_t(p.shape.size()));
    put(int32_t(p.name.size()));
    put(0);
    for (size_t i = p.shape.size(); i-- > 0;) put(int32_t(p.shape[i]));
    out += p.name;
    out.append(reinterpret_cast<const char*>(p.v.data()), p.v.size() * 4);
  }
  return out;
}

}  // namespace rwkvpp::test

namespace rwkvpp::test {

namespace {

const char* storage_type_of(DType t) {
  switch (t) {
    case DType::F16:
      return "HalfStorage";
    case DType::BF16:
      return "BFloat16Storage";
    default:
      return "FloatStorage";
  }
}

}  // namespace

std::string make_pth(const std::map<std::string, HostTensor>& tensors, bool zip64, bool deflate,
                     const std::string& archive) {
  return make_zip(pth_files(tensors, archive), zip64, deflate);
}

std::vector<ZipFile> pth_files(const std::map<std::string, HostTensor>& tensors,
                               const std::string& archive) {
  std::vector<FakeTensor> ts;
  std::vector<ZipFile> files;
  for (auto& [name, t] : tensors) {
    const std::string key = std::to_string(ts.size());
    Shape strides(t.shape.size(), 1);
    for (size_t d = t.shape.size(); d-- > 1;) strides[d - 1] = strides[d] * t.shape[d];
    ts.push_back({name, storage_type_of(t.dtype), key, t.numel(), 0, t.shape, strides});
    files.push_back({archive + "/data/" + key, std::string(t.data.begin(), t.data.end())});
  }
  files.insert(files.begin(), {archive + "/data.pkl", make_pickle(ts)});
  files.insert(files.begin() + 1, {archive + "/byteorder", "little"});
  files.push_back({archive + "/version", "3\n"});
  return files;
}

std::string make_safetensors(const std::map<std::string, HostTensor>& tensors, bool metadata) {
  nlohmann::ordered_json h;
  if (metadata) h["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (auto& [name, t] : tensors) {
    const char* dt = t.dtype == DType::F16 ? "F16" : t.dtype == DType::BF16 ? "BF16" : "F32";
    h[name] = {{"dtype", dt},
               {"shape", t.shape},
               {"data_offsets", {data.size(), data.size() + t.data.size()}}};
    data.append(t.data.begin(), t.data.end());
  }
  std::string header = h.dump();
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(n >> (8 * i));
  return out + header + data;
}

std::map<std::string, HostTensor> hf_rwkv4_names(const std::map<std::string, HostTensor>& t) {
  static const std::pair<const char*, const char*> kSub[] = {
      {"att.time_mix_k", "attention.time_mix_key"},
      {"att.time_mix_v", "attention.time_mix_value"},
      {"att.time_mix_r", "attention.time_mix_receptance"},
      {"att.", "attention."},
      {"ffn.time_mix_k", "feed_forward.time_mix_key"},
      {"ffn.time_mix_r", "feed_forward.time_mix_receptance"},
      {"ffn.", "feed_forward."},
      {"ln0.", "pre_ln."},
  };
  std::map<std::string, HostTensor> out;
  for (auto& [k, v] : t) {
    std::string n = k;
    if (n == "emb.weight") {
      n = "rwkv.embeddings.weight";
    } else if (n.rfind("ln_out.", 0) == 0) {
      n = "rwkv." + n;
    } else if (n.rfind("blocks.", 0) == 0) {
      for (auto [from, to] : kSub)
        if (auto p = n.find(from); p != std::string::npos) {
          n.replace(p, std::strlen(from), to);
          break;
        }
      n = "rwkv." + n;
    }
    out.emplace(n, v);
  }
  return out;
}

}  // namespace rwkvpp::test
