#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs and pip cannot give: Debian's slurm-wlm (slurmctld,
# slurmd and the client commands) and munge. Idempotent: installs only what is missing. Root.
# The test starts and stops the cluster itself (profiles/slurm-local/cluster.sh); nothing here
# starts a daemon (Debian's own services stay unconfigured: there is no /etc/slurm/slurm.conf).
set -euo pipefail
missing=()
for pkg in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "slurm-install.sh: installing ${missing[*]} needs root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
