// The HTTP/1.1 front of `rwkvpp serve`, on Boost.Beast over one Asio io_context driven by a few
// threads (one strand per connection). Each connection reads a request (body limit, read
// timeout), hands it to ServeApi, and writes the reply; a generation is written when it ends
// (non-streaming) or as server-sent events in chunked transfer encoding as it goes. While a
// generation runs the connection watches its socket: a client that closes it (or stops reading
// for --idle-timeout while we write) has its job cancelled, which frees its slots within one
// step. Keep-alive between requests, closed after --idle-timeout of silence.
//
// Threads: the constructor binds (throws Error naming the address when it cannot); start()
// runs the threads; stop_accepting() and shutdown() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/serve/api.h"

namespace rwkvpp {

struct HttpOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0: any free port (see HttpServer::port())
  int threads = 2;
  size_t max_body_bytes = size_t(1) << 20;
  double idle_timeout_s =
      60;  // reading a request, a keep-alive connection's silence, a stalled write
};

class HttpServer {
 public:
  HttpServer(const HttpOptions& o, ServeApi& api, ServeMetrics& m);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  uint16_t port() const { return port_; }
  const std::string& host() const { return host_; }
  void start();
  // Closes the listening socket; connections being served go on, keep-alive ones close after
  // their next reply.
  void stop_accepting();
  // Waits until no generation is being written (or `timeout` passes), then stops the threads.
  void shutdown(std::chrono::milliseconds timeout);

  struct Impl;  // Beast and Asio stay in http_server.cpp

 private:
  std::unique_ptr<Impl> impl_;
  std::vector<std::thread> threads_;
  std::string host_;
  uint16_t port_ = 0;
  int n_threads_ = 1;
};

}  // namespace rwkvpp
