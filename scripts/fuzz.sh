#!/usr/bin/env bash
# Runs every cargo-fuzz target of skerry-vmm (crates/vmm/fuzz: virtio rng/blk/vsock/net queue
# handling, the virtio-mmio transport, the command-line and config-file parsers; the list is
# `cargo fuzz list`, i.e. every [[bin]] in crates/vmm/fuzz/Cargo.toml) for SECONDS each (default
# 20) on the nightly toolchain, with debug assertions (integer overflow checks) and ASan.
# Fails if any target crashes, leaks memory past 2 GiB or hangs on one input for 10 s; the
# crashing input is kept under crates/vmm/fuzz/artifacts/<target>/ (reproduce with
# `cargo +nightly fuzz run -a <target> <file>` in crates/vmm). The corpus grows run by run
# under crates/vmm/fuzz/corpus/ (git-ignored). Prints one line per target with its run count.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/../crates/vmm"
secs="${1:-20}"

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# Device back ends need scratch files and sockets: on tmpfs, removed afterwards.
scratch="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export TMPDIR="$scratch"

cargo +nightly fuzz build -a
failed=0
for t in $(cargo +nightly fuzz list); do
    log="$scratch/$t.log"
    extra=()
    [[ -f "fuzz/dict/$t.dict" ]] && extra=(-dict="fuzz/dict/$t.dict")
    if cargo +nightly fuzz run -a "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -timeout=10 "${extra[@]}" >"$log" 2>&1; then
        runs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)"
        echo "fuzz $t: ok, ${runs:-?} runs in ${secs}s"
    else
        echo "fuzz $t: FAILED (input saved under crates/vmm/fuzz/artifacts/$t/):"
        tail -n 40 "$log"
        failed=1
    fi
done
exit "$failed"
