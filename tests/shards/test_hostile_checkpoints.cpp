// Hostile checkpoints (issue 21): sizes near 2^63, overlapping or repeated data, deep JSON,
// pickles that name code to run. Each must be an Error that names the file and the field,
// without a crash or a huge allocation.
#include <filesystem>
#include <string>

#include "catch.h"
#include "common/error.h"
#include "common/limits.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/pickle.h"
#include "shards/synthetic.h"
#include "writers/checkpoint_writers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::span<const uint8_t> span_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// A safetensors file whose header is `header` (verbatim) followed by `data_bytes` zero bytes.
std::string safetensors_with(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint64_t(header.size()) >> (8 * i));
  return out + header + std::string(data_bytes, '\0');
}

// A tiny RWKV-4 checkpoint with the official names (2 layers, 8 wide, vocab 16).
Checkpoint tiny_checkpoint() {
  ModelConfig c;
  c.version = RwkvVersion::V4;
  c.n_layer = 2;
  c.n_embd = 8;
  c.ffn_dim = 32;
  c.vocab_size = 16;
  c.dtype = DType::F32;
  return synthetic_checkpoint(c, 7);
}

}  // namespace

TEST_CASE("safetensors shapes near 2^63 are refused naming the file and tensor",
          "[shards][hostile]") {
  TempDir d;
  // Official and Hugging Face names go through the same reader; the dimensions overflow the
  // element count (2^62 * 4), the byte count (2^61 * 2 elements of 4 bytes) or int64 itself.
  const std::pair<const char*, const char*> shapes[] = {
      {"[4611686018427387904, 4]", "2^63 elements"},
      {"[2305843009213693952, 2]", "2^64 bytes"},
      {"[9223372036854775807, 9223372036854775807]", "2^63 elements"},
      {"[9223372036854775808]", "expected integers"},
      {"[1e300]", "expected integers"},
      {"[-4, 4]", "expected integers"},
  };
  for (const char* name : {"emb.weight", "rwkv.embeddings.weight"})
    for (auto [shape, why] : shapes) {
      INFO(name << " " << shape);
      const std::string header = fmt::format(
          R"({{"{}": {{"dtype": "F32", "shape": {}, "data_offsets": [0, 64]}}}})", name, shape);
      const std::string p = d / "big.safetensors";
      write_file(p, safetensors_with(header, 64));
      const std::string msg = error_of([&] { read_checkpoint(p); });
      CHECK(contains(msg, p));
      CHECK(contains(msg, std::string("tensor '") + name + "'"));
      CHECK(contains(msg, why));
    }
}

TEST_CASE("safetensors headers cannot multiply memory or nest deeply", "[shards][hostile]") {
  // Tensors that all claim the same 64 bytes: the second one is over the data's size.
  std::string h = R"({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},)"
                  R"( "b": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}})";
  auto msg = error_of([&] { read_safetensors_bytes(span_of(safetensors_with(h, 64)), "x.st"); });
  CHECK(contains(msg, "'x.st'"));
  CHECK(contains(msg, "overlapping"));
  // Deep nesting is refused before any JSON parser sees it.
  h = R"({"a": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
  msg = error_of([&] { read_safetensors_bytes(span_of(safetensors_with(h, 0)), "deep.st"); });
  CHECK(contains(msg, "'deep.st'"));
  CHECK(contains(msg, "nested 100001 deep"));
  // A header longer than the file.
  std::string b = safetensors_with("{}", 0);
  b[5] = 1;
  CHECK(contains(error_of([&] { read_safetensors_bytes(span_of(b), "long.st"); }), "exceeds"));
  // A layer number that does not fit: refused by name, not by an exception of std::stoll.
  Checkpoint ck;
  ck.source = "n.st";
  ck.tensors["emb.weight"] = HostTensor::from_f32(std::vector<float>(4), {2, 2});
  ck.tensors["blocks.99999999999999999999.ln1.weight"] = HostTensor::from_f32({1, 2}, {2});
  CHECK(contains(error_of([&] { infer_config(ck); }), "layer number over"));
  // The same tensors written by our writer read back (official and HF names).
  const Checkpoint tiny = tiny_checkpoint();
  for (bool hf : {false, true}) {
    Checkpoint back = read_safetensors_bytes(
        span_of(make_safetensors(hf ? hf_rwkv4_names(tiny.tensors) : tiny.tensors, hf)), "t.st");
    normalize_hf_names(back);
    REQUIRE(back.tensors.size() == tiny.tensors.size());
    for (auto& [n, t] : tiny.tensors) CHECK(back.tensors.at(n).data == t.data);
  }
}

TEST_CASE("pickles that name anything but torch's rebuild functions are refused",
          "[shards][hostile]") {
  auto X = [](const std::string& s) {  // BINUNICODE
    std::string o = "X";
    for (int i = 0; i < 4; ++i) o += char(uint32_t(s.size()) >> (8 * i));
    return o + s;
  };
  const std::string proto = "\x80\x02";
  struct Case {
    std::string program, want;
  } cases[] = {
      // os.system("touch ...") by GLOBAL and REDUCE: refused at the GLOBAL, nothing runs.
      {proto + "cos\nsystem\n" + X("touch /tmp/rwkvpp-pwned") + "\x85R.",
       "refusing global 'os.system'"},
      {proto + "cposix\nsystem\n(" + X("id") + "tR.", "refusing global 'posix.system'"},
      // STACK_GLOBAL spells the same with strings from the stack.
      {proto + X("builtins") + X("eval") + "\x93" + X("1") + "\x85R.",
       "refusing global 'builtins.eval'"},
      {proto + X("torch") + X("load") + "\x93.", "refusing global 'torch.load'"},
      // An allowed name that is not a function is still not called.
      {proto + "ctorch\nFloatStorage\n)R.", "refusing to call a global torch.FloatStorage"},
      // REDUCE of something that is not a global at all.
      {proto + X("os.system") + ")R.", "refusing to call a str"},
  };
  for (auto& c : cases) {
    INFO(c.want);
    const std::string msg = error_of([&] { unpickle(span_of(c.program), "'evil.pth': data.pkl"); });
    CHECK(contains(msg, "'evil.pth': data.pkl"));
    CHECK(contains(msg, c.want));
  }
  CHECK_FALSE(std::filesystem::exists("/tmp/rwkvpp-pwned"));
  // The allowed calls still work: OrderedDict() becomes a dict.
  Pickle p = unpickle(span_of(proto + "ccollections\nOrderedDict\n)R."), "ok");
  CHECK(p.root->kind == PyObj::Kind::Dict);
  // Inside a whole .pth the refusal names the file.
  const std::string pth =
      make_zip({{"a/data.pkl", proto + "cos\nsystem\n" + X("id") + "\x85R."}, {"a/version", "3\n"}},
               false, false);
  const std::string msg = error_of([&] { read_pth_bytes(span_of(pth), "evil.pth"); });
  CHECK(contains(msg, "'evil.pth': a/data.pkl"));
  CHECK(contains(msg, "os.system"));
}

TEST_CASE("the pickle machine bounds its stack, marks and memo", "[shards][hostile]") {
  const std::string proto = "\x80\x02";
  // DUP pushes without making objects; MARK and the memo grow without any.
  std::string dups = proto + "N" + std::string(size_t(1) << 20, '2') + ".";
  CHECK(contains(error_of([&] { unpickle(span_of(dups), "d"); }), "on the stack"));
  std::string marks = proto + std::string((size_t(1) << 20) + 1, '(') + ".";
  CHECK(contains(error_of([&] { unpickle(span_of(marks), "m"); }), "MARKs"));
  std::string memo = proto + "N";
  for (uint32_t i = 0; i <= (uint32_t(1) << 20); ++i) {
    memo += 'r';
    for (int k = 0; k < 4; ++k) memo += char(i >> (8 * k));
  }
  CHECK(contains(error_of([&] { unpickle(span_of(memo + "."), "memo"); }), "memo entries"));
}

TEST_CASE("a .pth cannot view one storage over and over", "[shards][hostile]") {
  // 40 views of one 2 MiB storage would be 80 MiB of tensors from a 2 MiB archive.
  std::vector<FakeTensor> ts;
  for (int i = 0; i < 40; ++i)
    ts.push_back({"t" + std::to_string(i), "FloatStorage", "0", 1 << 19, 0, {1 << 19}, {1}});
  const std::string pth =
      make_zip({{"a/data.pkl", make_pickle(ts)}, {"a/data/0", std::string(size_t(2) << 20, '\0')}},
               false, false);
  const std::string msg = error_of([&] { read_pth_bytes(span_of(pth), "views.pth"); });
  CHECK(contains(msg, "'views.pth'"));
  CHECK(contains(msg, "viewed over and over"));
  // Our own writer's archive of the tiny model reads back exactly.
  const Checkpoint tiny = tiny_checkpoint();
  Checkpoint back = read_pth_bytes(span_of(make_pth(tiny.tensors, true, true)), "t.pth");
  REQUIRE(back.tensors.size() == tiny.tensors.size());
  for (auto& [n, t] : tiny.tensors) CHECK(back.tensors.at(n).data == t.data);
}
