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

runs=${1:-7}
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
cargo build --release -q -p skerry
cargo build --release -q -p skerry-runtime --example boot_to_poweroff
skerry=$PWD/target/release/skerry
baseline=$PWD/target/release/examples/boot_to_poweroff

work=$(mktemp -d /tmp/skbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/b/rootfs/bin" "$work/b/rootfs/proc" "$work/b/rootfs/dev"
cp /bin/busybox "$work/b/rootfs/bin/busybox"
ln -s busybox "$work/b/rootfs/bin/true"
cat > "$work/b/config.json" <<'JSON'
{"ociVersion": "1.0.2",
 "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/"},
 "root": {"path": "rootfs"},
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
JSON
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
