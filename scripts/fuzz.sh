#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (the first argument),
# one after the other, and prints what each did: executions, coverage, corpus.
# A crash stops the run, non-zero, with the input under fuzz/artifacts/.
#
#   scripts/fuzz.sh 600        (make fuzz FUZZ_SECONDS=600)
#   scripts/fuzz.sh 20 config  (one target)
#
# The corpus each run grows is kept in target/fuzz/corpus/TARGET (seeded from
# fuzz/seeds/TARGET), so a rerun starts where the last one stopped.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

main() {
    local seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
    shift
    command -v cargo-fuzz >/dev/null || PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo-fuzz >/dev/null || { echo "fuzz: no cargo-fuzz: run make cargo-fuzz" >&2; exit 1; }
    "$repo/scripts/install-deps.sh" c++
    # libFuzzer's instrumentation and AddressSanitizer (-Zsanitizer) are
    # unstable rustc flags. The pinned stable toolchain (rust-toolchain.toml)
    # takes them with RUSTC_BOOTSTRAP=1 and ships the sanitizer runtimes, so
    # fuzzing needs no second, nightly toolchain that a fresh machine or CI
    # would have to download; only this crate is built that way.
    export RUSTC_BOOTSTRAP=1
    local build=(--target-dir "$repo/target/fuzz/build")
    cd "$repo/fuzz"
    local targets=("$@")
    if ((${#targets[@]} == 0)); then
        mapfile -t targets < <(cargo fuzz list)
    fi
    # Optimized, with debug assertions and overflow checks, under AddressSanitizer.
    for target in "${targets[@]}"; do
        cargo fuzz build "${build[@]}" "$target"
    done
    local summary=()
    for target in "${targets[@]}"; do
        local corpus="$repo/target/fuzz/corpus/$target" log="$repo/target/fuzz/$target.log"
        mkdir -p "$corpus"
        echo "fuzz: $target for ${seconds}s"
        if ! cargo fuzz run "${build[@]}" "$target" "$corpus" "$repo/fuzz/seeds/$target" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "fuzz: $target failed; the input is under fuzz/artifacts/$target, the log in $log" >&2
            exit 1
        fi
        summary+=("$target: $(stats "$log")")
    done
    printf 'fuzz: %s\n' "${summary[@]}"
}

# "N execs (N/s), cov N, ft N, corpus N" from libFuzzer's last status line and final stats.
stats() {
    local done_line execs rate
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$1" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$1")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$1")
    echo "$execs execs ($rate/s), $(sed -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+//; s/[[:space:]]+exec\/s.*//' <<<"$done_line"), 0 crashes"
}

main "$@"
