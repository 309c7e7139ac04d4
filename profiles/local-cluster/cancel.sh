#!/usr/bin/env bash
# Cancel jobs (Ctrl-C on Snakemake): SIGTERM to each job's whole session, as scancel does.
#   cancel.sh PID-TAG...
for id in "$@"; do
    kill -TERM -- "-${id%%-*}" 2>/dev/null || true
done
