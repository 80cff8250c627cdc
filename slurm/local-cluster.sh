#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost (slurmctld + slurmd + munged, no systemd, no
# cgroups), for the SLURM tests and for trying slurm/*.sbatch on a workstation.
#
#   slurm/local-cluster.sh install   # apt-get install slurm-wlm munge iproute2 (root)
#   slurm/local-cluster.sh start     # prints `export SLURM_CONF=...`; waits until the node is idle
#   slurm/local-cluster.sh stop      # stops the daemons it started (by their pid files)
#
# State lives in $SLURM_LOCAL_DIR (default /tmp/hybrid-dist-slurm). Needs root (munge key, slurmd).
#
# Two hosts on this machine (tests/test_multihost.py; docs/slurm.md "Two hosts on one machine"):
#   slurm/local-cluster.sh multihost-start   # hosts node1, node2: each a network + UTS namespace
#                                            # (10.200.0.1, 10.200.0.2 on a veth pair), slurmctld on
#                                            # node1, one slurmd per host; prints SLURM_CONF
#   slurm/local-cluster.sh on node1 CMD...   # run a client (sbatch, squeue, ...) on a host
#   slurm/local-cluster.sh multihost-stop    # daemons, leftover processes of the hosts, namespaces,
#                                            # /etc/hosts entries (and munged if it started it)
# State in $SLURM_MULTIHOST_DIR (default /tmp/hybrid-dist-slurm-2host). Start and stop are idempotent;
# the single-node cluster can run alongside (its daemons live in the root network namespace).
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/hybrid-dist-slurm}
HOST=$(hostname -s)
# GNU nproc answers OMP_NUM_THREADS when it is set; slurmd wants the real count
CPUS=${SLURM_LOCAL_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
MEM_MB=${SLURM_LOCAL_MEM_MB:-8000}
MUNGE_PID=/run/munge/hybrid-dist-munged.pid

install() {
    export DEBIAN_FRONTEND=noninteractive
    # iproute2 (ip netns) for the two-host mode
    command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v ip >/dev/null && return 0
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge iproute2 >/dev/null
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

# what both clusters (one host, two hosts) schedule with
scheduling_conf() {
    cat <<CONF
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
CONF
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
$(scheduling_conf)
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

# ---------------------------------------------------------------- two hosts on one machine
MH_DIR=${SLURM_MULTIHOST_DIR:-/tmp/hybrid-dist-slurm-2host}
MH_NET=10.200.0          # only addresses inside the namespaces created here
MH_MARK="# hybrid-dist-multihost"  # tags our /etc/hosts lines, so stop removes exactly those
MH_NODES=(node1 node2)

mh_ns() { echo "hd-$1"; }  # network namespace of a host

mh_write_conf() {
    mkdir -p "$MH_DIR/state" "$MH_DIR/log" "$MH_DIR/spool/node1" "$MH_DIR/spool/node2"
    cat > "$MH_DIR/slurm.conf" <<CONF
ClusterName=local2host
SlurmctldHost=node1($MH_NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$MH_DIR/state
SlurmdSpoolDir=$MH_DIR/spool/%n
SlurmctldPidFile=$MH_DIR/slurmctld.pid
SlurmdPidFile=$MH_DIR/slurmd-%n.pid
SlurmctldLogFile=$MH_DIR/log/slurmctld.log
SlurmdLogFile=$MH_DIR/log/slurmd-%n.log
$(scheduling_conf)
# a node whose slurmd stops answering is DOWN after 30 s, not the default 300
SlurmdTimeout=30
NodeName=node1 NodeAddr=$MH_NET.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=node2 NodeAddr=$MH_NET.2 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

mh_hosts() {
    ip netns list | grep -qw "$(mh_ns node1)" || ip netns add "$(mh_ns node1)"
    ip netns list | grep -qw "$(mh_ns node2)" || ip netns add "$(mh_ns node2)"
    if ! ip -n "$(mh_ns node1)" link show hd-v1 >/dev/null 2>&1; then
        ip link add hd-v1 netns "$(mh_ns node1)" type veth peer name hd-v2 netns "$(mh_ns node2)"
        ip -n "$(mh_ns node1)" addr add "$MH_NET.1/24" dev hd-v1
        ip -n "$(mh_ns node2)" addr add "$MH_NET.2/24" dev hd-v2
    fi
    for i in 1 2; do
        ip -n "$(mh_ns node$i)" link set lo up
        ip -n "$(mh_ns node$i)" link set "hd-v$i" up
    done
    # names for both hosts everywhere (slurm's NodeAddr aside, gloo and Ray resolve hostnames);
    # /etc/hosts may be a bind mount: rewrite it in place, never replace the file
    if ! grep -q "$MH_MARK" /etc/hosts; then
        printf '%s\n' "$MH_NET.1 node1 $MH_MARK" "$MH_NET.2 node2 $MH_MARK" >> /etc/hosts
    fi
}

# `nsenter --net`, not `ip netns exec`: the latter remounts /sys without /sys/fs/cgroup, and slurmd fails
on() {
    local node=$1; shift
    nsenter --net="/run/netns/$(mh_ns "$node")" "$@"
}

mh_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mh_start() {
    mkdir -p "$MH_DIR"
    if ! munge -n >/dev/null 2>&1; then touch "$MH_DIR/munge-started-here"; fi
    start_munge
    mh_write_conf
    mh_hosts
    export SLURM_CONF="$MH_DIR/slurm.conf"
    # each host's daemons in its own UTS namespace: its own hostname, which slurmd and slurmctld
    # use to find themselves in slurm.conf
    if ! mh_alive "$MH_DIR/slurmctld.pid"; then
        on node1 unshare --uts sh -c "hostname node1 && slurmctld -f '$SLURM_CONF'"
    fi
    for node in "${MH_NODES[@]}"; do
        if ! mh_alive "$MH_DIR/slurmd-$node.pid"; then
            on "$node" unshare --uts sh -c "hostname $node && slurmd -f '$SLURM_CONF' -N $node"
        fi
    done
    for _ in $(seq 150); do
        if [ "$(on node1 sinfo -h -N -o %T 2>/dev/null | grep -cx idle)" = 2 ]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "the two SLURM hosts did not become idle; logs in $MH_DIR/log" >&2
    on node1 sinfo -N >&2 || true
    return 1
}

mh_stop() {
    local pidfile pid node ns
    for pidfile in "$MH_DIR/slurmd-node2.pid" "$MH_DIR/slurmd-node1.pid" "$MH_DIR/slurmctld.pid"; do
        if mh_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    for node in "${MH_NODES[@]}"; do
        ns=$(mh_ns "$node")
        if ip netns list | grep -qw "$ns"; then
            # whatever still runs on the host (job steps, Ray) was started by this cluster
            for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns"  # takes the veth pair with it
        fi
    done
    if grep -q "$MH_MARK" /etc/hosts; then
        grep -v "$MH_MARK" /etc/hosts > "$MH_DIR/hosts.tmp" || true
        cat "$MH_DIR/hosts.tmp" > /etc/hosts
        rm -f "$MH_DIR/hosts.tmp"
    fi
    # jobs of this cluster die with it: a restarted controller must not find them again
    rm -rf "$MH_DIR/state" "$MH_DIR/spool"
    if [ -f "$MH_DIR/munge-started-here" ]; then
        # munged is shared with the single-node cluster: stop it only when that one is not running
        if ! mh_alive "$DIR/slurmctld.pid" && [ -s "$MUNGE_PID" ]; then
            kill "$(cat "$MUNGE_PID")" 2>/dev/null || true
            rm -f "$MUNGE_PID"
        fi
        rm -f "$MH_DIR/munge-started-here"
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    multihost-start) mh_start ;;
    multihost-stop) mh_stop ;;
    on) shift; on "$@" ;;
    *) echo "usage: $0 install|start|stop|multihost-start|multihost-stop|on HOST CMD..." >&2; exit 2 ;;
esac
