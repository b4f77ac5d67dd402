#!/bin/sh
# Starts redis-server with a config file, adding passwords from the environment
# and from files so that they never sit in a ConfigMap or on the command line:
#   REDIS_PASSWORD    this server's own password (requirepass: the default user)
#   MASTER_PASSWORD   the password a replica gives its master (masterauth)
#   MASTER_USER       the ACL user a replica logs in as, if not "default" (masteruser)
#   REDIS_PASSWORD_FILE, MASTER_PASSWORD_FILE
#                     a file holding that password instead (its first line), such
#                     as a Secret's key mounted as a file: kept out of the environment
#   REDIS_USERS_FILE  ACL users to create: `user NAME ... @PASSWORD@ ...` lines
#                     (deploy/config/redis-master/acl-users.conf)
#   REDIS_USERS_DIR   one file per user, named as the user, holding its password;
#                     a user without one is not created
#   REDIS_RUN_DIR     where the generated auth file goes (default /run/redis)
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

# Prints the first line of file $2 (a Secret's key: often without a newline), for variable $1.
first_line() {
    [ -r "$2" ] || { echo "start-redis: $1 $2 is not readable" >&2; exit 2; }
    value=
    IFS= read -r value <"$2" || true
    printf '%s' "$value"
}

# The password in file $2, for variable $1. An empty one is refused: read as no
# password, it would start a server that anyone may use, or a replica that
# never logs in to its master (a file caught half-written looks like that).
password_file() {
    value=$(first_line "$1" "$2")
    [ -n "$value" ] || { echo "start-redis: $1 $2 is empty" >&2; exit 2; }
    printf '%s' "$value"
}

# Writes the users of REDIS_USERS_FILE that have a password in REDIS_USERS_DIR.
# Only shell built-ins: the images hold no more than sh and redis.
users() {
    [ -n "${REDIS_USERS_FILE:-}" ] || return 0
    [ -r "$REDIS_USERS_FILE" ] || { echo "start-redis: REDIS_USERS_FILE $REDIS_USERS_FILE is not readable" >&2; exit 2; }
    dir=${REDIS_USERS_DIR:?start-redis: REDIS_USERS_FILE needs REDIS_USERS_DIR, a directory of password files}
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in
            "user "*@PASSWORD@*) ;;
            "" | "#"*) continue ;;
            *) echo "start-redis: $REDIS_USERS_FILE: not a 'user NAME ... @PASSWORD@ ...' line: $line" >&2; exit 2 ;;
        esac
        name=${line#user }
        name=${name%% *}
        if [ ! -r "$dir/$name" ]; then
            echo "start-redis: no password for ACL user '$name' in $dir: the user is not created" >&2
            continue
        fi
        password=$(first_line "the password of ACL user '$name'," "$dir/$name")
        [ -n "$password" ] || { echo "start-redis: $dir/$name is empty" >&2; exit 2; }
        check "the password of ACL user '$name'" "$password"
        printf '%s">%s"%s\n' "${line%%@PASSWORD@*}" "$password" "${line#*@PASSWORD@}" >>"$auth"
    done <"$REDIS_USERS_FILE"
}

main() {
    umask 077
    : >"$auth"
    if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then REDIS_PASSWORD=$(password_file REDIS_PASSWORD_FILE "$REDIS_PASSWORD_FILE"); fi
    if [ -n "${MASTER_PASSWORD_FILE:-}" ]; then MASTER_PASSWORD=$(password_file MASTER_PASSWORD_FILE "$MASTER_PASSWORD_FILE"); fi
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
    users

    exec redis-server "$config" "$@" --include "$auth"
}

main "$@"
