// The HTTP front of rwkvpp serve on Boost.Beast (http_server.h): the listener, and one Session
// per connection that reads requests, hands them to ServeApi, and writes replies and streams.
// Builds with Boost 1.74 (Debian 12) and 1.83 (Ubuntu 24.04).
#include "coordinator/serve/http_server.h"

#include <fmt/format.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <mutex>
#include <optional>

namespace rwkvpp {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

// A session that output has arrived for (its generation's sink woke it).
class Wakeable {
 public:
  virtual void wake_now() = 0;  // schedules the session's work on its strand

 protected:
  ~Wakeable() = default;
};

struct HttpServer::Impl {
  Impl(const HttpOptions& o, ServeApi& a, ServeMetrics& m)
      : opt(o),
        api(a),
        metrics(m),
        acceptor(net::make_strand(ioc)),
        retry(acceptor.get_executor()),
        work(ioc.get_executor()) {}
  void accept();
  // From the engine thread: queues a session's wake. A step brings output for every running
  // stream at once; the first wake of a batch posts one drain to the io_context, which wakes
  // them all from an HTTP thread, instead of the engine thread posting to every session's
  // strand (a locked queue and often a thread wake-up each, on the step's critical path).
  void wake(std::weak_ptr<Wakeable> w);
  void drain_wakes();

  HttpOptions opt;
  ServeApi& api;
  ServeMetrics& metrics;
  net::io_context ioc;
  tcp::acceptor acceptor;
  net::steady_timer retry;  // after a failed accept (out of file descriptors)
  net::executor_work_guard<net::io_context::executor_type> work;
  std::atomic<bool> closing{false};  // no keep-alive: the server is shutting down
  std::atomic<int> generations{0};   // generations being written
  std::mutex wake_mu;
  std::vector<std::weak_ptr<Wakeable>> to_wake;  // since the last drain (under wake_mu)
};

void HttpServer::Impl::wake(std::weak_ptr<Wakeable> w) {
  bool first;
  {
    std::lock_guard<std::mutex> lock(wake_mu);
    first = to_wake.empty();
    to_wake.push_back(std::move(w));
  }
  if (first) net::post(ioc, [this] { drain_wakes(); });
}

void HttpServer::Impl::drain_wakes() {
  std::vector<std::weak_ptr<Wakeable>> batch;
  {
    std::lock_guard<std::mutex> lock(wake_mu);
    batch.swap(to_wake);
  }
  for (auto& w : batch)
    if (auto s = w.lock()) s->wake_now();
  batch.clear();
  std::lock_guard<std::mutex> lock(wake_mu);
  // Hands the capacity back when nothing came meanwhile (an empty queue has no drain posted).
  if (to_wake.empty() && to_wake.capacity() < batch.capacity()) to_wake.swap(batch);
}

namespace {

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

std::chrono::milliseconds ms(double s) { return std::chrono::milliseconds(int64_t(s * 1000)); }

// Errors that mean the connection is gone or timed out, not that the request was malformed.
bool connection_error(const beast::error_code& ec) {
  return ec == beast::error::timeout || ec == net::error::operation_aborted ||
         ec == net::error::eof || ec == net::error::connection_reset ||
         ec == net::error::broken_pipe || ec == http::error::end_of_stream ||
         ec == http::error::partial_message;
}

class Session final : public std::enable_shared_from_this<Session>, public Wakeable {
 public:
  Session(tcp::socket&& s, HttpServer::Impl& srv) : stream_(std::move(s)), srv_(srv) {}
  ~Session() {
    if (has_job_ && !ended_) srv_.api.cancel(job_id_);  // whatever way the connection died
    done_generation();
  }
  void run() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&Session::read, shared_from_this()));
  }
  void wake_now() override {
    net::post(stream_.get_executor(), [weak = weak_from_this()] {
      if (auto s = weak.lock()) s->on_wake();
    });
  }

 private:
  void read() {
    has_job_ = ended_ = last_sent_ = false;
    sink_.reset();
    renderer_.reset();
    pending_.clear();
    parser_.emplace();
    parser_->body_limit(srv_.opt.max_body_bytes);
    stream_.expires_after(ms(srv_.opt.idle_timeout_s));
    http::async_read(stream_, buf_, *parser_,
                     beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit) {
      reply(error_reply(
                ApiError(413,
                         fmt::format("the request body is larger than {} bytes (--max-body-bytes)",
                                     srv_.opt.max_body_bytes),
                         {}, "body_too_large")),
            false, true);
      return;
    }
    if (ec) {
      if (!connection_error(ec))
        reply(error_reply(ApiError(400, fmt::format("malformed HTTP request: {}", ec.message()), {},
                                   "bad_request")),
              false, true);
      else
        close();
      return;
    }
    const auto& req = parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive() && !srv_.closing.load();
    HttpRequestView v{sv(req.method_string()), sv(req.target()),
                      sv(req[http::field::authorization]), req.body()};
    auto wake = [srv = &srv_, weak = std::weak_ptr<Wakeable>(shared_from_this())] {
      srv->wake(weak);
    };
    auto result = srv_.api.handle(v, std::move(wake));
    if (auto* r = std::get_if<HttpReply>(&result))
      reply(std::move(*r), keep_alive_);
    else
      start_generation(std::move(std::get<StartedGeneration>(result)));
  }

  // `unread`: the request was not read to its end (too large, malformed): after the reply the
  // rest is read and dropped before the connection closes, so that a client still sending gets
  // the reply instead of a reset.
  void reply(HttpReply r, bool keep_alive, bool unread = false) {
    auto res = std::make_shared<http::response<http::string_body>>();
    res->version(version_);
    res->result(unsigned(r.status));
    res->set(http::field::server, "rwkvpp");
    res->set(http::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res->set(k, v);
    res->keep_alive(keep_alive && !srv_.closing.load());
    res->body() = std::move(r.body);
    res->prepare_payload();
    srv_.metrics.count_response(r.status);
    stream_.expires_after(ms(srv_.opt.idle_timeout_s));
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res, unread](beast::error_code ec, size_t) {
                        if (!ec && unread)
                          self->drain();
                        else if (ec || !res->keep_alive())
                          self->close();
                        else
                          self->read();
                      });
  }

  // Half-closes, then reads and drops what the client still sends, for a few seconds at most.
  void drain() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(5));
    drop_.resize(64 << 10);
    drain_more();
  }

  void drain_more() {
    stream_.async_read_some(net::buffer(drop_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec)
                                self->close();
                              else
                                self->drain_more();
                            });
  }

  void start_generation(StartedGeneration g) {
    sink_ = std::move(g.sink);
    job_id_ = g.job_id;
    has_job_ = true;
    stream_mode_ = g.meta.stream;
    renderer_.emplace(std::move(g.meta));
    gen_active_ = true;
    ++srv_.generations;
    stream_
        .expires_never();  // a generation takes as long as it takes (--request-timeout bounds it)
    if (stream_mode_) {
      head_ = std::make_unique<http::response<http::empty_body>>(http::status::ok, version_);
      head_->set(http::field::server, "rwkvpp");
      head_->set(http::field::content_type, "text/event-stream");
      head_->set(http::field::cache_control, "no-cache");
      chunked_ = version_ >= 11;  // HTTP/1.0: the stream ends with the connection
      if (!chunked_) keep_alive_ = false;
      head_->keep_alive(keep_alive_);
      head_->chunked(chunked_);
      srv_.metrics.count_response(200);
      serializer_ = std::make_unique<http::response_serializer<http::empty_body>>(*head_);
      writing_ = true;
      stream_.expires_after(ms(srv_.opt.idle_timeout_s));
      http::async_write_header(stream_, *serializer_,
                               beast::bind_front_handler(&Session::on_written, shared_from_this()));
    }
    watch();
    on_wake();  // output that came before the session was ready
  }

  // New output from the engine thread (on this connection's strand).
  void on_wake() {
    if (dead_ || !sink_) return;
    GenerationSink::Batch& b = taken_;
    sink_->take(b);
    for (const ChoiceEvent& e : b.events) pending_ += renderer_->event(e);
    if (b.end) {
      ended_ = true;
      if (!stream_mode_) {
        done_generation();
        HttpReply r;
        r.status = ResponseRenderer::status(*b.end);
        r.body = renderer_->end(*b.end);
        reply(std::move(r), keep_alive_);
        return;
      }
      pending_ += renderer_->end(*b.end);
    }
    pump();
  }

  void pump() {
    if (writing_ || dead_ || !stream_mode_) return;
    if (!pending_.empty()) {
      out_.swap(pending_);  // both keep their capacity
      pending_.clear();
      writing_ = true;
      stream_.expires_after(ms(srv_.opt.idle_timeout_s));  // a client that stops reading is dropped
      auto done = beast::bind_front_handler(&Session::on_written, shared_from_this());
      if (chunked_)
        net::async_write(stream_, http::make_chunk(net::buffer(out_)), std::move(done));
      else
        net::async_write(stream_, net::buffer(out_), std::move(done));
      return;
    }
    if (!ended_ || last_sent_) return;
    last_sent_ = true;
    done_generation();
    if (!chunked_) {
      close();
      return;
    }
    writing_ = true;
    net::async_write(stream_, http::make_chunk_last(),
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       if (ec || !self->keep_alive_ || self->srv_.closing.load())
                         self->close();
                       else
                         self->read();
                     });
  }

  void on_written(beast::error_code ec, size_t) {
    writing_ = false;
    if (ec) {
      gone();
      return;
    }
    pump();
  }

  // While a generation runs: notices a client that closes its end.
  void watch() {
    beast::get_lowest_layer(stream_).socket().async_wait(
        tcp::socket::wait_read,
        beast::bind_front_handler(&Session::on_readable, shared_from_this()));
  }

  void on_readable(beast::error_code ec) {
    if (!has_job_ || !gen_active_ || dead_) return;
    if (ec) {
      gone();
      return;
    }
    auto& sock = beast::get_lowest_layer(stream_).socket();
    char c;
    beast::error_code e2;
    sock.non_blocking(true, e2);
    const size_t n = sock.receive(net::buffer(&c, 1), tcp::socket::message_peek, e2);
    if (e2 == net::error::would_block || e2 == net::error::try_again) {
      watch();
      return;
    }
    if (e2 || n == 0) gone();
    // Otherwise the client sent more (a pipelined request): it is there; a failed write tells
    // if it goes later.
  }

  // The client went away: its job is cancelled (its slots free within a step).
  void gone() {
    if (dead_) return;
    if (has_job_ && !ended_) srv_.api.cancel(job_id_);
    close();
  }

  void close() {
    dead_ = true;
    done_generation();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  void done_generation() {
    if (gen_active_) {
      gen_active_ = false;
      --srv_.generations;
    }
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& srv_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  unsigned version_ = 11;
  bool keep_alive_ = false, dead_ = false;
  // The generation being served.
  std::shared_ptr<GenerationSink> sink_;
  GenerationSink::Batch taken_;  // the sink's last output (kept: its capacity is reused)
  std::optional<ResponseRenderer> renderer_;
  uint64_t job_id_ = 0;
  bool has_job_ = false, ended_ = false, gen_active_ = false, stream_mode_ = false;
  bool chunked_ = true, writing_ = false, last_sent_ = false;
  std::string pending_, out_;  // to write; being written
  std::vector<char> drop_;     // what drain() reads
  std::unique_ptr<http::response<http::empty_body>> head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> serializer_;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket s) {
    if (!acceptor.is_open()) return;
    if (!ec) {
      // Stream chunks are small writes one after another: without this, Nagle's algorithm
      // holds each behind the client's delayed ACK (some 40 ms).
      beast::error_code nd;
      s.set_option(tcp::no_delay(true), nd);
      std::make_shared<Session>(std::move(s), *this)->run();
      accept();
      return;
    }
    // Out of file descriptors or similar: try again a little later instead of spinning.
    retry.expires_after(std::chrono::milliseconds(50));
    retry.async_wait([this](beast::error_code) {
      if (acceptor.is_open()) accept();
    });
  });
}

HttpServer::HttpServer(const HttpOptions& o, ServeApi& api, ServeMetrics& m)
    : impl_(std::make_unique<Impl>(o, api, m)), n_threads_(std::max(1, o.threads)) {
  beast::error_code ec;
  tcp::resolver resolver(impl_->ioc);
  auto found = resolver.resolve(o.host, std::to_string(o.port),
                                tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || found.empty()) fail("--host '{}': cannot resolve it: {}", o.host, ec.message());
  const tcp::endpoint ep = found.begin()->endpoint();
  tcp::acceptor& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) fail("cannot listen on {}:{}: {}", o.host, o.port, ec.message());
  port_ = a.local_endpoint().port();
  host_ = ep.address().to_string();
}

HttpServer::~HttpServer() { shutdown(std::chrono::milliseconds(0)); }

void HttpServer::start() {
  net::post(impl_->acceptor.get_executor(), [this] { impl_->accept(); });
  for (int i = 0; i < n_threads_; ++i)
    threads_.emplace_back([this] {
      for (;;) {  // an exception must not leave the thread (it would end the process)
        try {
          impl_->ioc.run();
          return;
        } catch (const std::exception& e) {
          fmt::print(stderr, "rwkvpp serve: error in an HTTP thread: {}\n", e.what());
        }
      }
    });
}

void HttpServer::stop_accepting() {
  impl_->closing = true;
  net::post(impl_->acceptor.get_executor(), [this] {
    beast::error_code ec;
    impl_->acceptor.close(ec);
    impl_->retry.cancel();
  });
}

void HttpServer::shutdown(std::chrono::milliseconds timeout) {
  if (threads_.empty()) return;
  stop_accepting();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (impl_->generations.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  impl_->work.reset();
  impl_->ioc.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

}  // namespace rwkvpp
