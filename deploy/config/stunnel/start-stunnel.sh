#!/bin/sh
# Renders stunnel.conf from the environment and runs stunnel in the foreground:
#   MASTER_HOST, MASTER_PORT  the Redis master's TLS endpoint (required)
#   STUNNEL_CA_FILE           CA that must sign the master's certificate
#                             (default /etc/stunnel/tls/ca.crt)
#   STUNNEL_ACCEPT            where the replica connects (default 127.0.0.1:6390)
#   STUNNEL_RUN_DIR           where the rendered config goes (default /run/stunnel)
# Usage: start-stunnel.sh TEMPLATE
set -eu

main() {
    template=${1:?usage: start-stunnel.sh TEMPLATE}
    : "${MASTER_HOST:?start-stunnel: MASTER_HOST is required (the master host name, as its certificate names it)}"
    : "${MASTER_PORT:?start-stunnel: MASTER_PORT is required (the master TLS port)}"
    ca_file=${STUNNEL_CA_FILE:-/etc/stunnel/tls/ca.crt}
    accept=${STUNNEL_ACCEPT:-127.0.0.1:6390}
    run_dir=${STUNNEL_RUN_DIR:-/run/stunnel}

    case $MASTER_HOST$MASTER_PORT$ca_file$accept in
        *[!A-Za-z0-9._:/-]*) echo "start-stunnel: MASTER_HOST, MASTER_PORT, STUNNEL_CA_FILE and STUNNEL_ACCEPT may hold only letters, digits and . _ : / -" >&2; exit 2 ;;
    esac
    [ -r "$ca_file" ] || { echo "start-stunnel: STUNNEL_CA_FILE $ca_file is not readable" >&2; exit 2; }

    mkdir -p "$run_dir"
    sed -e "s|@MASTER_HOST@|$MASTER_HOST|g" \
        -e "s|@MASTER_PORT@|$MASTER_PORT|g" \
        -e "s|@STUNNEL_CA_FILE@|$ca_file|g" \
        -e "s|@STUNNEL_ACCEPT@|$accept|g" \
        "$template" >"$run_dir/stunnel.conf"
    exec stunnel "$run_dir/stunnel.conf"
}

main "$@"
