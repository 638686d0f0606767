#!/bin/sh
# CPU cycles estgated spends per enrollment, two builds taking turns.
#
#   bench/ab_cycles.sh BUILD_A BUILD_B [seconds] [pairs]
#
# Each turn runs BUILD/bench/bench_est softhsm SECONDS with EG_BUILD_DIR=BUILD
# (so that build's estgated serves) and counts, with `perf stat` attached to
# the daemon for the whole simpleenroll phase, its cycles and instructions;
# dividing by the requests wrk counted in that phase gives a figure per
# enrollment that a slow spell of a shared machine moves much less than it
# moves req/s. Needs perf (linux-perf) and permission to attach to the daemon.
#
# To compare with an older commit:
#   git worktree add /tmp/old COMMIT
#   cmake -S /tmp/old -B /tmp/old/build -DCMAKE_BUILD_TYPE=RelWithDebInfo
#   cmake --build /tmp/old/build -j2
#   bench/ab_cycles.sh /tmp/old/build build 6 3
set -eu

. "$(dirname "$0")/ab_pairs.sh"
ab_start "BUILD_A BUILD_B [seconds] [pairs]" "$@"
seconds=${3:-6}
pairs=${4:-2}

# One turn: prints "BUILD cycles/enroll instr/enroll enroll/s".
turn() {
    build=$1
    EG_BUILD_DIR=$build "$build/bench/bench_est" softhsm "$seconds" >"$work/out" 2>&1 &
    bench=$!
    while ! pgrep -f "wrk.*simpleenroll" >/dev/null; do
        if ! kill -0 "$bench" 2>/dev/null; then
            echo "bench_est ended before its enroll phase:" >&2
            cat "$work/out" >&2
            exit 1
        fi
        sleep 0.05
    done
    daemon=$(pgrep -n -x estgated)
    wrk=$(pgrep -n -f "wrk.*simpleenroll")
    perf stat -x, -e cycles,instructions -p "$daemon" -o "$work/stat" -- \
        sh -c "while kill -0 $wrk 2>/dev/null; do sleep 0.05; done"
    wait "$bench"
    requests=$(sed -n '/wrk simpleenroll/,$p' "$work/out" | awk '/requests in/ {print $1; exit}')
    cycles=$(awk -F, '$3 ~ /^cycles/ {print $1}' "$work/stat")
    instr=$(awk -F, '$3 ~ /^instructions/ {print $1}' "$work/stat")
    rate=$(awk -F'|' '/^\| softhsm/ {gsub(/ /, "", $8); print $8}' "$work/out")
    printf '| %s | %d | %d | %s |\n' "$build" $((cycles / requests)) $((instr / requests)) "$rate"
}

echo "| build | cycles/enroll | instructions/enroll | enroll/s |"
echo "|---|---|---|---|"
ab_pairs "$a" "$b" "$pairs"
