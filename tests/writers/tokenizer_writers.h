// Tokenizer files in the formats of their outside tools, made here: an RWKV World vocab
// (`id repr(token) length` lines) and a Hugging Face byte-level BPE tokenizer.json. For the
// tokenizer tests and the fuzz seed corpora (no vocabulary is copied into the repository).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace rwkvpp::test {

// Every byte as a bytes literal (ids 1..256), then one line per `extra` literal-and-length
// ("'ab' 2", "b'\\xe9' 1") with ids from 257.
std::string make_world_vocab(const std::vector<std::string>& extra);

// A tokenizer.json: added tokens (ids 0..), then the 256 bytes, then one token per merge (in
// merge order); merges and added tokens are given as raw bytes and written in GPT-2's
// byte-to-unicode alphabet. `nfc` adds an NFC normalizer.
std::string make_bpe_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                    const std::vector<std::string>& added, bool nfc);

}  // namespace rwkvpp::test
