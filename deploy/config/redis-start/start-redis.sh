#!/bin/sh
# Starts redis-server with a config file, adding passwords from the environment
# so that they never sit in a ConfigMap or on the command line:
#   REDIS_PASSWORD   this server's own password (requirepass)
#   MASTER_PASSWORD  the master's password, for a replica (masterauth)
#   MASTER_USER      the master's ACL user, if not "default" (masteruser)
#   REDIS_RUN_DIR    where the generated auth file goes (default /run/redis)
# Usage: start-redis.sh CONFIG_FILE [redis-server options...]
set -eu

config=${1:?usage: start-redis.sh CONFIG_FILE [redis-server options...]}
shift
run_dir=${REDIS_RUN_DIR:-/run/redis}
mkdir -p "$run_dir"
auth="$run_dir/auth.conf"

# Quoting rules of redis.conf are subtle; refuse what would need them.
check() {
    case $2 in
        *'"'* | *'\'* | *"
"*) echo "start-redis: $1 must not contain double quotes, backslashes or newlines" >&2; exit 2 ;;
    esac
}

main() {
    umask 077
    : >"$auth"
    if [ -n "${REDIS_PASSWORD:-}" ]; then
        check REDIS_PASSWORD "$REDIS_PASSWORD"
        printf 'requirepass "%s"\n' "$REDIS_PASSWORD" >>"$auth"
    fi
    if [ -n "${MASTER_PASSWORD:-}" ]; then
        check MASTER_PASSWORD "$MASTER_PASSWORD"
        printf 'masterauth "%s"\n' "$MASTER_PASSWORD" >>"$auth"
    fi
    if [ -n "${MASTER_USER:-}" ]; then
        check MASTER_USER "$MASTER_USER"
        printf 'masteruser "%s"\n' "$MASTER_USER" >>"$auth"
    fi

    exec redis-server "$config" "$@" --include "$auth"
}

main "$@"
