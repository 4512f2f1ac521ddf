// Shared by the batch and Slurm suites: the byte-level tiny model, a standard seeded job and
// its uninterrupted reference output, and reading an output as a set of records.
#pragma once

#include <map>
#include <string>

namespace rwkvpp::test {

// rwkv.cpp's tiny RWKV-4 (660K) converted with the bytes tokenizer, once per test run.
const std::string& byte_model();

// Writes the standard job's input (40 prompts of 400 to 1195 tokens) to `path`.
void write_standard_prompts(const std::string& path);
// The flags of the standard job after `batch` (model, sampling: 4 seeded samples per prompt at
// temperature 1), without --input/--output.
std::string standard_flags();
// The records of an uninterrupted single-process run of the standard job (computed once).
const std::map<std::string, std::string>& standard_reference();
// The meta file of that run (its input is byte-identical to write_standard_prompts()).
const std::string& standard_reference_meta();

// An output's records keyed "<id JSON>#<index>" -> the line. Fails the test (REQUIRE) when a
// line is torn (the file does not end with a newline) or invalid, or a key appears twice.
std::map<std::string, std::string> read_records(const std::string& path);

}  // namespace rwkvpp::test
