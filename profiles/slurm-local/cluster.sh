#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for profiles/slurm-local and tests/test_slurm.py.
#   cluster.sh start DIR   start munged, slurmctld and slurmd; return when the node takes jobs
#   cluster.sh stop DIR    cancel its jobs, stop the daemons (by the pids they wrote under DIR),
#                          remove /etc/slurm/slurm.conf; DIR keeps the logs (DIR/log)
# Needs root and Debian's slurm-wlm and munge (.ci/slurm-install.sh installs them). Exit status 3:
# SLURM cannot run here (not root, not installed, or the machine's one slurm.conf is taken).
#
# State, logs, pid files and a munge key and socket of its own live under DIR, and the daemons
# listen on free ports, so the system's munged (if any) is not involved. The one system-wide file
# is /etc/slurm/slurm.conf, a symlink to DIR/slurm.conf: the SLURM executor plugin's jobstep runs
# each job through `srun` with every SLURM_* variable removed (SLURM_CONF included), so srun
# inside a job only finds the configuration where every SLURM client looks by default. That makes
# one cluster per machine: start refuses while another cluster.sh cluster runs, and never
# replaces a slurm.conf it did not write (a regular file).
#
# The node is this machine as `slurmd -C` sees it (hostname, CPUs, memory). Containers have no
# delegated cgroups, so processes are tracked by parent pid (proctrack/linuxproc) and nothing is
# confined (task/none): memory is scheduled, not enforced. There is no accounting database: a
# job stays visible to `squeue --states=all` for MinJobAge (an hour) after it ends, which is what the
# executor plugin's `status-command: squeue` needs (profiles/slurm-local/config.yaml).
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }
cannot() { echo "cluster.sh: $*" >&2; exit 3; }
[ $# -eq 2 ] || die "usage: cluster.sh start|stop DIR"
cmd=$1
dir=$(realpath -m -- "$2")
etc_conf=/etc/slurm/slurm.conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }  # alive PIDFILE

stop_daemon() {  # stop_daemon NAME: SIGTERM the pid in DIR/NAME.pid, wait up to 10 s, then SIGKILL
    local pidfile=$dir/$1.pid pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

case $cmd in
stop)
    [ -d "$dir" ] || exit 0
    if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
        # Jobs first, while slurmd can still signal their steps; wait for them to end.
        export SLURM_CONF=$dir/slurm.conf
        timeout 10 scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 150); do
            [ -z "$(squeue --noheader --format=%i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    if [ "$(readlink "$etc_conf" 2>/dev/null)" = "$dir/slurm.conf" ]; then
        rm -f "$etc_conf"
    fi
    rm -f "$dir/slurm.conf"
    exit 0
    ;;
start) ;;
*) die "unknown command '$cmd' (start or stop)" ;;
esac

[ "$(id -u)" = 0 ] || cannot "needs root (slurmd starts jobs as their user)"
for tool in munged mungekey slurmctld slurmd sbatch squeue sinfo scancel; do
    command -v "$tool" >/dev/null || cannot "$tool not found: install Debian's slurm-wlm and munge (.ci/slurm-install.sh)"
done
if [ -L "$etc_conf" ]; then
    other=$(dirname "$(readlink "$etc_conf")")
    ! alive "$other/slurmctld.pid" || cannot "a cluster is running in $other (cluster.sh stop $other)"
elif [ -e "$etc_conf" ]; then
    cannot "$etc_conf exists and is not ours: this machine has a SLURM set-up already"
fi
[ ! -e "$dir/slurm.conf" ] || die "$dir holds a cluster: cluster.sh stop $dir first"
up=false
trap '$up || "$0" stop "$dir"' EXIT  # a failed start stops what it started
mkdir -p "$dir"
chmod 700 "$dir"  # munged refuses a key or socket in a directory others can write
rm -rf "$dir/state" "$dir/spool" "$dir/munge.key" "$dir/munge.seed"  # a fresh cluster: no jobs from before
mkdir -p "$dir/state" "$dir/spool" "$dir/log"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# munge: a key and a daemon of our own. --force: munged would rather not run as root.
mungekey --create --keyfile="$dir/munge.key"
munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed"

node=$(slurmd -C | head -n 1)  # NodeName=HOST CPUs=.. Boards=.. ... RealMemory=..
case $node in NodeName=*) ;; *) die "unexpected 'slurmd -C' output: $node" ;; esac
cat > "$dir/slurm.conf" <<EOF
# Written by profiles/slurm-local/cluster.sh for a one-node test cluster.
ClusterName=llama2bin
SlurmctldHost=$(hostname -s)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
KillWait=5
$node State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p "$(dirname "$etc_conf")"
ln -sfn "$dir/slurm.conf" "$etc_conf"
export SLURM_CONF=$dir/slurm.conf
slurmctld
slurmd

# Ready when the node takes jobs.
for _ in $(seq 300); do
    state=$(sinfo --noheader --format=%t 2>/dev/null || true)
    case $state in idle|mix|alloc) up=true; exit 0 ;; esac
    sleep 0.1
done
die "the node did not come up (state '${state:-none}'); see $dir/log/"
