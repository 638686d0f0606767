#!/bin/sh
# The main job on a fresh Debian 12 machine: installs what is missing, builds,
# provisions a demo SoftHSMv2 token with a CA and a TLS key, and shows them.
#   appliance/demo.sh            provision once, then reuse demo/
#   appliance/demo.sh --fresh    throw the demo token away and start over
# Everything lives in demo/ (git-ignored): the token, its PIN files, the
# certificates. PINs are random and only in files readable by you.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
demo=$root/demo
jobs=$(nproc 2>/dev/null || echo 2)

sh image/deps.sh demo

echo "== build"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$root/build" -j "$jobs" >/dev/null
provision=$root/build/provisioning/estgate-provision

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && module=$m && break
done
[ -n "$module" ] || { echo "demo: libsofthsm2.so not found" >&2; exit 69; }

[ "${1:-}" = "--fresh" ] && rm -rf "$demo"
export SOFTHSM2_CONF="$demo/softhsm2.conf"
tok="--module $module --token estgate-demo --pin-file $demo/user.pin"

if [ ! -f "$demo/ready" ]; then
    echo "== provision a demo token in $demo"
    rm -rf "$demo"
    mkdir -p "$demo/tokens"
    chmod 700 "$demo"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' \
        "$demo" >"$SOFTHSM2_CONF"
    umask 077
    openssl rand -hex 16 >"$demo/so.pin"
    openssl rand -hex 16 >"$demo/user.pin"
    "$provision" init-token --module "$module" --label estgate-demo \
        --so-pin-file "$demo/so.pin" --pin-file "$demo/user.pin"
    # shellcheck disable=SC2086
    "$provision" ca create $tok --label demo-ca --key ec-p256 \
        --subject "CN=estgate demo CA,O=estgate demo" --self-signed --days 3650 \
        --out "$demo/ca.pem"
    # shellcheck disable=SC2086
    "$provision" tls create $tok --label demo-tls --key ec-p256 --ca-label demo-ca \
        --dns localhost --ip 127.0.0.1 --ip ::1 --days 825 --out "$demo/tls-chain.pem"
    touch "$demo/ready"
fi

echo "== what the token holds"
# shellcheck disable=SC2086
"$provision" list $tok
echo "== the TLS certificate, checked with stock OpenSSL against the demo CA"
openssl verify -CAfile "$demo/ca.pem" -purpose sslserver "$demo/tls-chain.pem"
openssl x509 -in "$demo/tls-chain.pem" -noout -subject -issuer -enddate -ext subjectAltName
echo
echo "Demo token: $demo (SOFTHSM2_CONF=$SOFTHSM2_CONF)"
echo "CA certificate: $demo/ca.pem   TLS chain: $demo/tls-chain.pem"
