#!/usr/bin/env bash
# Runs the Kubernetes CRI validation suite (critest, built from cri-tools'
# public source outside this repository; written against v1.26.1) against a
# private containerd 1.6 whose CRI has three handlers:
#   runc              the baseline (io.containerd.runc.v2)
#   skerry            containerd-shim-skerry-v2, VM mode (the default isolation)
#   skerry-container  the same shim with a config file saying isolation = "container"
# Images come from a local registry (Debian's docker-registry) holding stand-ins
# built here from Debian's busybox and a few tiny static C programs, reached
# through containerd's registry mirrors (hosts.toml) for registry.k8s.io and
# gcr.io; no other registry is contacted. Handlers run one after the other,
# each with a fresh containerd; the summary prints each spec's result per
# handler side by side. Everything started (containerd, registry, pods, the
# CNI bridge) is removed at exit; what leaked is reported.
#
#   scripts/critest.sh --critest PATH [--handler runc|skerry|skerry-container ...]
#                      [--bin DIR] [--guest DIR] [--out DIR] [--focus RE] [--skip RE]
#
# Must run as root. Not part of .ci/run: on a 2-core host a run takes about
# 1-2 minutes for runc and container mode and 8-9 minutes for VM mode under
# QEMU's TCG, and pulls in packages the other tests do not need.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

usage() {
    cat <<EOF
usage: scripts/critest.sh --critest PATH [options]
  --critest PATH   critest binary (cri-tools v1.26.1: go test -c ./cmd/critest)
  --crictl PATH    crictl, for cleaning up pods (default: next to critest, or PATH)
  --handler H      runc | skerry | skerry-container; repeat for several
                   (default: all three, in that order)
  --bin DIR        holds containerd-shim-skerry-v2 (default: target/debug)
  --guest DIR      guest image dir, vmlinux or vmlinuz + initramfs.img (default: target/guest)
  --out DIR        logs and reports (default: /tmp/skerry-critest-<date>)
  --focus RE       only specs matching RE (ginkgo.focus)
  --skip RE        also skip specs matching RE (ginkgo.skip)
  --no-install     do not apt-get install missing packages
EOF
}

CRITEST="" CRICTL="" BIN="$REPO/target/debug" GUEST="$REPO/target/guest"
OUT="/tmp/skerry-critest-$(date +%Y%m%d-%H%M%S)" FOCUS="" SKIP="" INSTALL=1
HANDLERS=()
while (($#)); do
    case $1 in
    --critest) CRITEST=$2; shift 2 ;;
    --crictl) CRICTL=$2; shift 2 ;;
    --handler) HANDLERS+=("$2"); shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --guest) GUEST=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "critest.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
((${#HANDLERS[@]})) || HANDLERS=(runc skerry skerry-container)
die() { echo "critest.sh: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root (containerd, CNI, mounts)"
[[ -n $CRITEST ]] || { usage >&2; exit 2; }
[[ -x $CRITEST ]] || die "--critest $CRITEST: not an executable"
CRITEST=$(realpath "$CRITEST")
for h in "${HANDLERS[@]}"; do
    case $h in
    runc | skerry | skerry-container) ;;
    *) die "--handler $h: expected runc, skerry or skerry-container" ;;
    esac
    if [[ $h == skerry* ]]; then
        [[ -x $BIN/containerd-shim-skerry-v2 ]] ||
            die "--bin $BIN: no containerd-shim-skerry-v2 (scripts/build.sh)"
    fi
    if [[ $h == skerry ]]; then
        [[ ( -f $GUEST/vmlinux || -f $GUEST/vmlinuz ) && -f $GUEST/initramfs.img ]] ||
            die "--guest $GUEST: no vmlinux or vmlinuz + initramfs.img (skerry image build)"
    fi
done
BIN=$(realpath -m "$BIN") GUEST=$(realpath -m "$GUEST")
if [[ -z $CRICTL ]]; then
    if [[ -x $(dirname "$CRITEST")/crictl ]]; then
        CRICTL=$(dirname "$CRITEST")/crictl
    else
        CRICTL=$(command -v crictl || true)
    fi
fi

# --- packages -----------------------------------------------------------------
# containerd + runc + CNI plugins (pod IPs, hostPort), the registry and a client
# that pushes to it, busybox and a C compiler for the stand-in images,
# util-linux's ipcmk (the HostIpc specs call it on the host).
PKGS=(containerd runc containernetworking-plugins iptables iproute2 docker-registry
    skopeo busybox-static gcc libc6-dev util-linux python3)
for h in "${HANDLERS[@]}"; do [[ $h == skerry ]] && PKGS+=(qemu-system-x86); done
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    ((INSTALL)) || die "missing packages: ${missing[*]} (apt-get install them, or drop --no-install)"
    echo "critest.sh: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for h in "${HANDLERS[@]}"; do
    if [[ $h == skerry ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        for tool in virtiofsd vhost-device-vsock; do
            command -v $tool >/dev/null || die "VM mode needs $tool (scripts/install-deps.sh)"
        done
    fi
done
[[ -n $CRICTL ]] || echo "critest.sh: no crictl: leftover pods are removed with ctr (no CNI teardown)"

# --- scratch directory and cleanup ----------------------------------------------
# Short: the shim's and the VMs' socket paths must fit in 108 bytes.
T=$(mktemp -d /tmp/skc.XXXXXX)
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
BRIDGE=skc${T##*.}           # CNI bridge of this run (<= 15 characters)
BRIDGE=${BRIDGE:0:15}
REG_PID="" CTD_PID="" CTD_SOCK=""
NAT_BEFORE=$(iptables -t nat -S 2>/dev/null || true)
# The CRI's pods get cgroups under /k8s.io (cgroupfs): its parent stays behind.
CG_BEFORE=$(ls -d /sys/fs/cgroup/k8s.io /sys/fs/cgroup/*/k8s.io 2>/dev/null || true)

ctr_() { ctr --address "$CTD_SOCK" --namespace k8s.io "$@"; }
crictl_() { "$CRICTL" --runtime-endpoint "unix://$CTD_SOCK" --image-endpoint "unix://$CTD_SOCK" --timeout 330s "$@"; }

# Removes what is left of the handler's pods (CRI first, then containerd).
remove_pods() {
    [[ -n $CTD_PID ]] || return 0
    if [[ -n $CRICTL ]]; then
        local p
        for p in $(crictl_ pods -q 2>/dev/null); do
            crictl_ stopp "$p" >/dev/null 2>&1 || echo "critest.sh: stopp $p failed"
            crictl_ rmp -f "$p" >/dev/null 2>&1 || echo "critest.sh: rmp $p failed"
        done
    fi
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do
        ctr_ tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
        sleep 1
        ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    for t in $(ctr_ containers ls -q 2>/dev/null); do
        ctr_ containers delete "$t" >/dev/null 2>&1 || true
    done
}

stop_containerd() {
    [[ -n $CTD_PID ]] || return 0
    kill "$CTD_PID" 2>/dev/null || true
    wait "$CTD_PID" 2>/dev/null || true
    CTD_PID=""
}

# Processes whose command line or working directory names this run's scratch dir.
our_processes() {
    local pid cmd
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        { cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline"); } 2>/dev/null || continue
        if [[ $cmd == *"$T"* || $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$T"* ]]; then
            echo "$pid ${cmd:0:150}"
        fi
    done
}

cleanup() {
    local rc=$?
    set +e
    remove_pods
    stop_containerd
    [[ -n $REG_PID ]] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
    # Shims and VMs outlive containerd by design: end only those of this run.
    local pid
    for pid in $(our_processes | cut -d' ' -f1); do kill -9 "$pid" 2>/dev/null; done
    grep -o " $T[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    ip link del "$BRIDGE" 2>/dev/null
    # portmap's shared chains, when this run created them.
    local chain
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
        grep -q -- "-N $chain\$" <<<"$NAT_BEFORE" && continue
        iptables -t nat -S "$chain" >/dev/null 2>&1 || continue
        iptables -t nat -S | grep -- "-j $chain\$" | sed 's/^-A/-D/' | while read -r rule; do
            eval "iptables -t nat $rule"
        done
        iptables -t nat -F "$chain" && iptables -t nat -X "$chain"
    done
    local cg
    for cg in /sys/fs/cgroup/k8s.io /sys/fs/cgroup/*/k8s.io; do
        [[ -d $cg ]] && ! grep -qx "$cg" <<<"$CG_BEFORE" && rmdir "$cg" 2>/dev/null
    done
    rm -rf "$T"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- stand-in images ---------------------------------------------------------------
# Each image the suite pulls, with what its specs look for:
#   registry.k8s.io/pause:3.6                   the sandbox image (containerd's default)
#   registry.k8s.io/e2e-test-images/busybox:1.29-2   busybox applets, ipcs, /etc/passwd
#     with nobody and www-data
#   .../nginx:1.14-2, gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64
#     HTTP 200 on :80 (:12003), process "nginx" whose /proc/<pid>/cmdline says
#     "master process", /var/run/nginx.pid
#   .../httpd:2.4.39-4                          HTTP 200 on :80, logs "httpd -D FOREGROUND"
#   .../nonewprivs:1.3                          setuid-root program printing "Effective uid: N"
#   gcr.io/k8s-staging-cri-tools/test-image-*   busybox + a file; USER variants;
#     predefined-group (uid 1000 in group 50000)
# test-image-digest is pulled by a digest of Google's build; no local image can
# have it, so "public image with digest" fails here.
IMG=$T/img
mkdir -p "$IMG/src"
cat >"$IMG/src/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void down(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, down); signal(SIGTERM, down); signal(SIGCHLD, reap);
    for (;;) pause();
}
EOF
cat >"$IMG/src/nnp.c" <<'EOF'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
EOF
# nginx and httpd: one small HTTP server; argv[0] picks the personality.
cat >"$IMG/src/webd.c" <<'EOF'
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#define TITLE "nginx: master process nginx -g daemon off;"
static void down(int sig) { (void)sig; _exit(0); }
int main(int argc, char **argv) {
    int nginx = strstr(argv[0], "nginx") != NULL, port = 80;
    if (nginx && strcmp(argv[0], TITLE) != 0) {
        char *args[] = {TITLE, NULL};
        execv("/proc/self/exe", args);
        perror("execv"); return 1;
    }
    if (getenv("WEBD_PORT")) port = atoi(getenv("WEBD_PORT"));
    signal(SIGTERM, down); signal(SIGINT, down); signal(SIGQUIT, down);
    signal(SIGPIPE, SIG_IGN);
    if (nginx) {
        FILE *f = fopen("/var/run/nginx.pid", "w");
        if (f) { fprintf(f, "%d\n", getpid()); fclose(f); }
    } else {
        fprintf(stderr, "AH00094: Command line: 'httpd -D FOREGROUND'\n");
    }
    int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("listen"); return 1; }
    static const char page[] = "<html><body><h1>Welcome to nginx!</h1></body></html>\n";
    char buf[4096], head[256];
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        (void)!read(c, buf, sizeof buf);
        int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                         "Content-Length: %zu\r\nConnection: close\r\n\r\n", sizeof page - 1);
        (void)!write(c, head, n); (void)!write(c, page, sizeof page - 1);
        close(c);
    }
}
EOF
for p in pause nnp webd; do
    gcc -static -O2 -s -o "$IMG/src/$p" "$IMG/src/$p.c"
done

# The busybox image's rootfs: Debian's dynamic busybox (the static one's shell
# runs applets without exec, so a masked /bin/ls would still run), util-linux's
# ipcs (Debian's busybox has none), the libraries they link, and the image's
# users and groups.
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/skerry-critest/debs
mkdir -p "$CACHE"
if ! compgen -G "$CACHE/busybox_*.deb" >/dev/null; then
    (cd "$CACHE" && apt-get download -q busybox >/dev/null 2>&1) ||
        die "apt-get download busybox failed (the busybox image needs Debian's dynamic busybox)"
fi
base=$IMG/base
mkdir -p "$base"/{bin,etc,root,tmp,proc,sys,dev,home,var/run,var/www,usr/bin,usr/sbin}
chmod 1777 "$base/tmp"
dpkg-deb --fsys-tarfile "$(compgen -G "$CACHE/busybox_*.deb" | tail -1)" |
    tar -x -C "$IMG" ./bin/busybox
mv "$IMG/bin/busybox" "$base/bin/busybox"
cp /usr/bin/ipcs "$base/bin/ipcs"
for lib in $({ ldd /usr/bin/ipcs; ldd "$base/bin/busybox"; } | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$base$(dirname "$lib")"
    cp -L "$lib" "$base$lib"
done
# Hard links, as in the busybox image: masking /bin/ls (MaskedPaths) must not
# mask the busybox binary a symlink points to.
for a in $("$base/bin/busybox" --list); do
    [[ -e $base/bin/$a ]] || ln "$base/bin/busybox" "$base/bin/$a"
done
# Debian's busybox has no pgrep ("execSync with timeout" runs `pgrep sleep`):
# a stand-in matching process names.
cat >"$base/bin/pgrep" <<'SH'
#!/bin/sh
rc=1
for d in /proc/[0-9]*; do
    read -r comm <"$d/comm" 2>/dev/null || continue
    case $comm in *$1*) echo "${d#/proc/}"; rc=0 ;; esac
done
exit $rc
SH
chmod 755 "$base/bin/pgrep"
cat >"$base/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
cat >"$base/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
mail:x:8:
kmem:x:9:
wheel:x:10:root
www-data:x:33:
operator:x:37:
users:x:100:
nogroup:x:65534:
EOF

# layer NAME DIR: an uncompressed layer tar of DIR (root-owned) as a blob.
BLOBS=$IMG/blobs/sha256
mkdir -p "$BLOBS"
layer() {
    tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$2" -cf "$IMG/$1.tar" .
    local d
    d=$(sha256sum "$IMG/$1.tar" | cut -d' ' -f1)
    mv "$IMG/$1.tar" "$BLOBS/$d"
    echo "$d"
}
blob() { # text -> digest
    local d
    d=$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)
    printf '%s' "$1" >"$BLOBS/$d"
    echo "$d"
}
size() { stat -c %s "$BLOBS/$1"; }
# image REF CONFIG-JSON LAYER-DIGEST...: pushes an image of those layers.
REG=""
image() {
    local ref=$1 cfg=$2 diffs="" layers="" d
    shift 2
    for d in "$@"; do
        diffs+="${diffs:+,}\"sha256:$d\""
        layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$(size "$d")}"
    done
    local config
    config=$(blob "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":$cfg,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]}}")
    local manifest
    manifest=$(blob "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$(size "$config")},\"layers\":[$layers]}")
    local lay=$IMG/layout
    mkdir -p "$lay"
    ln -sfn "$IMG/blobs" "$lay/blobs"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
    echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest\",\"size\":$(size "$manifest")}]}" >"$lay/index.json"
    # The registry serves both names; containerd asks the mirror for the path only.
    skopeo copy --quiet --dest-tls-verify=false "oci:$lay" "docker://$REG/${ref#*/}" >/dev/null
}

free_port() {
    local port=$((15000 + RANDOM % 5000))
    while ss -ltn | grep -q ":$port "; do port=$((port + 1)); done
    echo $port
}
# A local registry on a free port, storage in the scratch dir.
REG=127.0.0.1:$(free_port)
cat >"$T/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $T/registry}}
http: {addr: $REG}
EOF
docker-registry serve "$T/registry.yml" >"$OUT/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do
    curl -fs "http://$REG/v2/" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fs "http://$REG/v2/" >/dev/null || die "registry did not start: $(tail -3 "$OUT/registry.log")"

echo "critest.sh: building and pushing stand-in images to $REG"
PATHENV='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
BASE=$(layer base "$base")
E2E=registry.k8s.io/e2e-test-images
STG=gcr.io/k8s-staging-cri-tools
image "$E2E/busybox:1.29-2" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"]}" "$BASE"

d=$IMG/pause && mkdir -p "$d" && cp "$IMG/src/pause" "$d/pause"
image registry.k8s.io/pause:3.6 "{\"Env\":[$PATHENV],\"Entrypoint\":[\"/pause\"]}" "$(layer pause "$d")"

d=$IMG/nnp && mkdir -p "$d/usr/local/bin" && cp "$IMG/src/nnp" "$d/usr/local/bin/nnp"
chmod 4755 "$d/usr/local/bin/nnp"
image "$E2E/nonewprivs:1.3" "{\"Env\":[$PATHENV],\"Entrypoint\":[\"/usr/local/bin/nnp\"]}" "$BASE" "$(layer nnp "$d")"

d=$IMG/nginx && mkdir -p "$d/usr/sbin" "$d/var/run" && cp "$IMG/src/webd" "$d/usr/sbin/nginx"
NGINX=$(layer nginx "$d")
image "$E2E/nginx:1.14-2" "{\"Env\":[$PATHENV],\"Cmd\":[\"nginx\",\"-g\",\"daemon off;\"],\"StopSignal\":\"SIGQUIT\",\"ExposedPorts\":{\"80/tcp\":{}}}" "$BASE" "$NGINX"
image "$STG/hostnet-nginx-amd64:latest" "{\"Env\":[$PATHENV,\"WEBD_PORT=12003\"],\"Cmd\":[\"nginx\",\"-g\",\"daemon off;\"],\"StopSignal\":\"SIGQUIT\"}" "$BASE" "$NGINX"

d=$IMG/httpd && mkdir -p "$d/usr/local/apache2/bin" && cp "$IMG/src/webd" "$d/usr/local/apache2/bin/httpd"
image "$E2E/httpd:2.4.39-4" "{\"Env\":[\"PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Cmd\":[\"httpd\",\"-D\",\"FOREGROUND\"],\"StopSignal\":\"SIGWINCH\"}" "$BASE" "$(layer httpd "$d")"

# test-image-NAME: busybox + a file named after the image (as cri-tools' images/build).
file_image() { # REF FILE
    local d=$IMG/f-$2
    mkdir -p "$d" && : >"$d/$2"
    image "$1" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"]}" "$BASE" "$(layer "f-$2" "$d")"
}
for n in 1 2 3 latest digest; do file_image "$STG/test-image-$n:latest" "test-image-$n"; done
for tag in 1 2 3; do file_image "$STG/test-image-tags:$tag" same-image; done
file_image "$STG/test-image-tag:test" test
file_image "$STG/test-image-tag:all" all
for u in uid:1002 username:www-data uid-group:1003:1004 username-group:www-data:1004; do
    image "$STG/test-image-user-${u%%:*}:latest" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"${u#*:}\"}" "$BASE"
done
d=$IMG/group && mkdir -p "$d/etc" "$d/home/default-user"
cp "$base/etc/passwd" "$base/etc/group" "$d/etc/"
echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >>"$d/etc/passwd"
printf 'default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n' >>"$d/etc/group"
image "$STG/test-image-predefined-group:latest" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"1000\"}" "$BASE" "$(layer group "$d")"

# --- containerd -----------------------------------------------------------------
mkdir -p "$T/bin" "$T/certs.d" "$T/net.d"
ln -s "$BIN/containerd-shim-skerry-v2" "$T/bin/containerd-shim-skerry-v2"
for host in registry.k8s.io gcr.io; do
    mkdir -p "$T/certs.d/$host"
    printf 'server = "https://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
        "$host" "$REG" >"$T/certs.d/$host/hosts.toml"
done
cat >"$T/net.d/10-skerry-critest.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "skerry-critest", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$T/ipam", "routes": [{"dst": "0.0.0.0/0"}],
            "ranges": [[{"subnet": "10.199.$((RANDOM % 200)).0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
# Shim config per skerry handler (docs/config.md). VM mode: the e2e tests' VM
# size and boot retries (tests/support/config.rs). QEMU runs as a VM uid that
# must reach the guest image: a copy in the scratch dir (searchable by others),
# wherever --guest lives (e.g. under /root).
if [[ " ${HANDLERS[*]} " == *" skerry "* ]]; then
    chmod 711 "$T"
    mkdir -m 755 "$T/guest"
    for f in vmlinux vmlinuz initramfs.img; do
        [[ -f $GUEST/$f ]] && install -m 644 "$GUEST/$f" "$T/guest/"
    done
    [[ -f $GUEST/manifest.json ]] && install -m 644 "$GUEST/manifest.json" "$T/guest/"
fi
cat >"$T/skerry-vm.toml" <<EOF
[guest]
image_dir = "$T/guest"
[hypervisor]
kind = "qemu"
memory_mib = 256
boot_timeout_secs = 20
boot_attempts = 3
EOF
printf '[runtime]\nisolation = "container"\n' >"$T/skerry-container.toml"

start_containerd() { # HANDLER
    local d=$T/$1
    mkdir -p "$d"
    CTD_SOCK=$d/c.sock
    cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$CTD_SOCK"
[ttrpc]
  address = "$d/t.sock"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$(free_port)"
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: runc's init cannot lower its
  # oom_score_adj to CRI's -998 ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skerry]
      runtime_type = "io.containerd.skerry.v2"
      pod_annotations = ["io.skerry.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skerry.options]
        ConfigPath = "$T/skerry-vm.toml"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skerry-container]
      runtime_type = "io.containerd.skerry.v2"
      pod_annotations = ["io.skerry.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skerry-container.options]
        ConfigPath = "$T/skerry-container.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$T/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$T/certs.d"
EOF
    PATH="$T/bin:$PATH" SKERRY_SHIM_ROOT="$d/s" SKERRY_SHIM_LOG="$OUT/$1/shim.log" \
        SKERRY_LOG=debug containerd --config "$d/containerd.toml" >"$OUT/$1/containerd.log" 2>&1 &
    CTD_PID=$!
    for _ in $(seq 100); do
        [[ -S $CTD_SOCK ]] && ctr --address "$CTD_SOCK" version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "containerd did not start: $(tail -5 "$OUT/$1/containerd.log")"
}

# --- runs -------------------------------------------------------------------------
GSKIP=${SKIP:+--ginkgo.skip=$SKIP}
VMDIRS_BEFORE=$(ls /run/skerry-vm 2>/dev/null || true)
for h in "${HANDLERS[@]}"; do
    mkdir -p "$OUT/$h"
    start_containerd "$h"
    echo "critest.sh: $h: running critest (log: $OUT/$h/critest.log)"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$CRITEST" --runtime-endpoint "unix://$CTD_SOCK" --image-endpoint "unix://$CTD_SOCK" \
        --runtime-handler "$h" --ginkgo.timeout=4h --ginkgo.v --ginkgo.no-color \
        --ginkgo.junit-report="$OUT/$h/junit.xml" ${FOCUS:+--ginkgo.focus="$FOCUS"} $GSKIP \
        >"$OUT/$h/critest.log" 2>&1 || true
    echo "critest.sh: $h: done in $(($(date +%s) - start)) s"
    # What the suite left behind, before cleaning it up.
    {
        echo "containers: $(ctr_ containers ls -q | wc -l)"
        ctr_ containers ls 2>&1
        echo "tasks:"
        ctr_ tasks ls 2>&1
        [[ -n $CRICTL ]] && { echo "pods:"; crictl_ pods 2>&1; }
    } >"$OUT/$h/leftovers.txt"
    remove_pods
    stop_containerd
    sleep 1
    {
        echo "processes after containerd stopped:"
        our_processes | grep -v "^$REG_PID " || true
        echo "mounts:"
        grep " $T" /proc/self/mountinfo || true
        # VM mode: run dirs and uid leases live outside the scratch dir.
        echo "VM run dirs new since the start:"
        comm -13 <(echo "$VMDIRS_BEFORE") <(ls /run/skerry-vm 2>/dev/null) || true
        echo "uid leases whose owner is gone:"
        for f in /run/skerry/.uids/[0-9]*; do
            [[ -f $f ]] || continue
            owner=$(grep -o '"pid":[0-9]*' "$f" | cut -d: -f2)
            [[ -n $owner && -d /proc/$owner ]] || echo "$f: $(cat "$f")"
        done
    } >>"$OUT/$h/leftovers.txt"
done

# --- summary ------------------------------------------------------------------------
python3 - "$OUT" "${HANDLERS[@]}" <<'EOF'
import sys, os, xml.etree.ElementTree as ET
out, handlers = sys.argv[1], sys.argv[2:]
res, names = {}, []
for h in handlers:
    res[h] = {}
    path = os.path.join(out, h, "junit.xml")
    if not os.path.exists(path):
        continue
    for tc in ET.parse(path).iter("testcase"):
        name = tc.get("name", "")
        if name.startswith("[BeforeSuite]") or name.startswith("[AfterSuite]") or name.startswith("[SynchronizedBeforeSuite]"):
            continue
        st = tc.get("status", "")
        if tc.find("skipped") is not None or st == "skipped":
            r = "skip"
        elif tc.find("failure") is not None or tc.find("error") is not None:
            r = "FAIL"
        else:
            r = "pass"
        name = name.removeprefix("[It] ")
        res[h][name] = r
        if name not in names:
            names.append(name)
names.sort()
w = max([len(h) for h in handlers] + [4])
print()
print(" ".join(f"{h:>{w}}" for h in handlers), " spec")
for n in names:
    row = [res[h].get(n, "-") for h in handlers]
    mark = "" if len(set(row)) == 1 else "  <"
    print(" ".join(f"{r:>{w}}" for r in row), "", n + mark)
print()
for h in handlers:
    rs = list(res[h].values())
    ran = [r for r in rs if r in ("pass", "FAIL")]
    print(f"{h}: {rs.count('pass')}/{len(ran)} passed, {rs.count('FAIL')} failed, {rs.count('skip')} skipped")
EOF
echo "critest.sh: logs and JUnit reports in $OUT"
for h in "${HANDLERS[@]}"; do
    n=$(sed -n 's/^containers: //p' "$OUT/$h/leftovers.txt")
    p=$(sed -n '/^processes after/,/^mounts:/p' "$OUT/$h/leftovers.txt" | grep -cv '^processes\|^mounts' || true)
    m=$(sed -n '/^mounts:/,/^VM run dirs/p' "$OUT/$h/leftovers.txt" | grep -cv '^mounts:\|^VM run dirs' || true)
    v=$(sed -n '/^VM run dirs/,$p' "$OUT/$h/leftovers.txt" | grep -cv '^VM run dirs\|^uid leases' || true)
    echo "critest.sh: $h: left behind by the suite: $n containers; after cleanup: $p processes, $m mounts, $v VM dirs/leases (details: $OUT/$h/leftovers.txt)"
done
