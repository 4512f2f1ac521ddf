// Tokenizers: text bytes <-> token ids for the three vocabularies RWKV models use.
//   "world": the RWKV World vocabulary (rwkv_vocab_v20230424.txt), greedy longest match over
//            bytes through a trie.
//   "20b":   the GPT-NeoX-20B byte-level BPE tokenizer (a Hugging Face tokenizer.json), used by
//            RWKV-4 Pile and Raven models.
//   "bytes": ids 0..255 are the bytes themselves (the rwkv.cpp tiny models).
//
// Contract shared by every kind:
// - encode() takes any bytes (UTF-8 expected; invalid bytes are still encoded, never dropped)
//   and decode(encode(text)) == text, byte for byte. One exception: "20b" has no token for
//   the bytes that never occur in UTF-8 (C0, C1, F5..FF) and encodes each of them as U+FFFD.
// - decode() and token_bytes() return raw bytes, which may end in the middle of a UTF-8
//   character when the ids do (use Utf8Stream to print a stream of tokens).
// - A Tokenizer is immutable after construction; every method may be called from several
//   threads at once (the 20B tokenizer's word cache is internally locked).
// - Errors a user can cause (an unreadable or corrupt file, an id out of range) throw
//   rwkvpp::Error with a message naming the file or the id.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rwkvpp {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;    // "world", "20b" or "bytes"
  virtual int64_t vocab_size() const = 0;  // one past the largest id
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Concatenated bytes of the ids; throws Error naming the id when one is out of range.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // Raw bytes of one token (empty for a marker without bytes, e.g. World's id 0).
  virtual std::string token_bytes(int32_t id) const = 0;
};

// The kind of a tokenizer file, from its content: "world" for a World vocab txt, "20b" for a
// Hugging Face tokenizer.json with a ByteLevel BPE model; the word "bytes" gives "bytes".
// Throws Error naming the file when it cannot be read or is of no known kind.
std::string detect_tokenizer_kind(const std::string& path_or_bytes);

// Loads a tokenizer file (or "bytes"); throws Error naming the file for unknown/corrupt files.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path_or_bytes);

// The same from the bytes of a tokenizer file already in memory (kind detected from them);
// `source` names them in errors. At most kMaxTokenizerBytes (common/limits.h).
std::unique_ptr<Tokenizer> tokenizer_from_file_bytes(const std::string& data,
                                                     const std::string& source);

// Builds a tokenizer of `kind` ("world", "20b", "bytes") from the bytes of its file (as stored
// inside a model file); `data` is empty for "bytes".
std::unique_ptr<Tokenizer> tokenizer_from_blob(const std::string& kind, const std::string& data);

// Per-kind constructors. `source` names where `data` came from (a path, or "model blob") and
// appears in every error message about the data.
std::unique_ptr<Tokenizer> make_world_tokenizer(const std::string& data, const std::string& source);
std::unique_ptr<Tokenizer> make_bpe20b_tokenizer(const std::string& data, const std::string& source);
std::unique_ptr<Tokenizer> make_bytes_tokenizer();

}  // namespace rwkvpp
