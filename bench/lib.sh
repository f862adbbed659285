# shellcheck shell=bash
# Helpers shared by the scripts under bench/: sourced, never run. They need
# the caller to be in the repository root, as root, with `set -euo pipefail`.
#
# Functions that start something (containerd) register it in BENCH_* globals,
# which the caller's EXIT trap passes to the matching stop function.

# bench_need COMMAND DEBIAN_PACKAGE: a one-line error and exit 1 if COMMAND is missing.
bench_need() {
    command -v "$1" >/dev/null && return
    echo "${BENCH_NAME:-bench}: '$1' not found; install it with: apt-get install $2" >&2
    exit 1
}

# bench_rootfs DIR APPLET...: a busybox root filesystem with the applets as links.
bench_rootfs() {
    local dir=$1 applet
    shift
    mkdir -p "$dir/bin" "$dir/proc" "$dir/dev" "$dir/sys" "$dir/tmp" "$dir/etc"
    cp /bin/busybox "$dir/bin/busybox"
    for applet in "$@"; do ln -sf busybox "$dir/bin/$applet"; done
}

# bench_bundle DIR ARGS_JSON: a minimal bundle (pid, ipc, uts and mount
# namespaces, /proc) around a busybox rootfs, running ARGS_JSON.
bench_bundle() {
    bench_rootfs "$1/rootfs" true sleep sh touch
    cat > "$1/config.json" <<JSON
{"ociVersion": "1.0.2",
 "process": {"user": {"uid": 0, "gid": 0}, "args": $2, "env": ["PATH=/bin"], "cwd": "/"},
 "root": {"path": "rootfs"},
 "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
JSON
}

# bench_runc_bundle SKERRY DIR ARG...: runc's example spec (`skerry spec
# --runc`, the same for every runtime), no terminal, running ARG... in a
# busybox rootfs.
bench_runc_bundle() {
    local skerry=$1 dir=$2
    shift 2
    bench_rootfs "$dir/rootfs" true sleep sh
    "$skerry" spec --runc --bundle "$dir"
    python3 - "$dir/config.json" "$@" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = sys.argv[2:]
json.dump(spec, open(path, "w"))
PY
}

# bench_crun_cgroups: crun 1.8 refuses this host's hybrid cgroup layout unless
# hugetlb is a v1 hierarchy (/work/shared/host-notes.md) and no controller is
# enabled in the v2 hierarchy; moves hugetlb there if needed (the kernel
# refuses while a v2 cgroup uses it). Returns 1 with a message if it cannot.
bench_crun_cgroups() {
    local v2=/sys/fs/cgroup/unified/cgroup.subtree_control
    [[ -d /sys/fs/cgroup/unified ]] && ! mountpoint -q /sys/fs/cgroup/hugetlb || return 0
    echo "${BENCH_NAME:-bench}: mounting the hugetlb cgroup v1 hierarchy for crun" >&2
    if grep -qw hugetlb "$v2" 2>/dev/null && ! echo -hugetlb > "$v2"; then
        echo "${BENCH_NAME:-bench}: hugetlb is in use in the cgroup v2 hierarchy" >&2
        return 1
    fi
    mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
}

# bench_ms LOG COMMAND...: runs COMMAND (output appended to LOG) and prints
# its wall time in ms (µs resolution, no fork for the clock). A failing
# command is an error naming the log, never a sample.
bench_ms() {
    local log=$1 t0 t1
    shift
    t0=${EPOCHREALTIME/[.,]/}
    if ! "$@" >>"$log" 2>&1; then
        echo "${BENCH_NAME:-bench}: failed: $* (output in $log)" >&2
        return 1
    fi
    t1=${EPOCHREALTIME/[.,]/}
    printf '%d.%03d\n' $(( (t1 - t0) / 1000 )) $(( (t1 - t0) % 1000 ))
}

# bench_median NUMBER...: the median.
bench_median() {
    printf '%s\n' "$@" | sort -n |
        awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}

# bench_descendants PID: every process below PID, depth first.
bench_descendants() {
    local p
    for p in $(pgrep -P "$1"); do
        echo "$p"
        bench_descendants "$p"
    done
}

# bench_tree_pss PID: "PSS_KIB GUEST_RAM_KIB PROCS" of PID and all of its
# descendants. Guest RAM (the shared memory backend every device process maps:
# QEMU, virtiofsd, the vsock back end) is counted apart from what the host
# processes use for themselves; PROCS lists comm=MiB of the latter.
bench_tree_pss() {
    local pid kib ram pss_kib=0 ram_kib=0 procs=()
    for pid in "$1" $(bench_descendants "$1"); do
        read -r kib ram < <(awk '/^[0-9a-f]+-[0-9a-f]+ / {ram = /memory-backend/}
            /^Pss:/ {all += $2; if (ram) guest += $2} END {print all + 0, guest + 0}' \
            "/proc/$pid/smaps" 2>/dev/null || echo "0 0")
        pss_kib=$(( pss_kib + kib )) ram_kib=$(( ram_kib + ram ))
        procs+=("$(cat "/proc/$pid/comm" 2>/dev/null || echo "?")=$(( (kib - ram) / 1024 ))MiB")
    done
    echo "$pss_kib $ram_kib ${procs[*]}"
}

# bench_containerd_start WORK SHIM_BIN SKERRY_CONFIG: containerd 1.6 with
# root, state and socket in WORK, the CRI plugin off, SHIM_BIN on its PATH and
# SKERRY_CONFIG as the shim's default config (state root WORK/r). Sets
# BENCH_CTD_PID and BENCH_CTD_SOCK (used by ctr_).
BENCH_CTD_PID='' BENCH_CTD_SOCK=''
bench_containerd_start() {
    local work=$1 shim=$2 config=$3 _
    mkdir -p "$work/bin"
    ln -sf "$shim" "$work/bin/"
    cat > "$work/containerd.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctd.sock"
EOF
    BENCH_CTD_SOCK=$work/ctd.sock
    PATH="$work/bin:$PATH" SKERRY_CONFIG="$config" SKERRY_SHIM_ROOT="$work/r" \
        containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
    BENCH_CTD_PID=$!
    for _ in $(seq 200); do [[ -S $BENCH_CTD_SOCK ]] && break; sleep 0.05; done
    [[ -S $BENCH_CTD_SOCK ]] || { cat "$work/containerd.log" >&2; return 1; }
}

# ctr_ ARG...: ctr against the containerd of bench_containerd_start.
ctr_() { ctr --address "$BENCH_CTD_SOCK" "$@"; }

# bench_containerd_stop: removes every task and container, then stops
# containerd and any shim it left (the shims outlive containerd by design).
bench_containerd_stop() {
    [[ -n $BENCH_CTD_PID ]] || return 0
    local id pid tree
    for id in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do
        ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true
        ctr_ containers delete "$id" >/dev/null 2>&1 || true
    done
    # Shims of this containerd name its socket on their command line.
    for pid in $(pgrep -f -- "containerd-shim.* -address $BENCH_CTD_SOCK( |$)" || true); do
        mapfile -t tree < <(bench_descendants "$pid")
        kill -KILL "${tree[@]}" "$pid" 2>/dev/null || true
    done
    kill "$BENCH_CTD_PID" 2>/dev/null && wait "$BENCH_CTD_PID" 2>/dev/null
    BENCH_CTD_PID=''
    return 0
}

# bench_busybox_image WORK: imports a one-layer OCI image of busybox (sh,
# true, sleep) into the containerd of bench_containerd_start as
# localhost/bb:latest (no registry is reachable).
bench_busybox_image() {
    local work=$1
    bench_rootfs "$work/image-rootfs" sh true sleep
    python3 - "$work" <<'PY'
import hashlib, json, os, sys, tarfile
work = sys.argv[1]
root = os.path.join(work, "image-rootfs")
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
}

# bench_shim_pid ID: the shim process serving task ID in this containerd.
bench_shim_pid() {
    pgrep -f -- "containerd-shim.* -id $1 -address $BENCH_CTD_SOCK( |$)" | head -n 1
}
