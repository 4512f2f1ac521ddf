// Reading and validating the prompts of a batch job; see batch_input.h.
#include "coordinator/batch/batch_input.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <unordered_map>

#include "common/error.h"
#include "common/limits.h"
#include "coordinator/batch/openai_batch.h"
#include "shards/model_format.h"

namespace rwkvpp {

namespace {

using nlohmann::json;

// A value as it appears in an error message: its JSON, cut to a readable length.
std::string shown(const json& v) {
  std::string d = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return d.size() > 60 ? d.substr(0, 57) + "..." : d;
}

int get_int(const json& j, const char* field, int lo, int hi) {
  const json& v = j.at(field);
  if (!v.is_number_integer()) fail("field '{}' must be an integer, got {}", field, shown(v));
  // Non-negative numbers parse as unsigned: compare in the type they came in.
  bool in_range = v.is_number_unsigned()
                      ? v.get<uint64_t>() <= uint64_t(hi) && int64_t(v.get<uint64_t>()) >= lo
                      : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
  if (!in_range) fail("field '{}' must be in [{}, {}], got {}", field, lo, hi, shown(v));
  return int(v.get<int64_t>());
}

float get_float(const json& j, const char* field) {
  const json& v = j.at(field);
  if (!v.is_number()) fail("field '{}' must be a number, got {}", field, shown(v));
  double d = v.get<double>();
  if (!std::isfinite(d) || std::fabs(d) > 1e30)
    fail("field '{}' must be a finite number, got {}", field, shown(v));
  return float(d);
}

BatchItem batch_item(const json& j, int64_t line, const BatchDefaults& d) {
  BatchItem it;
  it.line = line;
  it.format = InputFormat::Records;
  it.n = d.n;
  it.max_tokens = d.max_tokens;
  it.sampling = d.sampling;
  it.stop = d.stop;

  if (!j.contains("id")) fail("field 'id' is missing");
  it.id = j["id"];
  if (!(it.id.is_string() || it.id.is_number_integer()))
    fail("field 'id' must be a string or an integer, got {}", shown(it.id));
  if (it.id.is_string() && it.id.get_ref<const std::string&>().empty())
    fail("field 'id' is an empty string");
  it.key = it.id.dump();

  if (!j.contains("prompt")) fail("field 'prompt' is missing");
  const json& p = j["prompt"];
  if (!p.is_string()) fail("field 'prompt' must be a string, got {}", p.type_name());
  PromptInput prompt;
  prompt.text = p.get<std::string>();
  if (prompt.text.empty()) fail("field 'prompt' is empty");
  it.prompts.push_back(std::move(prompt));

  if (j.contains("n")) it.n = get_int(j, "n", 1, kMaxSamples);
  if (j.contains("max_tokens")) it.max_tokens = get_int(j, "max_tokens", 0, kMaxTokens);
  if (j.contains("top_k"))
    it.sampling.top_k = get_int(j, "top_k", 0, std::numeric_limits<int>::max());
  if (j.contains("temperature")) {
    it.sampling.temperature = get_float(j, "temperature");
    if (it.sampling.temperature < 0)
      fail("field 'temperature' must be >= 0, got {}", shown(j["temperature"]));
  }
  if (j.contains("top_p")) {
    it.sampling.top_p = get_float(j, "top_p");
    if (!(it.sampling.top_p > 0 && it.sampling.top_p <= 1))
      fail("field 'top_p' must be in (0, 1], got {}", shown(j["top_p"]));
  }
  if (j.contains("seed")) {
    const json& s = j["seed"];
    if (!s.is_number_integer() || (!s.is_number_unsigned() && s.get<int64_t>() < 0))
      fail("field 'seed' must be a non-negative integer, got {}", shown(s));
    it.sampling.seed = s.get<uint64_t>();
    it.has_seed = true;
  }
  if (j.contains("stop")) {
    const json& s = j["stop"];
    it.stop.clear();
    if (s.is_string()) {
      it.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (const json& e : s) {
        if (!e.is_string()) fail("field 'stop' must hold strings, got {}", shown(e));
        it.stop.push_back(e.get<std::string>());
      }
    } else {
      fail("field 'stop' must be a string or an array of strings, got {}", s.type_name());
    }
    for (const auto& x : it.stop)
      if (x.empty()) fail("field 'stop' holds an empty string");
  }
  try {
    validate(it.sampling);
  } catch (const Error& e) {
    fail("bad sampling values: {}", e.what());
  }
  return it;
}

// The line as a JSON object; throws LineError (code "invalid_json") when it is not one.
json parse_object(const std::string& text) {
  auto bad = [](const std::string& m) { throw LineError(m, "invalid_json"); };
  if (text.size() > kMaxBatchLine)
    bad(fmt::format("the line has {} bytes, over the limit of {}", text.size(), kMaxBatchLine));
  if (size_t depth = json_depth(text); depth > kMaxJsonDepth)
    bad(fmt::format("JSON nested {} deep, over the limit of {}", depth, kMaxJsonDepth));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    // A syntax error, or a number out of range ("1e999"). nlohmann's message starts with
    // "[json.exception.parse_error.101] "; keep what follows.
    std::string m = e.what();
    if (auto k = m.find("] "); k != std::string::npos) m = m.substr(k + 2);
    bad("invalid JSON: " + m);
  }
  if (!j.is_object()) bad(fmt::format("a line must be a JSON object, got {}", j.type_name()));
  return j;
}

}  // namespace

const char* format_name(InputFormat f) {
  return f == InputFormat::OpenAI ? "openai" : f == InputFormat::Records ? "rwkvpp" : "auto";
}

BatchItem parse_batch_line(const std::string& text, int64_t line, const BatchDefaults& d,
                           InputFormat format) {
  const json j = parse_object(text);
  if (format == InputFormat::OpenAI) return parse_openai_line(j, line, d);
  try {
    return batch_item(j, line, d);
  } catch (const LineError&) {
    throw;
  } catch (const Error& e) {
    throw LineError(e.what());
  } catch (const json::exception& e) {
    throw LineError(fmt::format("unexpected JSON value: {}", e.what()));
  }
}

InputFormat detect_input_format(std::istream& in) {
  std::string line;
  for (int i = 0; i < 1000 && std::getline(in, line); ++i) {
    try {
      return is_openai_batch_line(parse_object(line)) ? InputFormat::OpenAI
                                                      : InputFormat::Records;
    } catch (const LineError&) {
      // Not an object (blank, malformed): the next line decides.
    }
  }
  return InputFormat::Records;
}

InputScan scan_lines(std::istream& f, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop, uint64_t max_line,
                     InputFormat format) {
  InputScan s;
  bool decided = format != InputFormat::Auto;
  s.format = decided ? format : InputFormat::Records;
  s.hash = fnv1a64(nullptr, 0);
  std::unordered_map<std::string, int64_t> first_line;  // id key -> line that holds it
  std::vector<char> buf(static_cast<size_t>(1) << 16);  // read in 64 KiB pieces
  std::string line;         // the line so far (its first kKeptOfLongLine bytes when too long)
  uint64_t line_bytes = 0;  // its length
  uint64_t line_start = 0, pos = 0;
  int64_t line_no = 0;
  constexpr size_t kKeptOfLongLine = 1024;

  auto handle = [&](std::string& text) {
    ++line_no;
    try {
      if (line_bytes > max_line)
        throw LineError(
            fmt::format("the line has {} bytes, over the limit of {} (its first {} bytes are shown)",
                        line_bytes, max_line, text.size()),
            "invalid_json");
      if (!text.empty() && text.back() == '\r') text.pop_back();         // CRLF files
      if (text.find_first_not_of(" \t\r") == std::string::npos) return;  // blank line
      if (!decided) {
        try {
          s.format = is_openai_batch_line(parse_object(text)) ? InputFormat::OpenAI
                                                              : InputFormat::Records;
          decided = true;
        } catch (const LineError&) {
          // Not an object: rejected below as in either format; the next line decides.
        }
      }
      BatchItem it = parse_batch_line(text, line_no, d, s.format);
      auto [at, fresh] = first_line.emplace(it.key, line_no);
      if (!fresh) {
        if (s.format == InputFormat::OpenAI)
          throw LineError(fmt::format("duplicate custom_id {} (first on line {})", it.key, at->second),
                          "duplicate_custom_id", it.id);
        fail("duplicate id {} (first on line {})", it.key, at->second);
      }
      s.lines.push_back({line_start, uint32_t(text.size()), line_no, it.records(), it.key});
      s.samples += uint64_t(it.records());
    } catch (const LineError& e) {
      ++s.rejected;
      if (on_reject) on_reject(Reject{line_no, e.what(), text, e.code(), e.status(), e.custom_id(), e.param()});
    } catch (const Error& e) {
      ++s.rejected;
      if (on_reject) on_reject(Reject{line_no, e.what(), text, {}, 0, nullptr, {}});
    }
  };
  // Appends part of a line, keeping only the start of one that is too long.
  auto append = [&](const char* p, size_t n) {
    line_bytes += n;
    if (line_bytes <= max_line)
      line.append(p, n);
    else if (line.size() < kKeptOfLongLine)
      line.append(p, std::min(n, kKeptOfLongLine - line.size()));
  };

  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    size_t got = size_t(f.gcount());
    if (got == 0) break;
    s.hash = fnv1a64(buf.data(), got, s.hash);
    size_t from = 0;
    for (size_t i = 0; i < got; ++i) {
      if (buf[i] != '\n') continue;
      append(buf.data() + from, i - from);
      handle(line);
      line.clear();
      line_bytes = 0;
      from = i + 1;
      line_start = pos + from;
    }
    append(buf.data() + from, got - from);
    pos += got;
    if (should_stop && should_stop()) return s;
  }
  if (line_bytes > 0) handle(line);  // a last line without a newline
  s.bytes = pos;
  return s;
}

InputScan scan_input(const std::string& path, const BatchDefaults& d,
                     const std::function<void(const Reject&)>& on_reject,
                     const std::function<bool()>& should_stop, InputFormat format) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open --input '{}'", path);
  InputScan s = scan_lines(f, d, on_reject, should_stop, kMaxBatchLine, format);
  if (f.bad()) fail("cannot read --input '{}'", path);
  return s;
}

InputReader::InputReader(const std::string& path, InputFormat format)
    : path_(path), format_(format), f_(path, std::ios::binary) {
  if (!f_) fail("cannot open --input '{}'", path);
}

BatchItem InputReader::read(const LineRef& ref, const BatchDefaults& d) {
  std::string text(ref.length, '\0');
  f_.clear();
  f_.seekg(std::streamoff(ref.offset));
  f_.read(text.data(), std::streamsize(text.size()));
  if (!f_ || size_t(f_.gcount()) != text.size())
    fail("--input '{}' line {}: cannot read it again (did the file change while the job ran?)",
         path_, ref.line);
  try {
    return parse_batch_line(text, ref.line, d, format_);
  } catch (const Error& e) {
    fail("--input '{}' line {}: {} (the file changed while the job ran?)", path_, ref.line,
         e.what());
  }
}

}  // namespace rwkvpp
