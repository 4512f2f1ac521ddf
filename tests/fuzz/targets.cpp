// The list of fuzz harnesses (targets.h).
#include "fuzz/targets.h"

#include <cstdio>
#include <cstdlib>

namespace rwkvpp::fuzz {

const std::vector<Target>& targets() {
  static const std::vector<Target> t = {
      {"safetensors", "read_safetensors_bytes, normalize_hf_names, infer_config", run_safetensors,
       seeds_safetensors},
      {"pth", "read_pth_bytes (zip, pickle, tensor views), infer_config", run_pth, seeds_pth},
      {"pickle", "unpickle: the pickle VM alone, its refusals of globals", run_pickle,
       seeds_pickle},
      {"zip", "ZipReader: central directory, ZIP64, stored and deflated entries", run_zip,
       seeds_zip},
      {"rwkvcpp", "read_rwkvcpp_bytes (rwkv.cpp .bin), infer_config", run_rwkvcpp, seeds_rwkvcpp},
      {"world_vocab", "World vocab parsing, trie, encode/decode round trip", run_world_vocab,
       seeds_world_vocab},
      {"tokenizer_json", "tokenizer.json (byte-level BPE) loading, encode/decode",
       run_tokenizer_json, seeds_tokenizer_json},
      {"batch_jsonl", "batch input lines: scan_lines, parse_batch_line", run_batch_jsonl,
       seeds_batch_jsonl},
      {"journal_record", "batch output records read back: parse_journal_record", run_journal_record,
       seeds_journal_record},
      {"wire", "decode_message and every step-protocol decoder, re-encoded", run_wire, seeds_wire},
      {"model_h5", "ModelReader on a model.h5: attributes, tensors, tokenizer", run_model_h5,
       seeds_model_h5},
      {"http_api", "Beast's request parser, then ServeApi::handle: routes, OpenAI bodies, jobs",
       run_http_api, seeds_http_api},
  };
  return t;
}

const Target* find_target(std::string_view name) {
  for (const Target& t : targets())
    if (name == t.name) return &t;
  return nullptr;
}

void fuzz_check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  std::abort();
}

}  // namespace rwkvpp::fuzz
