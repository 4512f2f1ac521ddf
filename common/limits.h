// Bounds on sizes that come from outside: files (checkpoints, models, tokenizers, batch inputs)
// and messages. Every reader checks a size against these before it allocates or loops on it,
// and refuses what exceeds them with an Error naming the file and the field
// (docs/security.md lists each limit and where it applies).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace rwkvpp {

// Nesting of JSON arrays and objects in any file we parse (safetensors headers, tokenizer.json,
// batch lines, journal records, meta files). Real files nest 3 to 5 deep; deeper input would
// only make the recursive parts of a JSON library (dump, comparison) run out of stack.
inline constexpr size_t kMaxJsonDepth = 64;
// A safetensors header (the format's own reference parser takes at most 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = uint64_t(100) << 20;
// Bytes of a tensor's name in a checkpoint (official names are under 64).
inline constexpr size_t kMaxTensorName = 1024;
// Layers of a model (the largest released RWKV has 61; a layer number is parsed from names).
inline constexpr int64_t kMaxLayers = 100000;
// Token ids of a tokenizer file: the largest real vocabularies have ~256k entries.
inline constexpr int64_t kMaxVocab = int64_t(1) << 22;
// Bytes of one token of a tokenizer file (World's longest is 128, GPT-NeoX-20B's 512); also
// bounds the work of a greedy longest match to this many steps per token.
inline constexpr size_t kMaxTokenBytes = 1024;
// A tokenizer file (GPT-NeoX-20B's tokenizer.json is 2.1 MB, the World vocab 1 MB).
inline constexpr uint64_t kMaxTokenizerBytes = uint64_t(64) << 20;
// One line of a batch input (prompts of several MB are real work; longer lines are refused).
inline constexpr uint64_t kMaxBatchLine = uint64_t(64) << 20;

// The number of elements of `shape`; throws Error "`what`: shape [..] ..." when a dimension is
// negative or the product does not fit int64.
int64_t checked_numel(const std::vector<int64_t>& shape, std::string_view what);
// checked_numel(shape) * elem_bytes, also checked for overflow.
uint64_t checked_nbytes(const std::vector<int64_t>& shape, size_t elem_bytes,
                        std::string_view what);

// The deepest nesting of arrays and objects in the JSON text `s` (strings are skipped; the
// text need not be valid JSON). Runs in one pass without recursion.
size_t json_depth(std::string_view s);
// Throws Error "`what`: JSON nested N deep, over the limit of kMaxJsonDepth" when it is deeper.
void check_json_depth(std::string_view s, std::string_view what);

}  // namespace rwkvpp
