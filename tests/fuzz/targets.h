// The fuzz harnesses (issue 21, docs/security.md): one per parser entry point that takes bytes
// from outside. Each target runs its parser on in-memory bytes and checks what must hold for
// any input; the same function serves three drivers:
//   - libFuzzer (fuzz_main.cpp; -DRWKVPP_FUZZ=ON, clang, ASan + UBSan): fuzz_<name>;
//   - the Catch2 replay of every corpus and regression input (test_fuzz_replay.cpp, in every
//     build, and under ASan + UBSan in the sanitizer build of scripts/test.sh);
//   - the seed tool (seeds.cpp, rwkvpp_fuzz_seeds), which writes corpus/<name>/ from the
//     project's own writers.
//
// Contract of run(): it returns normally when the parser accepts the input or refuses it with
// rwkvpp::Error (what a user may cause); any other exception escapes (a defect: readers
// promise Error), and a broken invariant aborts through fuzz_check(). Either is a finding.
//
// Adding a harness (the cluster handshake, say): write its
// run() and seeds() in a targets_*.cpp, list it in targets.cpp, add its name to
// RWKVPP_FUZZ_TARGETS in tests/fuzz/CMakeLists.txt, and run rwkvpp_fuzz_seeds to make its corpus.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rwkvpp::fuzz {

using Bytes = std::span<const uint8_t>;
using Seeds = std::map<std::string, std::string>;  // file name -> contents

struct Target {
  const char* name;  // the harness (fuzz_<name>) and its folders corpus/<name>, regressions/<name>
  const char* what;  // the entry points it drives
  void (*run)(Bytes);
  Seeds (*seeds)();
};

const std::vector<Target>& targets();
const Target* find_target(std::string_view name);  // nullptr when unknown

// Aborts with `what` when `ok` is false: a finding, whatever the build.
void fuzz_check(bool ok, const char* what);

inline std::string_view as_text(Bytes b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

// The .pth the pth harness reads for an input (its inputs are records, zipped with valid CRCs).
std::string pth_archive_of(Bytes b);

// The harnesses, by file.
void run_safetensors(Bytes);
void run_pth(Bytes);
void run_pickle(Bytes);
void run_zip(Bytes);
void run_rwkvcpp(Bytes);
void run_world_vocab(Bytes);
void run_tokenizer_json(Bytes);
void run_batch_jsonl(Bytes);
void run_journal_record(Bytes);
void run_wire(Bytes);
void run_model_h5(Bytes);
void run_http_api(Bytes);
Seeds seeds_safetensors();
Seeds seeds_pth();
Seeds seeds_pickle();
Seeds seeds_zip();
Seeds seeds_rwkvcpp();
Seeds seeds_world_vocab();
Seeds seeds_tokenizer_json();
Seeds seeds_batch_jsonl();
Seeds seeds_journal_record();
Seeds seeds_wire();
Seeds seeds_model_h5();
Seeds seeds_http_api();

}  // namespace rwkvpp::fuzz
