#!/usr/bin/env bash
# Builds target/x86_64-unknown-linux-musl/release/read-api: a static binary for
# FROM-scratch images. Installs the musl target and musl-tools when missing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-musl
main() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        echo "build-static: adding the Rust target $target"
        rustup target add "$target"
    fi
    if ! command -v musl-gcc >/dev/null; then
        # ring compiles C and assembly for the target: it needs the musl C toolchain.
        "$repo/scripts/install-deps.sh" musl-gcc
    fi
    cd "$repo"
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" -p read-api
    echo "build-static: $(du -h "target/$target/release/read-api" | cut -f1) target/$target/release/read-api"
}

main "$@"
