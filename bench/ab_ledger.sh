#!/bin/sh
# Instructions and cycles the ledger spends per durable issuance, two builds
# taking turns.
#
#   bench/ab_ledger.sh BUILD_A BUILD_B [seconds] [pairs] [dir]
#
# Each turn runs BUILD/bench/bench_ledger DIR SECONDS under `perf stat` and
# divides the process's instructions and cycles (callers, writer thread and
# kernel) by the issuances of all its rows. Instructions move little with a
# slow spell of a shared machine; cycles and issuances/s move a lot. Needs
# perf (linux-perf). DIR is where the databases go (default /var/tmp: a real
# disk, not tmpfs, since fdatasync is part of the cost).
set -eu

. "$(dirname "$0")/ab_pairs.sh"
ab_start "BUILD_A BUILD_B [seconds] [pairs] [dir]" "$@"
seconds=${3:-3}
pairs=${4:-3}
dir=${5:-/var/tmp}

# One turn: prints "| BUILD | instructions/issuance | cycles/issuance | issuances |".
turn() {
    build=$1
    perf stat -x, -e instructions,cycles -o "$work/stat" \
        "$build/bench/bench_ledger" "$dir" "$seconds" >"$work/out"
    # Rows are "| threads | issuances/s | ..."; each ran for SECONDS.
    issued=$(awk -F'|' -v s="$seconds" '/^\| +[0-9]/ {n += $3 * s} END {printf "%d", n}' "$work/out")
    instr=$(awk -F, '$3 ~ /^instructions/ {print $1}' "$work/stat")
    cycles=$(awk -F, '$3 ~ /^cycles/ {print $1}' "$work/stat")
    printf '| %s | %d | %d | %d |\n' "$build" $((instr / issued)) $((cycles / issued)) "$issued"
}

echo "| build | instructions/issuance | cycles/issuance | issuances |"
echo "|---|---|---|---|"
ab_pairs "$a" "$b" "$pairs"
