#!/bin/sh
# Has the Redis beside it load its TLS files again whenever they change: the
# kubelet rewrites a Secret volume when cert-manager renews the Secret, and
# Redis reloads the files when their paths are set again with CONFIG SET.
#   TLS_DIR               tls.crt, tls.key and ca.crt (default /etc/redis/tls)
#   REDISCLI_AUTH_FILE    the admin's password (CONFIG needs it)
#   REDIS_HOST, REDIS_PORT  where Redis serves TLS (default localhost:6380)
#   CHECK_EVERY_SECONDS   how often to look (default 30)
# Only sh, cksum and redis-cli: what the redis image holds.
set -eu

dir=${TLS_DIR:-/etc/redis/tls}
every=${CHECK_EVERY_SECONDS:-30}

fingerprint() {
    cat "$dir/tls.crt" "$dir/tls.key" "$dir/ca.crt" | cksum
}

reload() {
    # Verified against the new CA: a changed CA needs a restart (see the README).
    redis-cli --tls --cacert "$dir/ca.crt" -h "${REDIS_HOST:-localhost}" -p "${REDIS_PORT:-6380}" \
        CONFIG SET tls-cert-file "$dir/tls.crt" tls-key-file "$dir/tls.key" tls-ca-cert-file "$dir/ca.crt"
}

main() {
    read -r REDISCLI_AUTH <"${REDISCLI_AUTH_FILE:?reload-tls: set REDISCLI_AUTH_FILE, the admin password file}"
    export REDISCLI_AUTH
    last=$(fingerprint)
    echo "reload-tls: watching $dir every ${every}s"
    while sleep "$every"; do
        now=$(fingerprint) || continue # mid-rewrite: look again next time
        [ "$now" != "$last" ] || continue
        answer=$(reload 2>&1) || true
        if [ "$answer" = OK ]; then
            echo "reload-tls: Redis loaded the renewed certificate"
            last=$now
        else
            echo "reload-tls: Redis refused the new files, will retry: $answer" >&2
        fi
    done
}

main "$@"
