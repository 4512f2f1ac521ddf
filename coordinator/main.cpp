// rwkvpp: entry point. Parses the command line and runs one subcommand; every user-facing
// error ends here as one line on stderr and a non-zero exit code.
#include <fmt/format.h>

#include "common/env_options.h"
#include "common/error.h"
#include "coordinator/cluster_join.h"
#include "coordinator/commands.h"
#include "net/wire.h"
#include "shards/model_format.h"

int main(int argc, char** argv) {
  CLI::App app{
      "rwkvpp: run RWKV language models as a pipeline across GPUs and machines.\n"
      "Models are converted once to sharded HDF5 (`rwkvpp convert`); every command that runs a\n"
      "model works alone or under `mpirun -np K` (K pipeline stages, rank 0 coordinates)."};
  app.require_subcommand(1, 1);
  app.set_version_flag("--version", fmt::format("rwkvpp 0.1 (model format {}, protocol {})",
                                                rwkvpp::kFormatVersion, rwkvpp::kProtocolVersion));
  rwkvpp::Action run;
  rwkvpp::add_convert_command(app, run);
  rwkvpp::add_inspect_command(app, run);
  rwkvpp::add_synth_command(app, run);
  rwkvpp::add_model_commands(app, run);
  rwkvpp::add_bench_command(app, run);
  rwkvpp::add_tokenizer_bench_command(app, run);
  rwkvpp::add_text_commands(app, run);
  rwkvpp::add_batch_command(app, run);
  rwkvpp::add_serve_command(app, run);
  rwkvpp::add_worker_command(app, run);
  rwkvpp::add_keygen_command(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    // The RWKVPP_* switches, parsed before any command runs: a malformed one ends here, named,
    // instead of deep inside a stage (docs/environment.md).
    rwkvpp::env_options();
    return run ? run() : 0;
  } catch (const rwkvpp::InputError& e) {  // what the command was given: rerunning fails the same way
    fmt::print(stderr, "rwkvpp: error: {}\n", e.what());
    return rwkvpp::kExitBadInput;
  } catch (const std::exception& e) {
    fmt::print(stderr, "rwkvpp: error: {}\n", e.what());
    return 1;
  }
}
