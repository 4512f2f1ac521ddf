// Graceful stop for long jobs (rwkvpp batch): SIGTERM (Slurm's time limit, preemption, scancel,
// mpirun passing on its own SIGTERM) and SIGINT (Ctrl-C) set a flag instead of killing the
// process, and ask an attached Engine to stop; the job then writes what is complete and exits.
//
// Contract:
// - install_stop_handlers() is called before run_cluster() (a rank does not know its rank yet);
//   run_cluster() then makes worker ranks ignore SIGTERM, so that they keep serving steps until
//   the coordinator's Shutdown (mpirun and Slurm signal every rank). On a worker the handler
//   is left for SIGINT only, where it sets a flag nobody reads: Ctrl-C, which a terminal sends
//   to every local rank, is handled by rank 0 alone.
// - The first signal is recorded (stop_signal()); later SIGTERMs are ignored (Slurm and mpirun
//   may both deliver one); a second SIGINT restores the default action and kills the process
//   at once, for a user who does not want to wait.
// - The handler only touches lock-free atomics and write(2): it is async-signal-safe.
#pragma once

namespace rwkvpp {

class Engine;

// Installs the SIGTERM and SIGINT handlers described above (idempotent).
void install_stop_handlers();
// True once SIGTERM or SIGINT arrived.
bool stop_requested() noexcept;
// The first signal that arrived (SIGTERM or SIGINT), 0 if none.
int stop_signal() noexcept;
// "SIGTERM", "SIGINT", or "signal N".
const char* stop_signal_name(int sig) noexcept;
// Attaches the engine that a signal stops (Engine::request_stop()); nullptr detaches. When a
// signal already arrived, `e` is asked to stop at once. The engine must outlive the attachment.
void stop_engine_on_signal(Engine* e) noexcept;

}  // namespace rwkvpp
