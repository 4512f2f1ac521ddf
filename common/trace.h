// The run's timeline for `--trace FILE.json` (Chrome / Perfetto trace-event format): each rank
// records spans and counters of its steps into a bounded ring in memory; at the end every
// rank turns its ring into trace-event JSON objects (one process per rank, named by its role
// and host) and rank 0 writes them all into one file (protocol/trace_session.h moves them,
// and measures the clock offsets between ranks at start-up).
//
// Cost when off: one predictable branch per call (on() reads a plain bool). When on: a mutex
// and a push into a preallocated ring per event, a few events per step and stage.
//
// Times are CLOCK_MONOTONIC nanoseconds of this rank (now_ns()); set_clock() says how this
// rank's clock maps onto rank 0's, so that the written timestamps of every rank line up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rwkvpp::trace {

// The tracks (trace-event threads) of a rank's process.
enum class Track : uint8_t {
  Host = 1,       // the protocol thread: each step's receive wait, slot ops and input, layers, head, send
  Device = 2,     // the device's work per step (CUDA: timing events resolved after the fact)
  Hops = 3,       // messages on their way: a send from its post to its completion (async spans)
  Admission = 4,  // rank 0's coordinator: building and posting Steps, handling Results
};

// Whether tracing is on (after start()). Thread-safe to read.
bool on();
// Turns tracing on for this process with a ring for the last `max_steps` steps (at least 1).
// `base_ns`: the time that becomes timestamp 0 in the file (rank 0's clock; 0: now).
void start(uint64_t max_steps, uint64_t base_ns = 0);
// Turns tracing off and forgets every event (tests).
void reset();
// How this rank's clock maps onto rank 0's: rank0 = local - offset_ns. base_ns: rank 0's time
// that becomes timestamp 0.
void set_clock(int64_t offset_ns, uint64_t base_ns);
uint64_t base_ns();  // rank 0's time that becomes timestamp 0 (as set)

uint64_t now_ns();  // CLOCK_MONOTONIC, always (cheap)

// `name` must be a string literal (kept by pointer). `step`: the step the span belongs to
// (the ring keeps the last max_steps steps). end_ns >= begin_ns.
void span(Track track, const char* name, uint64_t step, uint64_t begin_ns, uint64_t end_ns);
// An asynchronous span (may overlap others on its track): Perfetto draws it in its own lane.
void async_span(Track track, const char* name, uint64_t step, uint64_t begin_ns, uint64_t end_ns);
// A counter's value from time ns on (a counter track of the rank's process).
void counter(const char* name, uint64_t step, uint64_t ns, double value);

// This rank's events as trace-event JSON objects separated by commas (no enclosing brackets):
// process and thread names first (`process_label`, e.g. "rank 1 stage 1 layers 4-7 (host a)"),
// then the spans and counters of the last max_steps steps, timestamps in microseconds on rank
// 0's clock. Empty when off.
std::string events_json(int pid, const std::string& process_label);
// Writes {"traceEvents": [fragments...], "displayTimeUnit": "ms", "otherData": {...}} to
// `path`; throws rwkvpp::Error naming the file when it cannot.
void write_file(const std::string& path, const std::vector<std::string>& fragments, const std::string& about);

// Events recorded so far (kept in the ring), for tests.
size_t recorded();

}  // namespace rwkvpp::trace
