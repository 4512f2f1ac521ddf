// The TCP rendezvous of ranks started without MPI (see rendezvous.h). Everything is
// asynchronous on one io_context, driven until the step is done or the deadline passes, so that
// no step can hang.
#include "net/ucx/rendezvous.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>

#include "common/error.h"
#include "net/control/join_handshake.h"
#include "net/wire.h"

namespace rwkvpp {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

constexpr uint64_t kMaxHello = uint64_t(1) << 20;  // a worker address is a few hundred bytes
constexpr uint64_t kMaxTable = uint64_t(256) << 20;
constexpr auto kRetry = std::chrono::milliseconds(100);

std::optional<long> env_long(const char* name) {
  const char* e = std::getenv(name);
  if (!e || !*e) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(e, &end, 10);
  if (end == e || *end != '\0' || errno != 0) fail("{}='{}' is not an integer", name, e);
  return v;
}

std::string where(const RendezvousConfig& c) {
  return (c.host.find(':') != std::string::npos ? "[" + c.host + "]" : c.host) + ":" +
         std::to_string(c.port);
}

double seconds(std::chrono::milliseconds ms) { return double(ms.count()) / 1000.0; }

// Runs `io` until `done` is set or `deadline` passes; false on timeout.
bool drive(asio::io_context& io, const bool& done, Clock::time_point deadline) {
  io.restart();
  while (!done && Clock::now() < deadline) {
    io.run_one_until(deadline);
    if (io.stopped() && !done) return false;  // out of work: nothing can set `done` any more
  }
  return done;
}

// Reads one wire message (header, then payload) into `buf`; calls `done` with "" or an error.
void async_read_message(tcp::socket& s, std::vector<uint8_t>& buf, uint64_t max_payload,
                        std::function<void(const std::string&)> done) {
  buf.resize(kHeaderBytes);
  asio::async_read(s, asio::buffer(buf), [&s, &buf, max_payload, done](error_code ec, size_t) {
    if (ec) return done(ec.message());
    uint64_t length = 0;
    try {
      length = decode_header(buf, max_payload).length;
    } catch (const Error& e) {
      return done(e.what());
    }
    buf.resize(kHeaderBytes + length);
    asio::async_read(s, asio::buffer(buf.data() + kHeaderBytes, length),
                     [done](error_code ec2, size_t) { done(ec2 ? ec2.message() : ""); });
  });
}

tcp::resolver::results_type resolve(asio::io_context& io, const RendezvousConfig& c) {
  tcp::resolver res(io);
  error_code ec;
  auto r = res.resolve(c.host, std::to_string(c.port), ec);
  if (ec || r.empty())
    fail("{}: cannot resolve the rendezvous address {}: {}",
         c.rank < 0 ? std::string("worker") : "rank " + std::to_string(c.rank), where(c),
         ec ? ec.message() : "no address");
  return r;
}

struct Joiner {
  explicit Joiner(asio::io_context& io) : sock(io) {}
  tcp::socket sock;
  std::vector<uint8_t> buf, out;
  std::string from;  // the peer's address, for errors
  int rank = -1;     // once its hello was accepted
  std::unique_ptr<JoinCoordinator> hs;  // with a key
};

// Rank 0: accepts size - 1 ranks, then sends each the whole table. Without a key a bad peer
// ends the rendezvous with an error (a launcher's job on a trusted network: it is a mistake);
// with a key it is refused, logged and counted, and rank 0 goes on.
class Rank0 {
 public:
  Rank0(const RendezvousConfig& c, std::span<const uint8_t> mine)
      : c_(c), deadline_(Clock::now() + c.timeout), acceptor_(io_) {
    res_.rank = 0;
    res_.size = c.size;
    res_.blobs.resize(size_t(c.size));
    res_.blobs[0].assign(mine.begin(), mine.end());
    res_.job = c.job;
    from_.resize(size_t(c.size));
  }

  RendezvousResult run() {
    listen();
    accept_next();
    if (!drive(io_, done_, deadline_)) {
      std::string missing;
      for (int r = 1; r < c_.size; ++r)
        if (from_[size_t(r)].empty()) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      fail("rank 0: rendezvous at {}: {} of {} ranks joined within {} s; missing rank(s) {} "
           "(RWKVPP_RENDEZVOUS_TIMEOUT_S){}",
           where(c_), joined_, c_.size, seconds(c_.timeout), missing,
           res_.refused ? fmt::format("; {} connection(s) refused (above)", res_.refused) : "");
    }
    if (!error_.empty()) fail("rank 0: rendezvous at {}: {}", where(c_), error_);
    acceptor_.close();
    send_tables();
    return std::move(res_);
  }

 private:
  void listen() {
    tcp::endpoint ep = resolve(io_, c_).begin()->endpoint();
    error_code ec;
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      fail("rank 0: cannot listen on the rendezvous address {}: {}", where(c_), ec.message());
  }

  void finish(std::string e) {
    if (done_) return;
    error_ = std::move(e);
    done_ = true;
  }

  // A bad peer: fatal without a key, refused with one.
  void bad_peer(Joiner& j, const std::string& why) {
    if (c_.key.empty()) return finish(why);
    ++res_.refused;
    fmt::print(stderr, "rwkvpp: rank 0: rendezvous at {}: refused the process at {}: {}\n",
               where(c_), j.from, why);
    error_code ec;
    j.sock.close(ec);
  }

  void accept_next() {
    Joiner* j = joiners_.emplace_back(std::make_unique<Joiner>(io_)).get();
    acceptor_.async_accept(j->sock, [this, j](error_code aec) {
      if (done_ || aec == asio::error::operation_aborted) return;  // all joined: closed
      if (aec) return finish("accept failed: " + aec.message());
      error_code pec;
      auto remote = j->sock.remote_endpoint(pec);
      j->from = pec ? "an unknown address"
                    : remote.address().to_string() + ":" + std::to_string(remote.port());
      read(*j, "hello", [this, j] { on_first(*j); });
      accept_next();
    });
  }

  // Reads a message from j, then calls next (errors: bad_peer).
  void read(Joiner& j, const char* what, std::function<void()> next) {
    async_read_message(j.sock, j.buf, kMaxHello, [this, &j, what, next](const std::string& rerr) {
      if (done_) return;
      if (!rerr.empty()) return bad_peer(j, fmt::format("reading its {}: {}", what, rerr));
      try {
        next();
      } catch (const JoinRefused& e) {
        bad_peer(j, e.what());
      } catch (const Error& e) {
        bad_peer(j, e.what());
      }
    });
  }

  void on_first(Joiner& j) {
    if (c_.key.empty()) return on_plain_hello(j);
    j.hs = std::make_unique<JoinCoordinator>(c_.key);
    j.out = j.hs->challenge(j.buf);
    asio::async_write(j.sock, asio::buffer(j.out), [this, &j](error_code ec, size_t) {
      if (done_) return;
      if (ec) return bad_peer(j, "sending the challenge: " + ec.message());
      read(j, "Join Hello", [this, &j] {
        JoinCoordinator::Hello h = j.hs->read_hello(j.buf);
        admit(j, h.rank_wanted, std::move(h.blob));
      });
    });
  }

  void on_plain_hello(Joiner& j) {
    Message m = decode_message(j.buf, kMaxHello);
    if (m.header.msg_type() == MsgType::Join)
      fail("the process at {} runs the cluster-key handshake, and this rank 0 has no cluster "
           "key (RWKVPP_CLUSTER_KEY / --cluster-key on every rank, or on none)",
           j.from);
    ByteReader r(m.payload, "rendezvous hello from " + j.from);
    int rank = int(r.get_u32()), size = int(r.get_u32());
    std::vector<uint8_t> blob = r.get_vector<uint8_t>();
    r.expect_end();
    if (size != c_.size)
      fail("the process at {} says the job has {} ranks, rank 0 has {} (RWKVPP_SIZE)", j.from,
           size, c_.size);
    admit(j, uint32_t(rank), std::move(blob));
  }

  void admit(Joiner& j, uint32_t wanted, std::vector<uint8_t> blob) {
    int rank = int(wanted);
    if (wanted == kAnyRank) {
      rank = -1;
      for (int r = 1; r < c_.size && rank < 0; ++r)
        if (from_[size_t(r)].empty()) rank = r;
      if (rank < 0) fail("all {} ranks of the job are taken", c_.size - 1);
    }
    if (rank <= 0 || rank >= c_.size)
      fail("the process at {} claims rank {}, outside 1..{}", j.from, rank, c_.size - 1);
    if (!from_[size_t(rank)].empty())
      fail("two processes claim rank {}: {} and {}", rank, from_[size_t(rank)], j.from);
    from_[size_t(rank)] = j.from;
    j.rank = rank;
    res_.blobs[size_t(rank)] = std::move(blob);
    if (++joined_ == c_.size) finish("");
  }

  void send_tables() {
    std::vector<uint8_t> plain;
    if (c_.key.empty()) {
      MessageWriter w(MsgType::Hello, 0);
      w.put_u32(uint32_t(c_.size));
      for (const auto& b : res_.blobs) w.put_span(std::span<const uint8_t>(b));
      plain = w.finish();
    }
    int written = 0, to_write = 0;
    done_ = false;
    for (auto& j : joiners_) {
      if (j->rank < 0) continue;
      ++to_write;
      if (!c_.key.empty())
        j->out = j->hs->table(JoinTable{j->rank, c_.size, res_.blobs, res_.job});
      const std::vector<uint8_t>& msg = c_.key.empty() ? plain : j->out;
      asio::async_write(j->sock, asio::buffer(msg), [&, jp = j.get()](error_code wec, size_t) {
        if (wec) return finish("sending the table to " + jp->from + ": " + wec.message());
        if (++written == to_write) finish("");
      });
    }
    if (to_write == 0) return;
    if (!drive(io_, done_, deadline_))
      fail("rank 0: rendezvous at {}: could not send the address table to every rank within {} s",
           where(c_), seconds(c_.timeout));
    if (!error_.empty()) fail("rank 0: rendezvous at {}: {}", where(c_), error_);
  }

  const RendezvousConfig& c_;
  const Clock::time_point deadline_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  RendezvousResult res_;
  std::vector<std::string> from_;
  std::vector<std::unique_ptr<Joiner>> joiners_;
  int joined_ = 1;
  bool done_ = false;
  std::string error_;
};

// Every other rank: connects (retrying while rank 0 is not listening yet), says who it is, and
// reads the table; with a key, through the handshake.
class Joining {
 public:
  explicit Joining(const RendezvousConfig& c)
      : c_(c), deadline_(Clock::now() + c.timeout), sock_(io_) {}

  RendezvousResult run(std::span<const uint8_t> mine) {
    connect();
    std::vector<uint8_t> table;
    if (c_.key.empty()) {
      MessageWriter w(MsgType::Hello, 0);
      w.put_u32(uint32_t(c_.rank));
      w.put_u32(uint32_t(c_.size));
      w.put_span(mine);
      exchange(w.finish(), kMaxTable, "its hello", "the address table", table);
      return plain_table(table);
    }
    JoinWorker hs(c_.key);
    std::vector<uint8_t> challenge;
    exchange(hs.offer(), kMaxHello, "its Join Offer", "the challenge", challenge);
    std::vector<uint8_t> hello;
    try {
      hello = hs.answer_challenge(challenge, c_.rank < 0 ? kAnyRank : uint32_t(c_.rank), mine);
    } catch (const JoinRefused& e) {
      fail("{}: the process at the rendezvous address {}: {}", me(), where(c_), e.what());
    }
    exchange(hello, kMaxTable, "its Join Hello", "the address table", table);
    JoinTable t;
    try {
      t = hs.read_table(table);
    } catch (const JoinRefused& e) {
      fail("{}: rendezvous at {}: {}", me(), where(c_), e.what());
    }
    if (c_.rank >= 0 && t.rank != c_.rank)
      fail("{}: rank 0 at {} placed this process at rank {}", me(), where(c_), t.rank);
    if (c_.size > 0 && t.size != c_.size)
      fail("{}: rank 0 at {} says the job has {} ranks, this rank was told {} (RWKVPP_SIZE)", me(),
           where(c_), t.size, c_.size);
    return RendezvousResult{t.rank, t.size, std::move(t.blobs), std::move(t.job), 0};
  }

 private:
  std::string me() const { return c_.rank < 0 ? "worker" : fmt::format("rank {}", c_.rank); }

  void connect() {
    auto endpoints = resolve(io_, c_);
    asio::steady_timer timer(io_);
    bool done = false;
    std::string last_error = "no attempt finished";
    std::function<void()> attempt = [&] {
      asio::async_connect(sock_, endpoints, [&](error_code ec, const tcp::endpoint&) {
        if (!ec) {
          done = true;
          return;
        }
        last_error = ec.message();
        sock_.close();
        timer.expires_after(kRetry);
        timer.async_wait([&](error_code) { attempt(); });
      });
    };
    attempt();
    if (!drive(io_, done, deadline_))
      fail("{}: could not reach rank 0 at the rendezvous address {} within {} s: {}", me(),
           where(c_), seconds(c_.timeout), last_error);
  }

  // Sends `msg`, then reads one message into `in`.
  void exchange(const std::vector<uint8_t>& msg, uint64_t max_in, const char* sent,
                const char* wanted, std::vector<uint8_t>& in) {
    std::string error;
    bool done = false;
    asio::async_write(sock_, asio::buffer(msg), [&](error_code ec, size_t) {
      if (ec) {
        error = fmt::format("sending {}: {}", sent, ec.message());
        done = true;
        return;
      }
      async_read_message(sock_, in, max_in, [&](const std::string& rerr) {
        if (!rerr.empty()) error = fmt::format("reading {}: {}", wanted, rerr);
        done = true;
      });
    });
    if (!drive(io_, done, deadline_))
      fail("{}: joined the rendezvous at {} but rank 0 did not send {} within {} s (were all "
           "ranks started?)",
           me(), where(c_), wanted, seconds(c_.timeout));
    if (!error.empty())
      fail("{}: rendezvous at {}: {} (rank 0 may have refused this process: see its log)", me(),
           where(c_), error);
  }

  RendezvousResult plain_table(const std::vector<uint8_t>& buf) const {
    Message m = decode_message(buf, kMaxTable);
    if (m.header.msg_type() == MsgType::Join)
      fail("{}: rank 0 at {} runs the cluster-key handshake: give this rank the cluster key "
           "(RWKVPP_CLUSTER_KEY)",
           me(), where(c_));
    ByteReader r(m.payload, "rendezvous table from rank 0");
    int size = int(r.get_u32());
    if (size != c_.size)
      fail("{}: rank 0 at {} says the job has {} ranks, this rank was told {} (RWKVPP_SIZE)", me(),
           where(c_), size, c_.size);
    RendezvousResult res{c_.rank, size, {}, {}, 0};
    for (int i = 0; i < size; ++i) res.blobs.push_back(r.get_vector<uint8_t>());
    r.expect_end();
    return res;
  }

  const RendezvousConfig& c_;
  const Clock::time_point deadline_;
  asio::io_context io_;
  tcp::socket sock_;
};

}  // namespace

void parse_host_port(const std::string& s, const std::string& what, RendezvousConfig& cfg) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close != std::string::npos && close + 1 < s.size() && s[close + 1] == ':') {
      host = s.substr(1, close - 1);
      port = s.substr(close + 2);
    }
  } else if (size_t colon = s.rfind(':'); colon != std::string::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  char* end = nullptr;
  long p = port.empty() ? -1 : std::strtol(port.c_str(), &end, 10);
  if (host.empty() || p <= 0 || p > 65535 || *end != '\0')
    fail("{}='{}' is not HOST:PORT (e.g. 10.0.0.1:29500, or [::1]:29500)", what, s);
  cfg.host = host;
  cfg.port = uint16_t(p);
}

RendezvousConfig rendezvous_from_env() {
  RendezvousConfig c;
  std::optional<long> rank = env_long("RWKVPP_RANK"), size = env_long("RWKVPP_SIZE");
  const char* rank_var = "RWKVPP_RANK";
  if (!rank && !size) {
    // Started by a launcher that exports its own numbering (mpirun used as a plain launcher).
    if ((rank = env_long("OMPI_COMM_WORLD_RANK"))) {
      size = env_long("OMPI_COMM_WORLD_SIZE");
      rank_var = "OMPI_COMM_WORLD_RANK";
    } else if ((rank = env_long("SLURM_PROCID"))) {
      size = env_long("SLURM_STEP_NUM_TASKS");
      rank_var = "SLURM_PROCID";
    }
  }
  if (rank.has_value() != size.has_value())
    fail("set both RWKVPP_RANK and RWKVPP_SIZE (or neither, for a single rank)");
  c.rank = int(rank.value_or(0));
  c.size = int(size.value_or(1));
  if (c.size < 1 || c.size > (1 << 20)) fail("RWKVPP_SIZE={} is not a job size", c.size);
  if (c.rank < 0 || c.rank >= c.size)
    fail("{}={} is outside the job's ranks 0..{}", rank_var, c.rank, c.size - 1);
  if (const char* t = std::getenv("RWKVPP_RENDEZVOUS_TIMEOUT_S"); t && *t) {
    char* end = nullptr;
    double s = std::strtod(t, &end);
    if (end == t || *end != '\0' || !std::isfinite(s) || s <= 0 || s > 1e6)
      fail("RWKVPP_RENDEZVOUS_TIMEOUT_S='{}' is not a positive number of seconds", t);
    c.timeout = std::chrono::milliseconds(int64_t(std::llround(s * 1000)));
  }
  if (const char* k = std::getenv("RWKVPP_CLUSTER_KEY"); k && *k) c.key = load_cluster_key(k);
  const char* rv = std::getenv("RWKVPP_RENDEZVOUS");
  if (rv && *rv)
    parse_host_port(rv, "RWKVPP_RENDEZVOUS", c);
  else if (c.size > 1)
    fail("rank {} of {}: RWKVPP_RENDEZVOUS=HOST:PORT (rank 0's address) is not set", c.rank,
         c.size);
  return c;
}

RendezvousResult rendezvous_exchange(const RendezvousConfig& cfg, std::span<const uint8_t> mine) {
  if (cfg.rank < 0 && cfg.key.empty())
    fail("a process without a rank joins only with a cluster key (rwkvpp worker --cluster-key)");
  if (cfg.size == 1)
    return RendezvousResult{0, 1, {std::vector<uint8_t>(mine.begin(), mine.end())}, cfg.job, 0};
  if (cfg.rank == 0) return Rank0(cfg, mine).run();
  return Joining(cfg).run(mine);
}

}  // namespace rwkvpp
