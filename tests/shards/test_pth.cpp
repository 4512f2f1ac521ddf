// PyTorch .pth import: the released-checkpoint fixture against its safetensors twin and the
// transformers logits, archives written here the way torch.save writes them (views, shared
// storages, bf16/fp32, ZIP64 records, deflated entries, big-endian), and corrupt files.
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "catch.h"
#include "common/error.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "test_support.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

using Shape = std::vector<int64_t>;

const std::string kPth = "hf-rwkv4/hf-rwkv4-small.fp16.pth";

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- A minimal torch.save look-alike, written independently of the reader under test. ----

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

struct ZipFile {
  std::string name, data;
};

// Local headers with zero sizes and a data descriptor (as torch writes them), a central
// directory, and, with `zip64`, ZIP64 extra fields and end records with the 32-bit fields
// saturated, as in archives over 4 GB.
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

struct FakeTensor {
  std::string name, storage_type, key;
  int64_t storage_numel, offset;
  Shape sizes, strides;
  bool parameter = false;  // wrapped in torch._utils._rebuild_parameter
};

// data.pkl for a dict of tensors, with the opcodes torch.save's protocol 2 uses (GLOBAL,
// BINPERSID, REDUCE, SETITEMS, the memo, ...). `extra_op` is inserted before STOP.
std::string make_pickle(const std::vector<FakeTensor>& ts, const std::string& extra_op = "") {
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

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::string u16_bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

std::string swap_each(std::string s, size_t es) {
  for (size_t i = 0; i < s.size(); i += es)
    std::reverse(s.begin() + int64_t(i), s.begin() + int64_t(i + es));
  return s;
}

// A small checkpoint with views: storage 0 (fp32, 0..11) seen as a [3,4] matrix, its
// transpose, a strided slice and a scalar; storage 1 (bf16) as a parameter; storage 2 (fp16).
struct Sample {
  std::vector<FakeTensor> tensors = {
      {"m", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1}},
      {"m.T", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4}},
      {"slice", "FloatStorage", "0", 12, 5, {2}, {3}},
      {"scalar", "FloatStorage", "0", 12, 7, {}, {}},
      {"empty", "FloatStorage", "0", 12, 0, {0, 4}, {4, 1}},
      {"bf", "BFloat16Storage", "1", 4, 0, {2, 2}, {2, 1}, true},
      {"half", "HalfStorage", "2", 3, 0, {1, 1, 3}, {3, 3, 1}},
  };
  std::vector<float> f32 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  std::vector<uint16_t> bf16 = {0x3fc0, 0xc000, 0x3e80, 0x4040};  // 1.5, -2, 0.25, 3
  std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff};           // 1, -2, 65504

  std::vector<ZipFile> files(bool big_endian = false, const std::string& extra_op = "") const {
    std::string order = big_endian ? "big" : "little";
    return {{"sample/data.pkl", make_pickle(tensors, extra_op)},
            {"sample/byteorder", order},
            {"sample/data/0", big_endian ? swap_each(f32_bytes(f32), 4) : f32_bytes(f32)},
            {"sample/data/1", big_endian ? swap_each(u16_bytes(bf16), 2) : u16_bytes(bf16)},
            {"sample/data/2", big_endian ? swap_each(u16_bytes(f16), 2) : u16_bytes(f16)},
            {"sample/version", "3\n"}};
  }
};

void check_sample(const Checkpoint& ck) {
  REQUIRE(ck.tensors.size() == 7);
  auto at = [&](const char* n) -> const HostTensor& {
    INFO("tensor " << n);
    REQUIRE(ck.tensors.count(n) == 1);
    return ck.tensors.at(n);
  };
  CHECK(at("m").shape == Shape{3, 4});
  CHECK(at("m").to_f32() == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  CHECK(at("m.T").shape == Shape{4, 3});
  CHECK(at("m.T").to_f32() == std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  CHECK(at("slice").to_f32() == std::vector<float>{5, 8});
  CHECK(at("scalar").shape.empty());
  CHECK(at("scalar").to_f32() == std::vector<float>{7});
  CHECK(at("empty").shape == Shape{0, 4});
  CHECK(at("empty").data.empty());
  CHECK(at("bf").dtype == DType::BF16);
  CHECK(at("bf").to_f32() == std::vector<float>{1.5f, -2, 0.25f, 3});
  CHECK(at("half").dtype == DType::F16);
  CHECK(at("half").shape == Shape{1, 1, 3});
  CHECK(at("half").to_f32() == std::vector<float>{1, -2, 65504});
}

}  // namespace

TEST_CASE("pth fixture matches its safetensors twin exactly", "[shards][pth]") {
  Checkpoint pth = read_checkpoint(fixture(kPth));
  Checkpoint ref = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
  CHECK(pth.format == "pth");
  REQUIRE(pth.tensors.size() == ref.tensors.size());
  for (auto& [name, t] : ref.tensors) {
    INFO("tensor " << name);
    REQUIRE(pth.tensors.count(name) == 1);
    const HostTensor& p = pth.tensors.at(name);
    CHECK(p.dtype == DType::F16);
    CHECK(p.shape == t.shape);
    CHECK(p.to_f32() == t.to_f32());  // the fixture's values are exact in fp16
  }
  CHECK(infer_config(pth) == [&] {
    ModelConfig c = infer_config(ref);
    c.dtype = DType::F16;
    return c;
  }());
}

TEST_CASE("RWKV-4 from the .pth fixture matches transformers", "[shards][pth][v4]") {
  CheckpointSource src(read_checkpoint(fixture(kPth)));
  auto ref = read_f64(fixture("hf-rwkv4/hf-rwkv4-small.logits.f64"));
  auto tokens = nlohmann::json::parse(read_file(fixture("hf-rwkv4/hf-rwkv4-small.json")))
                    .at("tokens")
                    .get<std::vector<int32_t>>();
  REQUIRE(tokens.size() == 48);
  REQUIRE(ref.size() == 48 * 300);
  LocalModel m(src, DType::F32);
  CHECK(max_abs_diff(m.run(0, tokens, 1), ref) < 5e-5);
}

TEST_CASE("pth reader handles views, dtypes, ZIP64, deflate and byte order", "[shards][pth]") {
  TempDir dir;
  Sample s;
  for (bool zip64 : {false, true})
    for (bool deflate : {false, true})
      for (bool big : {false, true}) {
        INFO("zip64 " << zip64 << " deflate " << deflate << " big-endian " << big);
        std::string p = dir / "sample.pth";
        write_file(p, make_zip(s.files(big), zip64, deflate));
        check_sample(read_checkpoint(p));
      }
}

TEST_CASE("pth reader survives every truncation and single-byte corruption", "[shards][pth]") {
  TempDir dir;
  const std::string good = make_zip(Sample().files(), true, false);
  const std::string p = dir / "bad.pth";
  int threw = 0, read = 0;
  auto attempt = [&](const std::string& bytes) {
    std::filesystem::remove(p);  // rewriting through truncation is slow on ext4 (auto_da_alloc)
    write_file(p, bytes);
    try {
      read_pth(p);
      ++read;
    } catch (const Error& e) {
      ++threw;
      if (std::string(e.what()).find(p) == std::string::npos)
        FAIL("message without the file name: " << e.what());
    }
  };
  for (size_t n = 0; n < good.size(); ++n) attempt(good.substr(0, n));
  CHECK(read == 0);  // every truncation is detected (the EOCD is at the very end)
  for (size_t i = 0; i < good.size(); ++i)
    for (unsigned char x : {0x01, 0x80, 0xff}) {
      std::string b = good;
      b[i] = char(b[i] ^ x);
      attempt(b);
    }
  CHECK(threw > 0);
}

TEST_CASE("pth reader rejects corrupt files with the file's name", "[shards][pth]") {
  TempDir dir;
  const std::string p = dir / "bad.pth";
  auto check_error = [&](const std::string& bytes, std::vector<std::string> want) {
    write_file(p, bytes);
    std::string msg = error_of([&] { read_checkpoint(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    for (auto& w : want) CHECK(msg.find(w) != std::string::npos);
  };
  const std::string good = read_file(fixture(kPth));

  SECTION("truncated") {
    for (size_t n : {size_t(10), size_t(4000), good.size() / 2, good.size() - 30, good.size() - 1})
      check_error(good.substr(0, n), {});
  }
  SECTION("a zip with a missing data entry") {
    // Rename the record of head.weight's storage (data/77) in its local header and in the
    // central directory, keeping every length and offset valid.
    std::string b = good;
    size_t renamed = 0;
    for (size_t at = b.find("fp16/data/77"); at != std::string::npos;
         at = b.find("fp16/data/77", at + 1))
      b[at + 11] = 'x', ++renamed;
    REQUIRE(renamed == 2);
    check_error(b, {"'head.weight'", "data/77"});
  }
  SECTION("corrupt storage bytes fail the CRC check") {
    std::string b = good;
    size_t at = b.find("fp16/data/0");
    REQUIRE(at != std::string::npos);
    b[at + 200] ^= 0x10;  // inside emb.weight's data (the local header pads to 64 bytes)
    check_error(b, {"data/0", "CRC"});
  }
  SECTION("synthetic archives") {
    Sample s;
    auto files = s.files();
    files.erase(files.begin() + 3);  // sample/data/1
    check_error(make_zip(files, false, false), {"'bf'", "sample/data/1"});
    check_error(make_zip(s.files(false, "\xfe"), false, false),
                {"data.pkl", "unknown pickle opcode 0xfe"});
    s.tensors[1].offset = 1;  // the transpose now reads past its storage
    check_error(make_zip(s.files(), false, false), {"'m.T'", "storage '0'"});
    s.tensors[1].offset = 0;
    s.tensors[3].sizes = {1000000};  // expanded: one element repeated
    s.tensors[3].strides = {0};
    check_error(make_zip(s.files(), false, false), {"'scalar'", "expanded"});
    s.tensors[3].sizes = {};
    s.tensors[3].strides = {};
    s.tensors[2].storage_type = "LongStorage";
    check_error(make_zip(s.files(), false, false), {"'slice'", "torch.LongStorage"});
  }
}
