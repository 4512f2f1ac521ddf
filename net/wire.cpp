// Wire framing: header encode/decode with validation, CRC-32, and the bounds-checked byte
// writer/reader (see wire.h for the layout).
#include "net/wire.h"

#include <array>

namespace rwkvpp {

namespace {

constexpr std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrcTable = make_crc_table();

constexpr size_t kChecksumOffset = 24;  // the checksum covers bytes [0, 24)

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void store_le(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace

std::string msg_type_name(uint16_t type) {
  switch (type) {
    case uint16_t(MsgType::Hello):
      return "Hello";
    case uint16_t(MsgType::Step):
      return "Step";
    case uint16_t(MsgType::Result):
      return "Result";
    case uint16_t(MsgType::Shutdown):
      return "Shutdown";
    case uint16_t(MsgType::Error):
      return "Error";
    case uint16_t(MsgType::Heartbeat):
      return "Heartbeat";
    case uint16_t(MsgType::Share):
      return "Share";
    case uint16_t(MsgType::Join):
      return "Join";
    default:
      return "type " + std::to_string(type);
  }
}

uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc) {
  crc = ~crc;
  for (uint8_t b : bytes) crc = kCrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void encode_header(MsgType type, uint64_t payload_bytes, uint64_t seq, std::span<uint8_t> out) {
  RWKVPP_CHECK(out.size() >= kHeaderBytes, "header buffer too small");
  uint8_t* p = out.data();
  store_le<uint32_t>(p + 0, kMagic);
  store_le<uint16_t>(p + 4, kProtocolVersion);
  store_le<uint16_t>(p + 6, uint16_t(type));
  store_le<uint64_t>(p + 8, payload_bytes);
  store_le<uint64_t>(p + 16, seq);
  store_le<uint32_t>(p + kChecksumOffset, crc32(out.first(kChecksumOffset)));
}

WireHeader decode_header(std::span<const uint8_t> in, uint64_t max_payload) {
  if (in.size() < kHeaderBytes)
    fail("truncated message: {} bytes, shorter than the {}-byte rwkvpp header", in.size(),
         kHeaderBytes);
  // Fields go through locals: packed members cannot bind to the references fmt takes.
  const uint8_t* p = in.data();
  const uint32_t magic = load_le<uint32_t>(p + 0);
  const uint16_t version = load_le<uint16_t>(p + 4);
  const uint16_t type = load_le<uint16_t>(p + 6);
  const uint64_t length = load_le<uint64_t>(p + 8);
  const uint32_t checksum = load_le<uint32_t>(p + kChecksumOffset);
  if (magic != kMagic)
    fail("not an rwkvpp message: magic is 0x{:08x}, expected 0x{:08x} ('RWKP')", magic, kMagic);
  if (version != kProtocolVersion)
    fail(
        "protocol version mismatch: the peer speaks rwkvpp protocol version {}, this build "
        "speaks version {}; run the same rwkvpp build on every rank",
        version, kProtocolVersion);
  const uint32_t want = crc32(in.first(kChecksumOffset));
  if (checksum != want)
    fail("corrupt message header: checksum 0x{:08x}, computed 0x{:08x}", checksum, want);
  if (type < kMinMsgType || type > kMaxMsgType)
    fail("unknown message type {} (valid types are {}..{})", type, kMinMsgType, kMaxMsgType);
  if (length > max_payload)
    fail("{} message announces a {}-byte payload, over the limit of {} bytes", msg_type_name(type),
         length, max_payload);
  WireHeader h;
  h.magic = magic;
  h.version = version;
  h.type = type;
  h.length = length;
  h.seq = load_le<uint64_t>(p + 16);
  h.checksum = checksum;
  return h;
}

Message decode_message(std::span<const uint8_t> in, uint64_t max_payload) {
  Message m;
  m.header = decode_header(in, max_payload);
  size_t have = in.size() - kHeaderBytes;
  if (have < m.header.length)
    fail("truncated message: {} header announces a {}-byte payload, only {} bytes arrived",
         msg_type_name(m.header.type), uint64_t(m.header.length), have);
  if (have > m.header.length)
    fail("bad {} message: {} trailing bytes after the {}-byte payload",
         msg_type_name(m.header.type), have - m.header.length, uint64_t(m.header.length));
  m.payload = in.subspan(kHeaderBytes, m.header.length);
  return m;
}

// ---- ByteWriter -------------------------------------------------------------------------------

void ByteWriter::put_raw(const void* p, size_t n) {
  if (n == 0) return;
  const auto* b = static_cast<const uint8_t*>(p);
  buf_.insert(buf_.end(), b, b + n);
}

uint8_t* ByteWriter::append(size_t n) {
  size_t at = buf_.size();
  buf_.resize(at + n);
  return buf_.data() + at;
}

void ByteWriter::put_string(std::string_view s) {
  put_u64(s.size());
  put_raw(s.data(), s.size());
}

MessageWriter::MessageWriter(MsgType type, uint64_t seq) : type_(type), seq_(seq) {
  buf_.resize(kHeaderBytes);
}

std::vector<uint8_t> MessageWriter::finish() {
  RWKVPP_CHECK(buf_.size() >= kHeaderBytes, "MessageWriter::finish called twice");
  encode_header(type_, buf_.size() - kHeaderBytes, seq_, buf_);
  return std::move(buf_);
}

// ---- ByteReader -------------------------------------------------------------------------------

void ByteReader::get_raw(void* dst, size_t n, const char* field) {
  if (n > remaining())
    fail("truncated message: reading {} ({} bytes) at offset {} of a {}-byte {}", field, n, pos_,
         bytes_.size(), what_);
  if (n) std::memcpy(dst, bytes_.data() + pos_, n);
  pos_ += n;
}

std::span<const uint8_t> ByteReader::get_bytes(size_t n, const char* field) {
  if (n > remaining())
    fail("truncated message: reading {} ({} bytes) at offset {} of a {}-byte {}", field, n, pos_,
         bytes_.size(), what_);
  auto s = bytes_.subspan(pos_, n);
  pos_ += n;
  return s;
}

uint64_t ByteReader::get_count(size_t elem_bytes, const char* field) {
  size_t at = pos_;
  uint64_t n = get_u64();
  if (n > remaining() / elem_bytes)
    fail(
        "truncated message: {} at offset {} of a {}-byte {} announces {} elements of {} bytes, "
        "only {} bytes are left",
        field, at, bytes_.size(), what_, n, elem_bytes, remaining());
  return n;
}

std::string ByteReader::get_string(size_t max_len) {
  size_t at = pos_;
  uint64_t n = get_count(1, "string");
  if (n > max_len)
    fail("bad {}: string at offset {} is {} bytes long, over the limit of {}", what_, at, n,
         max_len);
  auto b = get_bytes(n, "string");
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void ByteReader::expect_end() const {
  if (pos_ != bytes_.size())
    fail("bad {}: {} unread bytes after offset {}", what_, bytes_.size() - pos_, pos_);
}

}  // namespace rwkvpp
