#!/usr/bin/env bash
# Installs oha, the load generator that stands in for vegeta where vegeta is not
# installable, into ~/.cargo/bin. A rerun finds it and does nothing.
set -euo pipefail

main() {
    if command -v oha >/dev/null 2>&1 || [[ -x $HOME/.cargo/bin/oha ]]; then
        exit 0
    fi
    : "${OHA_VERSION:?is unset: make oha installs oha at the version the Makefile pins (Dependencies)}"
    echo "install-oha: cargo install oha $OHA_VERSION (compiles for about 6 minutes, once)" >&2
    cargo install --locked --quiet oha --version "$OHA_VERSION"
}

main "$@"
