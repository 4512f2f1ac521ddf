// The output of a batch job is its own journal: one JSON record per line, each appended with a
// single write(2) of the complete line, so that after SIGKILL at any moment the file holds
// complete records plus at most one torn last line. On restart the journal reads the file,
// drops (truncates) a torn or unparsable last line, and reports which (id, index) pairs are
// done; the job skips those.
//
// Durability policy: fdatasync at most every `fsync_interval` seconds (and when the job ends or
// stops). A killed process never loses a completed write() (the data is in the kernel's page
// cache), so syncing only bounds what a machine crash or power loss can take: the records of
// the last interval, which the next run simply redoes. Syncing every record would cost a disk
// flush per line for no gain in correctness.
//
// A sidecar OUTPUT.meta.json records what the output was made from (the input's hash, the
// model's fingerprint, the tokenizer, the prefix, the sampling defaults); resuming with
// anything else is refused with the reason. The output file is locked (flock) while a job
// writes it, so that two jobs never append to one file.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string_view>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

namespace rwkvpp {

// OUTPUT.meta.json
std::string meta_path(const std::string& output);

// Why a job described by `now` must not continue an output described by `old` ("" when it
// may). Both are meta objects as the batch job builds them (fields "input", "model", ...).
std::string meta_mismatch(const nlohmann::ordered_json& old, const nlohmann::ordered_json& now);

// One line of an output read back: the id's JSON text and the sample index of a record. An
// OpenAI Batch output line is its custom_id's record 0 (one line per input line).
struct JournalRecord {
  std::string key;
  int index = -1;
};
// Parses `line` into *r; returns "" for a record, else why it is not one (invalid JSON, no id
// or index, an index outside [0, kMaxSamples), a custom_id that is not a string). Never throws.
std::string parse_journal_record(const std::string& line, JournalRecord* r);

class Journal {
 public:
  // Opens (creating) `output` and checks or writes its meta file. Throws Error naming the file
  // and the reason when the output belongs to another job, another input or model, is locked
  // by a running job, or has a damaged line before its last one.
  Journal(const std::string& output, const nlohmann::ordered_json& meta, double fsync_interval_s);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Whether the record (key, index) is already in the output; key = the id's JSON text.
  bool has(const std::string& key, int index) const {
    return done_.count(done_key(key, index)) != 0;
  }
  size_t records_found() const { return done_.size(); }  // complete records found at open
  // Calls f(key, index) for every record found at open.
  template <typename F>
  void for_each_found(F&& f) const {
    for (const std::string& k : done_) {
      const size_t nl = k.rfind('\n');
      f(std::string_view(k).substr(0, nl), std::stoi(k.substr(nl + 1)));
    }
  }
  uint64_t torn_bytes() const { return torn_bytes_; }    // bytes of a torn last line dropped
  bool resumed() const { return resumed_; }

  // Appends one record (a JSON object on one line, without the newline); syncs per the policy.
  void append(const std::string& record);
  // fdatasync now (at the end, when stopping).
  void sync();
  // Rewrites the output with its records in the order of rank(key, index), ascending (ties, and
  // lines that are not records, keep the file's order): a temporary file beside it, synced and
  // renamed over it, so that a kill leaves either file whole; the journal goes on with the new
  // one, still locked. Holds 16 bytes per record in memory, not the records.
  void rewrite_in_order(const std::function<uint64_t(std::string_view key, int index)>& rank);
  uint64_t appended() const { return appended_; }

  static std::string done_key(const std::string& key, int index) {
    return key + '\n' + std::to_string(index);
  }

 private:
  void read_existing();

  std::string path_;
  int fd_ = -1;
  std::unordered_set<std::string> done_;
  uint64_t torn_bytes_ = 0, appended_ = 0;
  bool resumed_ = false, dirty_ = false;
  std::chrono::duration<double> fsync_interval_;
  std::chrono::steady_clock::time_point last_sync_;
};

}  // namespace rwkvpp
