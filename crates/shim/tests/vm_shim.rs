//! End to end: containerd 1.6 runs busybox tasks through
//! `containerd-shim-skerry-v2` (`--runtime io.containerd.skerry.v2`); every
//! task outside a pod runs in its own VM, the containers of a pod (CRI
//! annotations set through `ctr run --annotation`) share one.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

#[path = "../../../tests/support/netns.rs"]
mod netns;
use netns::PodNetns;

const RUNTIME: &str = "io.containerd.skerry.v2";
const IMAGE: &str = "localhost/bb:latest";

/// Busybox applets the test image links.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "ls", "tty", "hostname", "readlink", "httpd",
];

/// Annotations that make `id` a pod sandbox, or a container of pod `pod`.
fn pod_annotations(pod: &str, sandbox: bool) -> Vec<String> {
    let kind = if sandbox { "sandbox" } else { "container" };
    vec![
        "--annotation".into(),
        format!("io.kubernetes.cri.container-type={kind}"),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={pod}"),
    ]
}

fn image_dir() -> PathBuf {
    std::env::var_os("SKERRY_TEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"))
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (mounts, QEMU with vhost-user back ends)".into());
    }
    for tool in ["/usr/bin/containerd", "/usr/bin/ctr", "/bin/busybox"] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} not installed (scripts/install-deps.sh)"));
        }
    }
    let dir = image_dir();
    if !dir.join("vmlinuz").is_file() || !dir.join("initramfs.img").is_file() {
        return Some(format!("no guest image in {}", dir.display()));
    }
    None
}

/// Skips with a printed reason; under SKERRY_E2E_REQUIRED=1 that is a failure.
macro_rules! require_vm {
    () => {
        if let Some(reason) = skip_reason() {
            if std::env::var_os("SKERRY_E2E_REQUIRED").is_some() {
                panic!("VM test cannot run: {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
}

/// containerd with root, state, socket, shim state and logs in a temp dir,
/// the shim on its PATH, and the busybox image imported.
struct World {
    tmp: tempfile::TempDir,
    containerd: Child,
    socket: PathBuf,
    ctd_config: PathBuf,
    /// Number of the next exec id `exec` uses (an exec id is used once per task).
    execs: std::cell::Cell<u32>,
}

impl World {
    fn new() -> Self {
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
        fs::write(
            &config,
            format!(
                "[guest]\nimage_dir = \"{}\"\n[hypervisor]\nmemory_mib = 256\nboot_timeout_secs = 20\nboot_attempts = 3\n",
                image_dir().display()
            ),
        )
        .unwrap();
        let socket = dir.join("ctd.sock");
        let ctd_config = dir.join("containerd.toml");
        fs::write(
            &ctd_config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
                dir.display(),
                socket.display()
            ),
        )
        .unwrap();
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
    fn busybox_oci_archive(&self) -> PathBuf {
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
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(self.socket.exists() && self.run(&["version"]).status.success()) {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills containerd (SIGKILL) and starts it again on the same state.
    fn restart_containerd(&mut self) {
        self.containerd.kill().unwrap();
        self.containerd.wait().unwrap();
        self.containerd = start_containerd(self.tmp.path(), &self.ctd_config);
        self.wait_ready();
    }

    /// Host pids of the QEMU processes of this world.
    fn qemu_pids(&self) -> Vec<i32> {
        self.processes()
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .map(|p| p.split(':').next().unwrap().parse().unwrap())
            .collect()
    }

    /// The socket a shim serving pod `sandbox` listens on (as
    /// containerd-shim derives it).
    fn shim_socket(&self, sandbox: &str) -> PathBuf {
        let key = format!("{}/skerry-test/{sandbox}", self.socket.display());
        Path::new("/run/containerd/s").join(format!("{:x}", Sha256::digest(key.as_bytes())))
    }

    /// `ctr run -d` of `args` as task `id` with extra `flags`.
    fn run_detached(&self, flags: &[String], id: &str, args: &[&str]) {
        let mut all: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
        all.extend(flags.iter().map(String::as_str));
        all.extend([IMAGE, id]);
        all.extend(args);
        self.ok(&all);
    }

    /// The host pid `ctr task ls` shows for task `id`.
    fn task_pid(&self, id: &str) -> u32 {
        let ls = self.ok(&["task", "ls"]);
        ls.lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next()? == id).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no pid of {id} in:\n{ls}"))
    }

    /// Output of `args` exec'd in task `id` (under a new exec id).
    fn exec(&self, id: &str, args: &[&str]) -> String {
        let n = self.execs.replace(self.execs.get() + 1);
        let exec_id = format!("x{n}");
        let mut all = vec!["task", "exec", "--exec-id", &exec_id, id];
        all.extend(args);
        self.ok(&all)
    }

    /// The value of `metric` in `ctr task metrics id`.
    fn metric(&self, id: &str, metric: &str) -> u64 {
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
    fn delete_all(&self, ids: &[&str]) {
        for id in ids {
            self.ok(&["task", "delete", id]);
            self.ok(&["container", "rm", id]);
        }
        self.assert_clean();
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", "skerry-test"])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ctr().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
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
    fn processes(&self) -> Vec<String> {
        let needle = self.tmp.path().to_string_lossy().to_string();
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
            if !skip.contains(&pid)
                && cmdline.contains(&needle)
                && !cmdline.contains("/usr/bin/ctr")
            {
                found.push(format!("{pid}: {cmdline}"));
            }
        }
        found
    }

    /// Mounts under this world.
    fn mounts(&self) -> Vec<String> {
        let needle = self.tmp.path().to_string_lossy().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// Asserts that no shim, VM process or mount of this world remains
    /// (containerd's own snapshot mounts are gone once the container is).
    fn assert_clean(&self) {
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
        let state = self.tmp.path().join("r/skerry-test");
        let left: Vec<_> = fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".v")
            .collect();
        assert!(left.is_empty(), "shim state left behind: {left:?}");
    }

    /// Waits until `ctr task ls` shows `id` STOPPED; returns how long it took.
    fn wait_stopped(&self, id: &str, limit: Duration) -> Duration {
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
    fn log(&self) -> String {
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
    }
}

/// Sends Update (a new memory limit) for task `id` straight to the shim of
/// pod `pod`: ctr 1.6 has no `task update`.
fn update_memory_limit(w: &World, pod: &str, id: &str, bytes: i64) {
    use containerd_shim::protos::{
        api::UpdateTaskRequest,
        protobuf::well_known_types::any::Any,
        shim_async::{Client, TaskClient},
        ttrpc::context,
    };
    let socket = format!("unix://{}", w.shim_socket(pod).display());
    let resources = serde_json::json!({"memory": {"limit": bytes}}).to_string();
    let req = UpdateTaskRequest {
        id: id.into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let task = TaskClient::new(Client::connect(&socket).await.unwrap());
        task.update(context::with_timeout(10_000_000_000), &req)
            .await
            .unwrap();
    });
}

/// containerd on the world in `dir`, with the shim on its PATH.
fn start_containerd(dir: &Path, ctd_config: &Path) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(ctd_config)
        .env("PATH", path)
        .env("SKERRY_CONFIG", dir.join("skerry.toml"))
        .env("SKERRY_SHIM_ROOT", dir.join("r"))
        .env("SKERRY_SHIM_LOG", dir.join("shim.log"))
        .env("SKERRY_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

#[test]
fn vm_shim_run_exec_kill_delete_leaves_nothing() {
    require_vm!();
    let w = World::new();
    let out = w.ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c1",
        "cat",
        "/proc/version",
    ]);
    eprintln!("guest kernel: {}", out.trim());
    assert!(out.starts_with("Linux version 6.1."), "{out}\n{}", w.log());

    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c2",
        "sleep",
        "1000",
    ]);
    let out = w.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c2",
        "sh",
        "-c",
        "echo exec-in-vm; exit 4",
    ]);
    assert_eq!(
        text(&out.stdout),
        "exec-in-vm\n",
        "{}\n{}",
        text(&out.stderr),
        w.log()
    );
    assert_eq!(out.status.code(), Some(4));

    w.ok(&["task", "kill", "-s", "SIGKILL", "c2"]);
    w.wait_stopped("c2", Duration::from_secs(20));
    let out = w.run(&["task", "delete", "c2"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("137"), "exit status: {said}\n{}", w.log());
    w.ok(&["container", "rm", "c2"]);
    w.assert_clean();
}

#[test]
fn vm_shim_vm_death_exits_every_task_with_255() {
    require_vm!();
    let w = World::new();
    let events_log = w.tmp.path().join("events.txt");
    let mut events = w
        .ctr()
        .arg("events")
        .stdout(fs::File::create(&events_log).unwrap())
        .spawn()
        .unwrap();
    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c3",
        "sleep",
        "1000",
    ]);
    w.ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        "c3",
        "sleep",
        "1000",
    ]);
    let qemu = w.qemu_pids();
    assert_eq!(qemu.len(), 1, "{:?}", w.processes());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let took = w.wait_stopped("c3", Duration::from_secs(5));
    eprintln!("task stopped {took:?} after the VM was killed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let exits = loop {
        let log = fs::read_to_string(&events_log).unwrap_or_default();
        let exits: Vec<String> = log
            .lines()
            .filter(|l| l.contains("/tasks/exit"))
            .map(str::to_string)
            .collect();
        if exits.len() >= 2 || Instant::now() > deadline {
            break exits;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(exits.len(), 2, "{exits:?}\n{}", w.log());
    for id in ["\"c3\"", "\"e2\""] {
        assert!(
            exits
                .iter()
                .any(|e| e.contains(&format!("\"id\":{id}")) && e.contains("\"exit_status\":255")),
            "no TaskExit 255 for {id}: {exits:?}"
        );
    }
    let out = w.run(&["task", "delete", "c3"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("255"), "exit status: {said}\n{}", w.log());
    w.ok(&["container", "rm", "c3"]);
    w.assert_clean();
}

/// Collects `ctr events` output in a file until dropped.
struct EventLog {
    child: Child,
    path: PathBuf,
}

impl EventLog {
    fn start(w: &World) -> Self {
        let path = w.tmp.path().join("events.txt");
        let child = w
            .ctr()
            .arg("events")
            .stdout(fs::File::create(&path).unwrap())
            .spawn()
            .unwrap();
        Self { child, path }
    }

    /// TaskExit events seen so far.
    fn exits(&self) -> Vec<String> {
        fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("/tasks/exit"))
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

#[test]
fn vm_shim_pod_shares_one_vm_and_dies_together() {
    require_vm!();
    let w = World::new();
    let events = EventLog::start(&w);
    // The pod asks for 256 MiB: its VM gets that plus [pod] overhead_memory_mib
    // (128) instead of the configured 256 MiB.
    let mut sandbox = pod_annotations("p1", true);
    sandbox.extend([
        "--annotation".into(),
        "io.kubernetes.cri.sandbox-memory=268435456".into(),
    ]);
    w.run_detached(&sandbox, "p1", &["sleep", "1000"]);
    // As CRI does: c2 joins the sandbox's IPC and UTS namespaces by host path.
    let p1 = w.task_pid("p1");
    let mut member = pod_annotations("p1", false);
    for ns in ["ipc", "uts"] {
        member.extend(["--with-ns".into(), format!("{ns}:/proc/{p1}/ns/{ns}")]);
    }
    w.run_detached(&member, "c2", &["sleep", "1000"]);
    let boot_id = |id: &str| w.exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let (b1, b2) = (boot_id("p1"), boot_id("c2"));
    assert!(!b1.trim().is_empty());
    assert_eq!(b1, b2, "the pod's containers run in different kernels");
    // ... and share the sandbox's IPC and UTS namespaces, so its hostname.
    for ns in ["ipc", "uts"] {
        let link = format!("/proc/self/ns/{ns}");
        let (n1, n2) = (
            w.exec("p1", &["readlink", &link]),
            w.exec("c2", &["readlink", &link]),
        );
        assert!(n1.starts_with(&format!("{ns}:[")), "{n1}");
        assert_eq!(n1, n2, "c2 did not join p1's {ns} namespace\n{}", w.log());
    }
    w.exec("p1", &["hostname", "pod-p1"]);
    assert_eq!(w.exec("c2", &["hostname"]), "pod-p1\n");
    assert_eq!(w.qemu_pids().len(), 1, "{:?}", w.processes());
    let shims: Vec<String> = w
        .processes()
        .into_iter()
        .filter(|p| p.contains("containerd-shim-skerry-v2"))
        .collect();
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");

    let meminfo = w.exec("p1", &["cat", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"));
    assert!(
        (300 * 1024..=384 * 1024).contains(&total_kib),
        "guest MemTotal {total_kib} kB for a 384 MiB pod VM"
    );

    // Update applies limits to c2's guest cgroup.
    update_memory_limit(&w, "p1", "c2", 67108864);
    assert_eq!(w.metric("c2", "memory.usage_limit"), 67108864);

    // Metrics from the guest cgroup of c2 move when c2 works.
    let cpu_before = w.metric("c2", "cpu.usage_usec");
    assert!(w.metric("c2", "memory.usage") > 0);
    assert!(w.metric("c2", "pids.current") >= 1);
    w.ok(&[
        "task",
        "exec",
        "--exec-id",
        "busy",
        "c2",
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    ]);
    let cpu_after = w.metric("c2", "cpu.usage_usec");
    assert!(
        cpu_after > cpu_before + 10_000,
        "cpu.usage_usec {cpu_before} -> {cpu_after}"
    );
    // ps lists the guest processes of c2 only: its sleep.
    let ps = w.ok(&["task", "ps", "c2"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");

    let out = w.run(&["task", "checkpoint", "c2"]);
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("not implemented") && said.contains("VM snapshots"),
        "{said}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.qemu_pids()[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let exits = loop {
        let exits: Vec<String> = events
            .exits()
            .into_iter()
            .filter(|e| e.contains("\"exit_status\":255"))
            .collect();
        if exits.len() >= 2 || killed.elapsed() > Duration::from_secs(5) {
            break exits;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "TaskExit of the pod's containers {:?} after kill -9",
        killed.elapsed()
    );
    for id in ["\"p1\"", "\"c2\""] {
        assert!(
            exits.iter().any(|e| e.contains(&format!("\"id\":{id}"))),
            "no TaskExit 255 for {id} within 5 s: {exits:?}\n{}",
            w.log()
        );
    }
    let socket = w.shim_socket("p1");
    w.delete_all(&["c2", "p1"]);
    assert!(!socket.exists(), "shim socket {} left", socket.display());
}

#[test]
fn vm_shim_pod_network_answers_ping_and_tcp_from_the_host_end() {
    require_vm!();
    if netns::skip_without_net() {
        return;
    }
    let w = World::new();
    let pod = PodNetns::new();
    let flags = [
        "--with-ns".into(),
        format!("network:{}", pod.path().display()),
    ];
    let serve = "echo hello from the pod > /tmp/index.html && exec httpd -f -p 8080 -h /tmp";
    w.run_detached(&flags, "web", &["sh", "-c", serve]);
    pod.assert_connected();
    pod.assert_http_serves(8080, "hello from the pod\n", || w.log());
    pod.assert_guest_answers_ping();
    w.ok(&["task", "kill", "-s", "SIGKILL", "web"]);
    w.wait_stopped("web", Duration::from_secs(20));
    w.delete_all(&["web"]);
    pod.assert_disconnected();
}

#[test]
fn vm_shim_pod_survives_containerd_restart() {
    require_vm!();
    let mut w = World::new();
    w.run_detached(&pod_annotations("p2", true), "p2", &["sleep", "1000"]);
    w.run_detached(&pod_annotations("p2", false), "c3", &["sleep", "1000"]);
    let qemu = w.qemu_pids();
    w.restart_containerd();
    let ls = w.ok(&["task", "ls"]);
    for id in ["p2", "c3"] {
        assert!(
            ls.lines()
                .any(|l| l.starts_with(id) && l.contains("RUNNING")),
            "{id} not running after the restart: {ls}\n{}",
            w.log()
        );
    }
    assert_eq!(w.qemu_pids(), qemu, "the pod's VM changed");
    let out = w.ok(&["task", "exec", "--exec-id", "e", "c3", "echo", "still here"]);
    assert_eq!(out, "still here\n");
    for id in ["c3", "p2"] {
        w.ok(&["task", "kill", "-s", "SIGKILL", id]);
        w.wait_stopped(id, Duration::from_secs(20));
    }
    w.delete_all(&["c3", "p2"]);
}

#[test]
fn vm_shim_tty_and_exit_status() {
    require_vm!();
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("SKIPPED: /usr/bin/script (bsdutils) is needed for a terminal");
        return;
    }
    let w = World::new();
    // `script` gives ctr the terminal `ctr run -t` needs.
    let ctr = format!(
        "/usr/bin/ctr -a {} -n skerry-test run --rm -t --runtime {RUNTIME} {IMAGE} t1 sh -c 'tty; exit 3'",
        w.socket.display()
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &ctr, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(said.contains("/dev/pts/"), "{said}\n{}", w.log());
    assert_eq!(out.status.code(), Some(3), "{said}");
    w.assert_clean();
}

#[test]
fn vm_shim_oom_kill_publishes_task_oom() {
    require_vm!();
    let w = World::new();
    let events = EventLog::start(&w);
    // The shell doubles a string until the 32 MiB limit (the container's
    // guest cgroup) stops it.
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
        let log = fs::read_to_string(&events.path).unwrap_or_default();
        let oom: Vec<String> = log
            .lines()
            .filter(|l| l.contains("/tasks/oom"))
            .map(str::to_string)
            .collect();
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
