#!/usr/bin/env bash
# Builds the skerry guest kernel from Debian's linux-source-6.1 with the
# config fragment guest/kernel/skerry.config (on top of `make allnoconfig`),
# skerry's own LSM guest/kernel/skerry_lsm.c (built in as security/skerry) and
# the patches in guest/kernel/patches/ (each says why at its top), into a cache
# directory outside the work tree:
#   ${SKERRY_KERNEL_CACHE:-~/.cache/skerry-kernel}/<key>/{bzImage,vmlinux,config,kernel.json}
# vmlinux is the uncompressed ELF with its PVH entry note, stripped of symbols
# (QEMU would otherwise keep its symbol table in memory for every VM): the
# image boots it directly, with nothing to decompress.
# <key> hashes the source package version, the fragment, the LSM, the patches and this script, so
# a build is reused until one of them changes. Prints that directory on stdout
# (progress goes to stderr). Fails if any option of the fragment did not
# survive the merge. SKERRY_KERNEL_JOBS (default 2) sets make's -j.
# With --cached it only prints the directory of an existing build (exit 3 if
# there is none): the tests use it to find the kernel without building one.
# Concurrent builds of one key are serialised (flock on <key>.lock).
set -euo pipefail

cached_only=false
case ${1:-} in
--cached) cached_only=true ;;
"") ;;
*) echo "usage: $0 [--cached]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
script=$root/scripts/build-kernel.sh
fragment=$root/guest/kernel/skerry.config
lsm=$root/guest/kernel/skerry_lsm.c
patches=("$root"/guest/kernel/patches/*.patch)
package=linux-source-6.1
tarball=/usr/src/$package.tar.xz
cache=${SKERRY_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skerry-kernel}
jobs=${SKERRY_KERNEL_JOBS:-2}

version=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null) || {
    echo "build-kernel: $package is not installed (scripts/install-deps.sh installs it)" >&2
    exit 1
}
[[ -f $tarball ]] || { echo "build-kernel: $tarball is missing" >&2; exit 1; }
key=$({ echo "$package $version"; cat "$fragment" "$lsm" "${patches[@]}" "$script"; } | sha256sum | cut -c1-16)
out=$cache/$key
if [[ -f $out/kernel.json ]]; then
    echo "build-kernel: cached build $out" >&2
    echo "$out"
    exit 0
fi
if $cached_only; then
    echo "build-kernel: no build for key $key in $cache (run scripts/build-kernel.sh)" >&2
    exit 3
fi

# One build of a key at a time (CI and a developer share the cache on one
# machine): a second caller waits, then takes the first one's build.
mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
if [[ -f $out/kernel.json ]]; then
    echo "build-kernel: cached build $out (made while waiting for the lock)" >&2
    echo "$out"
    exit 0
fi

# The source tree (~1 GB) stays after a failure, so that a rerun (same key)
# resumes the build; it goes once the build succeeds.
work=$cache/build-$key
log=$work.log
rm -rf "$out.tmp"
mkdir -p "$out.tmp"
: >"$log"
trap 'rm -rf "$out.tmp"' EXIT
trap 'echo "build-kernel: failed; log $log, tree kept in $work for a rerun" >&2' ERR
start=$(date +%s)
if [[ ! -f $work/.extracted ]]; then
    # Disk is scarce: of the other architectures and the large driver trees we
    # never build, only the Kconfig files and Makefiles are extracted (~0.7 GB less).
    excludes=(--exclude="$package/tools/testing" --exclude="$package/tools/perf")
    for tree in arch/alpha arch/arc arch/arm arch/arm64 arch/csky arch/hexagon arch/ia64 \
        arch/loongarch arch/m68k arch/microblaze arch/mips arch/nios2 arch/openrisc \
        arch/parisc arch/powerpc arch/riscv arch/s390 arch/sh arch/sparc arch/um arch/xtensa \
        drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media drivers/staging \
        drivers/infiniband sound; do
        excludes+=("--exclude=$package/$tree/*.[chS]" "--exclude=$package/$tree/*.dts*")
    done
    echo "build-kernel: extracting $package $version into $work" >&2
    rm -rf "$work"
    mkdir -p "$work"
    tar -xJf "$tarball" -C "$work" --strip-components=1 "${excludes[@]}"
    touch "$work/.extracted"
fi
cd "$work"
# skerry's patches, each applied once (a rerun resumes in the same tree).
for p in "${patches[@]}"; do
    if ! patch -p1 -R -s -f --dry-run <"$p" >/dev/null 2>&1; then
        patch -p1 -s -f <"$p" >&2 || { echo "build-kernel: $p does not apply" >&2; exit 1; }
    fi
done
# skerry's LSM as one more built-in security module (idempotent: a rerun
# resumes in the same tree).
mkdir -p security/skerry
cp "$lsm" security/skerry/skerry.c
echo 'obj-y := skerry.o' >security/skerry/Makefile
cat >security/skerry/Kconfig <<'KCONFIG'
config SECURITY_SKERRY
	bool "skerry guest: containers cannot reach the agent's channels"
	depends on SECURITY && SECURITY_NETWORK
	help
	  Denies AF_VSOCK sockets and virtio-fs mounts to tasks outside the
	  initial pid namespace (see security/skerry/skerry.c).
KCONFIG
grep -q 'security/skerry/Kconfig' security/Kconfig ||
    sed -i '/^source "security\/yama\/Kconfig"/a source "security/skerry/Kconfig"' security/Kconfig
grep -q 'skerry/' security/Makefile ||
    echo 'obj-$(CONFIG_SECURITY_SKERRY)		+= skerry/' >>security/Makefile
export ARCH=x86_64
make allnoconfig >>"$log" 2>&1
scripts/kconfig/merge_config.sh -n .config "$fragment" >>"$log" 2>&1

# Every line of the fragment must hold in the final .config.
missing=()
while IFS= read -r line; do
    case $line in
    CONFIG_*=*)
        grep -qxF -- "$line" .config || missing+=("$line (have: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo absent))")
        ;;
    "# CONFIG_"*" is not set")
        name=${line#\# }
        name=${name%% *}
        if grep -q "^$name=" .config; then
            missing+=("$line (have: $(grep "^$name=" .config))")
        fi
        ;;
    esac
done <"$fragment"
if ((${#missing[@]})); then
    printf 'build-kernel: option not in the final .config: %s\n' "${missing[@]}" >&2
    exit 1
fi

echo "build-kernel: building (make -j$jobs, log $log)" >&2
if ! nice -n 10 make -j"$jobs" bzImage >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    exit 1
fi
release=$(make -s kernelrelease)
cp arch/x86/boot/bzImage "$out.tmp/"
strip --strip-all -o "$out.tmp/vmlinux" vmlinux
readelf --notes "$out.tmp/vmlinux" | grep -q 'Xen.*0x00000012' || {
    echo "build-kernel: vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)" >&2
    exit 1
}
cp .config "$out.tmp/config"
seconds=$(($(date +%s) - start))
cat >"$out.tmp/kernel.json" <<JSON
{
  "release": "$release",
  "source_package": "$package",
  "source_version": "$version",
  "config_sha256": "$(sha256sum "$fragment" | cut -d' ' -f1)",
  "build_key": "$key",
  "build_seconds": $seconds
}
JSON
cd "$cache"
mv "$out.tmp" "$out"
rm -rf "$work" "$log"
echo "build-kernel: built $release in ${seconds}s: $out ($(stat -c %s "$out/vmlinux") bytes vmlinux, $(stat -c %s "$out/bzImage") bytes bzImage)" >&2
echo "$out"
