//! skerry's own guest kernel (scripts/build-kernel.sh, guest/kernel/skerry.config):
//! an image built around it boots under QEMU with the agent and runs
//! containers, and the kernel itself refuses module loading and kexec even to
//! a container holding every capability.
//!
//! Skips, with the reason printed, when the kernel of the current config has
//! not been built (`scripts/build-kernel.sh`; the build takes minutes, so
//! these tests never start one) or the static agent is missing.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use common::{stderr, stdout, World};

/// Probes the kernel's answer to module loading and kexec: one line per call,
/// `NAME: allowed` or `NAME: <errno name>`.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *what, long r) {
    if (r < 0)
        printf("%s: %s\n", what, strerrorname_np(errno));
    else
        printf("%s: allowed\n", what);
}

int main(void) {
    static char image[4096];
    int fd = open("/bin/busybox", O_RDONLY | O_CLOEXEC);
    report("finit_module", syscall(SYS_finit_module, fd, "", 0));
    report("init_module", syscall(SYS_init_module, image, sizeof image, ""));
    report("kexec_load", syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL));
    report("kexec_file_load", syscall(SYS_kexec_file_load, fd, -1, 1UL, "", 0UL));
    return 0;
}
"#;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The skerry kernel build of the current config, or why there is none.
fn kernel_dir() -> Result<PathBuf, String> {
    let out = Command::new(repo().join("scripts/build-kernel.sh"))
        .arg("--cached")
        .output()
        .map_err(|e| format!("cannot run scripts/build-kernel.sh: {e}"))?;
    if !out.status.success() {
        return Err(stderr(&out).trim().to_string());
    }
    Ok(PathBuf::from(stdout(&out).trim()))
}

/// A guest image in the world's temp dir built by `skerry image build` with
/// no kernel option (skerry's kernel is the default), or why it cannot be
/// built. The build script and fragment compiled into `skerry` must find the
/// build of the repository's (same cache key): nothing is rebuilt.
fn skerry_image(tmp: &Path) -> Result<PathBuf, String> {
    if let Some(reason) = common::vm_skip_reason() {
        return Err(reason);
    }
    let kernel = kernel_dir()?;
    let agent = repo().join("target/x86_64-unknown-linux-gnu/release/skerry-agent");
    if !agent.is_file() {
        return Err(format!("no static agent at {}", agent.display()));
    }
    let image = tmp.join("img");
    let out = Command::new(env!("CARGO_BIN_EXE_skerry"))
        .args(["image", "build", "--agent"])
        .arg(&agent)
        .arg("--output")
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "image build: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("build-kernel: cached build {}", kernel.display())),
        "the default build did not reuse {}: {}",
        kernel.display(),
        stderr(&out)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["kernel_build_key"].as_str(),
        kernel.file_name().and_then(|n| n.to_str()),
        "{manifest}"
    );
    Ok(image)
}

/// A world whose VMs boot the skerry kernel, and the image (in a temp dir
/// that must outlive the world); `None` (after printing why) when this host
/// cannot run it.
fn skerry_world() -> Option<(World, tempfile::TempDir)> {
    let image_tmp = tempfile::Builder::new()
        .prefix("skk")
        .tempdir_in("/tmp")
        .unwrap();
    match skerry_image(image_tmp.path()) {
        Ok(image) => Some((World::with_image(&image), image_tmp)),
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

/// A container in a VM on the skerry kernel sees that kernel: its release
/// (from the build's kernel.json) in /proc/version, an image manifest
/// naming the source package, the config and no modules, and `skerry check`
/// names that kernel. The kernel's patches hold (few vsock receive buffers), and a
/// container with its own network namespace costs no large per-CPU chunk.
#[test]
fn vm_boots_the_skerry_kernel() {
    let Some((w, image_tmp)) = skerry_world() else {
        return;
    };
    let image = image_tmp.path().join("img");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernel_origin"], "skerry", "{manifest}");
    assert_eq!(
        manifest["module_files"],
        serde_json::json!([]),
        "{manifest}"
    );
    assert_eq!(manifest["kernel_config_sha256"].as_str().unwrap().len(), 64);
    let release = manifest["kernel_version"].as_str().unwrap().to_string();
    assert!(release.ends_with("-skerry"), "{release}");

    let dir = w.bundle(
        "ver",
        &[
            "sh",
            "-c",
            "cat /proc/version; grep '^skbuff_head_cache ' /proc/slabinfo; \
             grep '^VmallocUsed:' /proc/meminfo",
        ],
    );
    // Its own network namespace, whose per-CPU data once took a second per-CPU chunk.
    common::edit_spec(&dir, |spec| {
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "network"}));
    });
    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), "ver"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}\n{}", stderr(&out), w.log());
    assert!(
        text.starts_with(&format!("Linux version {release} ")),
        "{text}"
    );
    // guest/kernel/patches/vsock-rx-buffers.patch: the vsock driver queues at most 256
    // receive buffers, one socket buffer each (QEMU's ring has room for 1024).
    let skbs = number_after(&text, "skbuff_head_cache ");
    assert!(skbs <= 400, "{skbs} socket buffers in use: {text}");
    // percpu_alloc=page (hypervisor::VmSpec::kernel_cmdline): per-CPU chunks are small, and
    // so are their memcg arrays (a 2 MiB-unit chunk came with a 4 MiB one).
    let vmalloc_kib = number_after(&text, "VmallocUsed:");
    assert!(vmalloc_kib < 2048, "VmallocUsed {vmalloc_kib} kB: {text}");
    w.assert_clean("ver");

    // `skerry check` says which kernel the configured image has.
    let out = w.run(&["check"]);
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("guest image"))
        .unwrap_or_else(|| panic!("no guest image row in:\n{text}"));
    let sha = manifest["kernel_config_sha256"].as_str().unwrap();
    assert!(
        row.contains(&format!(
            "kernel {release}: skerry's own, from linux-source {}, config sha256 {}, no modules",
            manifest["kernel_package_version"].as_str().unwrap(),
            &sha[..16]
        )),
        "{row}"
    );
}

/// The number that follows `prefix` at the start of a line of `text` (a row of
/// /proc/slabinfo or /proc/meminfo).
fn number_after(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line with a number in:\n{text}"))
}

/// Root of the guest with every capability and no seccomp filter still
/// cannot load a module or kexec a new kernel: the calls do not exist
/// (ENOSYS), there is no /proc/modules nor /proc/kcore, and lockdown is in
/// integrity mode.
#[test]
fn vm_skerry_kernel_refuses_modules_and_kexec() {
    let Some((w, _image)) = skerry_world() else {
        return;
    };
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: gcc not installed (the probe is a static helper)");
        return;
    }
    let script = "/bin/probe; \
                  for f in /proc/modules /proc/kcore; do \
                    if [ -e $f ]; then echo $f present; else echo $f absent; fi; done; \
                  mkdir /tmp/sec && mount -t securityfs securityfs /tmp/sec && \
                  echo lockdown: $(cat /tmp/sec/lockdown)";
    let dir = w.bundle("probe", &["sh", "-c", script]);
    let src = w.tmp.path().join("probe.c");
    fs::write(&src, PROBE_C).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(dir.join("rootfs/bin/probe"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc: {}", stderr(&out));
    let caps = serde_json::json!(common::ALL_CAPS);
    common::edit_spec(&dir, |spec| {
        spec["process"]["capabilities"] = serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps,
        });
    });

    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), "probe"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}\n{}", stderr(&out), w.log());
    for line in [
        "finit_module: ENOSYS",
        "init_module: ENOSYS",
        "kexec_load: ENOSYS",
        "kexec_file_load: ENOSYS",
        "/proc/modules absent",
        "/proc/kcore absent",
        "lockdown: none [integrity] confidentiality",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    w.assert_clean("probe");
}
