#!/usr/bin/env bash
# Single-node SLURM "cluster" on this machine, for CI and for tests/system/test_slurm.py.
#
#   .ci/slurm.sh install   install Debian's slurm-wlm + munge (skipped when present)
#   .ci/slurm.sh start     install if needed, write /etc/slurm/slurm.conf, start
#                          munged, slurmctld and slurmd by hand (no systemd) and wait
#                          until the node is idle
#   .ci/slurm.sh stop      stop the daemons this script started (pid files)
#   .ci/slurm.sh status    daemons, sinfo, squeue
#
# Facts this relies on (Slurm 22.05, Debian 12):
#   * jobs' srun reads /etc/slurm/slurm.conf and ignores SLURM_CONF, so the config is
#     written there (an existing, foreign slurm.conf is backed up once, never
#     silently lost);
#   * accounting is off, so `sacct` cannot report job states: Snakemake's slurm
#     plugin must run with `--slurm-status-command squeue`, and MinJobAge must stay
#     well above the plugin's status-check interval (it needs >= 120 s) or finished
#     jobs vanish from squeue before Snakemake sees them and it waits forever;
#   * cons_tres + CR_Core_Memory makes Slurm honour --mem / mem_mb, so several
#     small jobs share the node instead of each taking all of it.
#
# Environment knobs: SLURM_CI_MEM_RESERVE_MB (memory kept back from Slurm, default
# max(1024, 10% of RAM)), SLURM_CI_TIMEOUT (seconds to wait for the node, default 90),
# SLURM_CI_PARTITION (default "debug").
set -euo pipefail

PARTITION="${SLURM_CI_PARTITION:-debug}"
TIMEOUT="${SLURM_CI_TIMEOUT:-90}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# written by ftdrift .ci/slurm.sh"
RUN_DIR=/run/ftdrift-slurm          # records which daemons *we* started
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

die() { echo "slurm.sh: ERROR: $*" >&2; exit 1; }
log() { echo "slurm.sh: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    SUDO=()
fi
as_root() { "${SUDO[@]}" "$@"; }
need_root() {
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "needs root (or password-less sudo) to $1"
    fi
}

installed() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

pid_alive() {  # pid_alive FILE -> 0 when FILE names a running process
    local f=$1 pid
    [ -r "$f" ] || return 1
    pid=$(as_root cat "$f" 2>/dev/null) || return 1
    [ -n "$pid" ] && as_root kill -0 "$pid" 2>/dev/null
}

pkg_version() {
    dpkg-query -W -f='slurm ${Version}' slurm-client 2>/dev/null \
        || echo "slurm (version unknown: no config yet)"
}

do_install() {
    if installed; then
        log "slurm and munge already installed ($(pkg_version))"
        return 0
    fi
    need_root "install packages"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian/Ubuntu hosts are supported"
    # No init system here: keep the packages' maintainer scripts from trying to start
    # the daemons (they would fail without a config). Only remove what we created.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends slurm-wlm munge
    } || rc=$?
    if [ "$made_policy" -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" -eq 0 ] || die "apt-get install slurm-wlm munge failed (exit $rc)"
    installed || die "packages installed but slurmctld/slurmd/sbatch/munged still not on PATH"
    log "installed $(pkg_version)"
}

node_line() {
    # "NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=<reduced>"
    local host=$1 total_mb reserve_mb real_mb hw
    total_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    reserve_mb=${SLURM_CI_MEM_RESERVE_MB:-$(( total_mb / 10 > 1024 ? total_mb / 10 : 1024 ))}
    real_mb=$(( total_mb - reserve_mb ))
    [ "$real_mb" -ge 512 ] || die "too little memory for a Slurm node (${total_mb} MB total, ${reserve_mb} MB reserved)"
    # slurmd -C reports the real topology; fall back to a plain CPU count.
    hw=$(as_root slurmd -C 2>/dev/null | awk '/^NodeName=/ {for (i=2;i<=NF;i++) if ($i !~ /^(RealMemory|UpTime)=/) printf "%s ", $i}') || hw=""
    [ -n "$hw" ] || hw="CPUs=$(nproc) "
    echo "NodeName=${host} ${hw}RealMemory=${real_mb} State=UNKNOWN"
}

write_conf() {
    local host=$1
    as_root mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd "$RUN_DIR"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        [ -e "$CONF.ftdrift-backup" ] || as_root cp -p "$CONF" "$CONF.ftdrift-backup"
        log "backed up the existing $CONF to $CONF.ftdrift-backup"
    fi
    as_root tee "$CONF" >/dev/null <<EOF
$MARK -- single-node test cluster, not for production
ClusterName=ftdrift-ci
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# accounting off: job states come from squeue only, so keep finished jobs visible
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs without a memory request get 1 GB instead of the whole node
DefMemPerCPU=1024
$(node_line "$host")
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    log "wrote $CONF"
}

start_munge() {
    if pid_alive "$MUNGE_PID"; then
        log "munged already running"
        return 0
    fi
    as_root mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    if ! as_root test -s /etc/munge/munge.key; then
        if command -v mungekey >/dev/null 2>&1; then
            as_root mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        log "created /etc/munge/munge.key"
    fi
    if id munge >/dev/null 2>&1; then
        as_root chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
        as_root chmod 0700 /etc/munge
        as_root chmod 0400 /etc/munge/munge.key
        as_root chmod 0755 /run/munge
        as_root runuser -u munge -- /usr/sbin/munged
    else
        as_root /usr/sbin/munged --force
    fi
    touch_mark munged
    local i
    for i in $(seq 1 20); do
        if munge -n </dev/null | unmunge >/dev/null 2>&1; then
            log "munged up"
            return 0
        fi
        sleep 0.5
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

touch_mark() { as_root mkdir -p "$RUN_DIR"; as_root touch "$RUN_DIR/$1.started"; }

start_daemon() {  # start_daemon NAME PIDFILE
    local name=$1 pidfile=$2
    if pid_alive "$pidfile"; then
        log "$name already running (pid $(as_root cat "$pidfile"))"
        return 0
    fi
    # both daemonize themselves and write their pid file; -R on slurmd/slurmctld not
    # needed, state is kept in /var/spool so a restart keeps queued jobs
    as_root "/usr/sbin/$name"
    touch_mark "$name"
    local i
    for i in $(seq 1 20); do
        pid_alive "$pidfile" && { log "$name started (pid $(as_root cat "$pidfile"))"; return 0; }
        sleep 0.5
    done
    as_root tail -n 30 "$LOG_DIR/$name.log" >&2 || true
    die "$name did not start (log above: $LOG_DIR/$name.log)"
}

wait_idle() {
    local host=$1 deadline state
    deadline=$(( $(date +%s) + TIMEOUT ))
    while :; do
        state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n1 || true)
        case "$state" in
            idle|mixed|allocated|completing)
                log "node $host is $state in partition $PARTITION"
                return 0 ;;
            down*|drain*|drained*|inval*)
                # e.g. left "down" by an earlier run's saved state
                as_root scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "---- sinfo -N -l" >&2; sinfo -N -l >&2 || true
            echo "---- scontrol show node $host" >&2; scontrol show node "$host" >&2 || true
            echo "---- $LOG_DIR/slurmctld.log (tail)" >&2; as_root tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true
            echo "---- $LOG_DIR/slurmd.log (tail)" >&2; as_root tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
            die "node $host not idle after ${TIMEOUT}s (last state: '${state:-none}')"
        fi
        sleep 1
    done
}

do_start() {
    installed || do_install
    need_root "configure and start the daemons"
    local host
    host=$(hostname -s)
    [ -n "$host" ] || die "hostname -s is empty"
    if pid_alive "$CTLD_PID" || pid_alive "$SLURMD_PID"; then
        log "Slurm daemons already running; keeping the current $CONF"
    else
        write_conf "$host"
    fi
    start_munge
    start_daemon slurmctld "$CTLD_PID"
    start_daemon slurmd "$SLURMD_PID"
    wait_idle "$host"
}

stop_one() {  # stop_one NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    if ! as_root test -e "$RUN_DIR/$name.started"; then
        pid_alive "$pidfile" && log "$name not started by this script; leaving it running"
        return 0
    fi
    if pid_alive "$pidfile"; then
        pid=$(as_root cat "$pidfile")
        as_root kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 20); do
            as_root kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if as_root kill -0 "$pid" 2>/dev/null; then
            as_root kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    fi
    as_root rm -f "$RUN_DIR/$name.started"
}

do_stop() {
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
    stop_one munged "$MUNGE_PID"
}

do_status() {
    local name pidfile rc=0
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pidfile=$MUNGE_PID ;;
            slurmctld) pidfile=$CTLD_PID ;;
            slurmd) pidfile=$SLURMD_PID ;;
        esac
        if pid_alive "$pidfile"; then
            echo "$name: running (pid $(as_root cat "$pidfile"))"
        else
            echo "$name: not running"; rc=1
        fi
    done
    if command -v sinfo >/dev/null 2>&1; then
        sinfo || rc=1
        squeue || rc=1
    else
        echo "slurm not installed"; rc=1
    fi
    return $rc
}

case "${1:-}" in
    install) do_install ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
