#!/bin/sh
# The main job on a fresh Debian 12 machine: installs what is missing, builds,
# provisions a demo SoftHSMv2 token with a CA and a TLS key, writes a demo
# configuration (a Basic-auth profile and an mTLS profile), and runs estgated
# on https://localhost:8443 in the foreground (Ctrl-C stops it).
#   appliance/demo.sh            provision once, then reuse demo/
#   appliance/demo.sh --fresh    throw the demo token away and start over
# Everything lives in demo/ (git-ignored): the token, its PIN files, the
# certificates, the configuration and the ledger. PINs and the demo password
# are random and only in files readable by you.
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
estgated=$root/build/appliance/estgated

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
    # The iot profile's client trust: a file of its own, since `estgate-provision
    # bundle install` replaces it whole and ca.pem is also the issuing chain.
    cp "$demo/ca.pem" "$demo/client-ca.pem"

    # The Basic password: random, in a 0600 file; the configuration holds only
    # its PBKDF2 hash.
    openssl rand -hex 12 >"$demo/basic.pass"
    hash=$("$estgated" --hash-password <"$demo/basic.pass")
    cat >"$demo/blocked-certs.txt" <<'BLOCKED'
# Client certificates estgated refuses on every profile (a stolen or retired
# device): one SHA-256 fingerprint a line, from
#   openssl x509 -in device.pem -noout -fingerprint -sha256
# or the cert:HEX principal of the device's audit rows. Reload after editing.
BLOCKED
    cat >"$demo/estgated.ini" <<CONFIG
# estgated demo configuration, written by appliance/demo.sh.
# Reference: docs/configuration.md. Paths are relative to this file.
[server]
listen = 127.0.0.1:8443
tls_key = pkcs11:token=estgate-demo;object=demo-tls;type=private
tls_chain = tls-chain.pem
ledger = ledger.db
blocked_certs = blocked-certs.txt

[token]
module = $module
label = estgate-demo
pin_file = user.pin

# /.well-known/est/: devices enroll with a user name and password.
[profile default]
ca_key = pkcs11:token=estgate-demo;object=demo-ca;type=private
ca_chain = ca.pem
auth = basic
user = demo:$hash
san = dns:.example.com
eku = clientAuth
max_days = 90

# /.well-known/est/iot/: devices holding a certificate from the demo CA
# enroll and renew with it (mutual TLS).
[profile iot]
ca_key = pkcs11:token=estgate-demo;object=demo-ca;type=private
ca_chain = ca.pem
auth = mtls
client_ca = client-ca.pem
san = dns:.example.com
eku = clientAuth
max_days = 30

# /.well-known/est/keygen/: the appliance makes the device's key in the token
# (RFC 7030 serverkeygen). SoftHSM can only return it in plaintext over TLS,
# which this profile opts in to; see docs/serverkeygen.md.
[profile keygen]
ca_key = pkcs11:token=estgate-demo;object=demo-ca;type=private
ca_chain = ca.pem
auth = basic
user = demo:$hash
san = dns:.example.com
eku = clientAuth
max_days = 90
serverkeygen = plaintext
serverkeygen_key_types = ec:P-256, rsa:2048
CONFIG
    touch "$demo/ready"
fi
# A demo/ made before the iot profile had a client CA file of its own: give it one,
# so that `bundle install` into it cannot replace the issuing chain ca.pem.
if grep -qx 'client_ca = ca.pem' "$demo/estgated.ini"; then
    cp "$demo/ca.pem" "$demo/client-ca.pem"
    sed -i 's/^client_ca = ca\.pem$/client_ca = client-ca.pem/' "$demo/estgated.ini"
fi

echo "== what the token holds"
# shellcheck disable=SC2086
"$provision" list $tok
echo "== the configuration"
"$estgated" --check-config "$demo/estgated.ini"

url=https://localhost:8443/.well-known/est
umask 077
cat >"$demo/connection.env" <<FACTS
# estgate demo connection facts (shell syntax), written by appliance/demo.sh
EST_URL=$url
EST_MTLS_URL=$url/iot
EST_CA=$demo/ca.pem
EST_USER=demo
EST_PASSWORD=$(cat "$demo/basic.pass")
EST_PASSWORD_FILE=$demo/basic.pass
# the demo token's SoftHSM configuration: estgated --check-config and estgate-provision need it
SOFTHSM2_CONF=$SOFTHSM2_CONF
FACTS

cat <<HOWTO

== estgated serves $url (Ctrl-C stops it)
Connection facts for scripts: $demo/connection.env

Try it from another terminal:
  cd $demo
  # the CA certificates
  curl -sS --cacert ca.pem $url/cacerts | openssl base64 -d |
      openssl pkcs7 -inform DER -print_certs -out cacerts.pem
  # a device key and CSR, enrolled with the demo password
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key \\
      -subj /CN=dev1.example.com -addext subjectAltName=DNS:dev1.example.com -out dev.csr
  curl -sS --cacert ca.pem -u "demo:\$(cat basic.pass)" -H 'Content-Type: application/pkcs10' \\
      --data-binary @dev.csr $url/simpleenroll | openssl base64 -d |
      openssl pkcs7 -inform DER -print_certs -out dev.pem
  openssl verify -CAfile cacerts.pem dev.pem
  # renew with that certificate (mutual TLS, profile iot)
  curl -sS --cacert ca.pem --cert dev.pem --key dev.key -H 'Content-Type: application/pkcs10' \\
      --data-binary @dev.csr $url/iot/simplereenroll | openssl base64 -d |
      openssl pkcs7 -inform DER -print_certs -out dev-renewed.pem
  # a key made in the token for the device (serverkeygen, profile keygen): the answer is
  # multipart/mixed, an application/pkcs8 part (the key) and a certs-only part
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \\
      -subj /CN=dev2.example.com -addext subjectAltName=DNS:dev2.example.com -out dev2.csr
  curl -sS --cacert ca.pem -u "demo:\$(cat basic.pass)" -H 'Content-Type: application/pkcs10' \\
      --data-binary @dev2.csr $url/keygen/serverkeygen
  # check the configuration after an edit, then reload it without a restart
  # (this demo's estgated is process $$; other estgated processes are not told)
  SOFTHSM2_CONF=$SOFTHSM2_CONF $estgated --check-config estgated.ini &&
      kill -HUP $$

HOWTO
# exec: estgated takes this shell's process id, the $$ printed above.
exec "$estgated" -c "$demo/estgated.ini"
