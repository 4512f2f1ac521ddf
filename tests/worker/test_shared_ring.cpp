// Shared slots between neighbouring stages (worker/shared_ring.h) on the CPU backend, within
// one process: data written by one side arrives at the other in ring order, credits return the
// slots in order, and every mismatch (another host, another kind of sharing, slots too small,
// out-of-order slots or credits, an unknown name, a malformed message) is refused with a
// message that says what was wrong. Across processes: tests/worker/test_pipeline.cpp (CPU) and
// scripts/gpu_pipeline_check.sh (CUDA IPC, several GPUs).
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "catch.h"
#include "cuda_skip.h"
#include "kernels/backend.h"
#include "net/wire.h"
#include "protocol/protocol.h"
#include "worker/shared_ring.h"

using namespace rwkvpp;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Through the wire and back, as the peer would see it.
ShareMsg roundtrip(const ShareMsg& m) {
  const std::vector<uint8_t> bytes = encode_share(m);
  return decode_share(decode_message(bytes, bytes.size()), "test");
}

}  // namespace

TEST_CASE("shared slots carry hidden vectors in ring order and come back with credits", "[shared]") {
  auto be = make_cpu_backend(1);
  const size_t bytes = 40 * sizeof(float);
  SharedRx rx(*be, bytes);
  SharedTx tx(*be, roundtrip(rx.offer()), bytes);
  CHECK_FALSE(rx.accepted());
  CHECK(error_of([&] {
          float d[40];
          rx.take(0, d, bytes, "step 1");
        }).find("no shared slots were agreed") != std::string::npos);
  rx.accept(roundtrip(tx.accept()));
  REQUIRE(rx.accepted());
  for (int i = 0; i < 10; ++i) {
    std::vector<float> src(40), dst(40, -1.0f);
    for (int k = 0; k < 40; ++k) src[size_t(k)] = float(i * 100 + k);
    REQUIRE(tx.has_credit());
    const int slot = tx.put(src.data(), bytes);
    CHECK(slot == i % SharedRx::kSlots);
    rx.take(slot, dst.data(), bytes, "step");
    CHECK(dst == src);
    tx.credit(uint32_t(slot), "credit");
  }
  // Without credits the writer must stop after one round of the ring.
  std::vector<float> src(40, 1.0f), dst(40);
  for (int i = 0; i < SharedRx::kSlots; ++i) tx.put(src.data(), bytes);
  CHECK_FALSE(tx.has_credit());
  // Slots are read and returned in ring order; anything else is refused.
  CHECK(error_of([&] { rx.take(2, dst.data(), bytes, "Step 7"); }).find("Step 7: hidden vectors in shared slot 2, expected slot 1") !=
        std::string::npos);
  CHECK(error_of([&] { tx.credit(0, "Share 9"); }).find("Share 9: credit for shared slot 0, expected 1") != std::string::npos);
  CHECK(error_of([&] { rx.take(1, dst.data(), 2 * bytes, "Step 8"); }).find("do not fit") != std::string::npos);
}

TEST_CASE("offers from another host, of another kind or with small slots are refused", "[shared]") {
  auto be = make_cpu_backend(1);
  SharedRx rx(*be, 64);
  ShareMsg offer = roundtrip(rx.offer());
  CHECK(offer.host == this_host());
  CHECK(offer.share_kind == "posix-shm");
  ShareMsg other = offer;
  other.host = "elsewhere";
  CHECK(error_of([&] { SharedTx t(*be, other, 64); }).find("runs on host 'elsewhere'") != std::string::npos);
  other = offer;
  other.share_kind = "cuda-ipc";
  CHECK(error_of([&] { SharedTx t(*be, other, 64); }).find("shares memory as 'cuda-ipc'") != std::string::npos);
  CHECK(error_of([&] { SharedTx t(*be, offer, 128); }).find("slots hold 64 bytes, steps here need up to 128") !=
        std::string::npos);
  other = offer;
  other.signals.pop_back();
  CHECK(error_of([&] { SharedTx t(*be, other, 64); }).find("3 slots and 2 signals") != std::string::npos);
}

TEST_CASE("shared memory that cannot be opened is a clear error", "[shared]") {
  auto be = make_cpu_backend(1);
  const std::string missing = "/rwkvpp-no-such-segment";
  CHECK(error_of([&] { be->share_open({reinterpret_cast<const uint8_t*>(missing.data()), missing.size()}, 8); })
            .find("shared memory /rwkvpp-no-such-segment: cannot open it") != std::string::npos);
  const std::string bad = "not/a/name";
  CHECK(error_of([&] { be->share_open({reinterpret_cast<const uint8_t*>(bad.data()), bad.size()}, 8); })
            .find("is not a shared memory name") != std::string::npos);
  // A segment smaller than asked for.
  auto buf = be->share_alloc(16);
  CHECK(error_of([&] { be->share_open(buf->handle(), 4096); }).find("holds 16 bytes, 4096 needed") != std::string::npos);
  // Opened by name while it exists; gone once its creator unlinks it.
  auto peer = be->share_open(buf->handle(), 16);
  std::memcpy(peer->data(), "abcdefgh", 8);
  CHECK(std::memcmp(buf->data(), "abcdefgh", 8) == 0);
  buf->unlink();
  CHECK(error_of([&] { be->share_open(buf->handle(), 16); }).find("cannot open it") != std::string::npos);
}

TEST_CASE("Step and Share messages keep their slot numbers; malformed ones are refused", "[shared]") {
  StepMsg s;
  s.step = 7;
  s.segs = {Segment{0, 0, 2}};
  s.want = {kWantSample};
  s.position = {1};
  s.tokens = {5, 6};
  s.shared_slot = 2;
  const std::vector<uint8_t> head = encode_step_head(s, 0);
  std::span<const uint8_t> hidden;
  const StepMsg d = decode_step(decode_message(head, head.size()), "Step", &hidden);
  CHECK(d.shared_slot == 2);
  CHECK(hidden.empty());
  ShareMsg credit;
  credit.kind = ShareKind::Credit;
  credit.slot = 5;
  CHECK(roundtrip(credit).slot == 5);
  ShareMsg refusal;
  refusal.kind = ShareKind::Accept;
  refusal.why = "another host";
  CHECK(roundtrip(refusal).ok == 0);
  CHECK(roundtrip(refusal).why == "another host");
  MessageWriter w(MsgType::Share, 0);
  w.put_u8(9);
  const std::vector<uint8_t> bad = w.finish();
  CHECK(error_of([&] { decode_share(decode_message(bad, bad.size()), "Share from rank 3"); })
            .find("Share from rank 3: unknown share message kind 9") != std::string::npos);
  const std::vector<uint8_t> step = encode_step(s, nullptr, 0);
  CHECK(error_of([&] { decode_share(decode_message(step, step.size()), "Share from rank 3"); })
            .find("expected a Share message, got Step") != std::string::npos);
}

TEST_CASE("CUDA shared memory and signals: zero-filled slots, handles of IPC size, bad handles refused", "[cuda][shared]") {
  RWKVPP_REQUIRE_CUDA();
  auto be = make_cuda_backend(0);
  CHECK(be->share_kind() == "cuda-ipc");
  auto buf = be->share_alloc(4096);
  REQUIRE(buf->data() != nullptr);
  CHECK(buf->handle().size() == 64);  // cudaIpcMemHandle_t
  std::vector<uint8_t> host(4096, 0xff);
  be->download(host.data(), buf->data(), host.size());
  CHECK(std::all_of(host.begin(), host.end(), [](uint8_t b) { return b == 0; }));
  auto sig = be->signal_create();
  // A kind byte, then the flag's cudaIpcMemHandle_t (or, with RWKVPP_SHARE_SIGNAL=event, a
  // cudaIpcEventHandle_t): 64 bytes either way.
  CHECK(sig->handle().size() == 65);
  sig->record();
  sig->wait(1);
  be->synchronize();
  const std::vector<uint8_t> short_handle(3, 0);
  CHECK(error_of([&] { be->share_open(short_handle, 16); }).find("handle has 3 bytes, not 64") != std::string::npos);
  CHECK(error_of([&] { be->signal_open(short_handle); }).find("handle has 3 bytes, not 65") != std::string::npos);
}

TEST_CASE("CUDA share_copy: a hop's wait, copy and record, fused or not, over sizes and alignments",
          "[cuda][shared]") {
  RWKVPP_REQUIRE_CUDA();
  auto be = make_cuda_backend(0);
  auto after = be->signal_create();
  auto done = be->signal_create();
  const size_t cap = 256 << 10;
  auto* src = static_cast<uint8_t*>(be->alloc(cap));
  auto* dst = static_cast<uint8_t*>(be->alloc(cap));
  // (bytes, src offset, dst offset): one word; 14B's and 1.5B's hidden vector at batch 1; words
  // off the 16-byte grid; the fused kernel's limit (64 KiB) and past it (the queued ops).
  const size_t cases[][3] = {{4, 0, 0},       {20480, 0, 0}, {8192, 4, 0},     {8196, 0, 12},
                             {65536, 16, 32}, {65540, 0, 0}, {200000, 8, 1024}};
  std::vector<uint8_t> in(cap), out(cap), fill(cap, 0xab);
  uint64_t n = 0;
  for (const auto& c : cases) {
    const size_t bytes = c[0], so = c[1], dof = c[2];
    for (size_t i = 0; i < cap; ++i) in[i] = uint8_t((i * 131 + n * 7 + 1) % 251);
    be->upload(src, in.data(), cap);
    be->upload(dst, fill.data(), cap);
    after->record();  // the peer's signal, recorded here: the copy waits for its count
    be->share_copy(dst + dof, src + so, bytes, *after, ++n, *done);
    done->wait(n);  // recorded once per share_copy, fused or not
    be->download(out.data(), dst, cap);
    INFO("bytes " << bytes << ", src offset " << so << ", dst offset " << dof);
    CHECK(std::memcmp(out.data() + dof, in.data() + so, bytes) == 0);
    CHECK(std::all_of(out.begin(), out.begin() + long(dof), [](uint8_t b) { return b == 0xab; }));
    CHECK(std::all_of(out.begin() + long(dof + bytes), out.end(),
                      [](uint8_t b) { return b == 0xab; }));
  }
  be->free(src);
  be->free(dst);
}

TEST_CASE("CUDA: waits for a peer that never signals end when the signal is destroyed",
          "[cuda][shared]") {
  RWKVPP_REQUIRE_CUDA();
  auto be = make_cuda_backend(0);
  auto done = be->signal_create();
  std::vector<float> in(16), out(16, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i) + 0.5f;
  auto* src = static_cast<float*>(be->alloc(in.size() * 4));
  auto* dst = static_cast<float*>(be->alloc(in.size() * 4));
  be->upload(src, in.data(), in.size() * 4);
  {
    // As if the peer had died before recording: a fused copy (a kernel polling the flag) and a
    // queued wait, both for counts nobody will write.
    auto never = be->signal_create();
    be->share_copy(dst, src, in.size() * 4, *never, 1, *done);
    never->wait(2);
  }                                               // teardown must not hang on them
  be->download(out.data(), dst, out.size() * 4);  // synchronises
  CHECK(out == in);                               // the copy behind the wait ran
  be->free(src);
  be->free(dst);
}

TEST_CASE(
    "CUDA shared ring: hops sequenced by the device, direct, replayed, and mixed with the host's",
    "[cuda][shared]") {
  RWKVPP_REQUIRE_CUDA();
  auto be = make_cuda_backend(0);
  const size_t cap = 2 << 20;
  std::vector<std::unique_ptr<SharedBuffer>> slots;
  std::vector<std::unique_ptr<SharedSignal>> written, consumed;
  std::vector<SharedBuffer*> s;
  std::vector<SharedSignal*> w, c;
  for (int i = 0; i < 3; ++i) {
    slots.push_back(be->share_alloc(cap));
    written.push_back(be->signal_create());
    consumed.push_back(be->signal_create());
    s.push_back(slots.back().get());
    w.push_back(written.back().get());
    c.push_back(consumed.back().get());
  }
  // One process plays both sides on one queue: the sender's hop, then the receiver's.
  auto tx = be->share_ring(false, s, c, w);
  auto rx = be->share_ring(true, s, w, c);
  if (!tx || !rx) {  // RWKVPP_SHARE_GRAPH=0, RWKVPP_SHARE_KERNEL=0 or event signals
    WARN("no device-sequenced rings here");
    return;
  }
  auto* src = static_cast<uint8_t*>(be->alloc(cap));
  auto* dst = static_cast<uint8_t*>(be->alloc(cap));
  std::vector<uint8_t> in(cap), out(cap);
  int step = 0;
  auto fill = [&] {
    ++step;
    for (size_t i = 0; i < cap; ++i) in[i] = uint8_t((i * 17 + size_t(step) * 29 + 3) % 253);
    be->upload(src, in.data(), cap);
  };
  // The host's side of the ring, as SharedTx / SharedRx keep it: the next slot and its count.
  int next = 0;
  uint64_t uses[3] = {};
  // A hop each way: through the device's ring where it takes the size, else with the host's
  // counts (share_copy) and the ring advanced past it. `record`: queue it (not for a replay).
  auto hop_pair = [&](size_t bytes, bool record) {
    const int slot = next;
    next = (next + 1) % 3;
    const uint64_t u = uses[slot]++;
    if (tx->takes(bytes)) {
      c[size_t(slot)]->device_waited(u);
      w[size_t(slot)]->device_recorded();
      w[size_t(slot)]->device_waited(u + 1);
      c[size_t(slot)]->device_recorded();
      if (record) {
        tx->hop(src, bytes);
        rx->hop(dst, bytes);
      }
      return;
    }
    REQUIRE(record);
    be->share_copy(s[size_t(slot)]->data(), src, bytes, *c[size_t(slot)], u, *w[size_t(slot)]);
    tx->advance(slot, u + 1);
    be->share_copy(dst, s[size_t(slot)]->data(), bytes, *w[size_t(slot)], u + 1, *c[size_t(slot)]);
    rx->advance(slot, u + 1);
  };
  auto check = [&](size_t bytes, const char* how) {
    be->download(out.data(), dst, cap);
    INFO(how << " hop of " << bytes << " bytes, step " << step);
    CHECK(std::memcmp(out.data(), in.data(), bytes) == 0);
  };
  CHECK_FALSE(tx->takes((64 << 10) + 4));
  // Directly: one word up to the kernel's 64 KiB, and larger ones the host sequences, mixed.
  for (size_t bytes : {size_t(4), size_t(8192), size_t(20484), size_t((1 << 20) + 4), size_t(65536),
                       size_t(8), size_t(1 << 20), size_t(1 << 20), size_t(20480)}) {
    fill();
    hop_pair(bytes, true);
    check(bytes, "a direct");
  }
  // Recorded once, replayed: each replay must take the next slot and count.
  for (size_t bytes : {size_t(20480), size_t(65536)}) {
    const uint64_t key = 0x51a7e + bytes;
    fill();
    REQUIRE(be->graph_begin(key));
    hop_pair(bytes, true);
    be->graph_end(key);  // runs it once
    check(bytes, "a recorded");
    for (int r = 0; r < 7; ++r) {
      fill();
      hop_pair(bytes, false);
      REQUIRE(be->graph_launch(key));
      check(bytes, "a replayed");
    }
    fill();
    hop_pair((1 << 20) + 8, true);  // the host's counts still agree with the device's
    check((1 << 20) + 8, "a host-sequenced");
  }
  be->free(src);
  be->free(dst);
}
