// A cluster without a launcher: worker daemons that join a coordinator (issue 20).
//
//   rwkvpp keygen /etc/rwkvpp/cluster.key                    # once; copy it to every box (0600)
//   rwkvpp worker --join 10.0.0.1:29500 --cluster-key K      # on each worker box
//   rwkvpp serve -m M --listen 10.0.0.1:29500 --workers 3 --cluster-key K   # the coordinator
//
// The coordinator (rank 0) listens; each worker dials it (workers listen on nothing), runs the
// cluster-key handshake (net/control/join_handshake.h), is numbered in join order, and receives
// with the UCX address table the job: the coordinator's model and pipeline options as JSON.
// From there every rank runs run_cluster() as under mpirun, over the UCX transport; the worker
// keeps its own --device, --threads and --memory, and may open its own copy of the model
// (--model; the fingerprint check of run_cluster refuses a different one).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "coordinator/cluster.h"
#include "coordinator/commands.h"
#include "net/transport.h"

namespace rwkvpp {

// --listen, --workers, --cluster-key, --join-timeout on a model command.
void add_listen_options(CLI::App* c, ClusterOptions& o);

// The transport of rank 0 (or of a launched rank): with --listen, UCX through the keyed
// rendezvous, sending the job; else make_transport() (mpirun, srun, RWKVPP_TRANSPORT).
std::unique_ptr<Transport> make_cluster_transport(const ClusterOptions& o);

// The job a worker daemon receives: what of ClusterOptions every rank must agree on.
std::string job_to_json(const ClusterOptions& o);
// Fills `o` from a job; throws Error naming the field that is wrong.
void job_from_json(const std::string& job, ClusterOptions& o);

void add_worker_command(CLI::App& app, Action& run);  // rwkvpp worker
void add_keygen_command(CLI::App& app, Action& run);  // rwkvpp keygen

}  // namespace rwkvpp
