// Tokenizer speed benchmark: encode and decode throughput on one thread over English text.
// The generated text draws words with Zipf-like frequencies (word i of the list with weight
// 1/(i+1)), as real English does, so that the 20B word cache sees a realistic hit rate.
#include "coordinator/tokenizer/tokenizer_bench.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace rwkvpp {
namespace {

// Common English words, roughly by frequency, then some longer and rarer ones.
const char* const kWords[] = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
    "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its",
    "may", "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "could",
    "new", "about", "two", "first", "then", "also", "any", "like", "my", "such", "people", "over",
    "years", "most", "made", "after", "between", "many", "through", "well", "before", "should",
    "where", "because", "each", "those", "while", "world", "state", "government", "system",
    "number", "however", "during", "without", "example", "important", "development", "general",
    "information", "different", "following", "question", "country", "against", "political",
    "community", "language", "children", "national", "possible", "problem", "research",
    "experience", "available", "particular", "understanding", "relationship", "environment",
    "significant", "university", "technology", "individual", "performance", "architecture",
    "distributed", "inference", "recurrent", "network", "model", "tokenizer", "pipeline",
    "coordinator", "throughput", "latency", "memory", "benchmark", "sequence", "parameter",
    "Monday", "London", "America", "Europe", "English", "Chapter", "Professor", "Mr.", "Dr.",
    "don't", "it's", "can't", "I'm", "we've", "they'll", "she'd", "1984", "2024", "42", "100",
    "3.5", "twenty-one", "well-known", "e-mail", "(see", "below)", "\"quoted\"", "naïve", "café",
};
constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open benchmark text file {}", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double mbps(size_t bytes, double s) { return s > 0 ? double(bytes) / 1e6 / s : 0.0; }

}  // namespace

std::string generate_english_text(size_t bytes) {
  std::mt19937_64 rng(20240424);
  std::vector<double> weights(kNumWords);
  for (size_t i = 0; i < kNumWords; ++i) weights[i] = 1.0 / double(i + 1);
  std::discrete_distribution<size_t> word(weights.begin(), weights.end());
  std::uniform_int_distribution<int> sentence_len(4, 22), paragraph_len(3, 8), roll(0, 99);
  std::string text;
  text.reserve(bytes + 256);
  while (text.size() < bytes) {
    int sentences = paragraph_len(rng);
    for (int s = 0; s < sentences; ++s) {
      int n = sentence_len(rng);
      for (int w = 0; w < n; ++w) {
        std::string wd = kWords[word(rng)];
        if (w == 0 && wd[0] >= 'a' && wd[0] <= 'z') wd[0] = char(wd[0] - 'a' + 'A');
        text += wd;
        if (w + 1 < n) text += roll(rng) < 8 ? ", " : " ";
      }
      int end = roll(rng);
      text += end < 80 ? ". " : end < 90 ? "? " : end < 95 ? "! " : "; ";
    }
    text.back() = '\n';
    text += '\n';
  }
  return text;
}

void run_tokenizer_bench(const std::string& tokenizer_path, const std::string& text_path_or_empty,
                         std::ostream& out) {
  std::string text, source;
  if (text_path_or_empty.empty()) {
    text = generate_english_text(4u << 20);
    source = "generated: English-like text from a built-in word list (Zipf frequencies)";
  } else {
    text = read_text_file(text_path_or_empty);
    source = text_path_or_empty;
  }

  auto t0 = std::chrono::steady_clock::now();
  auto tok = load_tokenizer(tokenizer_path);
  double load_s = seconds_since(t0);

  t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok->encode(text);
  double encode_cold = seconds_since(t0);
  double encode_warm = 1e30;
  for (int r = 0; r < 2; ++r) {
    t0 = std::chrono::steady_clock::now();
    auto again = tok->encode(text);
    encode_warm = std::min(encode_warm, seconds_since(t0));
    if (again != ids) fail("bench-tokenizer: two encodes of the same text differ");
  }
  double decode_s = 1e30;
  std::string back;
  for (int r = 0; r < 3; ++r) {
    t0 = std::chrono::steady_clock::now();
    back = tok->decode(ids);
    decode_s = std::min(decode_s, seconds_since(t0));
  }

  nlohmann::ordered_json j;
  j["kind"] = tok->kind();
  j["bytes"] = text.size();
  j["tokens"] = ids.size();
  j["text"] = source;
  j["load_s"] = load_s;
  j["encode_MBps"] = mbps(text.size(), encode_cold);
  j["encode_warm_MBps"] = mbps(text.size(), encode_warm);
  j["decode_MBps"] = mbps(text.size(), decode_s);
  j["roundtrip"] = back == text;
  out << j.dump() << "\n";
}

}  // namespace rwkvpp
