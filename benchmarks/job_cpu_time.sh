#!/bin/bash
# The CPU time of a running Snakemake's jobs (what sharing the machine hardly changes, unlike wall time):
# polls /proc/PID/stat of the snakemake process until it exits and prints its own CPU seconds and its
# reaped children's (every finished job), from the last reading before it exited.
#   benchmarks/job_cpu_time.sh $(pgrep -f "snakemake all") run-name >> times.txt
# (docs/results/fmnist-cpu*/README.md: the CPU times quoted there were read this way.)
pid=$1; name=${2:-snakemake}; last=""
while [ -r "/proc/$pid/stat" ]; do
  s=$(cat "/proc/$pid/stat" 2>/dev/null) && last=$(echo "$s" | awk '{print $14+$15, $16+$17}')
  sleep 2
done
tick=$(getconf CLK_TCK)
echo "$last" | awk -v n="$name" -v t="$tick" '{printf "%s: snakemake %.0f s, jobs %.0f s CPU (ended %s)\n", n, $1/t, $2/t, strftime("%FT%TZ", systime(), 1)}'
