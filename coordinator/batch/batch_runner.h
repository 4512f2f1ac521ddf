// The scheduler of a batch job on the engine (batch_job.h): keeps the engine fed with input lines
// until the input is exhausted or a signal stops the job, and writes each finished record to the
// journal. An input line is a Line; each of its prompts a Group, whose tokens but the last are
// read once into a kept state that every choice of the prompt continues from its last token
// (n samples read the prompt once). A --prefix-file is read once for the whole job, and every
// group starts from it. With automatic prefix sharing (prefix_share.h) lines are read ahead
// (kReadAhead), and a group starts from the deepest shared state on its prompt's path instead,
// reading only the rest of its prompt.
//
// Records: the rwkvpp format writes one record per sample as it finishes; the OpenAI Batch
// format one line per input line, once all its choices are back (openai_batch.h). Either way a
// record depends only on the model, its prompt, its sampling and its seed, never on what ran
// beside it, so a resumed job equals an uninterrupted one.
#pragma once

#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <vector>

#include "coordinator/batch/batch_job.h"
#include "coordinator/batch/journal.h"
#include "coordinator/batch/openai_batch.h"
#include "coordinator/batch/prefix_share.h"
#include "coordinator/batch/progress.h"

namespace rwkvpp {

class BatchRunner {
 public:
  // `shared_ids`: the --prefix-file's tokens (may be empty). Everything referenced must outlive
  // the runner.
  BatchRunner(Engine& e, const Tokenizer& tok, const BatchOptions& o, const InputScan& scan,
              Journal& j, Progress& p, std::vector<int32_t> shared_ids, OpenAIOutput openai);
  ~BatchRunner();
  BatchRunner(const BatchRunner&) = delete;
  BatchRunner& operator=(const BatchRunner&) = delete;

  // Runs until the input is exhausted or the engine is asked to stop; rethrows the first error
  // a callback caught.
  void run();
  uint64_t abandoned() const { return abandoned_; }  // unfinished choices given up (stopping)
  // Automatic prefix sharing: prompt tokens not fed, net of what the shared states read; and
  // the shared states made (0 when it is off).
  uint64_t tokens_saved() const { return auto_ ? auto_->tokens_saved() : 0; }
  uint64_t shared_states() const { return auto_ ? auto_->states_made() : 0; }

  // Input lines read ahead (tokenized, their prompts in view of the prefix sharing) beyond those
  // started, when sharing is on.
  static constexpr size_t kReadAhead = 256;

 private:
  struct Line;
  struct Group;
  void release(int prefix);
  void note_error(std::exception_ptr ex);
  bool stopping() const { return e_.stop_requested() || error_; }
  void refill();
  std::unique_ptr<Line> read_line(const LineRef& ref);
  void start_line(std::unique_ptr<Line> owned);
  void start_group(Group& g);
  void prefix_done(Group& g, Finish why);
  void start_samples(Group& g);
  void sample_done(Group& g, int choice, TextResult res);
  void write_record(Line& l, int choice, const TextResult& res);
  void line_done(Line& l);

  Engine& e_;
  const Tokenizer& tok_;
  const BatchOptions& o_;
  const InputScan& scan_;
  InputReader reader_;
  Journal& j_;
  Progress& p_;
  std::vector<int32_t> shared_ids_;
  OpenAIOutput openai_;
  int shared_ = -1;  // the --prefix-file's state, or -1
  std::unique_ptr<AutoPrefix> auto_;  // automatic prefix sharing, or null (outlives the lines)
  int budget_ = 1;   // state slots the job keeps busy (prompt states + samples)
  int live_ = 0;
  size_t next_ = 0;                                 // next line of the scan to start
  std::map<int64_t, std::unique_ptr<Line>> lines_;  // started, by input line
  std::deque<std::unique_ptr<Line>> ahead_;         // read, not started yet
  std::vector<int> to_release_;
  uint64_t abandoned_ = 0;
  std::exception_ptr error_;
};

}  // namespace rwkvpp
