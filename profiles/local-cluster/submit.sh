#!/bin/sh
# A stand-in for sbatch: starts a Snakemake job script as a separate local process, in its own
# session, with an empty environment (a minimal PATH, a fresh HOME and TMPDIR), as a cluster
# node would; prints the job id, PID-TAG (TAG is random: pids are reused, job ids must not be).
# Whatever a job needs must come from the job script, never from the process that submitted it.
#   submit.sh [--cpus N] [--mem-mb N] [--runtime MIN] JOBSCRIPT
# Job output: logs/cluster/JOBSCRIPT_NAME.log; exit status: .snakemake/local-cluster/ID.exit.
set -eu
cpus=1 mem_mb=? runtime=?
while [ $# -gt 1 ]; do
    case $1 in
        --cpus) cpus=$2 ;;
        --mem-mb) mem_mb=$2 ;;
        --runtime) runtime=$2 ;;
        *) echo "submit.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
jobscript=$1
state=.snakemake/local-cluster
mkdir -p logs/cluster "$state"
log=logs/cluster/$(basename "$jobscript" .sh).log
home=$(mktemp -d "${TMPDIR:-/tmp}/local-cluster-job.XXXXXX")
tag=${home##*.}
echo "# requested: cpus=$cpus mem_mb=$mem_mb runtime=$runtime" > "$log"
# setsid: the job is its own session (cancel.sh signals all of it); env -i: nothing inherited.
# The job's shell records its exit status under its id: its own pid ($$, the $! below) and TAG.
setsid env -i PATH=/usr/bin:/bin HOME="$home" TMPDIR="$home" LANG=C.UTF-8 /bin/sh -c '
    env | sort | sed "s/^/# env: /"
    bash "$1"
    status=$?
    rm -rf "$2"
    echo "$status" > "$3/$$-$4.exit"
' job "$jobscript" "$home" "$state" "$tag" >> "$log" 2>&1 < /dev/null &
echo "$!-$tag"
