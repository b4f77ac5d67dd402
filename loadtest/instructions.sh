#!/usr/bin/env bash
# make instructions: the API's instructions per request, hit and miss, counted
# by callgrind (loadtest/lib/instructions.py), against the committed baseline.
#
#   loadtest/instructions.sh [OUT.json]   default target/instructions/result.json
#   INSTRUCTIONS_BASELINE                 default loadtest/instructions-baseline.json
# Exits 1 when a path costs more than the baseline's tolerance above it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

main() {
    local out=${1:-$repo/target/instructions/result.json}
    "$repo/scripts/install-deps.sh" valgrind redis-server redis-cli
    cargo build --release --locked -p read-api 2>&1 | tail -n 1 >&2
    python3 "$here/lib/instructions.py" run "$out" >&2
    python3 "$here/lib/instructions.py" check "$out" "${INSTRUCTIONS_BASELINE:-$here/instructions-baseline.json}"
}

main "$@"
