#!/usr/bin/env bash
# Builds the images the e2e plays, from what this machine has (no registry is
# reachable here):
#
#   build-images.sh          every image the manifests reference, under the names they use:
#     localhost/read-api:TAG            api/Containerfile.prebuilt over the static binary
#     docker.io/library/redis:TAG       Debian's redis-server and redis-cli with the libraries they load
#     localhost/read-api-stunnel:TAG    Debian's stunnel with the libraries it loads
#     docker.io/oliver006/redis_exporter:TAG   Debian's prometheus-redis-exporter
#   build-images.sh probe    localhost/read-api-e2e-probe: sh, sleep and getent, for preflight.py
#
# The Redis and stunnel images hold only what the pods run: the binaries, sh and
# the few tools the start scripts and probes call.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work="$repo/target/e2e/images"
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api)}
REDIS_IMAGE=${REDIS_IMAGE:-$("$repo/scripts/versions.sh" image redis)}
PROBE_IMAGE=localhost/read-api-e2e-probe:latest

# Copies each program and every library ldd says it loads into ROOT.
copy_programs() {
    local root=$1 program lib
    shift
    for program in "$@"; do
        program=$(command -v "$program")
        install -D "$(readlink -f "$program")" "$root$program"
        for lib in $(ldd "$program" | grep -oE '/[^ ]+'); do
            [[ -e $root$lib ]] || install -D "$(readlink -f "$lib")" "$root$lib"
        done
    done
    # glibc loads libgcc_s at run time (thread exit and cancellation), so ldd does not list it.
    # awk reads to the end: quitting early would kill ldconfig with SIGPIPE under pipefail.
    lib=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64/ && !found { found = $NF } END { print found }')
    install -D "$(readlink -f "$lib")" "$root$lib"
}

# Imports ROOT as image NAME, running as UID:GID with the given user name.
import_rootfs() {
    local root=$1 name=$2 user=$3 uid=$4
    mkdir -p "$root"/{etc,tmp,run,data}
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0::/:/bin/sh\n%s:x:%s:%s::/data:/bin/sh\n' "$user" "$uid" "$uid" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$root/etc/group"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
    tar -C "$root" -c . | podman import --quiet --change "USER=$uid:$uid" --change "WORKDIR=/data" \
        --change "ENV=PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" - "$name" >/dev/null
    echo "build-images: $name ($(du -sh "$root" | cut -f1))"
}

build_api() {
    if [[ -n ${E2E_SKIP_API_BUILD:-} && -x target/x86_64-unknown-linux-musl/release/read-api ]]; then
        echo "build-images: reusing the static binary"
    else
        scripts/build-static.sh
    fi
    podman build -q -f api/Containerfile.prebuilt -t "localhost/read-api:$IMAGE_TAG" . >/dev/null
    local size
    size=$(podman image inspect "localhost/read-api:$IMAGE_TAG" --format '{{.Size}}')
    echo "build-images: localhost/read-api:$IMAGE_TAG ($((size / 1000 / 1000)) MB)"
}

build_redis() {
    rm -rf "$work/redis"
    copy_programs "$work/redis" redis-server redis-cli sh mkdir grep date sleep
    import_rootfs "$work/redis" "$REDIS_IMAGE" redis 999
}

build_stunnel() {
    rm -rf "$work/stunnel"
    copy_programs "$work/stunnel" stunnel4 sh bash sed mkdir grep sleep
    ln -s stunnel4 "$work/stunnel/usr/bin/stunnel"
    import_rootfs "$work/stunnel" "localhost/read-api-stunnel:$IMAGE_TAG" stunnel 10001
}

# Debian's build of the same program; the manifests start it as /redis_exporter.
build_redis_exporter() {
    rm -rf "$work/redis-exporter"
    copy_programs "$work/redis-exporter" prometheus-redis-exporter
    ln -s /usr/bin/prometheus-redis-exporter "$work/redis-exporter/redis_exporter"
    import_rootfs "$work/redis-exporter" "$("$repo/scripts/versions.sh" image redis-exporter)" redis_exporter 59000
}

build_probe() {
    rm -rf "$work/probe"
    copy_programs "$work/probe" sh sleep getent
    import_rootfs "$work/probe" "$PROBE_IMAGE" probe 65532
}

main() {
    : "${CONTAINERS_CONF:?build-images: run through make e2e, which sets CONTAINERS_CONF}"
    cd "$repo"
    case ${1:-all} in
        all) build_api && build_redis && build_stunnel && build_redis_exporter ;;
        probe) build_probe ;;
        *) echo "usage: build-images.sh [all|probe]" >&2; exit 2 ;;
    esac
}

main "$@"
