// The "bytes" tokenizer of byte-level models (the rwkv.cpp tiny models): id b is byte b.
#include "common/error.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace rwkvpp {
namespace {

class BytesTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "bytes"; }
  int64_t vocab_size() const override { return 256; }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      check_id(ids[i]);
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }

  std::string token_bytes(int32_t id) const override {
    check_id(id);
    return std::string(1, static_cast<char>(id));
  }

 private:
  static void check_id(int32_t id) {
    if (id < 0 || id > 255) fail("bytes tokenizer: token id {} is out of range [0, 256)", id);
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_bytes_tokenizer() { return std::make_unique<BytesTokenizer>(); }

}  // namespace rwkvpp
