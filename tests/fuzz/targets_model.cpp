// Fuzz harness of model.h5 (shards/model_reader.h): the attributes, the shard list, the
// top-level tensors and the embedded tokenizer, through libhdf5 (the system library, not
// instrumented) and rwkvpp's checks on top of it. Seeds are written by shards' own
// writer (write_model) from a tiny synthetic RWKV-4.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "fuzz/targets.h"
#include "shards/model_format.h"
#include "shards/model_reader.h"
#include "shards/synthetic.h"
#include "writers/tokenizer_writers.h"

namespace rwkvpp::fuzz {

namespace {

// The model directory of this process: the input is written there as model.h5 and opened by
// path, as rwkvpp opens models. (HDF5's in-memory "core" driver reads differently: it crashed
// on inputs that the file driver refuses, so it would fuzz something rwkvpp never runs.)
const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path shm = "/dev/shm";
    auto d = (std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path()) /
             ("rwkvpp-fuzz-model-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

}  // namespace

void run_model_h5(Bytes b) {
  {
    std::ofstream f(model_dir() / "model.h5", std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    fuzz_check(bool(f), "cannot write the fuzz model file");
  }
  try {
    ModelReader r(model_dir().string());
    for (const char* name : {"emb.weight", "ln_out.weight", "ln_out.bias", "head.weight"}) {
      try {
        HostTensor t = r.read_tensor(name);
        fuzz_check(t.data.size() == uint64_t(t.numel()) * dtype_size(t.dtype),
                   "a dataset's bytes do not match its shape");
      } catch (const Error&) {
      }
    }
    r.read_tokenizer();
  } catch (const Error&) {
  }
}

Seeds seeds_model_h5() {
  ModelConfig c;
  c.version = RwkvVersion::V4;
  c.n_layer = 1;
  c.n_embd = 4;
  c.ffn_dim = 8;
  c.vocab_size = 8;
  c.dtype = DType::F32;
  const Checkpoint ck = synthetic_checkpoint(c, 3);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("rwkvpp-seeds-" + std::to_string(getpid()));
  Seeds seeds;
  for (bool tokenizer : {false, true}) {
    std::filesystem::remove_all(dir);
    WriteOptions o;
    if (tokenizer) o.tokenizer = {"world", test::make_world_vocab({"'ab' 2"})};
    write_model(ck, infer_config(ck), dir.string(), o);
    std::ifstream f(dir / "model.h5", std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    seeds[tokenizer ? "tiny-world" : "tiny"] = ss.str();
  }
  std::filesystem::remove_all(dir);
  return seeds;
}

}  // namespace rwkvpp::fuzz
