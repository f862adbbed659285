#!/usr/bin/env bash
# Benchmark: creating a container in the guest with the guest agent's engine
# (crates/container) against youki's libcontainer (container mode's engine), under
# QEMU TCG in the real guest kernel, and the same on the host for reference.
#
# `crates/container/examples/oci_engines.rs` (static, stripped, as the agent) creates,
# starts, waits for and deletes COUNT containers of one spec with each engine,
# alternating which goes first. The spec is `skerry spec`'s hardened one (Docker's seccomp
# profile, 13 capabilities, masked and read-only paths, read-only busybox rootfs, own
# pid/net/ipc/uts/mount/cgroup namespaces, devices cgroup rule) without its user
# namespace (the guest engine has none) and running /bin/true. In the guest it runs as
# the process of a privileged `skerry run` container (every capability, no seccomp
# filter of its own, cgroup2 mounted read-write); the nested rootfs lies on the virtio-fs
# share, as a real container's does. On the host it runs in a private mount namespace
# with only cgroup2 mounted on /sys/fs/cgroup (no v1 hierarchies), so both engines use
# cgroup v2 there too.
#
# Prints a side-by-side table of medians and p90s per phase and the ratio
# libcontainer/skerry; the raw samples stay in target/guest-oci-engines.txt. With STRACE=1
# it also counts the host's syscalls per engine; BALLAST_MIB=N makes the benchmark's
# process hold N MiB more (a parent the size of the agent's or larger), which both
# engines' clones copy; SECCOMP=0 drops the spec's seccomp profile.
#
# Usage: bench/guest-oci-engines.sh [COUNT] [VM_RUNS]   (as root, after scripts/build.sh;
#        PROFILE=debug|release picks the host skerry binary, default debug)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

count=${1:-20}
vm_runs=${2:-2}
profile=${PROFILE:-debug}
ballast=${BALLAST_MIB:-0}
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
flag=()
[ "$profile" = release ] && flag=(--release)
cargo build "${flag[@]}" -q -p skerry
# As scripts/build.sh builds the agent: static (libseccomp.a too), stripped.
CARGO_PROFILE_RELEASE_STRIP=symbols RUSTFLAGS="-C target-feature=+crt-static" \
    LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    cargo build --release -q -p skerry-container --example oci_engines \
    --target x86_64-unknown-linux-gnu
bench=$PWD/target/x86_64-unknown-linux-gnu/release/examples/oci_engines
skerry=$PWD/target/$profile/skerry

work=$(mktemp -d /tmp/skoci.XXXXXX)
trap 'rm -rf "$work"' EXIT
outer=$work/outer/rootfs
mkdir -p "$outer"/{bin,proc,dev,sys,tmp,run}
cp /bin/busybox "$outer/bin/busybox"
ln -s busybox "$outer/bin/sh"
ln -s busybox "$outer/bin/cp"
cp "$bench" "$outer/oci_engines"
# The nested containers' rootfs (read-only in their spec: every mount point exists).
inner=$outer/inner
mkdir -p "$inner"/{bin,proc,dev,sys,tmp,etc,root}
cp /bin/busybox "$inner/bin/busybox"
ln -s busybox "$inner/bin/true"
ln -s busybox "$inner/bin/sh"
echo 'root:x:0:0:root:/root:/bin/sh' > "$inner/etc/passwd"
echo 'root:x:0:' > "$inner/etc/group"
mkdir -p "$work/spec"
"$skerry" spec --bundle "$work/spec"
python3 - "$work/spec/config.json" "$outer/inner-spec.json" "${SECCOMP:-1}" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/true"]
linux = spec["linux"]
linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "user"]
linux.pop("uidMappings", None)
linux.pop("gidMappings", None)
if sys.argv[3] == "0":
    linux.pop("seccomp")
json.dump(spec, open(sys.argv[2], "w"))
PY

# The outer (guest) container: privileged, cgroup2 read-write, a tmpfs for
# libcontainer's state.
python3 - "$work/outer/config.json" "$count" "$ballast" <<'PY'
import json, sys
all_caps = ["CAP_" + c for c in """CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID
SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK
IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
CHECKPOINT_RESTORE""".split()]
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
        "env": ["PATH=/bin"],
        # Run from a tmpfs, as the agent runs from the initramfs: the skerry engine
        # re-executes its binary for every container.
        "args": ["/bin/sh", "-c", 'cp /oci_engines /run/ && exec /run/oci_engines "$@"', "sh",
                 "--spec", "/inner-spec.json", "--rootfs", "/inner",
                 "--work", "/run/ocibench", "--count", sys.argv[2], "--label", "guest",
                 "--ballast-mib", sys.argv[3]],
        "capabilities": {k: all_caps for k in ["bounding", "effective", "permitted"]},
        "noNewPrivileges": False,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "ocibench",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup2", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
    ],
    "linux": {"namespaces": [{"type": t} for t in ["pid", "ipc", "uts", "mount"]]},
}
json.dump(spec, open(sys.argv[1], "w"))
PY
printf '[guest]\nimage_dir = "%s"\n' "$image" > "$work/config.toml"

# Raw samples are kept for a closer look.
results=$PWD/target/guest-oci-engines.txt
: > "$results"
# Host and guest runs interleaved, so that a load change on this shared machine
# hits both.
for run in $(seq 1 "$vm_runs"); do
    echo "host run $run/$vm_runs ..." >&2
    unshare -m sh -c 'umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"' sh \
        "$bench" --spec "$outer/inner-spec.json" --rootfs "$inner" --work "$work/host" \
        --count "$count" --label host --ballast-mib "$ballast" >> "$results"
    echo "guest run $run/$vm_runs (QEMU TCG) ..." >&2
    "$skerry" --root "$work/root" --config "$work/config.toml" \
        run --bundle "$work/outer" "ocibench-$run" >> "$results"
done

if [ "${STRACE:-0}" = 1 ]; then
    command -v strace >/dev/null || apt-get install -y -qq strace >/dev/null
    for engine in skerry libcontainer; do
        unshare -m sh -c 'umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"' sh \
            strace -f -c -o "$work/strace-$engine.txt" \
            "$bench" --spec "$outer/inner-spec.json" --rootfs "$inner" --work "$work/host" \
            --count 10 --warmup 0 --engines "$engine" --label strace >/dev/null
        echo "== host syscalls, $engine engine, 10 containers (strace -f -c): top 12"
        sed -n '3,14p' "$work/strace-$engine.txt"
        tail -1 "$work/strace-$engine.txt"
    done
fi

python3 - "$results" <<'PY'
import math, statistics, sys
samples = {}
notes = []
phases = ["create", "start", "exit", "delete", "total"]
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "sample":
        samples.setdefault((f[1], f[2]), []).append([float(x) for x in f[3:]])
    elif f and f[0] == "#":
        notes.append(line.strip())
for n in sorted(set(notes)):
    print(n)
def pct(v, q):
    v = sorted(v)  # nearest rank
    return v[min(len(v), max(1, math.ceil(q * len(v)))) - 1]
print(f"{'where':6} {'phase':7} {'skerry med':>11} {'p90':>8} {'libcont. med':>13} {'p90':>8} {'ratio':>6}   (ms, n per engine)")
for where in ["host", "guest"]:
    sk, lc = samples.get((where, "skerry")), samples.get((where, "libcontainer"))
    if not sk or not lc:
        continue
    for i, p in enumerate(phases):
        a = [s[i] for s in sk]; b = [s[i] for s in lc]
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = mb / ma if ma else float("nan")
        print(f"{where:6} {p:7} {ma:11.2f} {pct(a, .9):8.2f} {mb:13.2f} {pct(b, .9):8.2f} {ratio:6.2f}   n={len(a)}")
for where in ["host", "guest"]:
    sk, lc = samples.get((where, "skerry")), samples.get((where, "libcontainer"))
    if sk and lc:
        r = statistics.median(s[4] for s in lc) / statistics.median(s[4] for s in sk)
        print(f"{where}: libcontainer/skerry total median = {r:.2f} "
              f"({'within' if r <= 1.2 else 'outside'} the 20 % bound)")
PY
