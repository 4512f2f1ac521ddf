// A small driver for rwkv.cpp (the peer engine of scripts/bench_rwkvcpp.sh): our own program
// against rwkv.cpp's public C API (rwkv.h), compiled by that script against a librwkv built
// outside this repository. Not part of rwkvpp's build; it includes nothing of ours.
//   rwkvcpp_driver logits MODEL.bin --threads N --tokens 1,2,3 -o LOGITS.f32 [--every 1]
//       the logits after the last token (fed one at a time from the empty state), n_vocab
//       float32 little-endian values; with --every 1 the logits after every token, [T, n_vocab]
//   rwkvcpp_driver bench MODEL.bin --threads N [--warmup 8] [--gen 64] [--token 0]
//       decode at batch 1 as rwkvpp bench times it: after an untimed warm-up decode, one
//       sequence from the empty state and a 1-token prompt, `gen` greedy steps (rwkv_eval with
//       logits, then the argmax over the vocabulary), each step timed; one JSON line with the
//       median and the mean ms per step (the mean is rwkvpp bench's definition: the steps'
//       wall time over their count)
//   rwkvcpp_driver quantize IN.bin OUT.bin Q8_0     rwkv.cpp's own quantiser
//   rwkvcpp_driver info                              rwkv.cpp's system information string
#include <rwkv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

const char kUsage[] =
    "usage: rwkvcpp_driver logits MODEL.bin --threads N --tokens 1,2,3 -o LOGITS.f32 [--every 1]\n"
    "       rwkvcpp_driver bench MODEL.bin --threads N [--warmup 8] [--gen 64] [--token 0]\n"
    "       rwkvcpp_driver quantize IN.bin OUT.bin TYPE   (TYPE: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0)\n"
    "       rwkvcpp_driver info\n";

struct Args {
  std::string model, out, tokens;
  int threads = 1, warmup = 8, gen = 64, token = 0, every = 0;
};

int to_int(const std::string& flag, const std::string& v, int lo) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > 1 << 24)
    throw std::runtime_error(flag + ": '" + v + "' is not a whole number >= " + std::to_string(lo));
  return int(x);
}

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 3) throw std::runtime_error(std::string("missing MODEL\n") + kUsage);
  a.model = argv[2];
  for (int i = 3; i < argc; i += 2) {
    const std::string f = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(f + ": needs a value\n" + kUsage);
    const std::string v = argv[i + 1];
    if (f == "--threads")
      a.threads = to_int(f, v, 1);
    else if (f == "--warmup")
      a.warmup = to_int(f, v, 0);
    else if (f == "--gen")
      a.gen = to_int(f, v, 1);
    else if (f == "--every")
      a.every = to_int(f, v, 0);
    else if (f == "--token")
      a.token = to_int(f, v, 0);
    else if (f == "--tokens")
      a.tokens = v;
    else if (f == "-o")
      a.out = v;
    else
      throw std::runtime_error("unknown argument '" + f + "'\n" + kUsage);
  }
  return a;
}

std::vector<uint32_t> parse_tokens(const std::string& s) {
  std::vector<uint32_t> t;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(", ", i);
    if (j == std::string::npos) j = s.size();
    if (j > i) t.push_back(uint32_t(to_int("--tokens", s.substr(i, j - i), 0)));
    i = j + 1;
  }
  if (t.empty()) throw std::runtime_error("--tokens: no token ids given");
  return t;
}

// One loaded model, its recurrent state and its logits (owned; freed on every path).
class Model {
 public:
  Model(const std::string& path, int threads) {
    ctx_ = rwkv_init_from_file(path.c_str(), uint32_t(threads), 0);
    if (!ctx_)
      throw std::runtime_error("'" + path + "': rwkv_init_from_file failed (error flags 0x" +
                               hex(rwkv_get_last_error(nullptr)) + ")");
    state_.resize(rwkv_get_state_len(ctx_));
    logits_.resize(rwkv_get_logits_len(ctx_));
    reset();
  }
  ~Model() { rwkv_free(ctx_); }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  void reset() { rwkv_init_state(ctx_, state_.data()); }
  size_t vocab() const { return logits_.size(); }
  const std::vector<float>& logits() const { return logits_; }

  // Feeds one token: the state moves on, the logits are those after it.
  void eval(uint32_t token) {
    if (token >= vocab())
      throw std::runtime_error("token " + std::to_string(token) + " is outside the vocabulary of " +
                               std::to_string(vocab()));
    if (!rwkv_eval(ctx_, token, state_.data(), state_.data(), logits_.data()))
      throw std::runtime_error("rwkv_eval failed (error flags 0x" + hex(rwkv_get_last_error(ctx_)) +
                               ")");
  }
  uint32_t argmax() const {
    return uint32_t(std::max_element(logits_.begin(), logits_.end()) - logits_.begin());
  }

 private:
  static std::string hex(unsigned v) {
    char b[16];
    std::snprintf(b, sizeof b, "%x", v);
    return b;
  }
  rwkv_context* ctx_ = nullptr;
  std::vector<float> state_, logits_;
};

int cmd_logits(const Args& a) {
  if (a.out.empty() || a.tokens.empty())
    throw std::runtime_error(std::string("logits needs --tokens and -o\n") + kUsage);
  Model m(a.model, a.threads);
  std::vector<float> out;
  for (uint32_t t : parse_tokens(a.tokens)) {
    m.eval(t);
    if (a.every) out.insert(out.end(), m.logits().begin(), m.logits().end());
  }
  if (!a.every) out = m.logits();
  FILE* f = std::fopen(a.out.c_str(), "wb");
  if (!f) throw std::runtime_error("'" + a.out + "': cannot open for writing");
  const size_t n = std::fwrite(out.data(), sizeof(float), out.size(), f);
  if (std::fclose(f) != 0 || n != out.size())
    throw std::runtime_error("'" + a.out + "': write failed");
  std::fprintf(stderr, "rwkvcpp_driver: %zu logits (%s) written to %s\n", out.size(),
               a.every ? "after every token" : "after the last token", a.out.c_str());
  return 0;
}

int cmd_bench(const Args& a) {
  using clock = std::chrono::steady_clock;
  Model m(a.model, a.threads);
  uint32_t tok = uint32_t(a.token);
  for (int i = 0; i < a.warmup; ++i) {  // first-touch of buffers, graph allocation, caches
    m.eval(tok);
    tok = m.argmax();
  }
  m.reset();
  tok = uint32_t(a.token);
  std::vector<double> ms;
  const auto start = clock::now();
  for (int i = 0; i < a.gen; ++i) {
    const auto t0 = clock::now();
    m.eval(tok);
    tok = m.argmax();
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  const double mean =
      std::chrono::duration<double, std::milli>(clock::now() - start).count() / a.gen;
  std::vector<double> s = ms;
  std::sort(s.begin(), s.end());
  const size_t n = s.size();
  const double median = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  std::printf(
      "{\"engine\": \"rwkv.cpp\", \"threads\": %d, \"gen\": %d, \"median_ms\": %.4f, "
      "\"mean_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"last_token\": %u}\n",
      a.threads, a.gen, median, mean, s.front(), s.back(), tok);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "--help" || cmd == "-h" || cmd.empty()) {
      std::fputs(kUsage, cmd.empty() ? stderr : stdout);
      return cmd.empty() ? 2 : 0;
    }
    if (cmd == "info") {
      std::printf("%s\n", rwkv_get_system_info_string());
      return 0;
    }
    if (cmd == "quantize") {
      if (argc != 5) throw std::runtime_error(std::string("quantize needs IN OUT TYPE\n") + kUsage);
      if (!rwkv_quantize_model_file(argv[2], argv[3], argv[4]))
        throw std::runtime_error(std::string("rwkv_quantize_model_file failed for '") + argv[2] +
                                 "'");
      return 0;
    }
    if (cmd == "logits") return cmd_logits(parse(argc, argv));
    if (cmd == "bench") return cmd_bench(parse(argc, argv));
    throw std::runtime_error("unknown command '" + cmd + "'\n" + kUsage);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rwkvcpp_driver: %s\n", e.what());
    return 1;
  }
}
