#!/bin/sh
# Job status for Snakemake's generic cluster executor, as sacct would report it: running while
# the job's process lives; then success or failed by its exit status. A job killed outright
# (SIGKILL, out of memory) never records one: failed.
#   status.sh PID-TAG  ->  running | success | failed
exit_file=.snakemake/local-cluster/$1.exit
if [ -f "$exit_file" ]; then
    if [ "$(cat "$exit_file")" = 0 ]; then echo success; else echo failed; fi
elif ps -o stat= -p "${1%%-*}" 2>/dev/null | grep -q '^[^Z]'; then  # alive, and not a zombie
    echo running
else
    sleep 1  # the job may have written its status just now
    if [ -f "$exit_file" ] && [ "$(cat "$exit_file")" = 0 ]; then echo success; else echo failed; fi
fi
