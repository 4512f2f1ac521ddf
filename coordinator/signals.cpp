// Stop handlers for SIGTERM and SIGINT; see signals.h for the contract.
#include "coordinator/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "coordinator/engine.h"

namespace rwkvpp {

namespace {

std::atomic<int> g_signal{0};
std::atomic<Engine*> g_engine{nullptr};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<Engine*>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

void say(const char* s) {
  ssize_t ignored = ::write(STDERR_FILENO, s, std::strlen(s));
  (void)ignored;
}

void on_signal(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {
    if (sig == SIGINT) {  // Ctrl-C twice: the user does not want to wait
      std::signal(SIGINT, SIG_DFL);
      std::raise(SIGINT);
    }
    return;
  }
  Engine* e = g_engine.load();
  if (!e) return;  // a worker rank, or the coordinator before its engine exists (it polls the flag)
  e->request_stop();
  say(sig == SIGTERM
          ? "rwkvpp: SIGTERM: stopping (writing what is complete; rerun the same command to "
            "resume)\n"
          : "rwkvpp: SIGINT: stopping (writing what is complete; Ctrl-C again to kill at once)\n");
}

}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking calls go on; the flag is polled
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

bool stop_requested() noexcept { return g_signal.load() != 0; }

int stop_signal() noexcept { return g_signal.load(); }

const char* stop_signal_name(int sig) noexcept {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    default:
      return "a signal";
  }
}

void stop_engine_on_signal(Engine* e) noexcept {
  g_engine.store(e);
  // A signal that came before the attachment still stops the engine.
  if (e && stop_requested()) e->request_stop();
}

}  // namespace rwkvpp
