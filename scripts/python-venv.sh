#!/usr/bin/env bash
# Creates .venv with the kit's Python package (pyproject.toml) installed
# editable, with its pinned tools, once: a rerun with the same pyproject.toml
# does nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv"
project="$repo/pyproject.toml"
stamp="$venv/.pyproject.sha256"
main() {
    want=$(sha256sum "$project" | cut -d' ' -f1)

    if [[ -x $venv/bin/python && -f $stamp && $(<"$stamp") == "$want" ]]; then
        exit 0
    fi
    command -v python3 >/dev/null || "$repo/scripts/install-deps.sh" python3
    # Debian's python3 creates virtual environments only with python3-venv.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        "$repo/scripts/install-deps.sh" pkg:python3-venv
    fi
    echo "python-venv: creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --editable "$repo"
    echo "$want" >"$stamp"
}

main "$@"
