// `rwkvpp logits` and `rwkvpp generate`: the commands that run a model, alone or under mpirun.
// generate takes a prompt as ids (prints ids) or as text (streams text, through textgen.h).
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/npy.h"
#include "coordinator/cluster.h"
#include "coordinator/commands.h"
#include "coordinator/textgen.h"
#include "shards/model_reader.h"

namespace rwkvpp {

void for_each_number(
    const std::string& s,
    const std::function<void(const std::string&, std::optional<long long>)>& on_item) {
  std::string tok;
  std::stringstream ss(s);
  while (ss >> tok) {
    std::stringstream parts(tok);
    std::string p;
    while (std::getline(parts, p, ',')) {
      if (p.empty()) continue;
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(p, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      on_item(p, used == p.size() ? std::optional<long long>(v) : std::nullopt);
    }
  }
}

std::vector<int32_t> parse_ids(const std::string& s, const std::string& what) {
  std::vector<int32_t> ids;
  for_each_number(s, [&](const std::string& p, std::optional<long long> v) {
    if (!v || *v < 0 || *v > INT32_MAX) fail("{}: '{}' is not a token id", what, p);
    ids.push_back(int32_t(*v));
  });
  return ids;
}

namespace {

struct LogitsArgs {
  ClusterOptions cluster;
  std::vector<std::string> tokens;
  std::string tokens_file, out;
};

struct GenerateArgs {
  ClusterOptions cluster;
  std::string prompt_tokens, prompt, tokenizer;
  int n = 32;
  SamplingParams sp;
  std::vector<int32_t> stop_ids;
  std::vector<std::string> stop;
  bool logprobs = false;
};

void write_stdout(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

void add_sampling_options(CLI::App* c, SamplingParams& sp, int& n) {
  c->add_option("-n,--max-tokens", n, "tokens to generate")->capture_default_str();
  c->add_option("--temperature", sp.temperature, "0 = greedy (argmax)")->capture_default_str();
  c->add_option("--top-k", sp.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str();
  c->add_option("--top-p", sp.top_p, "nucleus sampling mass")->capture_default_str();
  c->add_option("--min-p", sp.min_p, "drop tokens below min-p times the top probability")->capture_default_str();
  c->add_option("--presence-penalty", sp.presence_penalty, "subtracted once for every token seen")->capture_default_str();
  c->add_option("--frequency-penalty", sp.frequency_penalty, "subtracted per (decayed) occurrence")->capture_default_str();
  c->add_option("--repetition-penalty", sp.repetition_penalty, "divides logits of seen tokens (1 = off)")->capture_default_str();
  c->add_option("--seed", sp.seed, "random seed (same seed, same output, whatever the batch or ranks)");
}

void add_model_commands(CLI::App& app, Action& run) {
  {
    auto a = std::make_shared<LogitsArgs>();
    auto* c = app.add_subcommand("logits", "Write the logits after every input token as a NumPy .npy [T, vocab].");
    add_cluster_options(c, a->cluster);
    c->add_option("--tokens", a->tokens,
                  "token ids, comma or space separated; repeat for several sequences (run as one batch; "
                  "their rows are concatenated in order)");
    c->add_option("--tokens-file", a->tokens_file, "file of token ids (whitespace or comma separated)");
    c->add_option("--out,-o", a->out, "output .npy file")->required();
    c->callback([a, &run] {
      run = [a] {
        std::vector<std::vector<int32_t>> seqs;
        for (auto& t : a->tokens) seqs.push_back(parse_ids(t, "--tokens"));
        if (!a->tokens_file.empty()) {
          std::ifstream f(a->tokens_file);
          if (!f) fail("cannot open --tokens-file '{}'", a->tokens_file);
          std::stringstream ss;
          ss << f.rdbuf();
          seqs.push_back(parse_ids(ss.str(), a->tokens_file));
        }
        if (seqs.empty()) fail("give the input with --tokens or --tokens-file");
        for (auto& s : seqs)
          if (s.empty()) fail("an input sequence is empty");
        return run_cluster(a->cluster, [&](Engine& e) {
          const int64_t V = e.config().vocab_size;
          std::vector<std::vector<float>> out(seqs.size());
          for (size_t i = 0; i < seqs.size(); ++i) {
            Request r;
            r.prompt = seqs[i];
            r.logits_all = true;
            r.on_logits = [&out, i, V](int64_t, const float* l) { out[i].insert(out[i].end(), l, l + V); };
            e.submit(std::move(r));
          }
          e.run();
          std::vector<float> all;
          int64_t rows = 0;
          for (size_t i = 0; i < seqs.size(); ++i) {
            if (out[i].size() != seqs[i].size() * size_t(V)) fail("internal error: sequence {} got {} logit rows", i, out[i].size() / size_t(V));
            all.insert(all.end(), out[i].begin(), out[i].end());
            rows += int64_t(seqs[i].size());
          }
          write_npy_f32(a->out, all.data(), {rows, V});
          return 0;
        });
      };
    });
  }
  {
    auto a = std::make_shared<GenerateArgs>();
    auto* c = app.add_subcommand(
        "generate",
        "Generate after a prompt (greedy unless --temperature > 0). With --prompt, exactly the generated text is "
        "streamed to stdout (no newline added); with --prompt-tokens, the generated ids are printed.");
    add_cluster_options(c, a->cluster);
    auto* pt = c->add_option("--prompt-tokens", a->prompt_tokens, "prompt as token ids, comma or space separated");
    auto* pr = c->add_option("--prompt", a->prompt, "prompt as text, encoded with the model's tokenizer (or --tokenizer)");
    pt->excludes(pr);
    c->add_option("--tokenizer", a->tokenizer, "tokenizer file or 'bytes' (default: the model's embedded one)");
    add_sampling_options(c, a->sp, a->n);
    c->add_option("--stop", a->stop, "stop at this string, which is not printed (repeatable; needs a tokenizer)");
    c->add_option("--stop-id", a->stop_ids, "stop after generating this token id (repeatable)");
    c->add_flag("--logprobs", a->logprobs, "print the chosen tokens' log-probabilities to stderr at the end");
    c->callback([a, pt, pr, &run] {
      run = [a, pt, pr] {
        validate(a->sp);
        if (a->n < 0) fail("--max-tokens must not be negative (got {})", a->n);
        const bool text = pr->count() > 0;
        if (!text && pt->count() == 0) fail("give the prompt with --prompt TEXT or --prompt-tokens IDS");
        const int64_t vocab = ModelReader(a->cluster.model).config().vocab_size;
        // Every rank resolves the tokenizer and the prompt, so that they all fail alike.
        std::unique_ptr<Tokenizer> tok;
        if (text || !a->stop.empty() || !a->tokenizer.empty()) tok = tokenizer_for(a->cluster.model, a->tokenizer);
        std::vector<int32_t> prompt;
        if (text) {
          prompt = tok->encode(a->prompt);
          if (prompt.empty()) fail("--prompt is empty");
        } else {
          prompt = parse_ids(a->prompt_tokens, "--prompt-tokens");
          if (prompt.empty()) fail("--prompt-tokens is empty");
          for (int32_t id : prompt)
            if (id >= vocab) fail("--prompt-tokens: token id {} is out of range (the model's vocabulary has {} ids)", id, vocab);
        }
        TextOptions o;
        o.max_tokens = a->n;
        o.sampling = a->sp;
        o.stop = a->stop;
        o.stop_ids = a->stop_ids;
        o.logprobs = true;
        return run_cluster(a->cluster, [&](Engine& e) {
          TextResult res;
          Request r;
          if (tok) {
            r = make_text_request(*tok, prompt, o, text ? write_stdout : nullptr, [&res](TextResult t) { res = std::move(t); });
          } else {
            r.prompt = prompt;
            r.sampling = o.sampling;
            r.max_tokens = o.max_tokens;
            r.stop_ids = o.stop_ids;
            r.on_token = [&res](int32_t id, float lp) {
              res.ids.push_back(id);
              res.logprobs.push_back(lp);
              return true;
            };
          }
          if (!text) {  // print the ids as they come
            r.on_token = [inner = std::move(r.on_token), first = true](int32_t id, float lp) mutable {
              fmt::print("{}{}", first ? "" : " ", id);
              std::fflush(stdout);
              first = false;
              return inner(id, lp);
            };
          }
          e.submit(std::move(r));
          e.run();
          if (!text)
            write_stdout("\n");
          else if (isatty(STDOUT_FILENO))  // end the line on a terminal; stdout keeps the exact text
            fmt::print(stderr, "\n");
          if (a->logprobs) {
            double sum = 0;
            for (size_t i = 0; i < res.ids.size() && i < res.logprobs.size(); ++i) {
              fmt::print(stderr, "[logprob] {} {:.6f}\n", res.ids[i], res.logprobs[i]);
              sum += double(res.logprobs[i]);
            }
            fmt::print(stderr, "[logprobs] {} tokens, total {:.6f}\n", res.ids.size(), sum);
          }
          return 0;
        });
      };
    });
  }
}

}  // namespace rwkvpp
