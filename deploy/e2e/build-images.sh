#!/usr/bin/env bash
# Builds the images the e2e plays, from what this machine has (no registry is
# reachable here):
#
#   build-images.sh          an image for every one the manifests reference:
#     localhost/read-api:TAG     api/Containerfile.prebuilt over the static binary, the name the manifests use
#     and, under names of their own (deploy/e2e/e2e_images.py, which podmanize.py rewrites the
#     manifests' images to), images of this machine's Debian binaries and the libraries they load:
#     redis-server and redis-cli; stunnel; prometheus-redis-exporter
#   build-images.sh probe    localhost/read-api-e2e-probe: sh, sleep and getent, for preflight.py
#
# The Redis and stunnel images hold only what the pods run: the binaries, sh and
# the few tools the start scripts and probes call. Each runs as the user the
# manifests give it (runAsUser), and its tag names the version of the binary,
# which is checked here.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work="$repo/target/e2e/images"
IMAGE_TAG=${IMAGE_TAG:-$("$repo/scripts/versions.sh" tag read-api)}
PROBE_IMAGE=localhost/read-api-e2e-probe:latest

die() { echo "build-images: $*" >&2; exit 1; }

# IMAGE UID VERSION of the e2e's image standing in for kit image NAME.
e2e_image() {
    local line
    line=$(awk -v name="$1" '$1 == name { print $2, $3, $4 }' <<<"$e2e_images")
    [[ -n $line ]] || die "no e2e image for '$1' in deploy/e2e/e2e_images.py"
    echo "$line"
}

# Fails unless TEXT (a program's version output) names VERSION, as IMAGE's tag claims.
claims() {
    local image=$1 version=$2 text=$3
    [[ $text =~ (^|[^0-9.])${version//./\\.}([^0-9]|$) ]] \
        || die "$image claims version $version, but this machine's binary says: $(head -n 1 <<<"$text"); update deploy/e2e/e2e_images.py"
}

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
    local line image uid version
    line=$(e2e_image redis)
    read -r image uid version <<<"$line"
    claims "$image" "$version" "$(redis-server --version)"
    rm -rf "$work/redis"
    copy_programs "$work/redis" redis-server redis-cli sh mkdir grep date sleep
    import_rootfs "$work/redis" "$image" redis "$uid"
}

build_stunnel() {
    local line image uid version
    line=$(e2e_image read-api-stunnel)
    read -r image uid version <<<"$line"
    claims "$image" "$version" "$(stunnel4 -version 2>&1 | grep -m1 '^stunnel ')"
    rm -rf "$work/stunnel"
    copy_programs "$work/stunnel" stunnel4 sh bash sed mkdir grep sleep
    ln -s stunnel4 "$work/stunnel/usr/bin/stunnel"
    import_rootfs "$work/stunnel" "$image" stunnel "$uid"
}

# Debian's build of the same program; the manifests start it as /redis_exporter.
build_redis_exporter() {
    local line image uid version
    line=$(e2e_image redis-exporter)
    read -r image uid version <<<"$line"
    claims "$image" "$version" "$(prometheus-redis-exporter --version 2>&1)"
    rm -rf "$work/redis-exporter"
    copy_programs "$work/redis-exporter" prometheus-redis-exporter
    ln -s /usr/bin/prometheus-redis-exporter "$work/redis-exporter/redis_exporter"
    import_rootfs "$work/redis-exporter" "$image" redis_exporter "$uid"
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
        all)
            e2e_images=$("$repo/.venv/bin/python" "$repo/deploy/e2e/e2e_images.py")
            # One statement each: inside an && list, errexit would not stop a failed build.
            build_api
            build_redis
            build_stunnel
            build_redis_exporter
            ;;
        probe) build_probe ;;
        *) echo "usage: build-images.sh [all|probe]" >&2; exit 2 ;;
    esac
}

main "$@"
