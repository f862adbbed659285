#!/usr/bin/env bash
# Benchmark: this checkout's `skerry` against an earlier revision's, side by
# side in one run, on the same guest image and QEMU backend:
#  1. `skerry run /bin/true` (busybox), interleaved in one hyperfine run,
#     median of N runs each;
#  2. the host memory (PSS) of one idle VM container (`sleep`): the monitor
#     and every VM process recorded in its state (QEMU, virtiofsd, vsock back
#     end), median of 3 containers each.
# Prints both with the ratio current/base, and fails when either grows by
# more than MAX_REGRESSION_PERCENT (default 5).
#
# The base is built in a worktree under ~/.cache/skerry-bench/<commit>,
# reused by later runs.
#
# Usage: bench/against-base.sh BASE_REV [RUNS]   (as root, after scripts/build.sh)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="against-base"

base_rev=${1:?usage: bench/against-base.sh BASE_REV [RUNS]}
runs=${2:-9}
max=${MAX_REGRESSION_PERCENT:-5}
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
[[ -f $image/manifest.json ]] || { echo "against-base: no guest image in $image (run scripts/build.sh)" >&2; exit 1; }
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null

commit=$(git rev-parse --verify "$base_rev^{commit}")
base_tree=$HOME/.cache/skerry-bench/$commit
if [[ ! -x $base_tree/target/release/skerry ]]; then
    rm -rf "$base_tree"
    git worktree prune
    git worktree add -q --detach "$base_tree" "$commit"
    cargo build --release -q -p skerry --manifest-path "$base_tree/Cargo.toml"
fi
cargo build --release -q -p skerry
cur=$PWD/target/release/skerry
base=$base_tree/target/release/skerry

work=$(mktemp -d /tmp/skbase.XXXXXX)
cleanup() {
    for s in cur base; do
        for dir in "$work/root-$s"/*/; do
            [[ -d $dir ]] || continue
            "$(bin $s)" --root "$work/root-$s" delete --force "$(basename "$dir")" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$work"
}
bin() { if [[ $1 == cur ]]; then echo "$cur"; else echo "$base"; fi; }
trap cleanup EXIT

bench_bundle "$work/true" '["/bin/true"]'
bench_bundle "$work/idle" '["/bin/sh", "-c", "touch /tmp/ready; exec sleep 100000"]'
printf '[guest]\nimage_dir = "%s"\n[hypervisor]\nmemory_mib = 256\n' "$image" > "$work/config.toml"

hyperfine -N --style basic --warmup 1 --runs "$runs" --export-json "$work/start.json" \
    -n "current" "$cur --root $work/root-cur --config $work/config.toml run --bundle $work/true bench" \
    -n "base" "$base --root $work/root-base --config $work/config.toml run --bundle $work/true bench"

# PSS (KiB) of the monitor and VM processes of container ID under ROOT.
pss() { # ROOT ID
    python3 - "$1/$2/state.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
pids = [p["pid"] for p in s.get("vm_processes", [])]
if s.get("monitor"):
    pids.append(s["monitor"]["pid"])
total = 0
for pid in pids:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    except FileNotFoundError:
        pass
print(total)
PY
}
: > "$work/pss"
for i in 1 2 3; do
    for s in cur base; do
        root=$work/root-$s id=idle$i
        "$(bin $s)" --root "$root" --config "$work/config.toml" create --bundle "$work/idle" "$id"
        "$(bin $s)" --root "$root" start "$id"
        for _ in $(seq 300); do [[ -e $work/idle/rootfs/tmp/ready ]] && break; sleep 0.1; done
        rm -f "$work/idle/rootfs/tmp/ready"
        sleep 3 # idle: the guest settles
        echo "$s $(pss "$root" "$id")" >> "$work/pss"
        "$(bin $s)" --root "$root" delete --force "$id" >/dev/null
    done
done

python3 - "$work/start.json" "$work/pss" "$max" "$commit" <<'PY'
import json, statistics, sys
r = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
pss = {"cur": [], "base": []}
for line in open(sys.argv[2]):
    who, kib = line.split()
    pss[who].append(int(kib) / 1024)
cur_pss, base_pss = statistics.median(pss["cur"]), statistics.median(pss["base"])
limit = 1 + float(sys.argv[3]) / 100
print(f"base: {sys.argv[4][:12]}")
print(f"skerry run /bin/true  current {r['current']:8.1f} ms   base {r['base']:8.1f} ms   ratio {r['current'] / r['base']:.3f}")
print(f"idle container PSS    current {cur_pss:8.1f} MiB  base {base_pss:8.1f} MiB  ratio {cur_pss / base_pss:.3f}")
bad = [n for n, c, b in (("start time", r["current"], r["base"]), ("idle PSS", cur_pss, base_pss)) if c > b * limit]
if bad:
    print(f"REGRESSION over {sys.argv[3]} %: {', '.join(bad)}")
    sys.exit(1)
print(f"within {sys.argv[3]} % of the base")
PY
