// The text command line: tokenize/detokenize round trips (World, 20B, bytes), generate --prompt
// streaming text that matches the ids of generate --prompt-tokens, stop strings, UTF-8, seeded
// sampling on 1 and 3 ranks, chat turns that carry the state, and the error messages.
#include <array>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <tuple>

#include "catch.h"
#include "coordinator/tokenizer/utf8_stream.h"
#include "helpers.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

// One shell word holding s exactly (s must not contain NUL).
std::string sh(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string ids_arg(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

std::vector<int32_t> parse(const std::string& out) {
  std::vector<int32_t> v;
  std::stringstream ss(out);
  int32_t x;
  while (ss >> x) v.push_back(x);
  return v;
}

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string bin() { return rwkvpp_binary() + " "; }
std::string mpirun(int np) {
  return "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(np) + " ";
}

struct Models {
  TempDir dir;
  std::string tiny,
      small;  // tiny: byte-level, trained, bytes tokenizer; small: hf-rwkv4 (vocab 300), none
  Models() {
    tiny = dir / "tiny";
    small = dir / "small";
    for (auto [src, out, extra] :
         {std::tuple{fixture("rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin"), tiny,
                     " --tokenizer bytes"},
          std::tuple{fixture("hf-rwkv4/hf-rwkv4-small.safetensors"), small, ""}}) {
      auto r = run(bin() + "convert " + src + " -o " + out + extra);
      if (r.exit_code != 0) throw std::runtime_error("convert failed: " + r.err);
    }
  }
};

Models& models() {
  static Models m;
  return m;
}

RunResult ok(const std::string& cmd) {
  auto r = run(cmd, 300);
  INFO(cmd << "\n" << r.err);
  REQUIRE(r.exit_code == 0);
  return r;
}

RunResult bad(const std::string& cmd) {
  auto r = run(cmd, 300);
  INFO(cmd << "\n" << r.out << r.err);
  REQUIRE(r.exit_code != 0);
  return r;
}

const std::string kGen = " --device cpu --threads 1 ";

}  // namespace

TEST_CASE("tokenize and detokenize round-trip the shared vectors exactly (World, 20B)",
          "[text][cli]") {
  auto v = nlohmann::json::parse(read_file(shared_dir() + "/tokenizers/vectors.json"));
  const std::pair<const char*, const char*> kinds[] = {{"world", "rwkv_vocab_v20230424.txt"},
                                                       {"20B", "20B_tokenizer.json"}};
  for (auto [key, file] : kinds) {
    std::string tokflag = " --tokenizer " + shared_dir() + "/tokenizers/" + file;
    auto probe = run(bin() + "tokenize" + tokflag + " --text x");
    if (probe.exit_code != 0 && has(probe.err, "unavailable")) {
      WARN("skipping " << key << ": " << probe.err);  // built without PCRE2/utf8proc
      continue;
    }
    int checked = 0;
    for (auto& c : v.at("cases")) {
      std::string text = c.at("text");
      if (text.find('\0') != std::string::npos || !c.contains(key)) continue;
      INFO(key << ": " << text);
      auto want = c.at(key).get<std::vector<int32_t>>();
      auto t = ok(bin() + "tokenize" + tokflag + " --text " + sh(text));
      CHECK(t.out == ids_arg(want) + "\n");
      auto d = ok(bin() + "detokenize" + tokflag + " --ids " + sh(ids_arg(want)));
      CHECK(d.out == text);  // exactly, no newline added
      ++checked;
    }
    CHECK(checked >= 4);
  }
}

TEST_CASE("tokenize and detokenize take the tokenizer embedded in a model", "[text][cli]") {
  const auto& m = models();
  auto t = ok(bin() + "tokenize -m " + m.tiny + " --text " + sh("Hi \xc3\xa9"));
  CHECK(t.out == "72 105 32 195 169\n");
  auto d = ok(bin() + "detokenize --model " + m.tiny + " --ids '72,105 10'");
  CHECK(d.out == "Hi\n");
}

TEST_CASE("text commands explain bad tokenizers, ids, sampling values and vocabularies",
          "[text][cli]") {
  const auto& m = models();
  TempDir d;
  write_file(d / "junk.txt", "this is not a vocabulary\n");
  CHECK(has(bad(bin() + "tokenize --tokenizer " + d / "missing.txt --text hi").err,
            d / "missing.txt"));
  CHECK(has(bad(bin() + "tokenize --tokenizer " + d / "junk.txt --text hi").err, d / "junk.txt"));
  CHECK(has(bad(bin() + "tokenize --text hi").err, "--tokenizer"));
  CHECK(has(bad(bin() + "detokenize --tokenizer bytes --ids '65 300'").err, "300"));
  CHECK(has(bad(bin() + "detokenize --tokenizer bytes --ids '65 x'").err, "'x' is not a token id"));
  // A model without an embedded tokenizer, and a tokenizer larger than the model's vocabulary.
  CHECK(has(bad(bin() + "tokenize -m " + m.small + " --text hi").err, "no embedded tokenizer"));
  CHECK(has(bad(bin() + "generate -m " + m.small + kGen + "--prompt hi").err,
            "no embedded tokenizer"));
  std::string world = shared_dir() + "/tokenizers/rwkv_vocab_v20230424.txt";
  auto r = bad(bin() + "generate -m " + m.tiny + kGen + "--prompt hi --tokenizer " + world);
  CHECK(has(r.err, "vocabulary of 256"));
  CHECK(has(bad(bin() + "tokenize -m " + m.tiny + " --tokenizer " + world + " --text hi").err,
            "does not belong"));
  // Ids out of range, missing or doubled prompts, invalid sampling values.
  CHECK(has(bad(bin() + "generate -m " + m.small + kGen + "--prompt-tokens 1,300").err, "300"));
  CHECK(has(bad(bin() + "generate -m " + m.tiny + kGen).err, "--prompt"));
  CHECK(bad(bin() + "generate -m " + m.tiny + kGen + "--prompt hi --prompt-tokens 1").exit_code !=
        0);
  CHECK(has(bad(bin() + "generate -m " + m.tiny + kGen + "--prompt hi --top-p 0").err, "top_p"));
  CHECK(has(bad(bin() + "generate -m " + m.tiny + kGen + "--prompt hi --temperature -1").err,
            "temperature"));
  CHECK(has(bad(bin() + "generate -m " + m.tiny + kGen + "--prompt hi --stop ''").err,
            "stop string"));
  CHECK(has(bad(bin() + "chat -m " + m.tiny + kGen + "--repetition-penalty 0 </dev/null").err,
            "repetition_penalty"));
}

TEST_CASE("generate --prompt streams the text of the ids that generate --prompt-tokens gives",
          "[text][cli]") {
  const auto& m = models();
  for (std::string prompt : {std::string("The "), std::string("In the beginning"),
                             std::string("caf\xc3\xa9 \xe4\xb8\x96 ")}) {
    INFO(prompt);
    auto ids = ok(bin() + "tokenize -m " + m.tiny + " --text " + sh(prompt)).out;
    auto gen_ids =
        parse(ok(bin() + "generate -m " + m.tiny + kGen + "-n 48 --prompt-tokens " + sh(ids)).out);
    REQUIRE(gen_ids.size() == 48);
    auto want = ok(bin() + "detokenize -m " + m.tiny + " --ids " + sh(ids_arg(gen_ids))).out;
    auto got = ok(bin() + "generate -m " + m.tiny + kGen + "-n 48 --prompt " + sh(prompt));
    CHECK(got.out == want);
    CHECK(utf8_valid_prefix(got.out) == utf8_valid_prefix(want));  // nothing mangled
    if (utf8_valid_prefix(want) == want.size()) CHECK(utf8_valid_prefix(got.out) == got.out.size());

    // A stop string from the middle of that text cuts it right before its first occurrence.
    REQUIRE(want.size() > 20);
    std::string stop = want.substr(12, 3);
    auto cut = ok(bin() + "generate -m " + m.tiny + kGen + "-n 48 --prompt " + sh(prompt) +
                  " --stop " + sh(stop) + " --stop zzzzzz --logprobs");
    CHECK(cut.out == want.substr(0, want.find(stop)));
    CHECK(has(cut.err, "[logprobs]"));
    std::smatch lp;
    REQUIRE(std::regex_search(cut.err, lp, std::regex(R"(\[logprobs\] (\d+) tokens)")));
    CHECK(std::stoul(lp[1]) <= want.find(stop) + 3);
  }
}

TEST_CASE("streamed text keeps multi-byte characters whole when sampling", "[text][cli]") {
  const auto& m = models();
  // Sampling at a high temperature makes the byte model emit bytes >= 0x80 too: whatever comes
  // out must be exactly the bytes of the ids, and every valid character must stay whole.
  std::string prompt = "\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82 na\xc3\xafve";
  for (int seed : {1, 2, 3}) {
    std::string flags = kGen + "-n 64 --temperature 2 --seed " + std::to_string(seed);
    auto ids = ok(bin() + "tokenize -m " + m.tiny + " --text " + sh(prompt)).out;
    auto gen_ids =
        parse(ok(bin() + "generate -m " + m.tiny + flags + " --prompt-tokens " + sh(ids)).out);
    auto want = ok(bin() + "detokenize -m " + m.tiny + " --ids " + sh(ids_arg(gen_ids))).out;
    auto got = ok(bin() + "generate -m " + m.tiny + flags + " --prompt " + sh(prompt)).out;
    CHECK(got == want);
  }
}

TEST_CASE("seeded sampling gives the same ids on 1 rank and on 3 ranks", "[text][cli][mpi]") {
  const auto& m = models();
  for (const std::string& model : {m.small, m.tiny}) {
    std::string flags =
        " -m " + model + " --device cpu --threads 1 -n 40 --temperature 1 --top-p 0.9 --seed 7 ";
    std::string prompt =
        model == m.small ? "--prompt-tokens 5,17,42,99" : "--prompt 'Once upon a time'";
    auto one = ok(bin() + "generate" + flags + prompt).out;
    auto three = ok(mpirun(3) + bin() + "generate" + flags + prompt).out;
    CHECK(one == three);
    if (model == m.small) CHECK(parse(one).size() == 40);
  }
}

// Two chat turns through the CLI (`launcher` empty or mpirun): two answers come back and the
// second turn's --stats show it read only its own tokens.
static void check_chat(const std::string& launcher) {
  const auto& m = models();
  auto r = ok("printf 'Hello there\\n\\nWhat is your name?\\n/exit\\nnever read\\n' | " + launcher +
              bin() + "chat -m " + m.tiny + kGen + "-n 24 --stats");
  // Two answers, each on an "Assistant:" line.
  size_t answers = 0;
  for (size_t p = r.out.find("Assistant:"); p != std::string::npos;
       p = r.out.find("Assistant:", p + 1))
    ++answers;
  CHECK(answers >= 2);
  std::regex turn(
      R"(\[chat\] turn (\d): (\d+) prompt tokens, (\d+) generated \(\w+\), (\d+) tokens fed)");
  std::vector<std::array<long, 4>> turns;
  for (auto it = std::sregex_iterator(r.err.begin(), r.err.end(), turn);
       it != std::sregex_iterator(); ++it)
    turns.push_back(
        {std::stol((*it)[1]), std::stol((*it)[2]), std::stol((*it)[3]), std::stol((*it)[4])});
  INFO(r.out << r.err);
  REQUIRE(turns.size() == 2);
  const long t1 = long(std::string("User: Hello there\n\nAssistant:").size());
  const long t2 = long(std::string("\n\nUser: What is your name?\n\nAssistant:").size());
  CHECK(turns[0][1] == t1);
  // Turn 2 reads the previous answer's last token and its own words: nothing of turn 1.
  CHECK(turns[1][1] <= 1 + t2);
  for (auto& t : turns) CHECK(t[3] == t[1] + t[2] - 1);
  std::smatch total;
  REQUIRE(std::regex_search(r.err, total, std::regex(R"(\[stats\] \d+ stage\(s\), (\d+) tokens)")));
  CHECK(std::stol(total[1]) == turns[0][3] + turns[1][3]);
}

TEST_CASE("chat answers two turns and the second does not re-read the first", "[text][cli]") {
  check_chat("");
}

TEST_CASE("chat works under mpirun, with rank 0 reading stdin", "[text][cli][mpi]") {
  check_chat(mpirun(2));
}
