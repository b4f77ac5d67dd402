#!/usr/bin/env bash
# Prints the master's replication position, after running a write if one is
# given: the token a read passes as Min-Position (header or min-position=)
# to be answered only by a pod whose replica holds that write. See
# docs/consistency.md for what it guarantees.
#
# Usage: scripts/position.sh [redis-cli options...] [-- COMMAND [ARGS...]]
#   REDISCLI_AUTH=secret scripts/position.sh -h master -p 6380 --tls --cacert ca.crt -- SET greeting hello
#   => 3f0c...e1:18342   (master_replid:master_repl_offset)
#
# The options go to every redis-cli call (the password: REDISCLI_AUTH, as
# redis-cli reads it). The position is read after the write's reply, on the
# master: it counts that write and maybe later ones, never fewer.
set -euo pipefail

die() {
    printf 'position: %s\n' "$*" >&2
    exit 1
}

main() {
    local options=() write=()
    while (($#)); do
        if [[ $1 == -- ]]; then
            shift
            write=("$@")
            break
        fi
        options+=("$1")
        shift
    done
    command -v redis-cli >/dev/null || die "redis-cli is missing: scripts/install-deps.sh redis-tools"
    local reply
    if ((${#write[@]})); then
        reply=$(redis-cli "${options[@]}" "${write[@]}" 2>&1) || die "${write[0]} failed: $reply"
        # redis-cli exits 0 on an error reply when its output is not a terminal.
        case $reply in
            ERR* | WRONGTYPE* | NOAUTH* | NOPERM* | READONLY* | OOM* | MISCONF* | *"Connection refused"*)
                die "${write[0]} failed: $reply"
                ;;
        esac
    fi
    local info
    info=$(redis-cli "${options[@]}" INFO replication 2>&1) || die "INFO replication failed: $info"
    local field value role="" replid="" offset="" backlog=""
    while IFS=: read -r field value; do
        value=${value%$'\r'}
        case $field in
            role) role=$value ;;
            master_replid) replid=$value ;;
            master_repl_offset) offset=$value ;;
            repl_backlog_active) backlog=$value ;;
        esac
    done <<<"$info"
    [[ -n $replid && -n $offset ]] || die "no master_replid/master_repl_offset in INFO replication: $info"
    [[ $role == master ]] || die "this redis is a $role, not the master: its position is not where writes land"
    # Without a backlog (no replica for repl-backlog-ttl) the offset does not
    # count writes: a token would claim a position the write is not behind.
    [[ $backlog == 1 ]] || die "the master keeps no replication backlog (no replica connected for repl-backlog-ttl), so its offset does not count writes; no token can be given"
    printf '%s:%s\n' "$replid" "$offset"
}

main "$@"
