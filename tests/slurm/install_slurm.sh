#!/bin/sh
# Install a minimal single-node Slurm (controller + compute daemon + client) and munge,
# for the tests that bring up a real cluster (tests/slurm_cluster.py).
# Idempotent: does nothing when the binaries are already on PATH.
# Only installs packages (their scripts add users slurm and munge and a default
# /etc/munge/munge.key); it writes no configuration: the harness keeps its own config,
# munge key and state in the test's directory.
set -eu

PACKAGES="slurmctld slurmd slurm-client munge"

# Daemons live in /usr/sbin, which may be missing from a non-root PATH.
PATH="$PATH:/usr/sbin:/sbin"

have_all() {
    for bin in sbatch slurmctld slurmd munged; do
        command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

if have_all; then
    echo "Slurm and munge already installed: $(slurmd -V)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "cannot install Slurm: must run as root (apt-get install $PACKAGES)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install Slurm: apt-get not found; install $PACKAGES with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -qq --no-install-recommends $PACKAGES; }
# Refresh the package index only when needed: never fetched (fresh containers ship
# without one), or stale (install fails, e.g. 404 on an old package version).
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    apt-get update -qq
fi
# --no-install-recommends skips mail tools etc. Without systemd, the packages' maintainer
# scripts do not start any daemon, so nothing is left running after this.
apt_install || { apt-get update -qq && apt_install; }
have_all || { echo "Slurm binaries still missing after install" >&2; exit 1; }
echo "installed: $(slurmd -V)"
