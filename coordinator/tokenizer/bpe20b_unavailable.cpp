// Built instead of bpe20b.cpp where PCRE2 or utf8proc is missing (e.g. a GPU image without
// them): the 20B tokenizer then fails with a clear message instead of breaking the build.
#include "common/error.h"
#include "coordinator/tokenizer/tokenizer.h"

namespace rwkvpp {

std::unique_ptr<Tokenizer> make_bpe20b_tokenizer(const std::string&, const std::string& source) {
  fail("'{}': this rwkvpp was built without PCRE2/utf8proc, so the 20B tokenizer is unavailable "
       "(install libpcre2-dev and libutf8proc-dev and rebuild)", source);
}

}  // namespace rwkvpp
