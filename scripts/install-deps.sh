#!/usr/bin/env bash
# Installs what skerry needs on a Debian 12 host (and its tests and benchmarks:
# the peers podman, containerd, runc, crun; hyperfine and gnuplot for bench/): QEMU, iproute2 (pod taps), nftables (port forwarding to a pod VM), busybox (test and demo
# bundles), the vhost-user back ends (virtiofsd, vhost-device-vsock) and
# cargo-nextest; libseccomp-dev for container mode (libcontainer), gcc and
# libc6-dev for the static probe helper of crates/cli/tests/plain_probes.rs;
# linux-source-6.1 and the kernel build tools for scripts/build-kernel.sh.
# Idempotent: cargo install skips what is already there.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq \
    qemu-system-x86 busybox-static cpio ca-certificates bsdutils iproute2 nftables \
    podman containerd runc crun hyperfine gnuplot-nox \
    libseccomp-dev libcap-ng-dev pkg-config gcc libc6-dev \
    linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev dwarves xz-utils >/dev/null
echo "install-deps: apt packages ready"

# Back ends QEMU runs beside each sandbox VM. vhost-device-vsock runs as the
# VM's own uid, which cannot search root's ~/.cargo/bin: it goes to
# /usr/local/bin, and an older copy in ~/.cargo/bin (first in PATH) goes away.
cargo install --locked --quiet virtiofsd
cargo install --locked --quiet --root /usr/local vhost-device-vsock
if [[ -e $HOME/.cargo/bin/vhost-device-vsock ]]; then
    cargo uninstall --quiet vhost-device-vsock
fi
command -v cargo-nextest >/dev/null || cargo install --locked --quiet cargo-nextest
echo "install-deps: virtiofsd, vhost-device-vsock, cargo-nextest ready"
