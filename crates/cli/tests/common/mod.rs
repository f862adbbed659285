//! Shared helpers of the end-to-end tests: busybox bundles, a private state
//! root and config, running the `skerry` binary, and leftover checks.
#![allow(dead_code)]

#[path = "../../../../tests/support/config.rs"]
mod config;
#[path = "../../../../tests/support/containerd.rs"]
pub mod containerd;
#[path = "../../../../tests/support/guest.rs"]
pub mod guest;
#[path = "../../../../tests/support/skip.rs"]
pub mod skip;

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use skerry_runtime::image;

/// Busybox applets the test bundles link.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "head",
    "tee",
    "sha256sum",
    "kill",
    "ls",
    "id",
    "hostname",
    "dd",
    "yes",
    "wc",
    "env",
    "pwd",
    "uname",
    "mount",
    "stty",
    "touch",
    "ps",
    "tty",
    "grep",
    "tr",
    "awk",
    "sed",
    "sort",
    "stat",
    "mkdir",
    "chmod",
    "readlink",
    "mknod",
    "brctl",
    "ip",
];

/// Why the VM tests cannot run here, if they cannot.
pub fn vm_skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (mounts, QEMU with vhost-user back ends)".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("needs busybox-static (/bin/busybox)".into());
    }
    let dir = image_dir();
    for f in [image::kernel_path(&dir), image::initrd_path(&dir)] {
        if !f.is_file() {
            return Some(format!(
                "no guest image in {} (run scripts/test.sh, or set SKERRY_TEST_IMAGE_DIR)",
                dir.display()
            ));
        }
    }
    None
}

/// Why container-mode tests cannot run here, if they cannot.
pub fn plain_skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (namespaces, cgroups, pivot_root)".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("needs busybox-static (/bin/busybox)".into());
    }
    None
}

/// Skips the calling test when `$reason` (an `Option<String>`) is `Some`,
/// printing it; under `SKERRY_E2E_REQUIRED=1` (set by scripts/test.sh) that
/// is a failure instead.
#[macro_export]
macro_rules! skip_if {
    ($reason:expr, $what:literal) => {
        if let Some(reason) = $reason {
            $crate::common::skip::skip(&format!("{}: {reason}", $what));
            return;
        }
    };
}

/// Skips the calling test when VMs cannot run here.
#[macro_export]
macro_rules! require_vm {
    () => {
        $crate::skip_if!(common::vm_skip_reason(), "VM test")
    };
}

/// Skips the calling test when container mode cannot run here.
#[macro_export]
macro_rules! require_plain {
    () => {
        $crate::skip_if!(common::plain_skip_reason(), "container-mode test")
    };
}

/// The guest image the tests use.
pub fn image_dir() -> PathBuf {
    std::env::var_os("SKERRY_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"))
}

/// A private world for one test: state root, config, bundles.
pub struct World {
    /// Keeps the temp dir alive.
    pub tmp: tempfile::TempDir,
    /// `--root`.
    pub root: PathBuf,
    /// `--config`.
    pub config: PathBuf,
    /// Whether the config's default isolation is "container".
    pub plain: bool,
    /// Cleans up after the test process, however it ends ([`watchdog`]).
    _watchdog: Option<std::process::ChildStdin>,
}

/// What the watchdog runs once the test process is gone: `skerry delete
/// --force` of every container left in the world's root, then SIGKILL to
/// any process whose command line still names the world's directory. The
/// paths come in the environment, so that the watchdog's own command line
/// does not match.
const WATCHDOG: &str = r#"read -r _
for d in "$W_ROOT"/*/; do
    [ -d "$d" ] || continue
    "$W_SKERRY" --root "$W_ROOT" --config "$W_CONFIG" delete --force "$(basename "$d")" >/dev/null 2>&1
done
pkill -KILL -f -- "$W_DIR/" 2>/dev/null
rm -rf -- "$W_DIR"
"#;

/// Starts the watchdog of a world in `dir`: a shell in a session of its own
/// (nextest ends a timed-out test's process group; the test process itself
/// may be SIGKILLed, so no Drop runs), waiting on a pipe that only the test
/// process holds. When that process ends, the pipe closes and the watchdog
/// removes what a killed test left: monitors, hypervisors, virtiofsd and vsock
/// back ends, host cgroups and run directories (`skerry delete --force`), and
/// the directory. After a test that cleaned up, it finds nothing to do.
fn watchdog(dir: &Path, root: &Path, config: &Path) -> Option<std::process::ChildStdin> {
    let mut child = Command::new("setsid")
        .args(["sh", "-c", WATCHDOG])
        .env("W_DIR", dir)
        .env("W_ROOT", root)
        .env("W_CONFIG", config)
        .env("W_SKERRY", env!("CARGO_BIN_EXE_skerry"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take();
    // The watchdog outlives this process by design; reaping it is init's job.
    std::mem::forget(child);
    stdin
}

impl World {
    /// A new world using the test guest image.
    pub fn new() -> Self {
        Self::with_image(&image_dir())
    }

    /// A new world whose config points at `image`.
    pub fn with_image(image: &Path) -> Self {
        // Short path: socket paths must fit in 108 bytes.
        let tmp = tempfile::Builder::new()
            .prefix("sk")
            .tempdir_in("/tmp")
            .unwrap();
        let root = tmp.path().join("r");
        let config = tmp.path().join("config.toml");
        fs::write(&config, config::skerry_config(image)).unwrap();
        let watchdog = watchdog(tmp.path(), &root, &config);
        Self {
            tmp,
            root,
            config,
            plain: false,
            _watchdog: watchdog,
        }
    }

    /// A new world whose config runs containers in container mode (and
    /// points at the test guest image, for containers that ask for a VM).
    pub fn plain() -> Self {
        let mut w = Self::new();
        let mut config = fs::read_to_string(&w.config).unwrap();
        config.push_str("[runtime]\nisolation = \"container\"\n");
        fs::write(&w.config, config).unwrap();
        w.plain = true;
        w
    }

    /// A world of the isolation a parameterised test runs under.
    pub fn of(plain: bool) -> Self {
        if plain {
            Self::plain()
        } else {
            Self::new()
        }
    }

    /// The cgroup path container-mode bundles of this world get: unique
    /// per world and bundle, since cgroups are host-wide.
    pub fn cgroup_path(&self, name: &str) -> String {
        let world = self.tmp.path().file_name().unwrap().to_string_lossy();
        format!("/skerry-test-{world}-{name}")
    }

    /// Makes a busybox bundle named `name` running `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let dir = self.tmp.path().join(name);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        let mut spec = spec(args);
        // The container's cgroup in container mode, the VM's host cgroup in a VM.
        spec["linux"]["cgroupsPath"] = self.cgroup_path(name).into();
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        dir
    }

    /// A busybox bundle named `name` running `args` under the spec that
    /// `skerry spec SPEC_ARGS` writes, without a terminal and with this
    /// world's cgroup path for `name`.
    pub fn spec_bundle(&self, name: &str, spec_args: &[&str], args: &[&str]) -> PathBuf {
        let dir = self.bundle(name, args);
        let path = dir.join("config.json");
        fs::remove_file(&path).unwrap();
        let out = self.run(&[&["spec", "--bundle", dir.to_str().unwrap()], spec_args].concat());
        assert!(out.status.success(), "spec: {}", stderr(&out));
        edit_spec(&dir, |spec| {
            spec["process"]["terminal"] = false.into();
            spec["process"]["args"] = args.into();
            spec["linux"]["cgroupsPath"] = self.cgroup_path(name).into();
        });
        dir
    }

    /// Host cgroup directories (any hierarchy) of this world's containers.
    pub fn cgroups(&self) -> Vec<String> {
        let world = self.tmp.path().file_name().unwrap().to_string_lossy();
        let prefix = format!("skerry-test-{world}-");
        let mut found = vec![];
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for entry in fs::read_dir(hierarchy.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    found.push(entry.path().display().to_string());
                }
            }
        }
        found
    }

    /// A `skerry` command with this world's `--root` and `--config`.
    pub fn skerry(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skerry"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--config")
            .arg(&self.config)
            .arg("--log")
            .arg(self.tmp.path().join("skerry.log"))
            .arg("--debug");
        cmd
    }

    /// Runs `skerry ARGS` with stdin closed and captures its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.skerry()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `skerry create --bundle BUNDLE ID` with no stdio (the container keeps
    /// the stdio it was created with: no pipe the test would wait on);
    /// asserts success.
    pub fn create(&self, bundle: &Path, id: &str) {
        let status = self
            .skerry()
            .args(["create", "--bundle", bundle.to_str().unwrap(), id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "create {id} failed\n{}", self.log());
    }

    /// Host processes whose command line mentions this world (monitor,
    /// QEMU, virtiofsd, vsock back end).
    pub fn processes(&self) -> Vec<String> {
        let needle = self.tmp.path().to_string_lossy().to_string();
        let me = std::process::id().to_string();
        let mut found = vec![];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
                continue;
            }
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
        found
    }

    /// [`World::processes`] once they are gone, or after 10 s (helpers such
    /// as conmon exit shortly after the container).
    pub fn settled_processes(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.processes()
    }

    /// Mounts under this world.
    pub fn mounts(&self) -> Vec<String> {
        containerd::mounts_under(self.tmp.path())
    }

    /// Asserts that container `id` left nothing behind: no process, no
    /// mount, no state directory (and so no socket).
    pub fn assert_clean(&self, id: &str) {
        assert_eq!(
            self.settled_processes(),
            Vec::<String>::new(),
            "processes left behind"
        );
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left behind");
        assert_eq!(self.cgroups(), Vec::<String>::new(), "cgroups left behind");
        assert!(
            !self.root.join(id).exists(),
            "state dir of {id} left behind"
        );
        let store = skerry_runtime::state::StateStore::new(&self.root);
        let run_dir = skerry_runtime::sandbox::SandboxPaths::new(&store, id).run_dir;
        assert!(
            !run_dir.exists(),
            "VM run dir {} left behind",
            run_dir.display()
        );
    }

    /// Waits until the container has created /tmp/ready in its rootfs
    /// (which the host sees through the bundle): its program is past start-up.
    pub fn wait_ready(&self, bundle: &Path) {
        let marker = bundle.join("rootfs/tmp/ready");
        // Room for a rebooted stalled guest (boot_attempts in the test config).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while !marker.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "container never got ready\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `kill ID KILL`, `delete --force ID`, then [`World::assert_clean`].
    pub fn kill_delete_and_assert_clean(&self, id: &str) {
        assert!(self.run(&["kill", id, "KILL"]).status.success());
        let out = self.run(&["delete", "--force", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        self.assert_clean(id);
    }

    /// The skerry log and the guest consoles, for failure messages.
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(self.tmp.path().join("skerry.log")).unwrap_or_default();
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            for file in ["console.log.1", "console.log"] {
                if let Ok(log) = fs::read_to_string(entry.path().join(file)) {
                    text.push_str(&format!("\n--- {}/{file}\n{log}", entry.path().display()));
                }
            }
        }
        text
    }
}

/// Every capability, as Docker's `--privileged` grants on a current kernel (in a VM the
/// container stands in for root of the guest).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Rewrites `bundle`'s config.json with `edit` applied.
pub fn edit_spec(bundle: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut spec);
    fs::write(&path, spec.to_string()).unwrap();
}

/// A minimal OCI spec (the shape `runc spec` writes) running `args`.
pub fn spec(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "skerry-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
