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
    fail("rank {}: cannot resolve the rendezvous address {} (RWKVPP_RENDEZVOUS): {}", c.rank,
         where(c), ec ? ec.message() : "no address");
  return r;
}

struct Joiner {
  explicit Joiner(asio::io_context& io) : sock(io) {}
  tcp::socket sock;
  std::vector<uint8_t> buf;
  std::string from;  // the peer's address, for errors
  int rank = -1;     // once its hello was accepted
};

// Rank 0: accepts size - 1 ranks, then sends each the whole table.
std::vector<std::vector<uint8_t>> serve(const RendezvousConfig& c, std::span<const uint8_t> mine) {
  const auto deadline = Clock::now() + c.timeout;
  asio::io_context io;
  tcp::acceptor acceptor(io);
  tcp::endpoint ep = resolve(io, c).begin()->endpoint();
  error_code ec;
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    fail("rank 0: cannot listen on the rendezvous address {} (RWKVPP_RENDEZVOUS): {}", where(c),
         ec.message());

  std::vector<std::vector<uint8_t>> blobs(size_t(c.size));
  std::vector<std::string> from(size_t(c.size));
  blobs[0].assign(mine.begin(), mine.end());
  int joined = 1;
  bool done = false;
  std::string error;
  std::vector<std::unique_ptr<Joiner>> joiners;
  auto finish = [&](std::string e) {
    if (done) return;
    error = std::move(e);
    done = true;
  };
  auto on_hello = [&](Joiner& j) {
    ByteReader r(decode_message(j.buf, kMaxHello).payload, "rendezvous hello from " + j.from);
    int rank = int(r.get_u32()), size = int(r.get_u32());
    std::vector<uint8_t> blob = r.get_vector<uint8_t>();
    r.expect_end();
    if (size != c.size)
      fail("the process at {} says the job has {} ranks, rank 0 has {} (RWKVPP_SIZE)", j.from,
           size, c.size);
    if (rank <= 0 || rank >= c.size)
      fail("the process at {} claims rank {}, outside 1..{}", j.from, rank, c.size - 1);
    if (!from[size_t(rank)].empty())
      fail("two processes claim rank {}: {} and {}", rank, from[size_t(rank)], j.from);
    from[size_t(rank)] = j.from;
    j.rank = rank;
    blobs[size_t(rank)] = std::move(blob);
    if (++joined == c.size) finish("");
  };
  std::function<void()> accept_next = [&] {
    Joiner* j = joiners.emplace_back(std::make_unique<Joiner>(io)).get();
    acceptor.async_accept(j->sock, [&, j](error_code aec) {
      if (done || aec == asio::error::operation_aborted) return;  // all joined: closed
      if (aec) return finish("accept failed: " + aec.message());
      error_code pec;
      auto remote = j->sock.remote_endpoint(pec);
      j->from = pec ? "an unknown address" : remote.address().to_string() + ":" +
                                                 std::to_string(remote.port());
      async_read_message(j->sock, j->buf, kMaxHello, [&, j](const std::string& rerr) {
        if (done) return;
        if (!rerr.empty()) return finish("reading the hello from " + j->from + ": " + rerr);
        try {
          on_hello(*j);
        } catch (const Error& e) {
          finish(e.what());
        }
      });
      accept_next();
    });
  };
  accept_next();
  if (!drive(io, done, deadline)) {
    std::string missing;
    for (int r = 1; r < c.size; ++r)
      if (from[size_t(r)].empty()) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    fail("rank 0: rendezvous at {}: {} of {} ranks joined within {} s; missing rank(s) {} "
         "(RWKVPP_RENDEZVOUS_TIMEOUT_S)",
         where(c), joined, c.size, seconds(c.timeout), missing);
  }
  if (!error.empty()) fail("rank 0: rendezvous at {}: {}", where(c), error);
  acceptor.close();

  MessageWriter w(MsgType::Hello, 0);
  w.put_u32(uint32_t(c.size));
  for (const auto& b : blobs) w.put_span(std::span<const uint8_t>(b));
  const std::vector<uint8_t> table = w.finish();
  int written = 0, to_write = 0;
  done = false;
  for (auto& j : joiners) {
    if (j->rank < 0) continue;
    ++to_write;
    asio::async_write(j->sock, asio::buffer(table), [&, jp = j.get()](error_code wec, size_t) {
      if (wec) return finish("sending the table to " + jp->from + ": " + wec.message());
      if (++written == to_write) finish("");
    });
  }
  if (to_write == 0) return blobs;
  if (!drive(io, done, deadline))
    fail("rank 0: rendezvous at {}: could not send the address table to every rank within {} s",
         where(c), seconds(c.timeout));
  if (!error.empty()) fail("rank 0: rendezvous at {}: {}", where(c), error);
  return blobs;
}

// Every other rank: connects (retrying while rank 0 is not listening yet), says who it is, and
// reads the table.
std::vector<std::vector<uint8_t>> join(const RendezvousConfig& c, std::span<const uint8_t> mine) {
  const auto deadline = Clock::now() + c.timeout;
  asio::io_context io;
  auto endpoints = resolve(io, c);
  tcp::socket sock(io);
  asio::steady_timer timer(io);
  bool done = false;
  std::string last_error = "no attempt finished";
  std::function<void()> attempt = [&] {
    asio::async_connect(sock, endpoints, [&](error_code ec, const tcp::endpoint&) {
      if (!ec) {
        done = true;
        return;
      }
      last_error = ec.message();
      sock.close();
      timer.expires_after(kRetry);
      timer.async_wait([&](error_code) { attempt(); });
    });
  };
  attempt();
  if (!drive(io, done, deadline))
    fail("rank {}: could not reach rank 0 at the rendezvous address {} (RWKVPP_RENDEZVOUS) within "
         "{} s: {}",
         c.rank, where(c), seconds(c.timeout), last_error);

  MessageWriter w(MsgType::Hello, 0);
  w.put_u32(uint32_t(c.rank));
  w.put_u32(uint32_t(c.size));
  w.put_span(mine);
  const std::vector<uint8_t> hello = w.finish();
  std::vector<uint8_t> buf;
  std::string error;
  done = false;
  asio::async_write(sock, asio::buffer(hello), [&](error_code ec, size_t) {
    if (ec) {
      error = "sending its hello: " + ec.message();
      done = true;
      return;
    }
    async_read_message(sock, buf, kMaxTable, [&](const std::string& rerr) {
      if (!rerr.empty()) error = "reading the address table: " + rerr;
      done = true;
    });
  });
  if (!drive(io, done, deadline))
    fail("rank {}: joined the rendezvous at {} but rank 0 did not send the address table within "
         "{} s (were all {} ranks started?)",
         c.rank, where(c), seconds(c.timeout), c.size);
  if (!error.empty())
    fail("rank {}: rendezvous at {}: {} (rank 0 may have refused this rank: see its error)", c.rank,
         where(c), error);

  ByteReader r(decode_message(buf, kMaxTable).payload, "rendezvous table from rank 0");
  int size = int(r.get_u32());
  if (size != c.size)
    fail("rank {}: rank 0 at {} says the job has {} ranks, this rank was told {} (RWKVPP_SIZE)",
         c.rank, where(c), size, c.size);
  std::vector<std::vector<uint8_t>> blobs;
  for (int i = 0; i < size; ++i) blobs.push_back(r.get_vector<uint8_t>());
  r.expect_end();
  return blobs;
}

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
  const char* rv = std::getenv("RWKVPP_RENDEZVOUS");
  if (rv && *rv)
    parse_host_port(rv, "RWKVPP_RENDEZVOUS", c);
  else if (c.size > 1)
    fail("rank {} of {}: RWKVPP_RENDEZVOUS=HOST:PORT (rank 0's address) is not set", c.rank,
         c.size);
  return c;
}

std::vector<std::vector<uint8_t>> rendezvous_exchange(const RendezvousConfig& cfg,
                                                      std::span<const uint8_t> mine) {
  if (cfg.size == 1) return {std::vector<uint8_t>(mine.begin(), mine.end())};
  return cfg.rank == 0 ? serve(cfg, mine) : join(cfg, mine);
}

}  // namespace rwkvpp
