//! Escape probes inside a container-mode container running the hardened
//! `skerry spec` (user namespace, Docker's seccomp profile, 13 capabilities,
//! masked paths, no_new_privileges, every namespace of its own): each one
//! thing a container must not do, one test per probe. Where the host lets
//! root do it, the same probe runs on the host first, so a failure inside the
//! container is the container's doing.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use common::{stderr, stdout, World};

/// The probe helper: `probe WHAT [PID]` tries one operation and prints
/// `WHAT: allowed` (exit 0) or `WHAT: denied: <errno text>` (exit 1).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    long r = -1;
    if (!strcmp(what, "finit_module")) {
        int fd = open("/bin/busybox", O_RDONLY | O_CLOEXEC);
        r = fd < 0 ? fd : syscall(SYS_finit_module, fd, "", 0);
    } else if (!strcmp(what, "init_module")) {
        static char image[4096];
        r = syscall(SYS_init_module, image, sizeof image, "");
    } else if (!strcmp(what, "raw_socket")) {
        r = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    } else if (!strcmp(what, "ptrace") && argc > 2) {
        pid_t pid = atoi(argv[2]);
        r = ptrace(PTRACE_ATTACH, pid, 0, 0);
        if (r == 0) {
            waitpid(pid, 0, __WALL);
            ptrace(PTRACE_DETACH, pid, 0, 0);
        }
    } else if (!strcmp(what, "keyctl")) {
        r = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, "skerry-probe");
    } else if (!strcmp(what, "bpf")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4;
        attr.value_size = 4;
        attr.max_entries = 1;
        r = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    } else if (!strcmp(what, "vsock")) {
        r = socket(AF_VSOCK, SOCK_STREAM, 0);
    } else if (!strcmp(what, "io_uring")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        r = syscall(SYS_io_uring_setup, 1, &params);
    } else {
        fprintf(stderr, "usage: probe finit_module|init_module|raw_socket|ptrace PID|keyctl|bpf|vsock|io_uring\n");
        return 2;
    }
    if (r < 0) {
        printf("%s: denied: %s\n", what, strerror(errno));
        return 1;
    }
    printf("%s: allowed\n", what);
    return 0;
}
"#;

/// Skips the calling test when gcc cannot build a static helper here.
macro_rules! require_gcc {
    () => {
        skip_if!(
            Command::new("gcc")
                .arg("--version")
                .output()
                .is_err()
                .then(|| "gcc not installed (the probes need a static helper)"),
            "probe test"
        );
    };
}

/// Builds the static probe helper in the world's temp dir.
fn build_probe(w: &World) -> PathBuf {
    let src = w.tmp.path().join("probe.c");
    let bin = w.tmp.path().join("probe");
    fs::write(&src, PROBE_C).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc: {}", stderr(&out));
    bin
}

/// A bundle running `args` under the hardened `skerry spec`, with the probe
/// helper at /bin/probe.
fn hardened_bundle(w: &World, name: &str, args: &[&str]) -> PathBuf {
    let dir = w.spec_bundle(name, &[], args);
    fs::copy(build_probe(w), dir.join("rootfs/bin/probe")).unwrap();
    dir
}

/// Runs `args` in a hardened container; returns (exit code, stdout+stderr).
fn run_hardened(w: &World, name: &str, args: &[&str]) -> (Option<i32>, String) {
    let bundle = hardened_bundle(w, name, args);
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), name]);
    w.assert_clean(name);
    (out.status.code(), stdout(&out) + &stderr(&out))
}

/// Runs the probe helper on the host as this (root) test process.
fn on_host(probe: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(probe).args(args).output().unwrap();
    (out.status.code(), stdout(&out))
}

/// Asserts that `probe WHAT ARGS` is denied in the hardened container,
/// after showing (where the host allows it) that it works on the host.
fn assert_denied(w: &World, what: &str, args: &[&str], host_can: bool) {
    let probe = build_probe(w);
    let argv: Vec<&str> = [what].iter().chain(args).copied().collect();
    let (code, text) = on_host(&probe, &argv);
    if host_can {
        assert_eq!(code, Some(0), "on the host: {text}");
    } else {
        eprintln!("note: {what} fails on this host too: {text}");
    }
    let argv: Vec<&str> = ["/bin/probe"].iter().chain(&argv).copied().collect();
    let (code, text) = run_hardened(w, what, &argv);
    assert_eq!(code, Some(1), "in the container: {text}\n{}", w.log());
    assert!(text.contains(&format!("{what}: denied")), "{text}");
}

#[test]
fn plain_probe_mount_fails() {
    require_plain!();
    let w = World::plain();
    let (code, text) = run_hardened(
        &w,
        "m",
        &[
            "sh",
            "-c",
            "mount -t tmpfs none /tmp && echo mounted; mount -o remount,rw / && echo remounted",
        ],
    );
    assert_eq!(code, Some(1), "{text}\n{}", w.log());
    assert!(!text.contains("mounted"), "{text}");
    assert!(text.contains("mount: permission denied"), "{text}");
}

#[test]
fn plain_probe_kernel_module_loading_fails() {
    require_plain!();
    require_gcc!();
    // The host kernel here boots with `nomodule`: root fails on the host too.
    assert_denied(&World::plain(), "finit_module", &[], false);
    assert_denied(&World::plain(), "init_module", &[], false);
}

#[test]
fn plain_probe_raw_socket_fails() {
    require_plain!();
    require_gcc!();
    assert_denied(&World::plain(), "raw_socket", &[], true);
}

#[test]
fn plain_probe_keyctl_fails() {
    require_plain!();
    require_gcc!();
    assert_denied(&World::plain(), "keyctl", &[], true);
}

#[test]
fn plain_probe_bpf_fails() {
    require_plain!();
    require_gcc!();
    assert_denied(&World::plain(), "bpf", &[], true);
}

#[test]
fn plain_probe_ptrace_of_a_host_process_fails() {
    require_plain!();
    require_gcc!();
    let mut victim = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = victim.id().to_string();
    assert_denied(&World::plain(), "ptrace", &[&pid], true);
    let _ = victim.kill();
    let _ = victim.wait();
}

#[test]
fn plain_probe_reading_proc_kcore_fails() {
    require_plain!();
    let w = World::plain();
    if !Path::new("/proc/kcore").exists() {
        eprintln!("note: this host kernel has no /proc/kcore; the probe still must fail");
    }
    let (code, text) = run_hardened(
        &w,
        "k",
        &[
            "sh",
            "-c",
            "head -c 16 /proc/kcore | wc -c | grep -qx 0 || echo read-kcore",
        ],
    );
    assert_eq!(code, Some(0), "{text}\n{}", w.log());
    assert!(!text.contains("read-kcore"), "{text}");
}

/// Runs `script` in a VM container of runc's default spec (no seccomp
/// filter at all, as Kubernetes' Unconfined), edited by `edit`, with the
/// probe helper at /bin/probe; returns its output.
fn run_in_vm_with_runc_spec(
    w: &World,
    name: &str,
    script: &str,
    edit: fn(&mut serde_json::Value),
) -> String {
    let dir = w.spec_bundle(name, &["--runc"], &["sh", "-c", script]);
    common::edit_spec(&dir, |spec| {
        assert!(
            spec["linux"]["seccomp"].is_null(),
            "runc's spec has a filter"
        );
        edit(spec);
    });
    fs::copy(build_probe(w), dir.join("rootfs/bin/probe")).unwrap();
    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), name]);
    w.assert_clean(name);
    stdout(&out) + &stderr(&out)
}

/// Mounts the pod's share by its virtio-fs tag and a tmpfs, and tries to
/// read the guest's kernel memory; prints what worked.
fn mount_probes() -> String {
    format!(
        "mount -t virtiofs {tag} /dev && echo share-mounted; \
         mount -t tmpfs none /dev && echo tmpfs-mounted; \
         head -c 16 /proc/kcore 2>/dev/null | wc -c | grep -qx 0 || echo read-kcore; ",
        tag = skerry_protocol::SHARED_FS_TAG
    )
}

/// The probe set, inside a VM, with runc's default spec, which has no
/// seccomp filter at all (Kubernetes' Unconfined is the same): no container
/// reaches the guest's vsock (the agent's channel, and the host's back end
/// beyond it) — the guest kernel has AF_VSOCK, so the denial is skerry's
/// guest LSM, and the container keeps "no filter" (`Seccomp: 0`) — and
/// without CAP_SYS_ADMIN it cannot mount the pod's share (the virtio-fs tag)
/// or anything else, load a kernel module, open a raw socket, create a BPF
/// map, use io_uring or read the guest's kernel memory.
#[test]
fn vm_probe_guest_channels_are_denied_without_a_seccomp_profile() {
    require_vm!();
    require_gcc!();
    let w = World::new();
    let script = format!(
        "for p in vsock io_uring finit_module init_module raw_socket bpf; do /bin/probe $p; done; \
         {} grep ^Seccomp: /proc/self/status",
        mount_probes()
    );
    let text = run_in_vm_with_runc_spec(&w, "v", &script, |_| {});
    for expected in [
        "vsock: denied: Address family not supported by protocol",
        "io_uring: denied",
        "finit_module: denied",
        "init_module: denied",
        "raw_socket: denied",
        "bpf: denied",
        "Seccomp:\t0",
    ] {
        assert!(text.contains(expected), "{expected}: {text}\n{}", w.log());
    }
    for escaped in [": allowed", "share-mounted", "tmpfs-mounted", "read-kcore"] {
        assert!(!text.contains(escaped), "{escaped}: {text}");
    }
    assert_eq!(
        text.matches("mount: permission denied").count(),
        2,
        "{text}"
    );
}

/// A privileged container in a VM (every capability, no seccomp) may mount
/// a tmpfs, but not the pod's share by its virtio-fs tag, and gets no vsock
/// socket: the guest kernel's LSM refuses both to anything outside the
/// agent's pid namespace.
#[test]
fn vm_probe_a_privileged_container_cannot_reach_the_agents_channels() {
    require_vm!();
    require_gcc!();
    let w = World::new();
    let script = format!("/bin/probe vsock; {}", mount_probes());
    let text = run_in_vm_with_runc_spec(&w, "p", &script, |spec| {
        for set in ["bounding", "effective", "permitted"] {
            spec["process"]["capabilities"][set] = common::ALL_CAPS.into();
        }
    });
    assert!(
        text.contains("vsock: denied: Address family not supported by protocol"),
        "{text}\n{}",
        w.log()
    );
    assert!(text.contains("tmpfs-mounted"), "{text}");
    assert!(!text.contains("share-mounted"), "{text}");
    // The share's mount (first) is the one refused.
    assert_eq!(
        text.matches("mount: permission denied").count(),
        1,
        "{text}"
    );
}

/// On a guest kernel without skerry's LSM (Debian's, `--kernel debian`) the
/// agent falls back to a seccomp filter of its own in every container: with
/// runc's spec (no filter of its own) the container still gets no vsock
/// socket, and shows one filter.
#[test]
fn vm_probe_on_a_kernel_without_the_lsm_a_filter_guards_the_channels() {
    require_vm!();
    require_gcc!();
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest-debian");
    skip_if!(
        (!image.join("manifest.json").exists()).then(|| format!(
            "no Debian-kernel guest image in {} (scripts/test.sh builds it)",
            image.display()
        )),
        "fallback probe"
    );
    let w = World::with_image(&image);
    let text = run_in_vm_with_runc_spec(
        &w,
        "d",
        "/bin/probe vsock; grep -E '^Seccomp(_filters)?:' /proc/self/status",
        |_| {},
    );
    assert!(
        text.contains("vsock: denied: Address family not supported by protocol"),
        "{text}\n{}",
        w.log()
    );
    assert!(
        text.contains("Seccomp:\t2\nSeccomp_filters:\t1\n"),
        "{text}"
    );
}
