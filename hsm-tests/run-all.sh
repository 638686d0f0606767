#!/bin/sh
# The one test command: installs what is missing, checks formatting, builds
# (warnings are errors) and runs every test, then does the same under
# AddressSanitizer + UndefinedBehaviorSanitizer.
#   hsm-tests/run-all.sh            everything
#   hsm-tests/run-all.sh --quick    skip the sanitizer pass
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

sh image/deps.sh test

echo "== format check (.clang-format)"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*')
# shellcheck disable=SC2086
clang-format --dry-run --Werror $files

build() { # build-dir cmake-args...
    dir=$1
    shift
    echo "== build $dir $*"
    cmake -S "$root" -B "$dir" "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
}

run_tests() { # build-dir ctest-args...
    dir=$1
    shift
    echo "== test $dir $*"
    ctest --test-dir "$dir" -j "$jobs" --output-on-failure --timeout 600 "$@"
}

build "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_tests "$root/build"

if [ "${1:-}" != "--quick" ]; then
    build "$root/build-asan" -DCMAKE_BUILD_TYPE=Debug -DESTGATE_SANITIZE=ON
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:suppressions=$root/hsm-tests/asan.supp"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    supp="suppressions=$root/hsm-tests/lsan.supp:print_suppressions=0"
    # Tests without a token: every leak is ours, fast unwinding is enough.
    export LSAN_OPTIONS="$supp"
    # (image/systemd, LABELS systemd, boots the unit under systemd: the first pass only.)
    run_tests "$root/build-asan" -LE 'token|systemd'
    # Token modules keep allocations until exit; only our leaks count. Slow
    # unwinding sees through libcrypto (no frame pointers) to the module that
    # called it, so a module's leaks made through OpenSSL are attributed to it.
    export LSAN_OPTIONS="$supp:fast_unwind_on_malloc=0"
    run_tests "$root/build-asan" -L token
fi
echo "== all tests passed"
