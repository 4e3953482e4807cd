#!/bin/bash
# A real, private SLURM on this host: one controller and two emulated nodes (n1, n2), all on 127.0.0.1,
# everything (munge key and socket, slurm.conf, state, spool, logs, PID files) under one directory.
# Used by tests/slurm/ and to try launch/slurm/train.sbatch without a cluster.
#
#   launch/slurm/local_cluster.sh up     [DIR]   start (or find running) and print `export SLURM_CONF=...`
#   launch/slurm/local_cluster.sh status [DIR]   daemons alive? node states
#   launch/slurm/local_cluster.sh down   [DIR]   stop exactly the daemons started here, by their PID files
#
# DIR defaults to $LDM_SLURM_DIR or ${TMPDIR:-/tmp}/ldm-slurm. Must run as root (SlurmUser=root); installs
# nothing. Debian/Ubuntu: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
#
# Ports: slurmctld on BASE, the nodes on BASE+1 and BASE+2, with BASE from $LDM_SLURM_PORT or the first free
# triple at or above 46800. Job ids start at $LDM_SLURM_FIRST_JOB_ID or a random 1000..99000, so that two clusters
# side by side do not hand out the same ids (train.sbatch derives its rendezvous port from the job id).
# `up` and `down` are idempotent: `up` on a running cluster only prints the export line again.
set -euo pipefail

CMD="${1:-}"
DIR="${2:-${LDM_SLURM_DIR:-${TMPDIR:-/tmp}/ldm-slurm}}"
NODES=(n1 n2)
WAIT_S="${LDM_SLURM_WAIT_S:-60}"

usage() { echo "usage: $0 up|down|status [DIR]" >&2; exit 2; }
die() { echo "local_cluster: $*" >&2; exit 1; }

CONF="$DIR/etc/slurm.conf"

# A PID file names one of our daemons only if that process is alive and its command line carries our
# file (the config or the munge key): a recycled PID of an unrelated process is never signalled.
pid_of() {  # pid_of PIDFILE MARKER → prints the PID or nothing
  local f="$1" marker="$2" pid
  [[ -s "$f" ]] || return 0
  pid="$(tr -dc '0-9' < "$f")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
  if tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$marker"; then echo "$pid"; fi
}

daemons() {  # lines "name pidfile marker"
  echo "munged $DIR/run/munged.pid $DIR/etc/munge/munge.key"
  echo "slurmctld $DIR/run/slurmctld.pid $CONF"
  local n
  for n in "${NODES[@]}"; do echo "slurmd-$n $DIR/run/slurmd-$n.pid $CONF"; done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_base_port() {
  if [[ -n "${LDM_SLURM_PORT:-}" ]]; then echo "$LDM_SLURM_PORT"; return; fi
  local p
  for ((p = 46800; p < 47800; p += 3)); do
    if port_free "$p" && port_free $((p + 1)) && port_free $((p + 2)); then echo "$p"; return; fi
  done
  die "no free ports in 46800..47800; set LDM_SLURM_PORT"
}

write_conf() {
  local base="$1" first_id="$2" host
  host="$(hostname -s)"
  : > "$DIR/etc/plugstack.conf"
  cat > "$CONF" <<EOF
# Written by launch/slurm/local_cluster.sh: a private two-node cluster on 127.0.0.1.
ClusterName=ldmlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may restart only after this many seconds (default 120).
AuthInfo=socket=$DIR/run/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
# A requeued job is started by the main scheduler loop: every 2 s instead of 60 s.
SchedulerParameters=sched_interval=2
FirstJobId=$first_id
MinJobAge=600
KillWait=30
NodeName=n[1-2] NodeAddr=127.0.0.1 Port=[$((base + 1))-$((base + 2))] CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_nodes_idle() {
  local t0=$SECONDS states
  while ((SECONDS - t0 < WAIT_S)); do
    states="$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %t' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    if [[ "$states" == *"n1 idle"* && "$states" == *"n2 idle"* ]]; then return 0; fi
    sleep 1
  done
  echo "local_cluster: nodes not idle after ${WAIT_S}s: ${states:-no answer}; logs in $DIR/log" >&2
  return 1
}

wait_pidfile() {  # wait_pidfile FILE MARKER WHAT
  local t0=$SECONDS
  while ((SECONDS - t0 < WAIT_S)); do
    [[ -n "$(pid_of "$1" "$2")" ]] && return 0
    sleep 0.2
  done
  die "$3 did not start within ${WAIT_S}s; see $DIR/log"
}

up() {
  [[ "$(id -u)" == 0 ]] || die "must run as root (SlurmUser=root)"
  local b
  for b in munged mungekey slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || die "$b not found; apt-get install --no-install-recommends slurmctld slurmd slurm-client munge"
  done
  local running=0 name f m
  while read -r name f m; do [[ -n "$(pid_of "$f" "$m")" ]] && running=$((running + 1)); done < <(daemons)
  if ((running == 2 + ${#NODES[@]})) && [[ -f "$CONF" ]]; then
    echo "# already running" >&2
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  if ((running > 0)); then down; fi  # half up: start again from a clean state

  mkdir -p "$DIR"
  chmod 755 "$DIR"  # munge's socket below must be reachable by every user
  mkdir -p "$DIR/etc/munge" "$DIR/run/munge" "$DIR/state" "$DIR/log" "$DIR/lib/munge"
  chmod 700 "$DIR/etc/munge" "$DIR/lib/munge"
  chmod 755 "$DIR/run" "$DIR/run/munge" "$DIR/etc"
  for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done

  [[ -s "$DIR/etc/munge/munge.key" ]] || mungekey -c -k "$DIR/etc/munge/munge.key"
  chmod 400 "$DIR/etc/munge/munge.key"
  munged --force --key-file="$DIR/etc/munge/munge.key" --socket="$DIR/run/munge/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/lib/munge/munged.seed"
  wait_pidfile "$DIR/run/munged.pid" "$DIR/etc/munge/munge.key" munged

  local base first_id
  base="$(pick_base_port)"
  first_id="${LDM_SLURM_FIRST_JOB_ID:-$(( (RANDOM % 99 + 1) * 1000 ))}"
  write_conf "$base" "$first_id"

  slurmctld -f "$CONF" -i -c
  wait_pidfile "$DIR/run/slurmctld.pid" "$CONF" slurmctld
  for n in "${NODES[@]}"; do
    slurmd -f "$CONF" -N "$n"
    wait_pidfile "$DIR/run/slurmd-$n.pid" "$CONF" "slurmd -N $n"
  done
  wait_nodes_idle || { down; exit 1; }
  echo "# slurmctld on 127.0.0.1:$base, nodes n1 n2 on :$((base + 1)) :$((base + 2)), job ids from $first_id" >&2
  echo "export SLURM_CONF=$CONF"
}

down() {
  local name f m pid pids=() t0
  # Jobs first, through this cluster's own controller: their processes are children of our slurmd.
  if [[ -n "$(pid_of "$DIR/run/slurmctld.pid" "$CONF")" ]]; then
    SLURM_CONF="$CONF" scancel --user=root 2>/dev/null || true
    t0=$SECONDS
    while ((SECONDS - t0 < 40)) && [[ -n "$(SLURM_CONF="$CONF" squeue -h -t running,completing -o %i 2>/dev/null)" ]]; do
      sleep 1
    done
  fi
  # Reverse order: node daemons, then the controller, then munge.
  while read -r name f m; do
    pid="$(pid_of "$f" "$m")"
    if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); echo "# stopped $name ($pid)" >&2; fi
  done < <(daemons | tac)
  t0=$SECONDS
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < 30)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  return 0
}

status() {
  local name f m pid alive=0
  while read -r name f m; do
    pid="$(pid_of "$f" "$m")"
    if [[ -n "$pid" ]]; then echo "$name running ($pid)"; alive=$((alive + 1)); else echo "$name stopped"; fi
  done < <(daemons)
  if [[ -n "$(pid_of "$DIR/run/slurmctld.pid" "$CONF")" ]]; then SLURM_CONF="$CONF" sinfo -N || true; fi
  ((alive > 0))
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
