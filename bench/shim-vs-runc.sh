#!/usr/bin/env bash
# Benchmark under containerd 1.6 (started here, everything in a temp dir):
#  1. `ctr run --rm <busybox> /bin/true` with io.containerd.skerry.v2 against
#     io.containerd.runc.v2, interleaved, median of N runs each;
#  2. the host memory (PSS) of one idle skerry pod: the shim and every process
#     it started (hypervisor, virtiofsd, vsock back end, ...).
# Prints both, with the ratio to runc and the PSS goal (< 40 MiB per pod).
#
# Usage: bench/shim-vs-runc.sh [RUNS]   (as root, after scripts/build.sh)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="shim-vs-runc"

runs=${1:-7}
(( runs >= 5 )) || { echo "shim-vs-runc: RUNS must be at least 5" >&2; exit 2; }
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
[[ -f $image/manifest.json ]] || { echo "shim-vs-runc: no guest image in $image (run scripts/build.sh)" >&2; exit 1; }
cargo build --release -q -p containerd-shim-skerry-v2

work=$(mktemp -d /tmp/sksb.XXXXXX)
cleanup() { bench_containerd_stop; rm -rf "$work"; }
trap cleanup EXIT

printf '[guest]\nimage_dir = "%s"\n[hypervisor]\nmemory_mib = 256\n' "$image" > "$work/skerry.toml"
bench_containerd_start "$work" "$PWD/target/release/containerd-shim-skerry-v2" "$work/skerry.toml"
bench_busybox_image "$work"
img=localhost/bb:latest

# 1. ctr run --rm /bin/true, interleaved so both see the same machine load.
skerry_ms=() runc_ms=()
for i in $(seq "$runs"); do
    skerry_ms+=("$(bench_ms "$work/runs.log" ctr_ run --rm --runtime io.containerd.skerry.v2 "$img" "s$i" /bin/true)")
    runc_ms+=("$(bench_ms "$work/runs.log" ctr_ run --rm --runtime io.containerd.runc.v2 "$img" "r$i" /bin/true)")
done
s=$(bench_median "${skerry_ms[@]}") r=$(bench_median "${runc_ms[@]}")

# 2. PSS of one idle pod: the shim serving it and all of its descendants.
ctr_ run -d --runtime io.containerd.skerry.v2 "$img" idle /bin/sleep 3600 >/dev/null
sleep 2
shim=$(bench_shim_pid idle)
[[ -n $shim ]] || { echo "shim-vs-runc: no shim process for the idle pod" >&2; exit 1; }
read -r pss_kib ram_kib procs < <(bench_tree_pss "$shim")

echo "runs per runtime: $runs"
printf 'ctr run --rm /bin/true  skerry  median %7.1f ms\n' "$s"
printf 'ctr run --rm /bin/true  runc    median %7.1f ms\n' "$r"
awk -v s="$s" -v r="$r" 'BEGIN {printf "ratio skerry/runc       %.2fx\n", s / r}'
mib() { awk -v k="$1" 'BEGIN {printf "%7.1f", k / 1024}'; }
echo "idle pod host PSS       $(mib "$pss_kib") MiB  (goal < 40 MiB)"
echo "  guest RAM touched     $(mib "$ram_kib") MiB"
echo "  host processes        $(mib $(( pss_kib - ram_kib ))) MiB  ($procs)"
