// --trace FILE.json across the ranks of a run (common/trace.h records; this moves).
//
// Clocks: right after its Hello, every stage rank other than rank 0 measures its clock's
// offset from rank 0's through the transport, as NTP does: kClockRounds exchanges of its send
// time t0 and rank 0's time t1, taking t3 on the answer's arrival; the round with the
// shortest round trip gives offset = (t0 + t3) / 2 - t1 (error at most half that round trip).
// Rank 0 also hands out the time that becomes timestamp 0 of the file.
//
// Events: at shutdown, after its Stats, every stage rank turns its ring into trace-event JSON
// on rank 0's clock and sends it (its size, then the events); rank 0 writes its own and every
// rank's into one file. Nothing is written by the other ranks, so no shared file system is
// needed.
#pragma once

#include <string>
#include <vector>

#include "net/transport.h"

namespace rwkvpp {

inline constexpr int kClockRounds = 16;

// Rank 0: answers a stage rank's kClockRounds clock exchanges.
void serve_clock(Transport& t, int peer);
// A stage rank: measures its offset from rank 0 and sets it (trace::set_clock). Returns the
// shortest round trip in ns (how far the offset may be off, twice over).
uint64_t measure_clock(Transport& t, int coord);

// A stage rank: sends its events (trace::events_json(rank, label)) to rank 0.
void send_trace(Transport& t, int coord, const std::string& label);
// Rank 0: receives a stage rank's events.
std::string recv_trace(Transport& t, int peer);

// The label of a rank's process in the trace: "rank 1 · stage 1 (layers 4-7) · host h".
std::string trace_label(int rank, int stage, int first, int last, const std::string& host);

}  // namespace rwkvpp
