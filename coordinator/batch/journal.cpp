// The batch job's output journal and its meta file; see journal.h.
#include "coordinator/batch/journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "common/limits.h"
#include "coordinator/batch/batch_input.h"

namespace rwkvpp {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("cannot write '{}': {}", path, errno_text());
    }
    p += w;
    n -= size_t(w);
  }
}

void fsync_dir_of(const std::string& path) {
  std::string dir = std::filesystem::absolute(path).parent_path().string();
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    ::fsync(d);
    ::close(d);
  }
}

// Writes `text` to `path` atomically: a temporary file, synced, renamed over the old one.
void write_atomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create '{}': {}", tmp, errno_text());
  write_all(fd, text.data(), text.size(), tmp);
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    fail("cannot rename '{}' to '{}': {}", tmp, path, errno_text());
  fsync_dir_of(path);
}

std::string describe(const ordered_json& j) {
  return j.is_string() ? j.get<std::string>() : j.dump();
}

}  // namespace

std::string meta_path(const std::string& output) { return output + ".meta.json"; }

std::string parse_journal_record(const std::string& line, JournalRecord* r) {
  if (json_depth(line) > kMaxJsonDepth) return "JSON nested too deep for a record";
  try {
    json j = json::parse(line);
    if (j.is_object() && j.contains("custom_id") && j.contains("response")) {
      // An OpenAI Batch output line: the line's one record.
      if (!j["custom_id"].is_string()) return "the custom_id is not a string";
      r->key = j["custom_id"].dump();
      r->index = 0;
      return {};
    }
    if (!j.is_object() || !j.contains("id") || !j.contains("index") ||
        !j["index"].is_number_integer())
      return "not a record with an id and an index";
    const json& id = j["id"];
    if (!(id.is_string() || id.is_number_integer())) return "the id is not a string or an integer";
    const json& index = j["index"];
    if ((!index.is_number_unsigned() && index.get<int64_t>() < 0) ||
        index.get<uint64_t>() >= uint64_t(kMaxSamples))
      return fmt::format("the index is not in [0, {})", kMaxSamples);
    r->key = id.dump();
    r->index = int(index.get<int64_t>());
    return {};
  } catch (const json::exception& e) {
    return e.what();
  }
}

std::string meta_mismatch(const ordered_json& old, const ordered_json& now) {
  auto field = [](const ordered_json& j, const char* a, const char* b) -> ordered_json {
    if (!j.contains(a) || !j[a].is_object() || !j[a].contains(b)) return nullptr;
    return j[a][b];
  };
  if (old.value("format", "") != now.value("format", "") ||
      old.value("version", 0) != now.value("version", 0))
    return fmt::format("it was written by another tool or format version ({} {})",
                       describe(old.value("format", ordered_json())), old.value("version", 0));
  if (field(old, "input", "fnv1a64") != field(now, "input", "fnv1a64") ||
      field(old, "input", "bytes") != field(now, "input", "bytes"))
    return fmt::format(
        "the input has changed since this output was started: '{}' now has {} bytes with hash {}, "
        "the "
        "output was made from {} bytes with hash {} ('{}')",
        describe(field(now, "input", "path")), describe(field(now, "input", "bytes")),
        describe(field(now, "input", "fnv1a64")), describe(field(old, "input", "bytes")),
        describe(field(old, "input", "fnv1a64")), describe(field(old, "input", "path")));
  if (field(old, "model", "fingerprint") != field(now, "model", "fingerprint"))
    return fmt::format(
        "the model is not the one this output was started with: '{}' has fingerprint {}, the "
        "output was "
        "made with fingerprint {} ('{}')",
        describe(field(now, "model", "path")), describe(field(now, "model", "fingerprint")),
        describe(field(old, "model", "fingerprint")), describe(field(old, "model", "path")));
  if (old.value("tokenizer", ordered_json()) != now.value("tokenizer", ordered_json()))
    return fmt::format("the tokenizer differs: now {}, the output was made with {}",
                       now.value("tokenizer", ordered_json()).dump(),
                       old.value("tokenizer", ordered_json()).dump());
  if (old.value("prefix", ordered_json()) != now.value("prefix", ordered_json()))
    return fmt::format("the --prefix-file differs: now {}, the output was made with {}",
                       now.value("prefix", ordered_json()).dump(),
                       old.value("prefix", ordered_json()).dump());
  // Outputs started before the numerics were recorded have none: accepted as they are.
  if (old.contains("numerics") && old["numerics"] != now.value("numerics", ordered_json()))
    return fmt::format(
        "the arithmetic differs: this run computes {}, the output was made with {}; the remaining "
        "records would not be those of an uninterrupted run (same compute dtype and the same kind of "
        "device for every layer are needed)",
        now.value("numerics", ordered_json()).dump(), old["numerics"].dump());
  ordered_json od = old.value("defaults", ordered_json::object()),
               nd = now.value("defaults", ordered_json::object());
  for (auto& [k, v] : nd.items())
    // A flag added after the output was started (absent there) matches while it is off.
    if ((!od.contains(k) && v != false) || (od.contains(k) && od[k] != v))
      return fmt::format("the default '{}' differs: now {}, the output was made with {}", k,
                         v.dump(), od.contains(k) ? od[k].dump() : "nothing");
  for (auto& [k, v] : od.items())
    if (!nd.contains(k))
      return fmt::format("the default '{}' ({}) is unknown to this version", k, v.dump());
  return {};
}

Journal::Journal(const std::string& output, const ordered_json& meta, double fsync_interval_s)
    : path_(output), fsync_interval_(fsync_interval_s) {
  fd_ = ::open(output.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open --output '{}': {}", output, errno_text());
  try {
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK)
        fail(
            "--output '{}' is locked by another running batch job: wait for it to end, or choose "
            "another --output",
            output);
      // Some network file systems have no flock; carry on without the guard.
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("cannot stat '{}': {}", output, errno_text());
    const std::string mp = meta_path(output);
    if (st.st_size > 0) {
      std::ifstream mf(mp);
      if (!mf)
        fail(
            "--output '{}' already has content but no '{}': it was not written by rwkvpp batch (or "
            "its meta file was "
            "removed); choose another --output, or remove the file to start over",
            output, mp);
      std::stringstream ss;
      ss << mf.rdbuf();
      ordered_json old;
      try {
        check_json_depth(ss.str(), "'" + mp + "'");
        old = ordered_json::parse(ss.str());
        if (!old.is_object()) fail("not a JSON object");
      } catch (const std::exception& e) {
        fail("'{}' is not valid JSON ({}); restore it, or remove it and '{}' to start over", mp,
             e.what(), output);
      }
      std::string why;
      try {
        why = meta_mismatch(old, meta);
      } catch (const json::exception& e) {
        fail("'{}' is not a batch meta file ({}); restore it, or remove it and '{}' to start over",
             mp, e.what(), output);
      }
      if (!why.empty())
        fail(
            "refusing to continue '{}': {}. Use another --output, or remove '{}' and '{}' to start "
            "over",
            output, why, output, mp);
      resumed_ = true;
      read_existing();
    } else {
      write_atomically(mp, meta.dump(2) + "\n");
      fsync_dir_of(output);
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
  last_sync_ = std::chrono::steady_clock::now();
}

Journal::~Journal() {
  if (fd_ < 0) return;
  if (dirty_) ::fdatasync(fd_);
  ::close(fd_);  // releases the lock
}

void Journal::read_existing() {
  // Read the file once, line by line; `good` is the offset just past the last good record.
  std::ifstream f(path_, std::ios::binary);
  if (!f) fail("cannot read --output '{}'", path_);
  std::string line;
  uint64_t off = 0, good = 0;
  int64_t line_no = 0;
  std::string bad;  // why the last complete line failed, if it did
  int64_t bad_line = 0;
  while (true) {
    if (!std::getline(f, line)) break;
    bool complete = !f.eof();  // getline stopped at a newline
    ++line_no;
    uint64_t next = off + line.size() + (complete ? 1 : 0);
    if (!bad.empty())
      fail(
          "--output '{}' line {} is damaged ({}) and records follow it: the journal cannot be "
          "resumed safely; remove "
          "that line (every record is one line) and run again",
          path_, bad_line, bad);
    if (!complete) break;  // a torn last line: dropped below
    JournalRecord rec;
    std::string why = parse_journal_record(line, &rec);
    if (why.empty() && !done_.insert(done_key(rec.key, rec.index)).second)
      fail(
          "--output '{}' line {}: the record (id {}, index {}) appears twice: the file was not "
          "written by a single job; remove the duplicate and run again",
          path_, line_no, rec.key.substr(0, 200), rec.index);
    if (why.empty()) {
      good = next;
    } else {
      bad = why;
      bad_line = line_no;
    }
    off = next;
  }
  struct stat st {};
  ::fstat(fd_, &st);
  if (uint64_t(st.st_size) > good) {
    // A torn (or unparsable) last line, from a write cut short by a kill or a crash.
    torn_bytes_ = uint64_t(st.st_size) - good;
    if (::ftruncate(fd_, off_t(good)) != 0)
      fail("cannot truncate the torn last line of '{}': {}", path_, errno_text());
    ::fsync(fd_);
  }
}

void Journal::append(const std::string& record) {
  std::string line;
  line.reserve(record.size() + 1);
  line += record;
  line += '\n';
  write_all(fd_, line.data(), line.size(), path_);
  ++appended_;
  dirty_ = true;
  auto now = std::chrono::steady_clock::now();
  if (now - last_sync_ >= fsync_interval_) {
    ::fdatasync(fd_);
    dirty_ = false;
    last_sync_ = now;
  }
}

void Journal::sync() {
  if (fd_ >= 0 && dirty_ && ::fdatasync(fd_) != 0)
    fail("cannot sync '{}': {}", path_, errno_text());
  dirty_ = false;
  last_sync_ = std::chrono::steady_clock::now();
}

}  // namespace rwkvpp

namespace rwkvpp {

void Journal::rewrite_in_order(
    const std::function<uint64_t(std::string_view key, int index)>& rank) {
  sync();
  struct Line {
    uint64_t rank, offset;
  };
  std::vector<Line> lines;
  {
    std::ifstream f(path_, std::ios::binary);
    if (!f) fail("cannot read --output '{}'", path_);
    std::string text;
    uint64_t off = 0;
    while (std::getline(f, text)) {
      JournalRecord r;
      const uint64_t k = parse_journal_record(text, &r).empty() ? rank(r.key, r.index) : UINT64_MAX;
      lines.push_back({k, off});
      off += text.size() + 1;
    }
  }
  std::stable_sort(lines.begin(), lines.end(),
                   [](const Line& a, const Line& b) { return a.rank < b.rank; });
  const std::string tmp = path_ + ".ordered.tmp";
  {
    std::ifstream in(path_, std::ios::binary);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!in || !out) fail("cannot write '{}'", tmp);
    std::string text;
    for (const Line& l : lines) {
      in.clear();
      in.seekg(std::streamoff(l.offset));
      std::getline(in, text);
      out << text << '\n';
    }
    out.flush();
    if (!out) fail("cannot write '{}'", tmp);
  }
  int tfd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (tfd >= 0) {
    ::fsync(tfd);
    ::close(tfd);
  }
  // Lock the new file before it takes the name, so that no other job can start on it.
  int nfd = ::open(tmp.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (nfd < 0) fail("cannot open '{}': {}", tmp, errno_text());
  ::flock(nfd, LOCK_EX | LOCK_NB);
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    ::close(nfd);
    fail("cannot rename '{}' to '{}': {}", tmp, path_, errno_text());
  }
  fsync_dir_of(path_);
  ::close(fd_);
  fd_ = nfd;
}

}  // namespace rwkvpp
