//! Helpers of the VM tests: skips, a runtime, short temp dirs, leftover checks.
#![allow(dead_code)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use skerry_runtime::hypervisor::VmSpec;

#[path = "../../../../tests/support/skip.rs"]
mod skip_rule;
pub use skip_rule::skip;

/// A two-thread tokio runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A temp dir with a short path: socket addresses must stay under 108 bytes.
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hv")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A VM in `dir` whose kernel is not a kernel (`dir/run` is its run dir).
pub fn bad_kernel_spec(dir: &Path) -> VmSpec {
    let run_dir = dir.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"not a kernel").unwrap();
    std::fs::write(dir.join("initramfs.img"), b"").unwrap();
    VmSpec {
        id: "hvfail".into(),
        console_log: run_dir.join("console.log"),
        console_log_max: 1 << 20,
        net: None,
        host_cgroup: None,
        ids: None,
        run_dir,
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.img"),
        kernel_params: String::new(),
        vcpus: 1,
        memory_mib: 128,
        shared_dir: dir.to_path_buf(),
    }
}

/// No socket in the run dir and no process whose command line names it.
pub fn assert_no_leftovers(spec: &VmSpec) {
    let run_dir = spec.run_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(&run_dir), "left running: {cmdline}");
        }
    }
    let sockets: Vec<PathBuf> = std::fs::read_dir(&spec.run_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_socket()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
}
