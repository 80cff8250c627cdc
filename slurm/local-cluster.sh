#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost (slurmctld + slurmd + munged, no systemd, no
# cgroups), for the SLURM tests and for trying slurm/*.sbatch on a workstation.
#
#   slurm/local-cluster.sh install   # apt-get install slurm-wlm munge (root)
#   slurm/local-cluster.sh start     # prints `export SLURM_CONF=...`; waits until the node is idle
#   slurm/local-cluster.sh stop      # stops the daemons it started (by their pid files)
#
# State lives in $SLURM_LOCAL_DIR (default /tmp/hybrid-dist-slurm). Needs root (munge key, slurmd).
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/hybrid-dist-slurm}
HOST=$(hostname -s)
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM_MB=${SLURM_LOCAL_MEM_MB:-8000}
MUNGE_PID=/run/munge/hybrid-dist-munged.pid

install() {
    export DEBIAN_FRONTEND=noninteractive
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
    mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        head -c 1024 /dev/urandom > /etc/munge/munge.key
    fi
    chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    chmod 755 /run/munge
    if ! munge -n >/dev/null 2>&1; then
        sudo_munge=(runuser -u munge --)
        # the pid file lives in munge's own run directory: munged may run as the munge user
        "${sudo_munge[@]}" munged --force --pid-file="$MUNGE_PID" 2>/dev/null \
            || munged --force --pid-file="$MUNGE_PID"
    fi
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "munged did not start" >&2; return 1
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
# preemption tests requeue jobs: let them start again at once
JobRequeue=1
MinJobAge=300
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

start() {
    mkdir -p "$DIR"
    start_munge
    write_conf
    export SLURM_CONF="$DIR/slurm.conf"
    if [ ! -s "$DIR/slurmctld.pid" ] || ! kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        slurmctld -f "$SLURM_CONF"
    fi
    if [ ! -s "$DIR/slurmd.pid" ] || ! kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; then
        slurmd -f "$SLURM_CONF"
    fi
    for _ in $(seq 100); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "the SLURM node did not become idle; logs in $DIR/log" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$MUNGE_PID"; do
        if [ -s "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$pidfile"
        fi
    done
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
