#!/usr/bin/env bash
# Sets skerry up on this host (packages, build, guest image, binaries in
# /usr/local/bin) and runs a busybox container inside a VM that prints the
# guest's kernel version and a line of its own.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."

scripts/install-deps.sh
SKERRY_IMAGE_DIR=/var/lib/skerry/guest scripts/build.sh
install -m 0755 target/release/skerry /usr/local/bin/skerry
install -m 0755 target/x86_64-unknown-linux-gnu/release/skerry-agent /usr/local/bin/skerry-agent
echo
skerry check || true
echo

bundle=$(mktemp -d /tmp/skerry-demo.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in sh cat echo uname; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
cat > "$bundle/config.json" <<'JSON'
{
  "ociVersion": "1.0.2",
  "process": {
    "user": {"uid": 0, "gid": 0},
    "args": ["sh", "-c", "echo \"guest kernel: $(cat /proc/version)\"; echo \"hello from a container in a VM ($(uname -n))\""],
    "env": ["PATH=/bin"],
    "cwd": "/"
  },
  "root": {"path": "rootfs"},
  "hostname": "skerry-demo",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
  ],
  "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}
JSON
echo "host kernel:  $(cat /proc/version)"
skerry run --bundle "$bundle" "demo-$$"
