// The small RWKV-4 fixture (hf-rwkv4-small, 4 shards) converted once per test process, and the
// `rwkvpp generate` command line the UCX and cluster-join pipelines compare with one process.
#pragma once

#include <string>
#include <vector>

#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/model_format.h"

namespace rwkvpp::test {

inline const std::string& small_sharded_model() {
  struct Fixture {
    TempDir dir;
    std::string model = dir / "model";
    Fixture() {
      Checkpoint ck = read_checkpoint(fixture("hf-rwkv4/hf-rwkv4-small.safetensors"));
      WriteOptions o;
      o.shards = 4;
      write_model(ck, infer_config(ck), model, o);
    }
  };
  static Fixture f;
  return f.model;
}

// A seeded, sampled generation of 40 tokens on the small model, one CPU thread.
inline std::vector<std::string> small_generate_args() {
  return {rwkvpp_binary(), "generate", "-m", small_sharded_model(), "--prompt-tokens", "3,1,4,1,5,9,2,6",
          "-n", "40", "--temperature", "0.8", "--seed", "7", "--threads", "1"};
}

inline std::string shell_line(const std::vector<std::string>& args) {
  std::string s;
  for (auto& a : args) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace rwkvpp::test
