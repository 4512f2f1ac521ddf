// UTF-8 helpers and Utf8Stream, which turns a stream of token bytes into printable text.
//
// A token may end in the middle of a multi-byte character (World and bytes vocabularies split
// characters freely, and so does byte-level BPE for rare characters). Utf8Stream holds back an
// incomplete trailing sequence until the bytes that complete it arrive, so that whatever it
// returns never ends with a partial character. Bytes that can never become valid UTF-8 (a stray
// continuation byte, an overlong or surrogate lead) are passed through at once, as they are: the
// concatenation of everything push() and flush() return equals the concatenation of the input.
//
// Header-only; not thread-safe (one stream per sequence).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace rwkvpp {

// Classifies the bytes at p[0..n) (n >= 1) by RFC 3629 (no overlongs, no surrogates, <= U+10FFFF):
//   k in 1..4  -- p starts a complete valid character of k bytes;
//   0          -- p[0] cannot start a valid character given what follows (treat as one bad byte);
//   -k         -- p[0..n) is a valid but incomplete prefix of a k-byte character (n < k).
inline int utf8_classify(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int i = 1; i < len; ++i) {
    if (size_t(i) >= n) return -len;
    unsigned char b = p[i];
    unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return 0;
  }
  return len;
}

// Length of the longest prefix of s that is valid UTF-8.
inline size_t utf8_valid_prefix(std::string_view s) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    int k = utf8_classify(p + i, n - i);
    if (k <= 0) break;
    i += size_t(k);
  }
  return i;
}

class Utf8Stream {
 public:
  // Adds bytes; returns every byte accumulated so far except an incomplete trailing character
  // (at most 3 bytes), which is kept until it completes, turns out invalid, or flush() is called.
  std::string push(std::string_view bytes) {
    pending_.append(bytes);
    size_t keep = incomplete_tail(pending_);
    std::string out = pending_.substr(0, pending_.size() - keep);
    pending_.erase(0, pending_.size() - keep);
    return out;
  }

  // Returns whatever is held back (an incomplete character, as its raw bytes) and empties the
  // stream.
  std::string flush() {
    std::string out;
    out.swap(pending_);
    return out;
  }

 private:
  // Number of trailing bytes of s that form a valid but incomplete character.
  static size_t incomplete_tail(const std::string& s) {
    auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t n = s.size();
    // A character is at most 4 bytes, so an incomplete one starts within the last 3.
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
      unsigned char c = p[n - back];
      if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back for the lead
      return utf8_classify(p + n - back, back) < 0 ? back : 0;
    }
    return 0;
  }

  std::string pending_;
};

}  // namespace rwkvpp
