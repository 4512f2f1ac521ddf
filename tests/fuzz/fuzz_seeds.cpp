// rwkvpp_fuzz_seeds DIR [TARGET...]: writes the seed corpus of every harness (or of those
// named) into DIR/<target>/, from the project's own writers (tests/writers, the protocol's
// encoders, shards/synthetic.h). tests/fuzz/corpus is its output, checked in; the replay test
// checks that it still is (tests/fuzz/test_fuzz_replay.cpp).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "fuzz/targets.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [TARGET...]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  int written = 0;
  for (const rwkvpp::fuzz::Target& t : rwkvpp::fuzz::targets()) {
    bool wanted = argc == 2;
    for (int i = 2; i < argc; ++i) wanted |= std::string(argv[i]) == t.name;
    if (!wanted) continue;
    std::filesystem::create_directories(dir / t.name);
    for (auto& [name, bytes] : t.seeds()) {
      std::ofstream f(dir / t.name / ("seed-" + name), std::ios::binary | std::ios::trunc);
      f.write(bytes.data(), std::streamsize(bytes.size()));
      if (!f) {
        std::fprintf(stderr, "cannot write %s\n", (dir / t.name / name).c_str());
        return 1;
      }
      ++written;
    }
  }
  std::printf("%d seed files written under %s\n", written, dir.c_str());
  return 0;
}
