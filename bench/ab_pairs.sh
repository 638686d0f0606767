# Sourced by bench/ab_*.sh: runs the caller's turn() for build A, then B,
# PAIRS times, so a slow spell of a shared machine falls on both alike.
#
#   ab_pairs BUILD_A BUILD_B PAIRS
ab_pairs() {
    ab_i=0
    while [ "$ab_i" -lt "$3" ]; do
        turn "$1"
        turn "$2"
        ab_i=$((ab_i + 1))
    done
}
