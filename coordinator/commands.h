// The subcommands of the rwkvpp executable. Each registers itself on the CLI11 app and sets
// `run` to the action that main() executes after parsing (so errors are reported in one place).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>

namespace rwkvpp {

using Action = std::function<int()>;

void add_convert_command(CLI::App& app, Action& run);
void add_inspect_command(CLI::App& app, Action& run);
void add_synth_command(CLI::App& app, Action& run);
void add_model_commands(CLI::App& app, Action& run);  // logits, generate
void add_bench_command(CLI::App& app, Action& run);
void add_tokenizer_bench_command(CLI::App& app, Action& run);
void add_text_commands(CLI::App& app, Action& run);   // tokenize, detokenize, chat
void add_batch_command(CLI::App& app, Action& run);  // batch (coordinator/batch/)
void add_serve_command(CLI::App& app, Action& run);  // serve (coordinator/serve/)

}  // namespace rwkvpp

#include <cstdint>
#include <string>
#include <vector>

#include "common/sampling_params.h"
#include "shards/model_format.h"

namespace rwkvpp {
// Parses token ids separated by commas and/or whitespace; `what` names the source in errors.
std::vector<int32_t> parse_ids(const std::string& s, const std::string& what);
// The items of a list of whole numbers separated by commas or white space ("1,32 256"), in
// order: on_item(item, value), value empty where the item is not a whole number that fits.
void for_each_number(
    const std::string& s,
    const std::function<void(const std::string&, std::optional<long long>)>& on_item);
// The sampling flags shared by every command that samples.
void add_sampling_options(CLI::App* c, SamplingParams& sp, int& max_tokens);
// Reads a tokenizer file (or the word "bytes") for embedding into a converted model.
TokenizerBlob load_tokenizer_blob(const std::string& path_or_bytes);
}  // namespace rwkvpp
