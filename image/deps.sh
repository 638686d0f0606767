#!/bin/sh
# Installs the Debian 12 packages estgate needs for one purpose, and only the
# ones that are missing: `image/deps.sh build|test|demo`.
# Runs apt-get update only when something has to be installed.
set -eu

build="cmake gcc make pkg-config libssl-dev openssl libp11-kit-dev
       libcunit1-dev libsqlite3-dev libinih-dev libcivetweb-dev"
tokens="softhsm2 p11-kit p11-kit-modules libnss3 libnss3-tools"
# Real EST clients for the end-to-end tests: curl + openssl, and Bouncy
# Castle's EST client run as a single-file Java program (needs a JDK), with
# Bouncy Castle's TLS (libbctls-java) for its channel-binding enrollment.
clients="curl openjdk-17-jdk-headless libbcpkix-java libbcprov-java libbcutil-java
         libbctls-java"
# Device clients on other TLS stacks (hsm-tests/devices): Mbed TLS as IoT firmware
# has it, and GnuTLS.
devices="libmbedtls-dev libgnutls28-dev"
# faketime: a daemon whose clocks jump a day, for its daily timer's test.
# systemd: systemd-analyze and systemd-sysusers check the unit (image/tests);
# systemd-container: systemd-nspawn boots a systemd that runs it (image/systemd).
test="$build $tokens $clients $devices faketime clang-format systemd systemd-container"
demo="$build $tokens curl"

case "${1:-}" in
build) want=$build ;;
test) want=$test ;;
demo) want=$demo ;;
*) echo "usage: $0 build|test|demo" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "estgate: installing missing packages:$missing"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing
