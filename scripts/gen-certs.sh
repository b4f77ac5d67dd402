#!/usr/bin/env bash
# Creates a CA and a Redis master certificate signed by it, with openssl.
#
#   CERTS_DIR     where to write ca.crt, ca.key, master.crt, master.key (default: target/certs
#                 in the repository, where make deploy-master reads them, wherever this runs from)
#   MASTER_HOSTS  comma-separated names and IPs the master certificate covers
#                 (default: the in-cluster master Service's DNS names, localhost, 127.0.0.1)
#   CERT_DAYS     validity in days (default: 825)
#   FORCE=1       replace existing files (otherwise an existing, matching set is kept)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
namespace=${NAMESPACE:-read-api}
service=${MASTER_SERVICE:-redis-master}
CERTS_DIR=${CERTS_DIR:-$repo/target/certs}
MASTER_HOSTS=${MASTER_HOSTS:-$service,$service.$namespace,$service.$namespace.svc,$service.$namespace.svc.cluster.local,localhost,127.0.0.1}
CERT_DAYS=${CERT_DAYS:-825}

main() {
    command -v openssl >/dev/null || { echo "gen-certs: openssl is missing (apt-get install openssl)" >&2; exit 1; }
    mkdir -p "$CERTS_DIR"
    cd "$CERTS_DIR"

    if [[ -z ${FORCE:-} && -s ca.crt && -s master.crt && -s master.key ]] \
        && openssl verify -CAfile ca.crt master.crt >/dev/null 2>&1; then
        echo "gen-certs: keeping the certificates in $CERTS_DIR (FORCE=1 replaces them)"
        exit 0
    fi

    san=()
    IFS=',' read -ra hosts <<<"$MASTER_HOSTS"
    for host in "${hosts[@]}"; do
        if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+=("IP:$host"); else san+=("DNS:$host"); fi
    done
    san_list=$(IFS=','; echo "${san[*]}")

    umask 077
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$CERT_DAYS" \
        -subj "/CN=read-api redis CA" -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -new -nodes -newkey rsa:2048 -sha256 \
        -subj "/CN=${hosts[0]}" -keyout master.key -out master.csr 2>/dev/null
    openssl x509 -req -in master.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$CERT_DAYS" \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$san_list") \
        -out master.crt 2>/dev/null
    rm -f master.csr ca.srl
    # Redis and stunnel run as non-root users that must read these files.
    chmod 644 ca.crt master.crt master.key
    echo "gen-certs: wrote ca.crt, master.crt, master.key to $CERTS_DIR (names: $san_list)"
}

main "$@"
