#!/usr/bin/env bash
# Runs the whole test suite: installs dependencies, builds, checks style and
# lints, then runs every test tier (unit, KVM/QEMU, end to end) with nextest.
# Must run as root (tests mount, and start QEMU with vhost-user back ends).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

scripts/install-deps.sh
PROFILE=debug scripts/build.sh # the guest image around our kernel, built or from its cache
# hv_qemu.rs also boots Debian's cloud kernel with its modules: an image
# built with --kernel debian leaves the package in target/guest-debian/cache.
target/debug/skerry image build --kernel debian --output target/guest-debian \
    --agent target/x86_64-unknown-linux-gnu/release/skerry-agent
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
scripts/fuzz.sh # fuzz the VMM: virtio queues, MMIO transport, command line (20 s per target)
# Last, so that its summary closes the output.
SKERRY_E2E_REQUIRED=1 SKERRY_TEST_IMAGE_DIR="$PWD/target/guest" \
    cargo nextest run --workspace --profile ci "$@"
