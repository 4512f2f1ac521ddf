// `rwkvpp batch`: the command line of the resumable dataset-generation job (batch_job.h).
#include <memory>

#include "coordinator/batch/batch_job.h"
#include "coordinator/cluster.h"
#include "coordinator/commands.h"

namespace rwkvpp {

void add_batch_command(CLI::App& app, Action& run) {
  auto a = std::make_shared<BatchOptions>();
  auto* c = app.add_subcommand("batch",
                               "Generate samples for every prompt of a JSON Lines file (rwkvpp's "
                               "records or the OpenAI Batch format), resumably: "
                               "rerun the same command after a kill, a crash\n"
                               "or SIGTERM (exit code 75) and it completes the job without "
                               "repeating a record. Input lines:\n"
                               "  {\"id\": \"q1\", \"prompt\": \"...\"} with optional max_tokens, "
                               "temperature, top_p, top_k, seed, n, stop.\n"
                               "Output lines: {\"id\", \"index\", \"text\", \"finish_reason\", "
                               "\"prompt_tokens\", \"completion_tokens\"[, \"logprobs\"][, \"token_ids\"]}.\n"
                               "OpenAI Batch files ({\"custom_id\", \"method\", \"url\", "
                               "\"body\"} lines) give OpenAI Batch output lines.\n"
                               "Bad input lines go to the rejects file with their line number and "
                               "the reason. See docs/batch.md.");
  add_cluster_options(c, a->cluster);
  c->add_option("--input,-i", a->input, "prompts, one JSON object per line")->required();
  c->add_option("--output,-o", a->output,
                "records, one JSON object per line (appended to when resuming)")
      ->required();
  c->add_option("--n,--samples", a->defaults.n, "samples per prompt (a line's \"n\" overrides)")
      ->capture_default_str();
  add_sampling_options(c, a->defaults.sampling, a->defaults.max_tokens);
  c->add_option("--stop", a->defaults.stop,
                "stop at this string (repeatable; a line's \"stop\" replaces these)");
  c->add_option("--stop-id", a->stop_ids, "stop after generating this token id (repeatable)");
  c->add_option("--prefix-file", a->prefix_file,
                "text put before every prompt, read once for the whole job (tokenized on its own: "
                "see docs/batch.md)");
  auto no_auto_prefix = std::make_shared<bool>(false);
  c->add_flag("--no-auto-prefix", *no_auto_prefix,
              "do not share prompt prefixes automatically (results are the same; see "
              "docs/batch.md)");
  c->add_option("--auto-prefix-min", a->auto_prefix_min,
                "leading tokens prompts must share to read them once")
      ->capture_default_str();
  c->add_option("--auto-prefix-states", a->auto_prefix_states,
                "state slots set aside on every stage for shared prefixes")
      ->capture_default_str();
  c->add_option("--rejects", a->rejects,
                "where bad input lines go (default: OUTPUT.rejects.jsonl)");
  c->add_flag("--logprobs", a->logprobs, "add each sample's per-token log-probabilities");
  c->add_flag("--token-ids", a->token_ids,
              "add each sample's generated token ids (exactly what the model produced, before any "
              "text decoding)");
  c->add_flag("--ordered", a->ordered,
              "once the job is complete, rewrite the output in input order (records are "
              "appended as they finish; the output stays the journal)");
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer file or 'bytes' (default: the model's embedded one)");
  c->add_option("--fsync-interval", a->fsync_interval_s,
                "sync the output at most every this many seconds (bounds what a machine crash "
                "loses; 0 = every record)")
      ->capture_default_str();
  c->add_option("--progress", a->progress,
                "auto (a bar on a terminal, else log lines), bar, log or none")
      ->capture_default_str();
  c->add_option("--log-interval", a->log_interval_s,
                "seconds between progress lines when not on a terminal")
      ->capture_default_str();
  c->callback([a, no_auto_prefix, &run] {
    a->auto_prefix = !*no_auto_prefix;
    run = [a] {
      a->cluster.progress = parse_progress_mode(a->progress);  // the stages' loading too
      return run_batch(*a);
    };
  });
}

}  // namespace rwkvpp
