// Tokenizer speed benchmark behind `rwkvpp bench-tokenizer` (a measurement, not a test).
#pragma once

#include <ostream>
#include <string>

namespace rwkvpp {

// Loads the tokenizer (a file path or "bytes"), reads English text from `text_path_or_empty`
// (or, when empty, generates about 4 MB of English-like text from a built-in word list, and
// says so under "text"), then times encode and decode on one thread and prints one JSON object:
//   {"kind", "bytes", "tokens", "text", "load_s",
//    "encode_MBps"       first encode on the freshly loaded tokenizer (cold 20B word cache),
//    "encode_warm_MBps"  best of two more encodes,
//    "decode_MBps"       best of three decodes (MB of text produced per second),
//    "roundtrip"         decode(encode(text)) == text}
// MB = 10^6 bytes of text. Throws Error naming the file when a file cannot be read.
void run_tokenizer_bench(const std::string& tokenizer_path, const std::string& text_path_or_empty,
                         std::ostream& out);

// The built-in English-like text: deterministic, about `bytes` long.
std::string generate_english_text(size_t bytes);

}  // namespace rwkvpp
