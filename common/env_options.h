// The RWKVPP_* environment switches that tune how rwkvpp runs (kernel choices, spinning, the
// stage's ways of moving hidden vectors, liveness), read from the environment once per process
// into one struct. docs/environment.md lists every variable rwkvpp reads, these and the ones
// of the launch protocol (RWKVPP_RANK, RWKVPP_TRANSPORT, ...), which stay with their readers.
//
// Each field names its variable and its meaning; the initialiser is the default (unset or
// empty). A malformed value:
//   - where the former reader refused it (RWKVPP_CPU_ISA's names aside, which
//     kernels/cpu/gemm.cpp checks against the CPU): an Error naming the variable, now from the
//     first env_options() call (rwkvpp's main() makes it before any command runs);
//   - where the former reader tolerated it (an on/off switch set to "yes", "2x" for a count): the
//     same value as before, plus one warning on stderr naming the variable and what was used.
// Plain data without fmt or CUDA types, so that .cu files include it too.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace rwkvpp {

// RWKVPP_SIDE_COPIES: which of a stage's hidden-vector copies through host memory run on side
// copy queues that overlap the neighbouring steps' layers.
enum class SideCopies : uint8_t {
  Off,    // "0": none, every copy on the step's queue
  Large,  // default: copies of at least 256 KiB (StepLoop::kSideCopyMinBytes)
  All,    // "all": every copy, whatever its size (what the pipeline check exercises)
};

struct EnvOptions {
  // The CPU backend (kernels/cpu/).
  struct Cpu {
    std::string isa;        // RWKVPP_CPU_ISA=scalar|avx2|avx512: the matrix kernels' instruction
                            // set ("": the best this CPU and build have; gemm.cpp checks names)
    int64_t spin_us = 200;  // RWKVPP_CPU_SPIN_US: how long a thread pool worker spins for the
                            // next job before it sleeps, microseconds
  } cpu;

  // The CUDA backend (kernels/cuda/). Switches "on unless 0" unless said otherwise.
  struct Cuda {
    bool invariant = false;     // RWKVPP_INVARIANT=1: batch-invariant matrix products by
                                // default (--batch-invariant on|off overrides)
    bool v7_fused = true;       // RWKVPP_V7_FUSED: RWKV-7's fused mix kernel (0: plain ops)
    bool seg_cache = true;      // RWKVPP_SEG_CACHE: skip uploading an unchanged segment table
    bool inline_ids = true;     // RWKVPP_INLINE_IDS: a few indices in kernel parameters (0: copied)
    bool pdl = true;            // RWKVPP_PDL: programmatic dependent launch (compute capability
                                // 9.0 or later only, whatever this says)
    int imma_tile = 64;         // RWKVPP_IMMA_TILE=128: the folding int8 kernel on 128x128 tiles
    int gemv_wpr = 0;           // RWKVPP_GEMV_WPR=1|2|4|8: warps per row of the few-token
                                // products (0: chosen by shape; other values are ignored)
    int gemv_pipe = -1;         // RWKVPP_GEMV_PIPE=0|1: the one-token loop plain or pipelined
                                // (-1, or any other value: pipelined for int8 weights only)
    bool share_events = false;  // RWKVPP_SHARE_SIGNAL=event: IPC events, not counters in GPU
                                // memory, for the shared slots' signals
    bool share_kernel = true;   // RWKVPP_SHARE_KERNEL: one kernel per hop of up to 64 KiB
                                // (0: the wait, copy and write as separate queued operations)
  } cuda;

  // A stage (worker/).
  struct Stage {
    bool share = true;         // RWKVPP_SHARE: shared slots between stages on one host (0: off)
    bool share_graph = false;  // RWKVPP_SHARE_GRAPH=1: device-sequenced rings of shared slots
    SideCopies side_copies = SideCopies::Large;  // RWKVPP_SIDE_COPIES=0|all (see SideCopies)
    bool device_times = false;        // RWKVPP_DEVICE_TIMES=1: every stage reports its device time
    uint64_t trace_device_every = 4;  // RWKVPP_TRACE_DEVICE_EVERY: with --trace, mark every N-th
                                      // step on the device (1..1000000)
    int sample_threads = 0;           // RWKVPP_SAMPLE_THREADS: threads of the last stage's sampling
                                      // (1..1024; 0: the host's cores less two, 1 to 16)
    int64_t spin_us = 50000;          // RWKVPP_SPIN_US: how long a GPU rank polls its transport
                                      // before napping, microseconds
  } stage;

  // Liveness and the transports (net/, coordinator/engine.cpp).
  struct Net {
    double peer_timeout_s = 20;   // RWKVPP_PEER_TIMEOUT_S: seconds of silence before a peer is
                                  // lost (0: the transports never time out; the engine keeps
                                  // 20); ranks other than 0 wait 1.5x (stretch_worker_timeout)
    bool ucx_peer_errors = true;  // RWKVPP_UCX_ERRORS=peer|none: UCX reports a lost peer
                                  // (none: shared memory allowed, a killed peer unseen by UCX)
  } net;
};

// This process's options: the environment as it was at the first call, parsed once
// (thread-safe; later calls return the same object without reading the environment). Throws
// Error naming every malformed variable; a failed parse is not kept, so the next call tries
// again. Warnings are printed once, at the parse.
const EnvOptions& env_options();

// Replaces this process's options by a changed copy: for a decision the code used to pass on
// by rewriting the environment (stretch_worker_timeout). Thread-safe; readers that already took
// a value (a transport's timeout, a cached kernel switch) keep it, so call it before those run.
void override_env_options(const std::function<void(EnvOptions&)>& change);

// For tests that set variables in-process (setenv): forgets the parsed options and any
// override, so that the next env_options() reads the environment again. References to the
// former options stay valid (they are kept). Values that a reader caches at its first use stay
// as they were: the CPU instruction set (kernels/cpu/gemm.cpp), the CUDA backend's PDL and
// signal kind (cuda_common.cuh, ipc.cu).
void reload_env_options();

// The parser behind env_options(): reads every variable through `lookup` (nullptr: unset),
// appends a line per tolerated malformed value to `warnings`, throws Error for the others.
EnvOptions parse_env_options(const std::function<const char*(const char*)>& lookup,
                             std::vector<std::string>* warnings);

}  // namespace rwkvpp
