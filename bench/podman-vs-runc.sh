#!/usr/bin/env bash
# Benchmark: `podman run --rm <busybox image> /bin/true` with skerry as the OCI
# runtime against the same with runc, median of N runs each, interleaved in
# one hyperfine run. Prints both medians and the ratio.
#
# Usage: bench/podman-vs-runc.sh [RUNS]   (as root, after scripts/build.sh)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="podman-vs-runc"

runs=${1:-5}
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
cargo build --release -q -p skerry

work=$(mktemp -d /tmp/skpod.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf '[guest]\nimage_dir = "%s"\n' "$image" > "$work/config.toml"
cat > "$work/skerry" <<SH
#!/bin/sh
exec $PWD/target/release/skerry --root $work/state --config $work/config.toml "\$@"
SH
chmod +x "$work/skerry"
bench_rootfs "$work/rootfs" true
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .

podman="podman --root $work/storage --runroot $work/runroot --cgroup-manager cgroupfs --events-backend file"
$podman import -q "$work/rootfs.tar" localhost/skerry-bench >/dev/null
run="run --rm --network none --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 localhost/skerry-bench /bin/true"

hyperfine -N --style basic --warmup 1 --runs "$runs" --export-json "$work/result.json" \
    -n "podman+skerry" "$podman --runtime $work/skerry $run" \
    -n "podman+runc" "$podman --runtime /usr/bin/runc $run"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
ours, runc = r["podman+skerry"], r["podman+runc"]
print(f"podman run --rm /bin/true with skerry  median {ours:8.1f} ms")
print(f"podman run --rm /bin/true with runc    median {runc:8.1f} ms")
print(f"skerry / runc = {ours / runc:.2f}x (a VM per container vs namespaces on the host)")
PY
