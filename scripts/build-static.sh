#!/usr/bin/env bash
# Builds target/<rust target>/release/read-api for each architecture asked: a
# static (musl) binary for the FROM-scratch image.
#
#   ARCHS   amd64, arm64 or both, space- or comma-separated (default: this machine's)
#
# Installs the Rust target and the C toolchain when missing: ring compiles C and
# assembly for the target (musl-gcc for amd64; Debian's aarch64 cross gcc for
# arm64, with its C headers, which also links: the musl target brings its own C
# library and start files, so a glibc cross gcc is enough).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

# rust_target ARCH: the Rust target of a Go-style architecture name (podman's --platform).
rust_target() {
    case $1 in
        amd64) echo x86_64-unknown-linux-musl ;;
        arm64) echo aarch64-unknown-linux-musl ;;
        *) echo "build-static: ARCHS takes amd64 and arm64, not '$1'" >&2; return 1 ;;
    esac
}

build() {
    local arch=$1 target cc
    target=$(rust_target "$arch")
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        echo "build-static: adding the Rust target $target"
        rustup target add "$target"
    fi
    local var=${target//-/_} linker=()
    case $arch in
        amd64) cc=musl-gcc ;;
        arm64)
            cc=aarch64-linux-gnu-gcc
            # Rust's own musl start files and C library, linked by the cross gcc:
            # a static executable (musl-gcc as the linker would make a dynamic PIE).
            linker=("CARGO_TARGET_${var^^}_LINKER=$cc")
            ;;
    esac
    command -v "$cc" >/dev/null || "$repo/scripts/install-deps.sh" "$cc"
    # The cross gcc's C headers (ring includes stdint.h): a package of their own.
    [[ $arch != arm64 ]] || "$repo/scripts/install-deps.sh" pkg:libc6-dev-arm64-cross
    env "CC_$var=$cc" "${linker[@]}" cargo build --release --locked --target "$target" -p read-api
    # Where api/Containerfile.prebuilt finds it for each --platform (TARGETARCH).
    local binary="target/$target/release/read-api"
    mkdir -p "target/static/$arch"
    cp -f "$binary" "target/static/$arch/read-api"
    echo "build-static: $(du -h "$binary" | cut -f1) $binary, copied to target/static/$arch/read-api"
    if command -v file >/dev/null; then
        file "target/static/$arch/read-api"
        # A FROM-scratch image has no loader: a dynamic binary would not start.
        file "target/static/$arch/read-api" | grep -qE 'statically linked|static-pie linked' \
            || { echo "build-static: target/static/$arch/read-api is not statically linked" >&2; exit 1; }
    fi
}

main() {
    cd "$repo"
    local arch
    for arch in ${ARCHS//,/ }; do
        build "$arch"
    done
}

# This machine's architecture unless told: the e2e and a plain make static need no other.
host_arch() {
    case $(uname -m) in
        aarch64 | arm64) echo arm64 ;;
        *) echo amd64 ;;
    esac
}

ARCHS=${ARCHS:-$(host_arch)}
main "$@"
