#!/usr/bin/env bash
# Benchmark: `skerry run` of /bin/true (busybox) against a raw boot-to-poweroff
# of the same kernel + initramfs with the same QEMU backend (same devices and
# back ends), median of N runs each, interleaved in one hyperfine run.
# Prints both medians and the runtime's overhead in ms (goal: < 100 ms).
#
# Usage: bench/run-overhead.sh [RUNS]   (as root, after scripts/build.sh)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="run-overhead"

runs=${1:-7}
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
cargo build --release -q -p skerry
cargo build --release -q -p skerry-runtime --example boot_to_poweroff
skerry=$PWD/target/release/skerry
baseline=$PWD/target/release/examples/boot_to_poweroff

work=$(mktemp -d /tmp/skbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bench_bundle "$work/b" '["/bin/true"]'
printf '[guest]\nimage_dir = "%s"\n' "$image" > "$work/config.toml"

hyperfine -N --style basic --warmup 1 --runs "$runs" --export-json "$work/result.json" \
    -n "skerry run /bin/true" "$skerry --root $work/root --config $work/config.toml run --bundle $work/b bench" \
    -n "qemu boot-to-poweroff" "$baseline $image"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ours = r["skerry run /bin/true"]["median"] * 1000
raw = r["qemu boot-to-poweroff"]["median"] * 1000
print(f"skerry run /bin/true   median {ours:8.1f} ms")
print(f"qemu boot-to-poweroff  median {raw:8.1f} ms")
print(f"runtime overhead       {ours - raw:8.1f} ms  (goal < 100 ms; ratio {ours / raw:.2f}x)")
PY
