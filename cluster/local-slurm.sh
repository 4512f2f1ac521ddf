#!/usr/bin/env bash
# A real one-node Slurm on this machine, for tests and trying the sbatch templates: munged with
# a freshly generated key, slurmctld and slurmd, all state in one folder. Run as root.
#
#   cluster/local-slurm.sh start    # prints the SLURM_CONF line to export
#   cluster/local-slurm.sh status
#   cluster/local-slurm.sh stop     # cancels our jobs, stops the daemons, removes the folder
#
# Exit codes of start: 0 up (the node is idle); 3 slurmctld cannot be started at all (not root,
# packages missing, munged or slurmctld refuse to run here: tests skip); 1 anything later.
#
# Environment: RWKVPP_SLURM_DIR (default /tmp/rwkvpp-slurm), RWKVPP_SLURM_PORT (slurmctld's port,
# default 6817; slurmd takes the next one), RWKVPP_SLURM_CPUS (CPUs the node claims, default 8:
# with SlurmdParameters=config_overrides a 2-core machine still runs 3+ tasks).
# Nothing outside the folder is touched: munged gets its own key and socket, and every Slurm
# command finds this cluster through SLURM_CONF=$RWKVPP_SLURM_DIR/slurm.conf.
# Packages: slurm-wlm and munge (scripts/deps.sh --slurm).
set -euo pipefail

dir=${RWKVPP_SLURM_DIR:-/tmp/rwkvpp-slurm}
port=${RWKVPP_SLURM_PORT:-6817}
cpus=${RWKVPP_SLURM_CPUS:-8}
node=$(hostname -s)
conf=$dir/slurm.conf

die() { echo "local-slurm: $*" >&2; exit 1; }
cannot() { echo "local-slurm: cannot start slurmctld: $*" >&2; stop; exit 3; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  # Our jobs first (by id, on our cluster only), so that no job process outlives slurmd.
  if pid_alive "$dir/slurmctld.pid"; then
    local ids
    ids=$(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null || true)
    if [[ -n $ids ]]; then
      # shellcheck disable=SC2086
      SLURM_CONF=$conf scancel $ids 2>/dev/null || true
      for _ in $(seq 1 50); do [[ -z $(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
    fi
  fi
  # Our own daemons only, by the pid files they wrote.
  for f in slurmd slurmctld munged; do
    local p=$dir/$f.pid
    if pid_alive "$p"; then
      local pid
      pid=$(cat "$p")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Only a folder this script made (it holds our config or munge key), never anything else.
  if [[ $dir == /?* && ( -f $dir/slurm.conf || -d $dir/munge ) ]]; then rm -rf "$dir"; fi
}

write_conf() {
  cat >"$conf" <<CONF
# Written by cluster/local-slurm.sh: one node, everything as root, no accounting, no cgroups.
ClusterName=rwkvpp-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=15
MinJobAge=600
SlurmctldTimeout=60
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  : >"$dir/plugstack.conf"
}

start() {
  [[ $(id -u) -eq 0 ]] || { echo "local-slurm: cannot start slurmctld: run as root (slurmd starts jobs as any user)" >&2; exit 3; }
  for b in munged mungekey slurmctld slurmd sbatch scontrol; do
    command -v "$b" >/dev/null || { echo "local-slurm: cannot start slurmctld: '$b' is missing: install slurm-wlm and munge (scripts/deps.sh --slurm)" >&2; exit 3; }
  done
  if pid_alive "$dir/slurmctld.pid"; then die "already running in $dir (cluster/local-slurm.sh stop first)"; fi
  stop
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
  chmod 755 "$dir" "$dir/munge"
  mungekey --create --keyfile="$dir/munge/munge.key" --bits=1024 --force >/dev/null
  chmod 600 "$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munged.seed" \
    || cannot "munged did not start: $(tail -n 3 "$dir/munged.log" 2>/dev/null)"
  write_conf
  export SLURM_CONF=$conf
  slurmctld -f "$conf" -c || cannot "$(tail -n 5 "$dir/slurmctld.log" 2>/dev/null)"
  local up=""
  for _ in $(seq 1 100); do
    if scontrol ping 2>/dev/null | grep -q "is UP"; then up=1; break; fi
    sleep 0.1
  done
  [[ -n $up ]] || cannot "it does not answer: $(tail -n 5 "$dir/slurmctld.log" 2>/dev/null)"
  slurmd -f "$conf" -N "$node" || die "slurmd did not start (see $dir/slurmd.log)"
  for _ in $(seq 1 100); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    if [[ $state == idle* ]]; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.2
  done
  echo "local-slurm: the node did not become idle (state '${state:-unknown}'); logs:" >&2
  tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if pid_alive "$dir/slurmctld.pid"; then
      SLURM_CONF=$conf sinfo
    else
      echo "not running"
      exit 1
    fi
    ;;
  *) die "usage: $0 start|stop|status" ;;
esac
