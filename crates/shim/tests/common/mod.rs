//! Shared by the shim's end-to-end tests: containerd 1.6 with root, state,
//! socket, shim state and logs in a temp dir, driven with `ctr`.
#![allow(dead_code, unused_macros)]

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use skerry_runtime::image;

#[path = "../../../../tests/support/config.rs"]
mod config;
#[path = "../../../../tests/support/containerd.rs"]
mod containerd;
#[path = "../../../../tests/support/guest.rs"]
pub mod guest;
#[path = "../../../../tests/support/skip.rs"]
pub mod skip;

pub const RUNTIME: &str = "io.containerd.skerry.v2";
pub const IMAGE: &str = "localhost/bb:latest";

/// Busybox applets the test image links.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "ls", "tty", "hostname", "readlink", "httpd",
];

/// Annotations that make `id` a pod sandbox, or a container of pod `pod`.
pub fn pod_annotations(pod: &str, sandbox: bool) -> Vec<String> {
    let kind = if sandbox { "sandbox" } else { "container" };
    vec![
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
    ]
}

pub fn image_dir() -> PathBuf {
    std::env::var_os("SKERRY_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"))
}

/// Why tests that need no VM cannot run here, if they cannot.
pub fn host_skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (mounts, namespaces, cgroups)".into());
    }
    for tool in ["/usr/bin/containerd", "/usr/bin/ctr", "/bin/busybox"] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} not installed (scripts/install-deps.sh)"));
        }
    }
    None
}

/// Why VM tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if let Some(reason) = host_skip_reason() {
        return Some(reason);
    }
    let dir = image_dir();
    if !image::kernel_path(&dir).is_file() || !image::initrd_path(&dir).is_file() {
        return Some(format!("no guest image in {}", dir.display()));
    }
    None
}

/// Skips with a printed reason; under SKERRY_E2E_REQUIRED=1 that is a failure.
macro_rules! require_vm {
    () => {
        require!(skip_reason())
    };
}

/// Skips a test that needs no VM with a printed reason (see `require_vm!`).
macro_rules! require_host {
    () => {
        require!(host_skip_reason())
    };
}

/// Skips a terminal test where `script` (bsdutils) is missing.
macro_rules! require_script {
    () => {
        require!((!Path::new("/usr/bin/script").exists())
            .then(|| "/usr/bin/script (bsdutils) is needed for a terminal"))
    };
}

macro_rules! require {
    ($reason:expr) => {
        if let Some(reason) = $reason {
            $crate::common::skip::skip(&reason);
            return;
        }
    };
}

/// containerd with root, state, socket, shim state and logs in a temp dir,
/// the shim on its PATH, and the busybox image imported.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub containerd: Child,
    pub socket: PathBuf,
    pub ctd_config: PathBuf,
    /// Number of the next exec id `exec` uses (an exec id is used once per task).
    execs: std::cell::Cell<u32>,
}

impl World {
    /// This world's containerd namespace: its own, so that container-mode
    /// tasks of two worlds never share a cgroup (`/<namespace>/<id>`).
    pub fn namespace(&self) -> String {
        let name = self.tmp.path().file_name().unwrap().to_string_lossy();
        format!("skerry-test-{name}")
    }

    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A world whose skerry config ends with `extra` (TOML sections).
    pub fn with_config(extra: &str) -> Self {
        // Short path: the VM's socket paths must fit in 108 bytes.
        let tmp = tempfile::Builder::new()
            .prefix("sks")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path();
        let bin = dir.join("bin");
        fs::create_dir(&bin).unwrap();
        symlink(
            env!("CARGO_BIN_EXE_containerd-shim-skerry-v2"),
            bin.join("containerd-shim-skerry-v2"),
        )
        .unwrap();
        let config = dir.join("skerry.toml");
        fs::write(&config, config::skerry_config(&image_dir()) + extra).unwrap();
        let (ctd_config, socket) = containerd::write_config(dir);
        let containerd = start_containerd(dir, &ctd_config);
        let w = Self {
            tmp,
            containerd,
            socket,
            ctd_config,
            execs: Default::default(),
        };
        w.wait_ready();
        let archive = w.busybox_oci_archive();
        w.ok(&[
            "image",
            "import",
            "--base-name",
            "localhost/bb",
            archive.to_str().unwrap(),
        ]);
        w
    }

    /// An OCI image layout tar holding one busybox layer.
    pub fn busybox_oci_archive(&self) -> PathBuf {
        let dir = self.tmp.path();
        let rootfs = dir.join("image-rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let layout = dir.join("oci");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let layer_tar = dir.join("layer.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&layer_tar)
                .arg("."),
        );
        let blob = |bytes: &[u8]| {
            let digest = format!("{:x}", Sha256::digest(bytes));
            fs::write(blobs.join(&digest), bytes).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        let (layer, layer_size) = blob(&fs::read(&layer_tar).unwrap());
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer]}
        });
        let (config, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}]
        });
        let (manifest, manifest_size) = blob(manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest, "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"}
            }]
        });
        fs::write(layout.join("index.json"), index.to_string()).unwrap();
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let archive = dir.join("bb-oci.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&archive)
                .arg("."),
        );
        archive
    }

    /// Waits until containerd answers.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.socket.exists() && self.run(&["version"]).status.success()) {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd (SIGKILL) and starts it again on the same state.
    pub fn restart_containerd(&mut self) {
        self.containerd.kill().unwrap();
        self.containerd.wait().unwrap();
        self.containerd = start_containerd(self.tmp.path(), &self.ctd_config);
        self.wait_ready();
    }

    /// Host pids of the QEMU processes of this world.
    pub fn qemu_pids(&self) -> Vec<i32> {
        self.processes()
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .map(|p| p.split(':').next().unwrap().parse().unwrap())
            .collect()
    }

    /// The socket a shim serving pod `sandbox` listens on (as
    /// containerd-shim derives it).
    pub fn shim_socket(&self, sandbox: &str) -> PathBuf {
        let key = format!("{}/{}/{sandbox}", self.socket.display(), self.namespace());
        Path::new("/run/containerd/s").join(format!("{:x}", Sha256::digest(key.as_bytes())))
    }

    /// `ctr run -d` of `args` as task `id` with extra `flags`.
    pub fn run_detached(&self, flags: &[String], id: &str, args: &[&str]) {
        let mut all: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
        all.extend(flags.iter().map(String::as_str));
        all.extend([IMAGE, id]);
        all.extend(args);
        self.ok(&all);
    }

    /// The host pid `ctr task ls` shows for task `id`.
    pub fn task_pid(&self, id: &str) -> u32 {
        let ls = self.ok(&["task", "ls"]);
        ls.lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next()? == id).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no pid of {id} in:\n{ls}"))
    }

    /// Output of `args` exec'd in task `id` (under a new exec id).
    pub fn exec(&self, id: &str, args: &[&str]) -> String {
        let n = self.execs.replace(self.execs.get() + 1);
        let exec_id = format!("x{n}");
        let mut all = vec!["task", "exec", "--exec-id", &exec_id, id];
        all.extend(args);
        self.ok(&all)
    }

    /// The value of `metric` in `ctr task metrics id`.
    pub fn metric(&self, id: &str, metric: &str) -> u64 {
        let out = self.ok(&["task", "metrics", id]);
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next()? == metric).then(|| words.next()?.parse().ok())?
            })
            .next()
            .unwrap_or_else(|| panic!("no {metric} in:\n{out}"))
    }

    /// Deletes every task and container named, then checks nothing is left.
    pub fn delete_all(&self, ids: &[&str]) {
        for id in ids {
            self.ok(&["task", "delete", id]);
            self.ok(&["container", "rm", id]);
        }
        self.assert_clean();
    }

    /// Runs `ctr <args>` on a terminal (`script` gives ctr the one `-t`
    /// needs), after shell commands `setup`; its output and exit status.
    pub fn ctr_on_terminal(&self, setup: &str, args: &str) -> (String, Option<i32>) {
        let cmd = format!(
            "{setup} /usr/bin/ctr -a {} -n {} {args}",
            self.socket.display(),
            self.namespace()
        );
        let out = Command::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (text(&out.stdout), out.status.code())
    }

    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", &self.namespace()])
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.ctr().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            text(&out.stderr),
            self.log()
        );
        text(&out.stdout)
    }

    /// Host processes whose command line mentions this world (shim, QEMU,
    /// virtiofsd, vsock back end), but not containerd itself.
    pub fn processes(&self) -> Vec<String> {
        let needle = self.tmp.path().to_string_lossy().to_string();
        let name = self.tmp.path().file_name().unwrap().to_string_lossy();
        let cgroup_needle = format!("-{name}/");
        let skip = [std::process::id(), self.containerd.id()];
        let mut found = vec![];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // A VM's helpers name only their run dir (under /run/skerry-vm):
            // they are this world's by the host cgroup (`/<namespace>/<id>`).
            let cgroup = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if !skip.contains(&pid)
                && (cmdline.contains(&needle) || cgroup.contains(&cgroup_needle))
                && !cmdline.contains("/usr/bin/ctr")
            {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
        found
    }

    /// Mounts under this world.
    pub fn mounts(&self) -> Vec<String> {
        containerd::mounts_under(self.tmp.path())
    }

    /// Asserts that no shim, VM process or mount of this world remains
    /// (containerd's own snapshot mounts are gone once the container is).
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(self.processes().is_empty() && self.mounts().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            self.processes(),
            Vec::<String>::new(),
            "processes left behind"
        );
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left behind");
        let state = self.tmp.path().join("r").join(self.namespace());
        let left: Vec<_> = fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".v")
            .collect();
        assert!(left.is_empty(), "shim state left behind: {left:?}");
        assert_eq!(self.cgroups(), Vec::<String>::new(), "cgroups left behind");
    }

    /// Cgroups (any hierarchy) below this world's namespace cgroup: the
    /// tasks' (container mode) and the pod VMs' host cgroups.
    pub fn cgroups(&self) -> Vec<String> {
        let root = Path::new("/sys/fs/cgroup");
        let hierarchies = fs::read_dir(root).into_iter().flatten().flatten();
        let mut found = vec![];
        for dir in hierarchies
            .map(|h| h.path().join(self.namespace()))
            .chain([root.join(self.namespace())])
        {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    found.push(entry.path().display().to_string());
                }
            }
        }
        found
    }

    /// Waits until `ctr task ls` shows `id` STOPPED; returns how long it took.
    pub fn wait_stopped(&self, id: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let ls = self.ok(&["task", "ls"]);
            if ls
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "task {id} did not stop: {ls}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shim's and containerd's logs, for failure messages.
    pub fn log(&self) -> String {
        let mut text = String::new();
        for file in ["shim.log", "containerd.log"] {
            let log = fs::read_to_string(self.tmp.path().join(file)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            text.push_str(&format!("\n--- {file}\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        remove_namespace_cgroups(&self.namespace());
    }
}

/// containerd puts a container-mode task's cgroup at `/<namespace>/<id>`:
/// the task's own goes with the task, the namespace's stays. Removes it (empty
/// by now) from every hierarchy (cgroup v1) or the unified one (v2).
fn remove_namespace_cgroups(namespace: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let _ = fs::remove_dir(root.join(namespace));
    for hierarchy in fs::read_dir(root).into_iter().flatten().flatten() {
        let _ = fs::remove_dir(hierarchy.path().join(namespace));
    }
}

/// containerd on the world in `dir`, with the shim on its PATH.
pub fn start_containerd(dir: &Path, ctd_config: &Path) -> Child {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    containerd::spawn(
        dir,
        ctd_config,
        [
            ("PATH", path.into()),
            ("SKERRY_CONFIG", dir.join("skerry.toml")),
            ("SKERRY_SHIM_ROOT", dir.join("r")),
            ("SKERRY_SHIM_LOG", dir.join("shim.log")),
            ("SKERRY_LOG", "debug".into()),
        ],
    )
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

/// Collects `ctr events` output in a file until dropped.
pub struct EventLog {
    child: Child,
    path: PathBuf,
}

impl EventLog {
    pub fn start(w: &World) -> Self {
        let path = w.tmp.path().join("events.txt");
        let child = w
            .ctr()
            .arg("events")
            .stdout(fs::File::create(&path).unwrap())
            .spawn()
            .unwrap();
        Self { child, path }
    }

    /// The events of `topic` (e.g. `/tasks/exit`) seen so far.
    pub fn topic(&self, topic: &str) -> Vec<String> {
        fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(topic))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A task that outgrows its 32 MiB memory limit is killed by the OOM killer
/// (the guest's, or the host's in container isolation): `ctr run` reports
/// 137 and containerd gets TaskOOM.
pub fn oom_kill_publishes_task_oom(w: &World) {
    let events = EventLog::start(w);
    // The shell doubles a string until the limit stops it.
    let out = w.run(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "33554432",
        IMAGE,
        "oom1",
        "sh",
        "-c",
        "a=x; while true; do a=$a$a; done",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}\n{}",
        text(&out.stderr),
        w.log()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let oom = loop {
        let oom = events.topic("/tasks/oom");
        if !oom.is_empty() || Instant::now() > deadline {
            break oom;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        oom.iter().any(|e| e.contains("\"oom1\"")),
        "no TaskOOM for oom1: {oom:?}\n{}",
        w.log()
    );
    w.assert_clean();
}

/// Config text switching the tenant floor's privileged rule on.
pub const DENY_PRIVILEGED: &str = "[policy]\ndeny_privileged = true\n";

/// With `policy.deny_privileged`, `ctr run --privileged` is refused before
/// anything runs (no VM, no host container), naming the field and the rule.
pub fn privileged_task_is_refused_by_the_floor(w: &World) {
    let out = w.run(&[
        "run",
        "--rm",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        "priv",
        "true",
    ]);
    assert!(!out.status.success(), "a privileged task ran\n{}", w.log());
    // e.g. "policy: mounts[5]: mounts sysfs read-write (policy.deny_privileged)"
    let said = text(&out.stderr);
    assert!(
        said.contains("policy: ") && said.contains(" (policy.deny_privileged)"),
        "{said}\n{}",
        w.log()
    );
    assert!(!w.log().contains("pod VM booted"), "{}", w.log());
    w.assert_clean();
}
