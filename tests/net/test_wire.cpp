// Wire framing tests ([net]): header round trip and layout, and that every malformed message
// (bad magic, other protocol version, corrupt header, unknown type, oversize or truncated
// payload, short reads) fails with an error that says what was wrong.
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "catch.h"
#include "net/wire.h"

using namespace rwkvpp;

namespace {

using Bytes = std::vector<uint8_t>;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& needle) {
  return s.find(needle) != std::string::npos;
}

// A header with a field overwritten and the checksum recomputed, as a well-meaning but
// different sender would produce.
Bytes header_with(size_t offset, const void* value, size_t n) {
  Bytes h(kHeaderBytes);
  encode_header(MsgType::Step, 16, 7, h);
  std::memcpy(h.data() + offset, value, n);
  uint32_t crc = crc32(std::span<const uint8_t>(h.data(), 24));
  std::memcpy(h.data() + 24, &crc, 4);
  return h;
}

}  // namespace

TEST_CASE("wire header: layout and round trip", "[net]") {
  Bytes h(kHeaderBytes);
  encode_header(MsgType::Result, 1234, 0x0102030405060708ull, h);
  // The magic reads "RWKP" in a hex dump; fields are little-endian at fixed offsets.
  REQUIRE(std::string(h.begin(), h.begin() + 4) == "RWKP");
  REQUIRE(h[4] == (kProtocolVersion & 0xFF));
  REQUIRE(h[5] == (kProtocolVersion >> 8));
  REQUIRE(h[6] == uint8_t(MsgType::Result));
  REQUIRE(h[8] == (1234 & 0xFF));
  REQUIRE(h[16] == 0x08);
  WireHeader d = decode_header(h, 1 << 20);
  REQUIRE(d.msg_type() == MsgType::Result);
  REQUIRE(uint64_t(d.length) == 1234);
  REQUIRE(uint64_t(d.seq) == 0x0102030405060708ull);
  REQUIRE(uint32_t(d.version) == kProtocolVersion);
  REQUIRE(crc32(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>("123456789"), 9)) ==
          0xCBF43926u);  // the standard CRC-32 check value
  REQUIRE(msg_type_name(uint16_t(MsgType::Heartbeat)) == "Heartbeat");
}

TEST_CASE("wire header: malformed headers fail before any payload read", "[net]") {
  Bytes good(kHeaderBytes);
  encode_header(MsgType::Step, 16, 7, good);

  SECTION("too short") {
    std::string e = error_of([&] { decode_header(std::span(good).first(20), 100); });
    REQUIRE(contains(e, "truncated message"));
    REQUIRE(contains(e, "28-byte"));
  }
  SECTION("bad magic") {
    Bytes h = good;
    std::memcpy(h.data(), "GET ", 4);
    std::string e = error_of([&] { decode_header(h, 100); });
    REQUIRE(contains(e, "not an rwkvpp message"));
    REQUIRE(contains(e, "magic"));
  }
  SECTION("other protocol version names both versions") {
    uint16_t v = kProtocolVersion + 1;
    Bytes h = header_with(4, &v, 2);
    std::string e = error_of([&] { decode_header(h, 100); });
    REQUIRE(contains(e, "protocol version mismatch"));
    REQUIRE(contains(e, "version " + std::to_string(kProtocolVersion + 1)));
    REQUIRE(contains(e, "version " + std::to_string(kProtocolVersion)));
  }
  SECTION("corrupt header") {
    Bytes h = good;
    h[17] ^= 0x40;  // a flipped bit in the sequence number
    REQUIRE(contains(error_of([&] { decode_header(h, 100); }), "checksum"));
  }
  SECTION("unknown type") {
    uint16_t ty = 42;
    Bytes h = header_with(6, &ty, 2);
    std::string e = error_of([&] { decode_header(h, 100); });
    REQUIRE(contains(e, "unknown message type 42"));
    uint16_t zero = 0;
    REQUIRE(contains(error_of([&] { decode_header(header_with(6, &zero, 2), 100); }),
                     "unknown message type 0"));
  }
  SECTION("oversize length") {
    uint64_t huge = uint64_t(1) << 62;
    Bytes h = header_with(8, &huge, 8);
    std::string e = error_of([&] { decode_header(h, 1 << 20); });
    REQUIRE(contains(e, "over the limit of 1048576 bytes"));
    REQUIRE(contains(e, "Step"));
    // Exactly at the limit is fine.
    REQUIRE(uint64_t(decode_header(good, 16).length) == 16);
    REQUIRE(contains(error_of([&] { decode_header(good, 15); }), "over the limit"));
  }
}

TEST_CASE("wire message: MessageWriter and decode_message round trip", "[net]") {
  MessageWriter w(MsgType::Hello, 3);
  w.put_u8(0xAB);
  w.put_u16(0xBEEF);
  w.put_u32(0xDEADBEEF);
  w.put_i32(-5);
  w.put_u64(1ull << 40);
  w.put_i64(-(1ll << 40));
  w.put_f32(1.5f);
  w.put_string("rwkv7-g1");
  std::vector<int32_t> ids = {1, -2, 300000};
  w.put_span(ids);
  std::vector<uint16_t> halves = {0x3c00, 0xc000};
  w.put_span(std::span<const uint16_t>(halves));
  Bytes msg = w.finish();
  REQUIRE(msg.size() == kHeaderBytes + 1 + 2 + 4 + 4 + 8 + 8 + 4 + (8 + 8) + (8 + 12) + (8 + 4));

  Message m = decode_message(msg, 1 << 20);
  REQUIRE(m.header.msg_type() == MsgType::Hello);
  REQUIRE(uint64_t(m.header.seq) == 3);
  REQUIRE(m.payload.size() == msg.size() - kHeaderBytes);
  ByteReader r(m.payload, "Hello");
  REQUIRE(r.get_u8() == 0xAB);
  REQUIRE(r.get_u16() == 0xBEEF);
  REQUIRE(r.get_u32() == 0xDEADBEEF);
  REQUIRE(r.get_i32() == -5);
  REQUIRE(r.get_u64() == 1ull << 40);
  REQUIRE(r.get_i64() == -(1ll << 40));
  REQUIRE(r.get_f32() == 1.5f);
  REQUIRE(r.get_string() == "rwkv7-g1");
  REQUIRE(r.get_vector<int32_t>() == ids);
  std::vector<uint16_t> back(2);
  r.get_span_into(std::span<uint16_t>(back));
  REQUIRE(back == halves);
  REQUIRE(r.remaining() == 0);
  r.expect_end();
}

TEST_CASE("wire message: truncated and padded messages are clear errors", "[net]") {
  MessageWriter w(MsgType::Step, 9);
  w.put_u64(1);
  w.put_u64(2);
  Bytes msg = w.finish();

  SECTION("payload shorter than the header says") {
    Bytes cut(msg.begin(), msg.end() - 3);
    std::string e = error_of([&] { decode_message(cut, 1 << 20); });
    REQUIRE(contains(e, "truncated message"));
    REQUIRE(contains(e, "16-byte payload"));
    REQUIRE(contains(e, "only 13 bytes"));
  }
  SECTION("trailing bytes") {
    Bytes longer = msg;
    longer.push_back(0);
    REQUIRE(contains(error_of([&] { decode_message(longer, 1 << 20); }), "1 trailing bytes"));
  }
  SECTION("reads past the end throw instead of overrunning") {
    Message m = decode_message(msg, 1 << 20);
    ByteReader r(m.payload, "Step from rank 1");
    r.get_u64();
    r.get_u32();
    std::string e = error_of([&] { r.get_u64(); });
    REQUIRE(contains(e, "truncated message"));
    REQUIRE(contains(e, "Step from rank 1"));
    REQUIRE(contains(e, "offset 12"));
    REQUIRE(contains(error_of([&] { r.expect_end(); }), "4 unread bytes"));
  }
  SECTION("a count larger than the message is refused before allocating") {
    ByteWriter bw;
    bw.put_u64(uint64_t(1) << 60);  // claims 2^60 floats
    bw.put_f32(1.0f);
    ByteReader r(bw.bytes(), "Result");
    std::string e = error_of([&] { r.get_vector<float>(); });
    REQUIRE(contains(e, "truncated message"));
    REQUIRE(contains(e, "only 4 bytes are left"));
    ByteReader s(bw.bytes(), "Result");
    REQUIRE(contains(error_of([&] { s.get_string(); }), "truncated message"));
  }
  SECTION("a span of the wrong length") {
    ByteWriter bw;
    std::vector<float> xs = {1, 2, 3};
    bw.put_span(xs);
    ByteReader r(bw.bytes(), "Step");
    std::vector<float> out(4);
    REQUIRE(contains(error_of([&] { r.get_span_into(std::span<float>(out)); }),
                     "3 elements where 4 were expected"));
  }
  SECTION("a string over its limit") {
    ByteWriter bw;
    bw.put_string(std::string(100, 'x'));
    ByteReader r(bw.bytes(), "Hello");
    REQUIRE(contains(error_of([&] { r.get_string(10); }), "over the limit of 10"));
  }
}
