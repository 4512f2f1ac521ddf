// Tokenizer detection and factory: tells a World vocab from a tokenizer.json by content, and
// builds the matching tokenizer from a file or from the bytes stored inside a model file.
#include "coordinator/tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/limits.h"

namespace rwkvpp {
namespace {

std::string read_tokenizer_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    fail("tokenizer file {} is not a regular file", path);
  if (auto n = std::filesystem::file_size(path, ec); !ec && n > kMaxTokenizerBytes)
    fail("tokenizer file {} has {} bytes, over the limit of {}", path, n, kMaxTokenizerBytes);
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file {}", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("cannot read tokenizer file {}", path);
  return ss.str();
}

// A World vocab line: `<digits> [b]<quote>...<quote> <digits>`.
bool looks_like_world_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t a = line.find(' '), b = line.rfind(' ');
  if (a == std::string_view::npos || a == 0 || b <= a + 2 || b + 1 >= line.size()) return false;
  auto digits = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!digits(line.substr(0, a)) || !digits(line.substr(b + 1))) return false;
  std::string_view lit = line.substr(a + 1, b - a - 1);
  if (lit[0] == 'b') lit.remove_prefix(1);
  return lit.size() >= 2 && (lit[0] == '\'' || lit[0] == '"') && lit.back() == lit[0];
}

std::string kind_from_content(const std::string& data, const std::string& source) {
  size_t start = 0;
  while (start < data.size() && std::isspace(static_cast<unsigned char>(data[start]))) ++start;
  if (start < data.size() && data[start] == '{') {
    // Validated in full when it is loaded; here only what tells it apart.
    if (data.find("\"BPE\"") != std::string::npos && data.find("\"ByteLevel\"") != std::string::npos)
      return "20b";
    fail("tokenizer file {}: a JSON file, but not a byte-level BPE tokenizer.json", source);
  }
  // The first three lines of a World vocab all have the `id token length` shape.
  size_t pos = 0;
  int lines = 0;
  while (pos < data.size() && lines < 3) {
    size_t end = data.find('\n', pos);
    if (end == std::string::npos) end = data.size();
    if (!looks_like_world_line(std::string_view(data).substr(pos, end - pos))) break;
    ++lines;
    pos = end + 1;
  }
  if (lines == 3 || (lines > 0 && pos >= data.size())) return "world";
  fail(
      "tokenizer file {}: unknown format (expected an RWKV World vocab .txt, a Hugging Face "
      "tokenizer.json, or the word \"bytes\")",
      source);
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::unique_ptr<Tokenizer> make(const std::string& kind, const std::string& data,
                                const std::string& source) {
  if (kind == "world") return make_world_tokenizer(data, source);
  if (kind == "20b") return make_bpe20b_tokenizer(data, source);
  if (kind == "bytes") return make_bytes_tokenizer();
  fail("unknown tokenizer kind \"{}\" (expected world, 20b or bytes)", kind);
}

}  // namespace

std::string detect_tokenizer_kind(const std::string& path_or_bytes) {
  if (path_or_bytes == "bytes") return "bytes";
  return kind_from_content(read_tokenizer_file(path_or_bytes), path_or_bytes);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path_or_bytes) {
  if (path_or_bytes == "bytes") return make_bytes_tokenizer();
  return tokenizer_from_file_bytes(read_tokenizer_file(path_or_bytes), path_or_bytes);
}

std::unique_ptr<Tokenizer> tokenizer_from_file_bytes(const std::string& data,
                                                     const std::string& source) {
  if (data.size() > kMaxTokenizerBytes)
    fail("tokenizer file {} has {} bytes, over the limit of {}", source, data.size(),
         kMaxTokenizerBytes);
  return make(kind_from_content(data, source), data, source);
}

std::unique_ptr<Tokenizer> tokenizer_from_blob(const std::string& kind, const std::string& data) {
  std::string k = lower(kind);
  if (k == "neox" || k == "gpt-neox-20b") k = "20b";
  return make(k, data, "the " + k + " vocabulary stored in the model");
}

}  // namespace rwkvpp
