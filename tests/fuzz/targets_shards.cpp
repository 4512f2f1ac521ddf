// Fuzz harnesses of the checkpoint readers (shards/): safetensors, .pth (and its zip reader
// and pickle machine on their own), rwkv.cpp .bin. Seeds are written by tests/writers from a
// tiny synthetic RWKV-4 (shards/synthetic.h).
#include <string>

#include "common/error.h"
#include "fuzz/targets.h"
#include "shards/checkpoint.h"
#include "shards/mapped_file.h"
#include "shards/pickle.h"
#include "shards/synthetic.h"
#include "shards/zip_reader.h"
#include "writers/checkpoint_writers.h"

namespace rwkvpp::fuzz {

namespace {

// What every reader promises for a checkpoint it returns.
void check_checkpoint(const Checkpoint& ck) {
  fuzz_check(!ck.tensors.empty(), "a checkpoint without tensors was accepted");
  for (auto& [name, t] : ck.tensors)
    fuzz_check(t.data.size() == uint64_t(t.numel()) * dtype_size(t.dtype),
               "a tensor's bytes do not match its shape");
  try {
    infer_config(ck);
  } catch (const Error&) {
  }
}

// 1 layer, 4 wide, vocab 8: a few hundred bytes of weights.
Checkpoint tiny(DType dtype) {
  ModelConfig c;
  c.version = RwkvVersion::V4;
  c.n_layer = 1;
  c.n_embd = 4;
  c.ffn_dim = 8;
  c.vocab_size = 8;
  c.dtype = DType::F32;
  Checkpoint ck = synthetic_checkpoint(c, 3);
  for (auto& [n, t] : ck.tensors)
    if (t.shape.size() == 2) t = t.converted(dtype);
  return ck;
}

}  // namespace

void run_safetensors(Bytes b) {
  try {
    Checkpoint ck = read_safetensors_bytes(b, "fuzz.safetensors");
    normalize_hf_names(ck);
    check_checkpoint(ck);
  } catch (const Error&) {
  }
}

Seeds seeds_safetensors() {
  return {
      {"tiny-f32", test::make_safetensors(tiny(DType::F32).tensors)},
      {"tiny-hf-f16", test::make_safetensors(test::hf_rwkv4_names(tiny(DType::F16).tensors), true)},
      {"tiny-bf16", test::make_safetensors(tiny(DType::BF16).tensors)}};
}

namespace {

// The pth harness fuzzes what the archive holds, not the archive: an input is a flags byte
// (1 ZIP64, 2 deflate, 4 big-endian) and the records data.pkl, data/0, data/1, ... separated by
// kRecordSep, zipped here with valid CRCs (mutated bytes would otherwise nearly all stop at the
// CRC check). The zip harness fuzzes archives themselves.
const std::string kRecordSep = "\xfe\xfd\xfcREC";

std::vector<test::ZipFile> split_records(std::string_view body, bool big_endian) {
  std::vector<test::ZipFile> files;
  size_t from = 0;
  for (int i = -1;; ++i) {
    const size_t at = body.find(kRecordSep, from);
    const std::string part(body.substr(from, at == std::string_view::npos ? at : at - from));
    files.push_back({i < 0 ? "f/data.pkl" : "f/data/" + std::to_string(i), part});
    if (i < 0) files.push_back({"f/byteorder", big_endian ? "big" : "little"});
    if (at == std::string_view::npos) break;
    from = at + kRecordSep.size();
  }
  return files;
}

std::string join_records(const std::vector<test::ZipFile>& files, uint8_t flags) {
  std::string out(1, char(flags));
  bool first = true;
  for (const test::ZipFile& f : files) {
    if (f.name.find("/data.pkl") == std::string::npos && f.name.find("/data/") == std::string::npos)
      continue;
    fuzz_check(f.data.find(kRecordSep) == std::string::npos, "a seed record holds the separator");
    if (!first) out += kRecordSep;
    out += f.data;
    first = false;
  }
  return out;
}

}  // namespace

std::string pth_archive_of(Bytes b) {
  if (b.empty()) return {};
  return test::make_zip(split_records(as_text(b).substr(1), b[0] & 4), b[0] & 1, b[0] & 2);
}

void run_pth(Bytes b) {
  if (b.empty()) return;
  const std::string zip = pth_archive_of(b);
  try {
    check_checkpoint(
        read_pth_bytes({reinterpret_cast<const uint8_t*>(zip.data()), zip.size()}, "fuzz.pth"));
  } catch (const Error&) {
  }
}

namespace {

// Views, dtypes and a parameter, as in tests/shards/test_pth.cpp's sample.
std::string views_pickle() {
  return test::make_pickle({
      {"m", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1}},
      {"m.T", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4}},
      {"slice", "FloatStorage", "0", 12, 5, {2}, {3}},
      {"scalar", "FloatStorage", "0", 12, 7, {}, {}},
      {"bf", "BFloat16Storage", "1", 4, 0, {2, 2}, {2, 1}, true},
      {"half", "HalfStorage", "2", 3, 0, {1, 1, 3}, {3, 3, 1}},
  });
}

std::vector<test::ZipFile> views_files() {
  return {{"v/data.pkl", views_pickle()},
          {"v/data/0", std::string(48, '\1')},
          {"v/data/1", std::string(8, '\2')},
          {"v/data/2", std::string(6, '\3')}};
}

// Opcodes a state dict does not use but the machine reads: FRAME, protocol-0 INT, BININT*,
// LONG1, BINFLOAT, the string and bytes forms, lists and APPENDS, DICT, TUPLE1..3, STACK_GLOBAL,
// the memo (MEMOIZE, BINGET, LONG_BINGET), POP, POP_MARK, DUP, BUILD. The result is
// {"a": [1, 258, -5, 32767, 1.0, True, False, None, 7], "b": {"x": b"y", b"z": None},
//  "c": OrderedDict(), "d": ((1, 2, 3),)}.
std::string opcodes_pickle() {
  std::string p;
  auto op = [&](std::initializer_list<int> bytes) {
    for (int c : bytes) p += char(c);
  };
  auto text = [&](const std::string& t) { p += t; };
  auto unicode = [&](const std::string& t) {  // BINUNICODE
    op({'X', int(t.size()), 0, 0, 0});
    text(t);
  };
  op({0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0});  // PROTO 4, FRAME
  op({'}', 'q', 1, '('});                       // EMPTY_DICT, BINPUT 1, MARK
  unicode("a");
  op({']', 'q', 2, '(', 'K', 1, 'M', 2, 1});
  text("I-5\n");
  op({0x8a, 2, 0xff, 0x7f, 'G', 0x3f, 0xf0, 0, 0, 0, 0,
      0,    0, 0x88, 0x89, 'N', 'J',  7,    0, 0, 0, 'e'});
  unicode("b");
  op({'(', 'U', 1, 'x', 'C', 1, 'y', 'B', 1, 0, 0, 0, 'z', 'N', 'd'});
  unicode("c");
  op({0x8c, 11});
  text("collections");
  op({0x8c, 11});
  text("OrderedDict");
  op({0x93, ')', 'R', 0x94});
  unicode("d");
  op({'K', 1, 'K', 2, 'K', 3, 0x87, '2', '0', 0x85, 'u'});
  op({'(', 'N', '1', 'h', 1, '0', 'j', 1, 0, 0, 0, '0', '}', 'b', '.'});
  return p;
}

}  // namespace

Seeds seeds_pth() {
  return {{"tiny", join_records(test::pth_files(tiny(DType::F16).tensors), 0)},
          {"tiny-zip64-deflate", join_records(test::pth_files(tiny(DType::F32).tensors), 3)},
          {"views", join_records(views_files(), 0)}};
}

void run_pickle(Bytes b) {
  try {
    Pickle p = unpickle(b, "fuzz data.pkl");
    fuzz_check(p.root != nullptr, "a pickle without a result");
    // Nothing but the allowed names can have made it into an object.
    for (const PyObj& o : p.arena) {
      if (o.kind == PyObj::Kind::Global)
        fuzz_check(pickle_global_allowed(o.s), "a refused global survived");
      if (o.kind == PyObj::Kind::Reduce)
        fuzz_check(o.items.size() == 3 && o.items[0]->kind == PyObj::Kind::Global &&
                       pickle_callable_allowed(o.items[0]->s),
                   "a call of something not allowed was recorded");
    }
  } catch (const Error&) {
  }
}

Seeds seeds_pickle() {
  return {{"state-dict",
           test::make_pickle({{"emb.weight", "HalfStorage", "0", 32, 0, {8, 4}, {4, 1}},
                              {"blocks.0.ln1.weight", "FloatStorage", "1", 4, 0, {4}, {1}}})},
          {"views", views_pickle()},
          {"opcodes", opcodes_pickle()}};
}

void run_zip(Bytes b) {
  try {
    MappedFile f(b, "fuzz.zip");
    ZipReader z(f);
    std::vector<uint8_t> scratch;
    for (const ZipEntry& e : z.entries()) {
      fuzz_check(z.find(e.name) != nullptr, "an entry cannot be found by its name");
      fuzz_check(f.contains(e.data_offset, e.compressed_size),
                 "an entry's data are outside the file");
      try {
        auto c = z.contents(e, scratch);
        fuzz_check(c.size() == e.size, "an entry's contents differ from its size");
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
}

Seeds seeds_zip() {
  const std::vector<test::ZipFile> files = {
      {"a/data.pkl", "\x80\x02}."}, {"a/byteorder", "little"}, {"a/data/0", std::string(40, 'w')}};
  return {{"stored", test::make_zip(files, false, false)},
          {"deflated", test::make_zip(files, false, true)},
          {"zip64", test::make_zip(files, true, false)}};
}

void run_rwkvcpp(Bytes b) {
  try {
    check_checkpoint(read_rwkvcpp_bytes(b, "fuzz.bin"));
  } catch (const Error&) {
  }
}

Seeds seeds_rwkvcpp() { return {{"tiny-v4", test::rwkvcpp_bytes(tiny(DType::F32), 4)}}; }

}  // namespace rwkvpp::fuzz
