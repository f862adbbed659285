#!/usr/bin/env bash
# The benchmark suite in one run, written up as a Markdown report with SVG
# charts (docs/benchmarks.md explains each figure). Every section runs its
# configurations interleaved (one run of each per round, the order rotated
# each round), so that ours and the peers see the same machine load:
#  1. start → exit of /bin/true through the OCI CLI: `skerry run` in VM and in
#     container isolation, `runc run`, `crun run`, one bundle (runc's spec);
#  2. `ctr run --rm /bin/true` under containerd 1.6: the skerry shim in VM and
#     container isolation (`--runtime-config-path`), and runc's shim;
#  3. host PSS of 1, 5 and 10 idle pods (`sleep`) under containerd: each pod's
#     shim and everything it started, guest RAM apart; skerry VM, skerry
#     container, runc;
#  4. guest kernel and image: skerry's kernel against Debian's cloud kernel,
#     `skerry run` and a raw boot-to-poweroff of each image;
#  5. skerry-vmm against QEMU microvm (KVM and TCG) on a tiny PVH guest
#     (crates/vmm/tests/bench_boot.rs).
# Raw samples (TSV), the report (report.md) and the charts go to OUT (default
# bench/results/<date>-<time>/), which is then copied to bench/results/latest/.
# What cannot run on this host is listed in the report with the reason.
#
# Usage: bench/report.sh [--runs N] [--pods "1 5 10"] [--out DIR]
#        (as root, after scripts/build.sh; ~5 min with N = 10 under QEMU TCG)
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH" LC_ALL=C
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
BENCH_NAME="report"

usage() { echo "usage: bench/report.sh [--runs N] [--pods \"1 5 10\"] [--out DIR]" >&2; exit 2; }
runs=10 pods="1 5 10" out=
while (( $# )); do
    case $1 in
    --runs) runs=${2:?}; shift 2 ;;
    --pods) pods=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    *) usage ;;
    esac
done
if ! [[ $runs =~ ^[0-9]+$ ]] || (( runs < 5 )); then
    echo "report: --runs must be a number >= 5 (a box plot needs them)" >&2
    exit 2
fi
[[ $pods =~ ^[0-9\ ]+$ ]] || { echo "report: --pods must be numbers, e.g. \"1 5 10\"" >&2; exit 2; }
(( EUID == 0 )) || { echo "report: must run as root" >&2; exit 1; }
bench_need gnuplot gnuplot-nox
bench_need python3 python3
bench_need containerd containerd
bench_need ctr containerd
bench_need runc runc
bench_need crun crun
bench_need qemu-system-x86_64 qemu-system-x86
bench_need busybox busybox-static
bench_need as binutils
image=${SKERRY_IMAGE_DIR:-$PWD/target/guest}
debian_image=$PWD/target/guest-debian
agent=$PWD/target/x86_64-unknown-linux-gnu/release/skerry-agent
[[ -f $image/manifest.json && -x $agent ]] ||
    { echo "report: no guest image in $image or no agent (run scripts/build.sh)" >&2; exit 1; }

default_out=
if [[ -z $out ]]; then
    out=bench/results/$(date +%Y-%m-%d-%H%M)
    default_out=1
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/*.tsv "$out"/*.svg "$out"/report.md

echo "report: building (release)" >&2
nice cargo build --release -q -p skerry -p containerd-shim-skerry-v2
nice cargo build --release -q -p skerry-runtime --example boot_to_poweroff
skerry=$PWD/target/release/skerry
boot=$PWD/target/release/examples/boot_to_poweroff

work=$(mktemp -d /tmp/skreport.XXXXXX)
cleanup() {
    local status=$? root dir
    trap - EXIT INT TERM
    bench_containerd_stop
    for root in "$work"/root-*; do
        for dir in "$root"/*/; do
            [[ -d $dir ]] || continue
            "$skerry" --root "$root" delete --force "$(basename "$dir")" >/dev/null 2>&1 || true
        done
    done
    for root in "$work"/runc "$work"/crun; do
        for dir in "$root"/*/; do
            [[ -d $dir ]] || continue
            "$(basename "$root")" --root "$root" delete --force "$(basename "$dir")" >/dev/null 2>&1 || true
        done
    done
    if (( status != 0 )); then
        mkdir -p "$out/logs"
        cp "$work"/*.log "$out/logs/" 2>/dev/null || true
        echo "report: failed; logs in $out/logs" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf 'what\treason\n' > "$out/unavailable.tsv"
unavailable() { printf '%s\t%s\n' "$1" "$2" >> "$out/unavailable.tsv"; }
# Load average at the start and end of each section.
printf 'section\tedge\tload1\tload5\tload15\n' > "$out/load.tsv"
load() { read -r l1 l5 l15 _ < /proc/loadavg; printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$l1" "$l5" "$l15" >> "$out/load.tsv"; }

# interleave GROUP NAME=CMD...: runs every NAME's CMD (a string, split on
# spaces; `{i}` becomes the round number) once per round for $runs rounds,
# the order rotated each round, and appends "group config round ms" rows to
# latency.tsv. One warm-up run of each first, not recorded.
printf 'group\tconfig\tround\tms\n' > "$out/latency.tsv"
interleave() {
    local group=$1 i k n ms
    shift
    local names=() cmds=()
    for spec in "$@"; do names+=("${spec%%=*}") cmds+=("${spec#*=}"); done
    n=${#names[@]}
    load "$group" start
    for (( k = 0; k < n; k++ )); do
        # shellcheck disable=SC2086 # the command is split on purpose
        bench_ms "$work/$group.log" ${cmds[k]//\{i\}/warm} >/dev/null
    done
    for (( i = 1; i <= runs; i++ )); do
        for (( k = 0; k < n; k++ )); do
            local j=$(( (i + k) % n ))
            # shellcheck disable=SC2086
            ms=$(bench_ms "$work/$group.log" ${cmds[j]//\{i\}/$i})
            printf '%s\t%s\t%s\t%s\n' "$group" "${names[j]}" "$i" "$ms" >> "$out/latency.tsv"
        done
        echo "report: $group round $i/$runs" >&2
    done
    load "$group" end
}

# Configurations: VM isolation (the default) and container isolation; pods
# get 256 MiB as in shim-vs-runc.sh, `skerry run` the default 512 MiB as the
# boot-to-poweroff baseline.
printf '[guest]\nimage_dir = "%s"\n' "$image" > "$work/vm.toml"
printf '[guest]\nimage_dir = "%s"\n' "$debian_image" > "$work/vm-debian.toml"
printf '[runtime]\nisolation = "container"\n' > "$work/container.toml"
printf '[guest]\nimage_dir = "%s"\n[hypervisor]\nmemory_mib = 256\n' "$image" > "$work/pod-vm.toml"
printf '[runtime]\nisolation = "container"\n' > "$work/pod-container.toml"
bench_runc_bundle "$skerry" "$work/bundle" /bin/true
crun_run=("crun run=crun --root $work/crun run --bundle $work/bundle crun{i}")
if ! bench_crun_cgroups 2>"$work/crun.log"; then
    unavailable "crun run" "crun 1.8 needs hugetlb as a cgroup v1 hierarchy here, which failed: $(tail -n 1 "$work/crun.log")"
    crun_run=()
fi
bundle=$work/bundle

# What was measured and where.
dirty=
[[ -z $(git status --porcelain --untracked-files=no -- . ':!bench/results') ]] || dirty=" (with uncommitted changes)"
{
    printf 'key\tvalue\n'
    printf 'commit\t%s%s\n' "$(git rev-parse HEAD)" "$dirty"
    printf 'subject\t%s\n' "$(git log -1 --format=%s | cut -c1-100)"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'runs\t%s\n' "$runs"
    printf 'host\t%s, %s CPUs (%s), %s GiB, kernel %s\n' "$(. /etc/os-release; echo "$PRETTY_NAME")" \
        "$(nproc)" "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
        "$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(uname -r)"
    printf 'kvm\t%s\n' "$(if [[ -d /sys/module/kvm_pvm ]]; then echo "PVM (kvm_pvm)"; elif [[ -e /dev/kvm ]]; then echo "/dev/kvm"; else echo none; fi)"
    printf 'backend\t%s\n' "$( { "$skerry" --config "$work/vm.toml" check 2>/dev/null || true; } | awk '$1 == "backend" {$1 = $2 = ""; sub(/^ +/, ""); print}')"
    printf 'runc\t%s\n' "$(runc --version | head -n 1)"
    printf 'crun\t%s\n' "$(crun --version | head -n 1)"
    printf 'containerd\t%s\n' "$(containerd --version)"
    printf 'qemu\t%s\n' "$(qemu-system-x86_64 --version | head -n 1)"
    printf 'image\t%s\n' "$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["kernel_version"], m["kernel_origin"], m["kernel_file"], m["kernel_bytes"], "B, initramfs", m["initramfs_bytes"], "B")' "$image/manifest.json")"
} > "$out/meta.tsv"

# 1. The OCI CLI.
interleave cli \
    "skerry run (VM)=$skerry --root $work/root-vm --config $work/vm.toml run --bundle $bundle vm{i}" \
    "skerry run (container)=$skerry --root $work/root-ct --config $work/container.toml run --bundle $bundle ct{i}" \
    "runc run=runc --root $work/runc run --bundle $bundle runc{i}" \
    "${crun_run[@]}"

# 2. ctr run --rm under containerd.
bench_containerd_start "$work" "$PWD/target/release/containerd-shim-skerry-v2" "$work/pod-vm.toml"
bench_busybox_image "$work"
img=localhost/bb:latest
ctr="ctr --address $BENCH_CTD_SOCK run --rm"
interleave ctr \
    "ctr run --rm skerry (VM)=$ctr --runtime io.containerd.skerry.v2 --runtime-config-path $work/pod-vm.toml $img cv{i} /bin/true" \
    "ctr run --rm skerry (container)=$ctr --runtime io.containerd.skerry.v2 --runtime-config-path $work/pod-container.toml $img cc{i} /bin/true" \
    "ctr run --rm runc=$ctr --runtime io.containerd.runc.v2 $img cr{i} /bin/true"

# 3. Idle pods: N pods of one runtime at a time, the runtimes' order rotated
# per N; measured after they settle (free page reporting returns what boot
# freed about 2 s after it is freed).
printf 'runtime\tpods\tpod\tpss_kib\tguest_ram_kib\tprocesses\n' > "$out/pss.tsv"
pod_runtimes=("skerry VM" "skerry container" "runc")
pod_args() {
    case $1 in
    "skerry VM") echo "--runtime io.containerd.skerry.v2 --runtime-config-path $work/pod-vm.toml" ;;
    "skerry container") echo "--runtime io.containerd.skerry.v2 --runtime-config-path $work/pod-container.toml" ;;
    runc) echo "--runtime io.containerd.runc.v2" ;;
    esac
}
load pss start
round=0
for n in $pods; do
    for (( k = 0; k < ${#pod_runtimes[@]}; k++ )); do
        rt=${pod_runtimes[(round + k) % ${#pod_runtimes[@]}]}
        ids=()
        for (( p = 1; p <= n; p++ )); do
            id=idle-$round-$k-$p
            # shellcheck disable=SC2046 # the runtime's arguments are split on purpose
            ctr_ run -d $(pod_args "$rt") "$img" "$id" /bin/sleep 100000 >>"$work/pss.log" 2>&1 ||
                { echo "report: starting idle pod $id ($rt) failed (see $work/pss.log)" >&2; exit 1; }
            ids+=("$id")
        done
        sleep 5
        for (( p = 1; p <= n; p++ )); do
            shim=$(bench_shim_pid "${ids[p - 1]}")
            [[ -n $shim ]] || { echo "report: no shim for idle pod ${ids[p - 1]}" >&2; exit 1; }
            read -r kib ram procs < <(bench_tree_pss "$shim")
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rt" "$n" "$p" "$kib" "$ram" "$procs" >> "$out/pss.tsv"
        done
        for id in "${ids[@]}"; do
            ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true
        done
        for id in "${ids[@]}"; do
            for _ in $(seq 100); do
                ctr_ tasks delete "$id" >/dev/null 2>&1 && break
                sleep 0.1
            done
            ctr_ containers delete "$id" >>"$work/pss.log" 2>&1
        done
        echo "report: $n idle pods ($rt) measured" >&2
    done
    round=$(( round + 1 ))
done
load pss end
bench_containerd_stop

# 4. Guest kernel and image. The Debian-kernel image is built as
# scripts/test.sh builds it (a no-op when up to date).
if "$skerry" image build --kernel debian --output "$debian_image" --agent "$agent" >"$work/image.log" 2>&1; then
    interleave kernel \
        "skerry run (skerry kernel)=$skerry --root $work/root-ks --config $work/vm.toml --log $work/phases.log run --bundle $bundle ks{i}" \
        "skerry run (Debian kernel)=$skerry --root $work/root-kd --config $work/vm-debian.toml --log $work/phases.log run --bundle $bundle kd{i}" \
        "boot-to-poweroff (skerry kernel)=$boot $image" \
        "boot-to-poweroff (Debian kernel)=$boot $debian_image"
    # The phases of those runs, from their "container created" log lines
    # (BootTimings: each phase's end, counted from the VM's launch).
    python3 - "$work/phases.log" > "$out/phases.tsv" <<'PY'
import re, sys
UNIT = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "ns": 1e-6}
def ms(d):
    m = re.fullmatch(r"([0-9.]+)(s|ms|µs|ns)", d)
    return float(m.group(1)) * UNIT[m.group(2)]
print("config\tround\tagent_ready_ms\tsandbox_created_ms\tcontainer_created_ms")
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.search(r'container created sandbox="k([sd])([0-9]+)" timings=BootTimings '
                  r'\{ agent_ready: (\S+), sandbox_created: (\S+), container_created: (\S+) \}', line)
    if m:
        kernel = "skerry kernel" if m.group(1) == "s" else "Debian kernel"
        print(f"{kernel}\t{m.group(2)}\t" + "\t".join(f"{ms(d):.1f}" for d in m.groups()[2:]))
PY
    for dir in "$image" "$debian_image"; do
        python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("\t".join(str(m[k]) for k in ("kernel_origin","kernel_version","kernel_file","kernel_bytes","initramfs_bytes")) + "\t" + str(len(m["module_files"])))' "$dir/manifest.json"
    done | { printf 'origin\tversion\tkernel_file\tkernel_bytes\tinitramfs_bytes\tmodule_files\n'; cat; } > "$out/images.tsv"
else
    unavailable "guest kernel comparison" "the Debian-kernel image could not be built: $(tail -n 1 "$work/image.log")"
fi

# 5. skerry-vmm against QEMU microvm on the tiny guest.
load tiny start
if SKERRY_BENCH_RUNS=$runs SKERRY_BENCH_OUT=$out nice cargo test -q --release -p skerry-vmm \
    --test bench_boot -- --ignored --nocapture >"$work/tiny.log" 2>&1; then
    if grep -q '^SKIPPED:' "$work/tiny.log"; then
        unavailable "skerry-vmm against QEMU (tiny guest)" "$(grep -m1 '^SKIPPED:' "$work/tiny.log" | cut -d' ' -f2-)"
    else
        tail -n +2 "$out/tiny_guest_unavailable.tsv" >> "$out/unavailable.tsv"
    fi
    rm -f "$out/tiny_guest_unavailable.tsv"
else
    echo "report: the tiny-guest benchmark failed:" >&2
    tail -n 20 "$work/tiny.log" >&2
    exit 1
fi
load tiny end

# Linux guests under skerry-vmm: only where KVM runs the guest kernel natively.
if [[ -d /sys/module/kvm_pvm ]]; then
    unavailable "Linux guests on skerry-vmm (skerry run, pods, boot-to-poweroff)" \
        "/dev/kvm is PVM here: guest ring 0 of a non-PVM kernel is emulated (~1000x slower) and a stock kernel does not finish booting, so every Linux-guest figure above is QEMU with TCG, as hypervisor = \"auto\" picks here; skerry-vmm is measured on the tiny guest only"
fi

python3 bench/report.py "$out"
if [[ -n $default_out ]]; then
    rm -rf bench/results/latest
    cp -r "$out" bench/results/latest
fi
echo "report: $out/report.md" >&2
