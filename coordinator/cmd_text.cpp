// `rwkvpp tokenize`, `rwkvpp detokenize` (text <-> ids through a model's tokenizer, no pipeline)
// and `rwkvpp chat` (an interactive User:/Assistant: loop whose state stays resident between
// turns; alone or under mpirun, where only rank 0 reads stdin).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "coordinator/cluster.h"
#include "coordinator/commands.h"
#include "coordinator/textgen.h"

namespace rwkvpp {

namespace {

struct TokenizeArgs {
  std::string model, tokenizer, text, ids;
};

struct ChatArgs {
  ClusterOptions cluster;
  std::string tokenizer;
  int n = 256;
  SamplingParams sp;
  std::vector<std::string> stop;
};

void add_tokenizer_source(CLI::App* c, TokenizeArgs& a) {
  c->add_option("--model,-m", a.model, "converted model whose embedded tokenizer to use");
  c->add_option("--tokenizer", a.tokenizer,
                "tokenizer file (World vocab .txt, 20B tokenizer.json) or 'bytes'");
}

void write_stdout(std::string_view s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

void add_text_commands(CLI::App& app, Action& run) {
  {
    auto a = std::make_shared<TokenizeArgs>();
    auto* c = app.add_subcommand(
        "tokenize",
        "Print the token ids of a text (space separated), through a model's tokenizer.");
    add_tokenizer_source(c, *a);
    c->add_option("--text", a->text, "the text to encode")->required();
    c->callback([a, &run] {
      run = [a] {
        auto tok = tokenizer_for(a->model, a->tokenizer);
        auto ids = tok->encode(a->text);
        fmt::print("{}\n", fmt::join(ids, " "));
        return 0;
      };
    });
  }
  {
    auto a = std::make_shared<TokenizeArgs>();
    auto* c =
        app.add_subcommand("detokenize", "Print the text of token ids exactly (no newline added).");
    add_tokenizer_source(c, *a);
    c->add_option("--ids", a->ids, "token ids, space or comma separated")->required();
    c->callback([a, &run] {
      run = [a] {
        auto tok = tokenizer_for(a->model, a->tokenizer);
        auto ids = parse_ids(a->ids, "--ids");
        for (int32_t id : ids)
          if (id >= tok->vocab_size())
            fail("--ids: token id {} is out of range for the {} tokenizer (ids 0..{})", id,
                 tok->kind(), tok->vocab_size() - 1);
        write_stdout(tok->decode(ids));
        return 0;
      };
    });
  }
  {
    auto a = std::make_shared<ChatArgs>();
    auto* c = app.add_subcommand("chat",
                                 "Chat on stdin/stdout in RWKV's format (\"User: "
                                 "...\\n\\nAssistant: ...\"). The conversation's state stays in "
                                 "the pipeline between turns, so a turn reads only its own words. "
                                 "EOF or a line /exit ends it.");
    add_cluster_options(c, a->cluster);
    c->add_option("--tokenizer", a->tokenizer,
                  "tokenizer file or 'bytes' (default: the model's embedded one)");
    add_sampling_options(c, a->sp, a->n);
    c->add_option("--stop", a->stop,
                  "another string that ends an answer (repeatable; \\n\\n and \\nUser: always do)");
    c->callback([a, &run] {
      run = [a] {
        validate(a->sp);
        if (a->n < 1) fail("--max-tokens must be at least 1 for chat (got {})", a->n);
        auto tok = tokenizer_for(a->cluster.model, a->tokenizer);
        TextOptions o;
        o.max_tokens = a->n;
        o.sampling = a->sp;
        o.stop = a->stop;
        return run_cluster(a->cluster, [&](Engine& e) {
          ChatSession chat(e, *tok, o);
          const bool tty = isatty(STDIN_FILENO) != 0;
          std::string line;
          for (int turn = 1;; ++turn) {
            if (tty) write_stdout("User: ");
            if (!std::getline(std::cin, line)) break;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line == "/exit") break;
            if (line.find_first_not_of(" \t") == std::string::npos) {
              --turn;
              continue;
            }
            write_stdout("Assistant:");
            TextResult r = chat.turn(line, write_stdout);
            write_stdout("\n");
            if (a->cluster.stats)
              fmt::print(stderr,
                         "[chat] turn {}: {} prompt tokens, {} generated ({}), {} tokens fed\n",
                         turn, r.prompt_tokens, r.completion_tokens, finish_name(r.finish),
                         chat.last_turn_tokens());
          }
          return 0;
        });
      };
    });
  }
}

}  // namespace rwkvpp
