// Wire framing shared by every rwkvpp message: a fixed 28-byte header (magic, protocol version,
// message type, payload length, sequence number, header checksum) followed by the payload, and
// bounds-checked little-endian writers/readers for the payload.
//
// Message layout (all integers little-endian):
//   offset  0  u32 magic      'R','W','K','P' (kMagic)
//   offset  4  u16 version    kProtocolVersion; a peer speaking another version is refused
//   offset  6  u16 type       MsgType
//   offset  8  u64 length     payload bytes that follow the header
//   offset 16  u64 seq        sender's sequence number (the protocol decides its meaning)
//   offset 24  u32 checksum   CRC-32 of bytes [0, 24)
//   offset 28  payload[length]
//
// decode_header() validates magic, version, checksum, type and length (against the caller's
// limit) before anyone looks at the payload, so a corrupt or foreign message fails with a
// message that says what was wrong instead of driving a huge allocation or an overrun.
//
// The message types are owned by the step protocol (worker/, coordinator/); the framing only
// checks that a type is in range.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/error.h"

namespace rwkvpp {

static_assert(std::endian::native == std::endian::little,
              "rwkvpp's wire format is little-endian and the codec assumes a little-endian host");

inline constexpr uint32_t kMagic = 0x504B5752;  // bytes 'R','W','K','P' in little-endian order
// 7: Recovered names its epoch. 8: a Recover may widen a stage's layers (re-partition over the
// survivors); Recovered carries the stage's Ready, Error may answer a Recover.
inline constexpr uint16_t kProtocolVersion = 8;

enum class MsgType : uint16_t {
  Hello = 1,      // first message between two ranks: versions, limits, roles
  Step = 2,       // a StepBatch travelling down the pipeline
  Result = 3,     // sampled ids (or logits) travelling back to the coordinator
  Shutdown = 4,   // orderly stop
  Error = 5,      // a rank reports a failure before it stops
  Heartbeat = 6,  // keeps the peer's liveness timer fed while idle
  Share = 7,      // shared receive slots between neighbouring stages on one host: offer, accept, credit
  Join = 8,       // the cluster-key handshake of a rank joining without a launcher (net/control)
};
inline constexpr uint16_t kMinMsgType = 1;
inline constexpr uint16_t kMaxMsgType = 8;

// A short name for logs and errors ("Step"); "type 42" for values out of range.
std::string msg_type_name(uint16_t type);

// The decoded header. The struct mirrors the wire layout byte for byte, but encoding and
// decoding go field by field, so its in-memory representation is never sent as is.
struct __attribute__((packed)) WireHeader {
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  uint16_t type = 0;
  uint64_t length = 0;  // payload bytes
  uint64_t seq = 0;
  uint32_t checksum = 0;  // CRC-32 of the 24 bytes before it

  MsgType msg_type() const { return MsgType(type); }
};
static_assert(sizeof(WireHeader) == 28, "the wire header is 28 bytes");
inline constexpr size_t kHeaderBytes = sizeof(WireHeader);

// CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of `bytes`, continuing from `crc`.
uint32_t crc32(std::span<const uint8_t> bytes, uint32_t crc = 0);

// Writes the header of a message of `type` whose payload is `payload_bytes` long into
// out[0, kHeaderBytes). out.size() must be at least kHeaderBytes.
void encode_header(MsgType type, uint64_t payload_bytes, uint64_t seq, std::span<uint8_t> out);

// Parses and validates the header at the start of `in`: enough bytes, magic, version, checksum,
// type range, and length <= max_payload. Throws rwkvpp::Error naming what failed; reads nothing
// past in[kHeaderBytes).
WireHeader decode_header(std::span<const uint8_t> in, uint64_t max_payload);

// A whole received message: its header and a view of its payload (into the caller's buffer).
struct Message {
  WireHeader header;
  std::span<const uint8_t> payload;
};
// decode_header() plus a check that `in` holds exactly header + length bytes (a short buffer
// is "truncated message", a longer one "trailing bytes").
Message decode_message(std::span<const uint8_t> in, uint64_t max_payload);

// Appends little-endian values to a growing byte buffer. Spans and strings are written as a u64
// element count followed by the elements.
class ByteWriter {
 public:
  ByteWriter() = default;

  void put_u8(uint8_t v) { put_raw(&v, 1); }
  void put_u16(uint16_t v) { put_raw(&v, 2); }
  void put_u32(uint32_t v) { put_raw(&v, 4); }
  void put_i32(int32_t v) { put_raw(&v, 4); }
  void put_u64(uint64_t v) { put_raw(&v, 8); }
  void put_i64(int64_t v) { put_raw(&v, 8); }
  void put_f32(float v) { put_raw(&v, 4); }
  void put_string(std::string_view s);
  // u64 count, then the elements' bytes. T must be a plain value type without padding.
  template <typename T>
  void put_span(std::span<const T> v) {
    static_assert(is_wire_pod<T>(), "put_span needs a trivially copyable type without padding");
    put_u64(v.size());
    put_raw(v.data(), v.size_bytes());
  }
  template <typename T>
  void put_span(const std::vector<T>& v) {
    put_span(std::span<const T>(v));
  }
  // Bytes without a count (the reader must know the size).
  void put_raw(const void* p, size_t n);
  // Appends n bytes and returns where they start, for a producer that fills them in place
  // (e.g. a device-to-host copy). The pointer is valid until the next put.
  uint8_t* append(size_t n);

  size_t size() const { return buf_.size(); }
  const std::vector<uint8_t>& bytes() const { return buf_; }
  std::vector<uint8_t> take() { return std::move(buf_); }

  template <typename T>
  static constexpr bool is_wire_pod() {
    return std::is_trivially_copyable_v<T> &&
           (std::is_floating_point_v<T> || std::has_unique_object_representations_v<T>);
  }

 protected:
  std::vector<uint8_t> buf_;
};

// A ByteWriter that starts with room for a header: put the payload, then finish() fills in the
// header (length = bytes written after it) and hands back the whole message.
class MessageWriter : public ByteWriter {
 public:
  MessageWriter(MsgType type, uint64_t seq);
  std::vector<uint8_t> finish();

 private:
  MsgType type_;
  uint64_t seq_;
};

// Reads little-endian values from a byte span; every read is bounds-checked and throws
// rwkvpp::Error("truncated message: ...") instead of reading past the end. `what` names the
// message in errors ("StepBatch from rank 2").
class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> bytes, std::string what = "message")
      : bytes_(bytes), what_(std::move(what)) {}

  uint8_t get_u8() { return get<uint8_t>("u8"); }
  uint16_t get_u16() { return get<uint16_t>("u16"); }
  uint32_t get_u32() { return get<uint32_t>("u32"); }
  int32_t get_i32() { return get<int32_t>("i32"); }
  uint64_t get_u64() { return get<uint64_t>("u64"); }
  int64_t get_i64() { return get<int64_t>("i64"); }
  float get_f32() { return get<float>("f32"); }
  // A string written by put_string(); at most max_len bytes.
  std::string get_string(size_t max_len = 1 << 20);
  // A span written by put_span(); its count must fit in the remaining bytes.
  template <typename T>
  std::vector<T> get_vector() {
    static_assert(ByteWriter::is_wire_pod<T>(), "get_vector needs a trivially copyable type");
    uint64_t n = get_count(sizeof(T), "span");
    std::vector<T> v(n);
    get_raw(v.data(), n * sizeof(T), "span");
    return v;
  }
  // A span written by put_span() whose count must equal out.size(), copied into `out`.
  template <typename T>
  void get_span_into(std::span<T> out) {
    static_assert(ByteWriter::is_wire_pod<T>(), "get_span_into needs a trivially copyable type");
    uint64_t n = get_count(sizeof(T), "span");
    if (n != out.size())
      fail("bad {}: span of {} elements where {} were expected", what_, n, out.size());
    get_raw(out.data(), n * sizeof(T), "span");
  }
  // The next n bytes, as a view into the message (no copy, no alignment promise).
  std::span<const uint8_t> get_bytes(size_t n, const char* field = "bytes");
  void get_raw(void* dst, size_t n, const char* field = "bytes");

  size_t offset() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  // Throws when unread bytes are left (a message longer than its type says).
  void expect_end() const;

 private:
  template <typename T>
  T get(const char* field) {
    T v;
    get_raw(&v, sizeof(T), field);
    return v;
  }
  // Reads a u64 count of elements of `elem_bytes` each and checks they fit in what is left.
  uint64_t get_count(size_t elem_bytes, const char* field);

  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
  std::string what_;
};

}  // namespace rwkvpp
