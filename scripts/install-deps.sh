#!/usr/bin/env bash
# Installs the Debian packages that provide the given commands, when missing.
#
#   scripts/install-deps.sh redis-server redis-cli stunnel4
#   scripts/install-deps.sh pkg:python3-venv     (a package with no command of its own)
#
# Only missing commands are installed, so a second run does nothing. Needs root
# or sudo for apt-get; without either it says what to install and fails.
set -euo pipefail

package_for() {
    case $1 in
        redis-server) echo redis-server ;;
        redis-cli | redis-benchmark) echo redis-tools ;;
        stunnel4 | stunnel) echo stunnel4 ;;
        podman) echo podman ;;
        runc) echo runc ;;
        catatonit) echo catatonit ;;
        shellcheck) echo shellcheck ;;
        promtool | prometheus) echo prometheus ;;
        prometheus-redis-exporter) echo prometheus-redis-exporter ;;
        webdis) echo webdis ;;
        wrk) echo wrk ;;
        nginx) echo nginx-light ;;
        gnuplot) echo gnuplot-nox ;;
        openssl) echo openssl ;;
        python3) echo python3 ;;
        curl) echo curl ;;
        jq) echo jq ;;
        envsubst) echo gettext-base ;;
        taskset) echo util-linux ;;
        valgrind) echo valgrind ;;
        musl-gcc) echo musl-tools ;;
        c++) echo g++ ;;
        aarch64-linux-gnu-gcc) echo gcc-aarch64-linux-gnu ;;
        *) echo "install-deps: no package known for command '$1'" >&2; return 1 ;;
    esac
}

main() {
    missing=()
    for cmd in "$@"; do
        if [[ $cmd == pkg:* ]]; then
            dpkg -s "${cmd#pkg:}" >/dev/null 2>&1 || missing+=("${cmd#pkg:}")
        elif ! command -v "$cmd" >/dev/null 2>&1 && ! [[ -x /usr/sbin/$cmd ]]; then
            missing+=("$(package_for "$cmd")")
        fi
    done
    ((${#missing[@]})) || exit 0

    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "install-deps: missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    # Services are started by the scripts that need them, never by the package.
    "${sudo[@]}" env RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "install-deps: done"
}

main "$@"
