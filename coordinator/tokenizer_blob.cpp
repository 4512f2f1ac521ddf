// Reading a tokenizer file for embedding into model.h5 (`rwkvpp convert --tokenizer`).
#include "coordinator/commands.h"
#include "coordinator/tokenizer/tokenizer.h"
#include "shards/file_bytes.h"

namespace rwkvpp {

TokenizerBlob load_tokenizer_blob(const std::string& path_or_bytes) {
  TokenizerBlob b;
  b.kind = detect_tokenizer_kind(path_or_bytes);
  if (b.kind != "bytes") b.data = read_whole_file(path_or_bytes);
  tokenizer_from_blob(b.kind, b.data);  // parses it once, so a broken vocabulary fails here
  return b;
}

}  // namespace rwkvpp
