#!/usr/bin/env bash
# Benchmark: start→exit of /bin/true (`RUNTIME run --bundle B ID`: create,
# start, wait, delete) with skerry in container mode, crun and runc, on the
# same busybox bundle, in one hyperfine run. Prints the medians and skerry's
# ratio to each. If `youki` (the runtime of the libcontainer crate skerry's
# container mode is built on) is on PATH, it runs too: it shows how much of
# the time is the library's.
#
# crun 1.8 refuses this host's hybrid cgroup layout unless hugetlb is a v1
# hierarchy: the script mounts it there if it is missing (see
# /work/shared/host-notes.md).
#
# Usage: bench/plain-vs-crun.sh [RUNS]   (as root)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="plain-vs-crun"

runs=${1:-50}
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
command -v crun >/dev/null || apt-get install -y -qq crun >/dev/null
command -v runc >/dev/null || apt-get install -y -qq runc >/dev/null
cargo build --release -q -p skerry

bench_crun_cgroups

work=$(mktemp -d /tmp/skplain.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf '[runtime]\nisolation = "container"\n' > "$work/config.toml"
# runc's example spec (the same for all three), without a terminal.
bench_runc_bundle target/release/skerry "$work/bundle" /bin/true

skerry="$PWD/target/release/skerry --root $work/skerry --config $work/config.toml"
peers=(-n crun "crun --root $work/crun run --bundle $work/bundle bench-crun"
    -n runc "runc --root $work/runc run --bundle $work/bundle bench-runc")
if command -v youki >/dev/null; then
    peers+=(-n youki "youki --root $work/youki run --bundle $work/bundle bench-youki")
fi
hyperfine -N --style basic --warmup 3 --runs "$runs" --export-json "$work/result.json" \
    -n skerry "$skerry run --bundle $work/bundle bench-skerry" "${peers[@]}"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for name, median in r.items():
    print(f"run /bin/true  {name:6}  median {median:7.2f} ms")
print("   ".join(f"skerry / {name} = {r['skerry'] / median:.2f}x"
                  for name, median in r.items() if name != "skerry"))
PY
