#!/usr/bin/env bash
# Single-node SLURM on this machine, for CI and for trying the slurm profile locally.
#
#   scripts/slurm-local.sh up       install (apt, only if missing), configure and start
#                                   munged + slurmctld + slurmd; waits until the node is idle
#   scripts/slurm-local.sh down     stop the three daemons (by pid file)
#   scripts/slurm-local.sh status   show daemons, node and queue; exit 1 unless the node is usable
#   scripts/slurm-local.sh up2      a SECOND cluster beside it with two compute nodes on this machine (below)
#   scripts/slurm-local.sh down2    stop it (by pid file)
#   scripts/slurm-local.sh status2  show it; exit 1 unless both nodes are usable
#
# Debian/Ubuntu, as root or with passwordless sudo (CI: a fresh clone, no stdin, no systemd).
# Fresh machine: apt-get update + install ~15-30 s, then ~1 s to start; already up: <1 s.
# Idempotent: `up` on a healthy cluster only reports it; a changed config restarts the daemons.
# No cgroups, no slurmdbd: `sacct` does not work here, so the Snakemake profile must use
# `slurm-status-command: squeue` (MinJobAge=300 below keeps finished jobs visible to squeue;
# the plugin requires MinJobAge >= 3 x slurm-init-seconds-before-status-checks).
# The node offers all CPUs (nproc) and 80% of MemTotal, in one partition `debug` (Default=YES), and two fake
# GPUs (gres gpu:2) so that GPU requests schedule as on a GPU node: SLURM gives a `--gpus=2` job
# CUDA_VISIBLE_DEVICES=0,1, while torch still sees no CUDA (runs with `device: cpu` train on the CPU with gloo).
# Their device files /run/nanogpt-fakegpu0 and 1 are symbolic links to /dev/null (slurmd wants a character
# device; a link needs no mknod), made by `up`; gres.conf names them with AutoDetect=off (no NVML here).
# Files: /etc/slurm/{slurm,gres}.conf, state in /var/lib/slurm, logs in /var/log/slurm, pid files in /run.
#
# Two nodes (up2), for the multi-node train job (tests/test_multinode.py): its own slurmctld (port 6827) and
# two slurmd (`slurmd -N <host>-n1|-n2`, ports 6828/6829), each node 1 CPU and 40% of MemTotal, all on
# 127.0.0.1 and sharing this filesystem; task/none (both nodes would otherwise bind their task to core 0).
# The login node (snakemake, sbatch) reaches it with SLURM_CONF=/etc/slurm-2node/slurm.conf. The slurmd run in
# their own mount namespace (unshare -m), where, as on a real compute node, /etc/slurm/ holds this
# cluster's config (the SLURM jobstep plugin drops SLURM_CONF from the rule's environment, so the train job's
# own srun reads the default path) and /etc/hosts resolves the node names to 127.0.0.1 (the rendezvous host is
# the first node's NAME); the machine's own /etc files are left alone. Both clusters share munged. Needs a
# SLURM built with --enable-multiple-slurmd (Debian's is: `scontrol show config` says MULTIPLE_SLURMD = Yes),
# unshare + mount namespaces, and 2 CPUs.
# Files: /etc/slurm-2node/{slurm.conf,hosts}, /var/lib/slurm-2node, /var/log/slurm-2node, /run/slurm-2node.
set -euo pipefail

PARTITION=debug
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
FAKE_GPUS=2   # the single node's fake GPUs: /run/nanogpt-fakegpu0 .. 1
LOGDIR=/var/log/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)
CONF2=/etc/slurm-2node/slurm.conf
STATE2=/var/lib/slurm-2node
LOGDIR2=/var/log/slurm-2node
RUN2=/run/slurm-2node
HOSTS2=/etc/slurm-2node/hosts   # the nodes' /etc/hosts
PORTS2=(6827 6828 6829)   # slurmctld, node 1, node 2

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

common_conf() {  # the slurm.conf lines the one- and two-node clusters share (scheduling, no accounting)
  cat <<'EOF'
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
EOF
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
# fake GPUs (gres.conf): a job's --gpus sets its CUDA_VISIBLE_DEVICES; nothing limits device access
GresTypes=gpu
$(common_conf)
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem_mb} Gres=gpu:${FAKE_GPUS} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p /etc/slurm
  install_if_changed "$tmp" "$CONF"
  tmp=$(mktemp)
  cat > "$tmp" <<EOF
# Written by scripts/slurm-local.sh: fake GPUs (links to /dev/null), no autodetection.
AutoDetect=off
NodeName=${host} Name=gpu File=/run/nanogpt-fakegpu[0-$(( FAKE_GPUS - 1 ))]
EOF
  install_if_changed "$tmp" "$GRES_CONF"
}

install_if_changed() {  # install_if_changed TMP DEST: move TMP to DEST (mode 0644); prints "changed" if it differed
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    rm -f "$1"
  else
    install -m 0644 "$1" "$2"; rm -f "$1"
    echo changed
  fi
}

make_fake_gpus() {  # the fake GPUs' device files (/run does not survive a reboot): links to /dev/null, harmless
  local i dev
  for i in $(seq 0 $(( FAKE_GPUS - 1 ))); do
    dev=/run/nanogpt-fakegpu$i
    [ -c "$dev" ] || ln -sfn /dev/null "$dev" || die "could not create $dev (a link to /dev/null)"
  done
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
  make_fake_gpus
  install -d -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld "$LOGDIR"
  install -d /var/lib/slurm/slurmd

  if [ -z "$changed" ] && pid_alive /run/slurmctld.pid && pid_alive /run/slurmd.pid \
     && scontrol ping 2>/dev/null | grep -q UP && node_usable; then
    say "already up (node $(hostname -s): $(node_state))"
    sinfo
    return 0
  fi
  if [ -n "$changed" ]; then
    say "wrote $CONF and $GRES_CONF ($(nproc) CPUs, $(awk -F= '/^NodeName/{for(i=1;i<=NF;i++) if($i ~ /RealMemory/) print $(i+1)}' "$CONF" | awk '{print $1}') MB, $FAKE_GPUS fake GPUs)"
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
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  if pid_alive "$RUN2/slurmctld.pid"; then
    say "stopped slurmd, slurmctld (munged keeps running for the two-node cluster)"
  else
    stop_pidfile /run/munge/munged.pid
    say "stopped slurmd, slurmctld, munged"
  fi
}

# ---- two nodes on this machine (up2/down2/status2) ----------------------------------------------------------

node_names2() { local h; h=$(hostname -s); echo "${h}-n1 ${h}-n2"; }

usable_nodes2() {  # how many of the two nodes are usable
  SLURM_CONF=$CONF2 sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated|completing)' || true
}

show_logs2() {
  local f
  for f in "$LOGDIR2"/*.log; do
    [ -f "$f" ] && { echo "---- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  return 0
}

write_conf2() {  # prints "changed" if the two-node slurm.conf was (re)written
  local host mem_mb tmp n1 n2
  host=$(hostname -s)
  [ -n "$host" ] || die "hostname -s is empty"
  read -r n1 n2 < <(node_names2)
  mem_mb=$(( $(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo) * 40 / 100 ))
  tmp=$(mktemp)
  cat > "$tmp" <<EOF
# Written by scripts/slurm-local.sh up2: two compute nodes on one machine (two slurmd, one per node name and
# port), beside the single-node cluster; no cgroups, no slurmdbd. Clients: SLURM_CONF=${CONF2}
ClusterName=local2
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${PORTS2[0]}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=${STATE2}/slurmctld
SlurmdSpoolDir=${STATE2}/slurmd-%n
SlurmctldPidFile=${RUN2}/slurmctld.pid
SlurmdPidFile=${RUN2}/slurmd-%n.pid
SlurmctldLogFile=${LOGDIR2}/slurmctld.log
SlurmdLogFile=${LOGDIR2}/slurmd-%n.log
# each node is 1 CPU of this machine: use the configured CPUs, and bind nothing (both would bind to core 0)
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$(common_conf)
NodeName=${n1} NodeHostname=${host} NodeAddr=127.0.0.1 Port=${PORTS2[1]} CPUs=1 RealMemory=${mem_mb} State=UNKNOWN
NodeName=${n2} NodeHostname=${host} NodeAddr=127.0.0.1 Port=${PORTS2[2]} CPUs=1 RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mkdir -p "$(dirname "$CONF2")"
  if [ -f "$CONF2" ] && cmp -s "$tmp" "$CONF2"; then
    rm -f "$tmp"
  else
    install -m 0644 "$tmp" "$CONF2"; rm -f "$tmp"
    echo changed
  fi
}

write_hosts2() {  # the nodes' /etc/hosts: the machine's, plus the node names on 127.0.0.1
  { cat /etc/hosts; echo "127.0.0.1 $(node_names2)"; } > "$HOSTS2.tmp" && mv -f "$HOSTS2.tmp" "$HOSTS2"
}

start_slurmd2() {  # start_slurmd2 NAME: one node's slurmd, in a mount namespace that looks like a compute node
  mkdir -p /etc/slurm
  unshare --mount --propagation private -- bash -c '
    mount --bind "$(dirname "$1")" /etc/slurm && mount --bind "$2" /etc/hosts || exit 3
    exec /usr/sbin/slurmd -f "$1" -N "$3" </dev/null' slurmd "$CONF2" "$HOSTS2" "$1"
}

mount_ns_ok() {  # can this machine make a mount namespace with a bind mount in it?
  unshare --mount --propagation private -- bash -c 'mount --bind "$1" /etc/hosts && getent hosts "$2" >/dev/null' \
    check "$HOSTS2" "${1}" 2>/dev/null
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

cmd_up2() {
  need_root up2
  local t0 changed n1 n2 n i f port multiple
  t0=$(date +%s)
  [ "$(nproc)" -ge 2 ] || die "two nodes of 1 CPU need 2 CPUs; this machine has $(nproc)"
  install_packages
  read -r n1 n2 < <(node_names2)
  changed=$(write_conf2)
  install -d -o slurm -g slurm "$STATE2" "$STATE2/slurmctld" "$LOGDIR2" "$RUN2"
  install -d "$STATE2/slurmd-$n1" "$STATE2/slurmd-$n2"
  write_hosts2
  command -v unshare >/dev/null || die "unshare (util-linux) is missing: the two nodes need their own mount namespace"
  mount_ns_ok "$n1" || die "cannot bind-mount inside a mount namespace here (unshare -m): the two nodes cannot run on this machine"
  export SLURM_CONF=$CONF2

  if [ -z "$changed" ] && pid_alive "$RUN2/slurmctld.pid" && pid_alive "$RUN2/slurmd-$n1.pid" \
     && pid_alive "$RUN2/slurmd-$n2.pid" && [ "$(usable_nodes2)" = 2 ]; then
    say "two-node cluster already up (nodes $n1 $n2); clients: SLURM_CONF=$CONF2"
    sinfo -N
    return 0
  fi
  if [ -n "$changed" ]; then
    say "wrote $CONF2 (nodes $n1 $n2, 1 CPU each)"
    cmd_down2 >/dev/null
  fi
  for i in 0 1 2; do
    case $i in 0) f=$RUN2/slurmctld.pid ;; 1) f=$RUN2/slurmd-$n1.pid ;; 2) f=$RUN2/slurmd-$n2.pid ;; esac
    port=${PORTS2[$i]}
    if ! pid_alive "$f" && port_in_use "$port"; then
      die "port $port is already in use (ss -ltnp 'sport = :$port'): the two-node cluster cannot start here"
    fi
  done

  start_munge
  if ! pid_alive "$RUN2/slurmctld.pid"; then
    rm -f "$RUN2/slurmctld.pid"
    /usr/sbin/slurmctld -c -f "$CONF2" </dev/null || { show_logs2; die "slurmctld (two-node) did not start"; }
  fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q UP || { show_logs2; die "slurmctld (two-node) is not answering (scontrol ping)"; }
  multiple=$(scontrol show config 2>/dev/null | awk '$1 == "MULTIPLE_SLURMD" {print $3}')
  if [ "$multiple" != "Yes" ]; then
    cmd_down2 >/dev/null
    die "this SLURM build cannot run two slurmd on one machine (MULTIPLE_SLURMD=${multiple:-No}: it needs configure --enable-multiple-slurmd)"
  fi
  for n in "$n1" "$n2"; do
    if ! pid_alive "$RUN2/slurmd-$n.pid"; then
      rm -f "$RUN2/slurmd-$n.pid"
      start_slurmd2 "$n" || { show_logs2; die "slurmd $n did not start"; }
    fi
  done

  for _ in $(seq 1 120); do
    [ "$(usable_nodes2)" = 2 ] && break
    for n in "$n1" "$n2"; do  # a node left DOWN/DRAINED by an earlier crash: put it back into service
      if sinfo -h -N -n "$n" -o %T 2>/dev/null | grep -qE '^(down|drain|drained|draining)'; then
        scontrol update NodeName="$n" State=RESUME 2>/dev/null || true
      fi
    done
    sleep 0.5
  done
  if [ "$(usable_nodes2)" != 2 ]; then
    sinfo -N -l >&2 || true
    show_logs2
    die "the two nodes did not become idle within 60 s"
  fi
  sinfo -N
  say "two-node cluster up in $(( $(date +%s) - t0 )) s (nodes $n1 $n2); clients: SLURM_CONF=$CONF2"
}

cmd_down2() {
  need_root down2
  local f
  for f in "$RUN2"/slurmd-*.pid "$RUN2/slurmctld.pid"; do [ -e "$f" ] && stop_pidfile "$f"; done
  if ! pid_alive /run/slurmctld.pid; then stop_pidfile /run/munge/munged.pid; fi
  say "stopped the two-node cluster"
}

cmd_status2() {
  local ok=0 f n1 n2
  read -r n1 n2 < <(node_names2)
  for f in "$RUN2/slurmctld.pid" "$RUN2/slurmd-$n1.pid" "$RUN2/slurmd-$n2.pid" /run/munge/munged.pid; do
    if pid_alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): not running"; ok=1; fi
  done
  if [ "$ok" = 0 ]; then
    SLURM_CONF=$CONF2 sinfo -N -o '%N %P %T %c %m' || ok=1
    SLURM_CONF=$CONF2 squeue -t all 2>/dev/null || true
    [ "$(usable_nodes2)" = 2 ] || { echo "two-node cluster: $(usable_nodes2) of 2 nodes usable"; ok=1; }
  fi
  [ "$ok" = 0 ] && echo "clients: SLURM_CONF=$CONF2"
  return "$ok"
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
  up2) cmd_up2 ;;
  down2) cmd_down2 ;;
  status2) cmd_status2 ;;
  *) echo "usage: $0 up|down|status|up2|down2|status2" >&2; exit 2 ;;
esac
