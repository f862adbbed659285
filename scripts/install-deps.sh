#!/usr/bin/env bash
# Installs what skerry needs on a Debian 12 host: QEMU, iproute2 (pod taps), busybox (test and demo
# bundles), the vhost-user back ends (virtiofsd, vhost-device-vsock) and
# cargo-nextest; libseccomp-dev for container mode (libcontainer), gcc and
# libc6-dev for the static probe helper of crates/cli/tests/plain_probes.rs.
# Idempotent: cargo install skips what is already there.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq \
    qemu-system-x86 busybox-static cpio ca-certificates bsdutils iproute2 \
    podman containerd runc crun hyperfine \
    libseccomp-dev libcap-ng-dev pkg-config gcc libc6-dev >/dev/null
echo "install-deps: apt packages ready"

# Back ends QEMU runs beside each sandbox VM.
cargo install --locked --quiet virtiofsd vhost-device-vsock
command -v cargo-nextest >/dev/null || cargo install --locked --quiet cargo-nextest
echo "install-deps: virtiofsd, vhost-device-vsock, cargo-nextest ready"
