#!/usr/bin/env bash
# Installs skerry on this host: the binaries, the guest image and a config
# file, then prints every path it changed (or left alone) and what is left
# for the operator (containerd config, RuntimeClass). Idempotent.
#
# Usage: deploy/install.sh [--bin-dir DIR] [--image-dir DIR] [--destdir DIR]
#   --bin-dir DIR    where the built binaries are (default: target/release;
#                    built with `cargo build --release` when missing)
#   --image-dir DIR  the guest image to install (default: target/guest; built
#                    with scripts/build.sh when missing)
#   --destdir DIR    stage everything under DIR instead of / (packaging, tests)
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=$PWD/target/release image_src=$PWD/target/guest destdir=
while (($#)); do
    case $1 in
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --image-dir) image_src=${2:?--image-dir needs a directory}; shift 2 ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        *) echo "install: unknown argument $1" >&2; exit 2 ;;
    esac
done

binaries=(skerry containerd-shim-skerry-v2 skerry-vmm jailer)
prefix=/usr/local/bin image_dir=/var/lib/skerry/guest config=/etc/skerry/config.toml

if [[ ! -f $image_src/manifest.json && $image_src == "$PWD/target/guest" ]]; then
    scripts/build.sh
fi
# The image's kernel: skerry's uncompressed vmlinux (PVH), or Debian's vmlinuz.
kernel=vmlinuz other_kernel=vmlinux
if [[ -f $image_src/vmlinux ]]; then kernel=vmlinux other_kernel=vmlinuz; fi
for b in "${binaries[@]}"; do
    if [[ ! -x $bin_dir/$b && $bin_dir == "$PWD/target/release" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        cargo build --release -q -p skerry -p containerd-shim-skerry-v2 -p skerry-vmm -p skerry-jailer
        break
    fi
done
for b in "${binaries[@]}"; do
    [[ -x $bin_dir/$b ]] || { echo "install: $bin_dir/$b: no such executable" >&2; exit 1; }
done
for f in $kernel initramfs.img manifest.json; do
    [[ -f $image_src/$f ]] || { echo "install: $image_src/$f: missing (run scripts/build.sh)" >&2; exit 1; }
done

# put SRC DEST MODE: installs SRC at DEST unless it is already identical.
put() {
    local dest=$destdir$2
    if cmp -s "$1" "$dest"; then
        echo "unchanged  $2"
    else
        install -D -m "$3" "$1" "$dest.new" && mv -f "$dest.new" "$dest"
        echo "installed  $2"
    fi
}
for b in "${binaries[@]}"; do put "$bin_dir/$b" "$prefix/$b" 0755; done
for f in $kernel initramfs.img manifest.json; do put "$image_src/$f" "$image_dir/$f" 0644; done
# The runtime boots a vmlinux when the image has one: the other kind's kernel goes.
if [[ -e $destdir$image_dir/$other_kernel ]]; then
    rm -f "$destdir$image_dir/$other_kernel"
    echo "removed    $image_dir/$other_kernel"
fi

if [[ -e $destdir$config ]]; then
    echo "kept       $config (exists; not overwritten)"
else
    mkdir -p "$(dirname "$destdir$config")"
    cat > "$destdir$config" <<EOF
# skerry configuration: every key and its default in docs/config.md.
[guest]
image_dir = "$image_dir"
EOF
    echo "wrote      $config"
fi

cat <<EOF

Left for you:
  containerd  merge deploy/containerd-config.toml into /etc/containerd/config.toml,
              then restart containerd (it starts $prefix/containerd-shim-skerry-v2)
  kubernetes  kubectl apply -f deploy/runtimeclass.yaml; pods opt in with runtimeClassName: skerry
  check       $prefix/skerry check   (can this host run skerry VMs, and with which hypervisor)
EOF
