#!/usr/bin/env bash
# Single-node SLURM on this machine, for CI and for trying the slurm profile locally.
#
#   scripts/slurm-local.sh up       install (apt, only if missing), configure and start
#                                   munged + slurmctld + slurmd; waits until the node is idle
#   scripts/slurm-local.sh down     stop the three daemons (by pid file)
#   scripts/slurm-local.sh status   show daemons, node and queue; exit 1 unless the node is usable
#
# Debian/Ubuntu, as root or with passwordless sudo (CI: a fresh clone, no stdin, no systemd).
# Fresh machine: apt-get update + install ~15-30 s, then ~1 s to start; already up: <1 s.
# Idempotent: `up` on a healthy cluster only reports it; a changed config restarts the daemons.
# No cgroups, no slurmdbd: `sacct` does not work here, so the Snakemake profile must use
# `slurm-status-command: squeue` (MinJobAge=300 below keeps finished jobs visible to squeue;
# the plugin requires MinJobAge >= 3 x slurm-init-seconds-before-status-checks).
# The node offers all CPUs (nproc) and 80% of MemTotal, in one partition `debug` (Default=YES).
# Files: /etc/slurm/slurm.conf, state in /var/lib/slurm, logs in /var/log/slurm, pid files in /run.
set -euo pipefail

PARTITION=debug
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)

die() { echo "slurm-local: ERROR: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

need_root() {  # not root: re-run under passwordless sudo (CI runners), else fail with a hint
  [ "$(id -u)" = 0 ] && return 0
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n "$0" "$@"
  fi
  die "must run as root (try: sudo $0 $*)"
}

pid_alive() {  # pid_alive PIDFILE -> 0 if the process in PIDFILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1 || true; }

node_usable() { node_state | grep -qE '^(idle|mixed|allocated|completing)'; }

show_logs() {
  for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "---- last lines of $f" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
     && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing (Debian/Ubuntu only)"
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null || die "apt-get update failed"
  # no recommends: skips ~40 packages (slurm-wlm metapackage, hwloc plugins) that are not needed
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge </dev/null >/dev/null \
    || die "apt-get install of slurmctld slurmd slurm-client munge failed"
}

write_conf() {  # prints "changed" if slurm.conf was (re)written
  local host ncpu mem_mb tmp
  host=$(hostname -s)
  ncpu=$(nproc)
  mem_mb=$(( $(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo) * 80 / 100 ))
  [ -n "$host" ] || die "hostname -s is empty"
  tmp=$(mktemp)
  cat > "$tmp" <<EOF
# Written by scripts/slurm-local.sh: single-node SLURM, no cgroups, no slurmdbd.
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd.log
# no cgroups anywhere (task/affinity binds tasks to cores without them)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: sacct fails, squeue works. Snakemake's slurm plugin needs
# slurm-status-command: squeue and MinJobAge >= 3 x slurm-init-seconds-before-status-checks.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without --mem would otherwise take the whole node
DefMemPerCPU=1000
ReturnToService=2
# reject impossible requests at sbatch time instead of pending forever
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p /etc/slurm
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
  else
    install -m 0644 "$tmp" "$CONF"; rm -f "$tmp"
    echo changed
  fi
}

stop_pidfile() {  # stop_pidfile PIDFILE: SIGTERM, wait up to 10 s, SIGKILL; remove the pid file
  local f=$1 pid
  if [ -s "$f" ]; then
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && { say "pid $pid ($f) ignored SIGTERM, sending SIGKILL"; kill -9 "$pid" 2>/dev/null || true; }
    fi
  fi
  # slurmctld runs as user slurm and cannot remove its own pid file in /run
  rm -f "$f"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- /usr/sbin/mungekey --create --keyfile /etc/munge/munge.key \
      || die "could not create /etc/munge/munge.key"
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  stop_pidfile /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged </dev/null || { show_logs; die "munged did not start"; }
  for _ in $(seq 1 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  show_logs; die "munged started but munge -n | unmunge fails"
}

cmd_up() {
  need_root up
  local t0 changed
  t0=$(date +%s)
  install_packages
  changed=$(write_conf)
  install -d -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld "$LOGDIR"
  install -d /var/lib/slurm/slurmd

  if [ -z "$changed" ] && pid_alive /run/slurmctld.pid && pid_alive /run/slurmd.pid \
     && scontrol ping 2>/dev/null | grep -q UP && node_usable; then
    say "already up (node $(hostname -s): $(node_state))"
    sinfo
    return 0
  fi
  if [ -n "$changed" ]; then
    say "wrote $CONF ($(nproc) CPUs, $(awk -F= '/^NodeName/{for(i=1;i<=NF;i++) if($i ~ /RealMemory/) print $(i+1)}' "$CONF" | awk '{print $1}') MB)"
    # a new config (CPU count, memory, host) needs fresh daemons
    stop_pidfile /run/slurmd.pid
    stop_pidfile /run/slurmctld.pid
  fi

  start_munge
  if ! pid_alive /run/slurmctld.pid; then
    rm -f /run/slurmctld.pid
    # -c: start with an empty job state (old jobs from a previous run are dropped)
    /usr/sbin/slurmctld -c </dev/null || { show_logs; die "slurmctld did not start"; }
  fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q UP || { show_logs; die "slurmctld is not answering (scontrol ping)"; }
  if ! pid_alive /run/slurmd.pid; then
    rm -f /run/slurmd.pid
    /usr/sbin/slurmd -N "$(hostname -s)" </dev/null || { show_logs; die "slurmd did not start"; }
  fi

  for _ in $(seq 1 120); do
    node_usable && break
    # a node left DOWN/DRAINED by an earlier crash: put it back into service
    if node_state | grep -qE '^(down|drain|drained|draining)'; then
      scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
    fi
    sleep 0.5
  done
  if ! node_usable; then
    sinfo -N -l >&2 || true
    scontrol show node >&2 || true
    show_logs
    die "node did not become idle within 60 s (state: $(node_state))"
  fi
  sinfo
  say "up in $(( $(date +%s) - t0 )) s; partition '$PARTITION' (default); status command for Snakemake: squeue"
}

cmd_down() {
  need_root down
  local f
  for f in "${PIDS[@]}"; do stop_pidfile "$f"; done
  say "stopped slurmd, slurmctld, munged"
}

cmd_status() {
  local ok=0 f name
  for f in "${PIDS[@]}"; do
    name=$(basename "$f" .pid)
    if pid_alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: not running"; ok=1; fi
  done
  if command -v sinfo >/dev/null && [ "$ok" = 0 ]; then
    sinfo -N -o '%N %P %T %c %m' || ok=1
    squeue -t all 2>/dev/null || true
    node_usable || { echo "node not usable (state: $(node_state))"; ok=1; }
  fi
  return "$ok"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
