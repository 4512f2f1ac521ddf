// The cluster key and its handshake ([net][cluster-key]): the key file's checks (mode, owner,
// size, links), `rwkvpp keygen`'s file, and the challenge-response of
// net/control/join_handshake.h run in memory: a full exchange; a worker or a coordinator with
// another key; a captured Offer and Hello replayed to a new challenge; a changed worker address,
// rank or table; messages of the wrong step or type. The HMAC itself is checked against the
// RFC 4231 test vector, so the handshake's MACs are real HMAC-SHA256.
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "catch.h"
#include "helpers.h"
#include "net/control/cluster_key.h"
#include "net/control/join_handshake.h"
#include "net/wire.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

std::string key_file(const TempDir& d, const std::string& name, const std::string& text, mode_t mode) {
  std::string p = d / name;
  write_file(p, text);
  REQUIRE(::chmod(p.c_str(), mode) == 0);
  return p;
}

ClusterKey key_of(char c) { return ClusterKey{std::vector<uint8_t>(40, uint8_t(c)), "test"}; }

std::string hex(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t x : b) s += fmt::format("{:02x}", x);
  return s;
}

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

TEST_CASE("HMAC-SHA256 matches RFC 4231 test case 2", "[net][cluster-key]") {
  // Key "Jefe", data "what do ya want for nothing?" (RFC 4231, section 4.3).
  ClusterKey k{std::vector<uint8_t>{'J', 'e', 'f', 'e'}, "rfc"};
  std::string a = "what do ya ", b = "want for nothing?";
  CHECK(hex(hmac_sha256(k, {bytes(a), bytes(b)})) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST_CASE("cluster key files are checked", "[net][cluster-key]") {
  TempDir d;
  const std::string good(64, 'a');
  SECTION("a 0600 file, trailing newline not part of the key") {
    ClusterKey k = load_cluster_key(key_file(d, "k", good + "\n", 0600));
    CHECK(k.secret.size() == 64);
    CHECK(load_cluster_key(key_file(d, "k2", good, 0400)).secret == k.secret);
  }
  SECTION("readable by others: refused, naming the mode and the fix") {
    std::string p = key_file(d, "k", good, 0644);
    std::string e = error_of([&] { load_cluster_key(p); });
    CHECK(contains(e, "cluster key '" + p + "': mode 0644"));
    CHECK(contains(e, "chmod 600"));
    CHECK(contains(error_of([&] { load_cluster_key(key_file(d, "g", good, 0640)); }), "mode 0640"));
  }
  SECTION("too short, missing, a directory, a link") {
    CHECK(contains(error_of([&] { load_cluster_key(key_file(d, "s", std::string(31, 'x') + "\n", 0600)); }),
                   "31 bytes of key; at least 32"));
    CHECK(contains(error_of([&] { load_cluster_key(d / "none"); }), "cannot open it"));
    std::string sub = d / "dir";
    REQUIRE(::mkdir(sub.c_str(), 0700) == 0);
    CHECK(contains(error_of([&] { load_cluster_key(sub); }), "not a regular file"));
    std::string target = key_file(d, "t", good, 0600), link = d / "link";
    REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
    CHECK(contains(error_of([&] { load_cluster_key(link); }), "a symbolic link"));
  }
  SECTION("keygen writes 64 hex digits at mode 0600 and never overwrites") {
    std::string p = d / "new.key";
    write_new_cluster_key(p);
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    std::string text = read_file(p);
    REQUIRE(text.size() == 65);
    CHECK(text.find_first_not_of("0123456789abcdef") == 64);
    CHECK(load_cluster_key(p).secret.size() == 64);
    CHECK(contains(error_of([&] { write_new_cluster_key(p); }), "cannot create it"));
    CHECK(read_file(p) == text);
    std::string p2 = d / "other.key";
    write_new_cluster_key(p2);
    CHECK(read_file(p2) != text);  // fresh randomness
  }
}

TEST_CASE("the join handshake admits a key holder and carries its table", "[net][cluster-key]") {
  ClusterKey k = key_of('k');
  JoinWorker w(k);
  JoinCoordinator c(k);
  auto challenge = c.challenge(w.offer());
  const std::vector<uint8_t> addr = {9, 8, 7, 6};
  JoinCoordinator::Hello h = c.read_hello(w.answer_challenge(challenge, kAnyRank, addr));
  CHECK(h.rank_wanted == kAnyRank);
  CHECK(h.blob == addr);
  JoinTable t{2, 3, {{1}, {2, 2}, addr}, {'{', '}'}};
  JoinTable got = w.read_table(c.table(t));
  CHECK(got.rank == 2);
  CHECK(got.size == 3);
  CHECK(got.blobs == t.blobs);
  CHECK(got.job == t.job);
  CHECK(w.session() == c.session());
  // Another exchange with the same key: other nonces, another session.
  JoinWorker w2(k);
  JoinCoordinator c2(k);
  auto ch2 = c2.challenge(w2.offer());
  CHECK(ch2 != challenge);
  c2.read_hello(w2.answer_challenge(ch2, 1, addr));
  CHECK(c2.session() != c.session());
}

TEST_CASE("the join handshake refuses other keys, replays and changes", "[net][cluster-key]") {
  ClusterKey k = key_of('k'), other = key_of('o');
  const std::vector<uint8_t> addr = {1, 2, 3};
  SECTION("a coordinator without the worker's key is not answered") {
    JoinWorker w(k);
    JoinCoordinator impostor(other);
    auto ch = impostor.challenge(w.offer());
    CHECK(contains(error_of([&] { w.answer_challenge(ch, kAnyRank, addr); }),
                   "the coordinator does not hold this cluster key"));
  }
  SECTION("a worker with another key cannot answer, and a made-up Hello fails its MAC") {
    JoinWorker w(other);
    JoinCoordinator c(k);
    auto ch = c.challenge(w.offer());
    CHECK_THROWS_AS(w.answer_challenge(ch, kAnyRank, addr), JoinRefused);
    // What a process without the key could send: a Hello of the right shape, a guessed MAC.
    MessageWriter m(MsgType::Join, 0);
    m.put_u8(3);
    m.put_u32(kAnyRank);
    m.put_span(addr);
    for (int i = 0; i < 32; ++i) m.put_u8(uint8_t(i));
    CHECK(contains(error_of([&] { c.read_hello(m.finish()); }), "fails the MAC"));
  }
  SECTION("a captured Offer and Hello replayed to a new coordinator session") {
    JoinWorker w(k);
    JoinCoordinator c(k);
    auto offer = w.offer();
    auto hello = w.answer_challenge(c.challenge(offer), kAnyRank, addr);
    c.read_hello(hello);
    JoinCoordinator later(k);
    later.challenge(offer);  // the replayed Offer gets a fresh challenge...
    CHECK(contains(error_of([&] { later.read_hello(hello); }),  // ...that the old Hello fails
                   "replays a handshake captured earlier"));
  }
  SECTION("a Hello or a table changed on the way") {
    JoinWorker w(k);
    JoinCoordinator c(k);
    auto hello = w.answer_challenge(c.challenge(w.offer()), 1, addr);
    auto changed = hello;
    changed[kHeaderBytes + 1] ^= 1;  // the rank wanted
    CHECK_THROWS_AS(c.read_hello(changed), JoinRefused);
    c.read_hello(hello);
    auto table = c.table(JoinTable{1, 2, {{0}, addr}, {}});
    table[table.size() - kMacBytes - 9] ^= 0x40;  // a byte of the address table
    CHECK(contains(error_of([&] { w.read_table(table); }), "fails its MAC"));
  }
  SECTION("messages of another type or step, or cut short") {
    JoinCoordinator c(k);
    MessageWriter hello(MsgType::Hello, 0);
    hello.put_u32(1);
    CHECK(contains(error_of([&] { c.challenge(hello.finish()); }),
                   "a Hello message where the cluster-key handshake expects Join Offer"));
    JoinWorker w(k);
    auto offer = w.offer();
    CHECK(contains(error_of([&] { w.answer_challenge(offer, 1, addr); }),
                   "Join step 1 where step 2 (Challenge) was expected"));
    offer.resize(offer.size() - 1);
    CHECK_THROWS_AS(c.challenge(offer), JoinRefused);
    CHECK_THROWS_AS(c.read_hello(w.offer()), JoinRefused);  // a Hello before any Offer
  }
}
