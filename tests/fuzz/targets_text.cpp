// Fuzz harnesses of the text formats (coordinator/): World vocabs and tokenizer.json (loaded,
// then made to encode and decode), batch input lines (both the prompt lines and the output
// records read back on resume). Seeds are written by tests/writers and nlohmann::json.
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "common/error.h"
#include "coordinator/batch/batch_input.h"
#include "coordinator/batch/journal.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "fuzz/targets.h"
#include "writers/tokenizer_writers.h"

namespace rwkvpp::fuzz {

namespace {

// Texts every loaded tokenizer is made to encode, plus a piece of the input itself.
std::vector<std::string> probe_texts(Bytes b) {
  return {"", "hello world", "aaaaaaaaaaaaaaaaaaaaaaaa",
          "\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82",
          std::string(as_text(b.first(std::min<size_t>(b.size(), 200))))};
}

// Ids in range, and their bytes concatenated are their decoding.
void check_ids(const Tokenizer& t, const std::vector<int32_t>& ids, std::string* decoded) {
  std::string joined;
  for (int32_t id : ids) {
    fuzz_check(id >= 0 && id < t.vocab_size(), "encode gave an id out of range");
    joined += t.token_bytes(id);
  }
  *decoded = t.decode(ids);
  fuzz_check(*decoded == joined, "decode differs from the tokens' bytes");
}

}  // namespace

void run_world_vocab(Bytes b) {
  std::unique_ptr<Tokenizer> t;
  try {
    t = make_world_tokenizer(std::string(as_text(b)), "fuzz vocab");
  } catch (const Error&) {
    return;
  }
  // Every byte has a token (checked at load), so any bytes round-trip exactly.
  for (const std::string& text : probe_texts(b)) {
    std::string back;
    check_ids(*t, t->encode(text), &back);
    fuzz_check(back == text, "World: decode(encode(text)) != text");
  }
}

Seeds seeds_world_vocab() {
  return {
      {"bytes-only", test::make_world_vocab({})},
      {"escapes", test::make_world_vocab({R"('\u00e9' 2)", R"(b'\xe9\x41' 2)", R"('a\\' 2)",
                                          R"("it's" 4)", R"('\n\t' 2)", "'\xe4\xb8\x96' 3",
                                          R"('ab' 2)", R"('abc' 3)", R"('abcd' 4)", R"('\101\0' 2)",
                                          R"('\U0001F642' 4)", R"('hello' 5)", R"(' world' 6)"})}};
}

void run_tokenizer_json(Bytes b) {
  std::unique_ptr<Tokenizer> t;
  try {
    t = make_bpe20b_tokenizer(std::string(as_text(b)), "fuzz tokenizer.json");
  } catch (const Error&) {
    return;
  }
  // The file decides normalisation and prefix spaces, so only the ids and their bytes are
  // checked here; the reference round trips are tests/coordinator/test_tokenizer.cpp's.
  for (const std::string& text : probe_texts(b)) {
    std::vector<int32_t> ids;
    try {
      ids = t->encode(text);
    } catch (const Error&) {  // a regex or normalisation error on odd text is a clean refusal
      continue;
    }
    std::string back;
    check_ids(*t, ids, &back);
  }
}

Seeds seeds_tokenizer_json() {
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},   {"he", "ll"}, {"hell", "o"}, {" ", "w"},
      {"o", "r"}, {" w", "or"}, {"l", "d"},   {" wor", "ld"}};
  return {
      {"bpe-nfc-added", test::make_bpe_tokenizer_json(merges, {"<|endoftext|>", "<|pad|>"}, true)},
      {"bpe-plain", test::make_bpe_tokenizer_json(merges, {}, false)}};
}

void run_batch_jsonl(Bytes b) {
  const std::string text(as_text(b));
  std::istringstream in(text);
  int64_t rejected = 0;
  InputScan s;
  try {
    s = scan_lines(
        in, BatchDefaults{}, [&](const Reject& r) { rejected += r.line > 0; }, nullptr, 4096);
  } catch (const Error&) {
    fuzz_check(false, "scan_lines threw instead of rejecting a line");
  }
  fuzz_check(s.rejected == rejected, "rejects were not all reported");
  fuzz_check(s.bytes == text.size(), "the scan did not read every byte");
  int64_t last = 0;
  for (const LineRef& ref : s.lines) {
    fuzz_check(ref.line > last, "line numbers out of order");
    last = ref.line;
    fuzz_check(ref.offset + ref.length <= text.size(), "a line reference outside the input");
    // What the job reads again by position parses to the same item.
    BatchItem it = parse_batch_line(text.substr(ref.offset, ref.length), ref.line, BatchDefaults{},
                                    s.format);
    fuzz_check(it.key == ref.key && it.records() == ref.n, "a line reads back differently");
    fuzz_check(it.n >= 1 && it.n <= kMaxSamples, "n out of its bounds");
    fuzz_check(it.max_tokens >= 0 && it.max_tokens <= kMaxTokens, "max_tokens out of its bounds");
  }
}

Seeds seeds_batch_jsonl() {
  return {{"lines",
           "{\"id\": \"q1\", \"prompt\": \"Hello\", \"max_tokens\": 64, \"temperature\": 0.8, "
           "\"top_p\": 0.9, \"top_k\": 40, \"seed\": 7, \"n\": 4, \"stop\": [\"\\n\\n\"]}\n"
           "{\"id\": 2, \"prompt\": \"\\u00e9t\\u00e9\", \"stop\": \"x\"}\r\n"
           "\n"
           "{\"id\": \"q1\", \"prompt\": \"again\"}\n"
           "not json\n"
           "{\"id\": \"big\", \"prompt\": \"p\", \"temperature\": 1e999}\n"
           "{\"id\": \"last\", \"prompt\": \"no newline\"}"},
          {"openai",
           "{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
           "\"body\": {\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
           "\"n\": 2}}\n"
           "{\"custom_id\": \"b\", \"method\": \"POST\", \"url\": \"/v1/completions\", "
           "\"body\": {\"model\": \"m\", \"prompt\": [[1, 2], [3]], \"top_p\": 2}}\n"
           "{\"custom_id\": \"a\", \"url\": \"/v1/embeddings\"}\n"}};
}

void run_journal_record(Bytes b) {
  const std::string text(as_text(b));
  size_t from = 0;
  while (from <= text.size()) {
    size_t nl = text.find('\n', from);
    if (nl == std::string::npos) nl = text.size();
    JournalRecord r;
    if (parse_journal_record(text.substr(from, nl - from), &r).empty()) {
      fuzz_check(r.index >= 0 && r.index < kMaxSamples, "a record's index out of range");
      auto id = nlohmann::json::parse(r.key);  // the key is the id's JSON
      fuzz_check(id.is_string() || id.is_number_integer(),
                 "a record's id is not a string or an int");
    }
    from = nl + 1;
  }
}

Seeds seeds_journal_record() {
  nlohmann::ordered_json a = {{"id", "q1"},
                              {"index", 0},
                              {"text", "Hello, world"},
                              {"finish_reason", "length"},
                              {"prompt_tokens", 3},
                              {"completion_tokens", 4},
                              {"logprobs", {-0.5, -1.25, -0.125, -2}},
                              {"token_ids", {72, 101, 108, 108}}};
  nlohmann::ordered_json b = {{"id", 17},
                              {"index", 3},
                              {"text", "\xef\xbf\xbd"},
                              {"finish_reason", "stop"},
                              {"prompt_tokens", 1},
                              {"completion_tokens", 1}};
  return {{"records", a.dump() + "\n" + b.dump() + "\n" + "{\"id\": \"torn\", \"ind"}};
}

}  // namespace rwkvpp::fuzz
