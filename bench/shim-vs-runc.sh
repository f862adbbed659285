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

runs=${1:-7}
(( runs >= 5 )) || { echo "shim-vs-runc: RUNS must be at least 5" >&2; exit 2; }
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
[[ -f $image/vmlinuz ]] || { echo "shim-vs-runc: no guest image in $image (run scripts/build.sh)" >&2; exit 1; }
cargo build --release -q -p containerd-shim-skerry-v2

work=$(mktemp -d /tmp/sksb.XXXXXX)
ctd_pid=
cleanup() {
    ctr_ tasks delete --force idle >/dev/null 2>&1 || true
    ctr_ containers delete idle >/dev/null 2>&1 || true
    [[ -n $ctd_pid ]] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
    rm -rf "$work"
}
ctr_() { ctr --address "$work/ctd.sock" "$@"; }
trap cleanup EXIT

# containerd with the shim on its PATH.
mkdir -p "$work/bin"
ln -s "$PWD/target/release/containerd-shim-skerry-v2" "$work/bin/"
printf '[guest]\nimage_dir = "%s"\n[hypervisor]\nmemory_mib = 256\n' "$image" > "$work/skerry.toml"
cat > "$work/containerd.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctd.sock"
EOF
PATH="$work/bin:$PATH" SKERRY_CONFIG="$work/skerry.toml" SKERRY_SHIM_ROOT="$work/r" \
    containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 200); do [[ -S $work/ctd.sock ]] && break; sleep 0.05; done
[[ -S $work/ctd.sock ]] || { cat "$work/containerd.log" >&2; exit 1; }

# A one-layer OCI image of busybox.
python3 - "$work" <<'PY'
import hashlib, json, os, shutil, sys, tarfile
work = sys.argv[1]
root = os.path.join(work, "rootfs")
os.makedirs(os.path.join(root, "bin"))
for d in ("proc", "sys", "dev", "tmp", "etc"):
    os.makedirs(os.path.join(root, d))
shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
for applet in ("sh", "true", "sleep"):
    os.symlink("busybox", os.path.join(root, "bin", applet))
blobs = os.path.join(work, "oci/blobs/sha256")
os.makedirs(blobs)
def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, digest), "wb").write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}
layer_path = os.path.join(work, "layer.tar")
with tarfile.open(layer_path, "w") as t:
    t.add(root, arcname=".")
layer = blob(open(layer_path, "rb").read())
config = blob(json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
manifest = blob(json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **config),
    "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar", **layer)]}).encode())
json.dump({"schemaVersion": 2, "manifests": [dict(
    mediaType="application/vnd.oci.image.manifest.v1+json",
    annotations={"org.opencontainers.image.ref.name": "latest"}, **manifest)]},
    open(os.path.join(work, "oci/index.json"), "w"))
open(os.path.join(work, "oci/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
with tarfile.open(os.path.join(work, "bb.tar"), "w") as t:
    t.add(os.path.join(work, "oci"), arcname=".")
PY
ctr_ image import --base-name localhost/bb "$work/bb.tar" >/dev/null
img=localhost/bb:latest

# 1. ctr run --rm /bin/true, interleaved so both see the same machine load.
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
skerry_ms=() runc_ms=()
for i in $(seq "$runs"); do
    skerry_ms+=("$(ms ctr_ run --rm --runtime io.containerd.skerry.v2 "$img" "s$i" /bin/true)")
    runc_ms+=("$(ms ctr_ run --rm --runtime io.containerd.runc.v2 "$img" "r$i" /bin/true)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
s=$(median "${skerry_ms[@]}") r=$(median "${runc_ms[@]}")

# 2. PSS of one idle pod: the shim serving it and all of its descendants.
ctr_ run -d --runtime io.containerd.skerry.v2 "$img" idle /bin/sleep 3600 >/dev/null
sleep 2
shim=$(pgrep -f -- "containerd-shim-skerry-v2 .*-id idle -address $work/ctd.sock")
[[ -n $shim ]] || { echo "shim-vs-runc: no shim process for the idle pod" >&2; exit 1; }
descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }
# Guest RAM (the shared memory backend every device process maps) is counted
# apart from what the host processes use for themselves.
pss_kib=0 ram_kib=0 procs=()
for pid in "$shim" $(descendants "$shim"); do
    read -r kib ram < <(awk '/^[0-9a-f]+-[0-9a-f]+ / {ram = /memory-backend/}
        /^Pss:/ {all += $2; if (ram) guest += $2} END {print all + 0, guest + 0}' \
        "/proc/$pid/smaps" 2>/dev/null || echo "0 0")
    pss_kib=$(( pss_kib + kib )) ram_kib=$(( ram_kib + ram ))
    procs+=("$(cat "/proc/$pid/comm" 2>/dev/null || echo "?")=$(( (kib - ram) / 1024 ))MiB")
done

echo "runs per runtime: $runs"
printf 'ctr run --rm /bin/true  skerry  median %7.1f ms\n' "$s"
printf 'ctr run --rm /bin/true  runc    median %7.1f ms\n' "$r"
awk -v s="$s" -v r="$r" 'BEGIN {printf "ratio skerry/runc       %.2fx\n", s / r}'
mib() { awk -v k="$1" 'BEGIN {printf "%7.1f", k / 1024}'; }
echo "idle pod host PSS       $(mib "$pss_kib") MiB  (goal < 40 MiB)"
echo "  guest RAM touched     $(mib "$ram_kib") MiB"
echo "  host processes        $(mib $(( pss_kib - ram_kib ))) MiB  (${procs[*]})"
