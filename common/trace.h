// Host timestamps of a step's way through the pipeline, for latency work: with RWKVPP_TRACE=PREFIX
// each rank records (what, step, CLOCK_MONOTONIC ns) at a few points of the step protocol and
// writes PREFIX.RANK.csv at the end of the run. The ranks of one host share the clock, so the
// files line up (scripts/trace_hops.py reads them). Off (one predictable branch per point) when
// the variable is unset. Not thread-safe: each rank records from its one protocol thread.
#pragma once

#include <cstdint>

namespace rwkvpp::trace {

enum class Point : uint8_t {
  StepPosted,   // coordinator: the Step is handed to MPI for stage 0
  StepArrived,  // stage: the Step's message has arrived (receive completed)
  InputQueued,  // stage: its input (embedding, or the hidden vectors' copy) is queued
  LayersQueued, // stage: its layers are queued (a graph launched, or each op)
  StepQueued,   // stage: its work is queued on the device and its message to the next stage posted
  ResultReady,  // last stage: the device has written the sampled ids (its fence passed)
  ResultIn,     // coordinator: the Result has arrived
};

bool on();
// The current time, when tracing (0 otherwise): to stamp an event whose step is known later.
uint64_t now_ns();
void mark(Point p, uint64_t step, uint64_t ns = 0);  // ns 0: now
// Writes the records to PREFIX.RANK.csv (columns: point, step, ns); a no-op when off.
void dump(int rank);

}  // namespace rwkvpp::trace
