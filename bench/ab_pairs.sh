# Sourced by bench/ab_*.sh.

# ab_start USAGE "$@": sets a and b to the two builds (exit 2 with USAGE when
# they are missing), and work to a scratch directory removed on exit.
ab_start() {
    ab_usage=$1
    shift
    if [ $# -lt 2 ]; then
        echo "usage: $0 $ab_usage" >&2
        exit 2
    fi
    a=$1
    b=$2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
}

# ab_pairs BUILD_A BUILD_B PAIRS: runs the caller's turn() for build A, then
# B, PAIRS times, so a slow spell of a shared machine falls on both alike.
ab_pairs() {
    ab_i=0
    while [ "$ab_i" -lt "$3" ]; do
        turn "$1"
        turn "$2"
        ab_i=$((ab_i + 1))
    done
}
