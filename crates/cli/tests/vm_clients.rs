//! Tier 3 with real clients: Podman (through conmon) and containerd's runc
//! shim drive the `skerry` binary as their OCI runtime. `vm_*` tests run
//! every container in its own VM, `plain_*` ones in container mode; in the
//! side-by-side tests a second runtime binary with its own config file (as a
//! RuntimeClass would point at) runs a container in container mode next to a
//! VM one.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{stderr, stdout, World};

/// Skips (or, under SKERRY_E2E_REQUIRED, fails) when `tool` is missing,
/// or VMs (with `plain`: container mode) cannot run here.
macro_rules! require_tool {
    (plain, $tool:expr) => {
        require_plain!();
        require_tool!(@tool $tool);
    };
    ($tool:expr) => {
        require_vm!();
        require_tool!(@tool $tool);
    };
    (@tool $tool:expr) => {
        skip_if!(
            (!Path::new($tool).exists()).then(|| format!(
                "{} not installed (apt-get install podman containerd)",
                $tool
            )),
            "client test"
        );
    };
}

/// A runtime wrapper script: skerry with this world's config and root.
fn runtime_wrapper(w: &World) -> PathBuf {
    wrapper(w, "skerry-runtime", &w.config)
}

/// A runtime wrapper script named `name`: skerry with `config` and this
/// world's root.
fn wrapper(w: &World, name: &str, config: &Path) -> PathBuf {
    let path = w.tmp.path().join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec {} --root {} --config {} --log {} \"$@\"\n",
            env!("CARGO_BIN_EXE_skerry"),
            w.root.display(),
            config.display(),
            w.tmp.path().join("skerry.log").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// A second runtime binary whose config (this world's, plus
/// `isolation = "container"`) runs containers in container mode.
fn plain_wrapper(w: &World) -> PathBuf {
    let config = w.tmp.path().join("plain.toml");
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str("[runtime]\nisolation = \"container\"\n");
    std::fs::write(&config, text).unwrap();
    wrapper(w, "skerry-plain", &config)
}

/// Podman with storage in the world's temp dir and skerry as its runtime.
struct Podman<'a> {
    w: &'a World,
    runtime: PathBuf,
}

impl<'a> Podman<'a> {
    fn new(w: &'a World) -> Self {
        let p = Self {
            w,
            runtime: runtime_wrapper(w),
        };
        // A local image from a busybox rootfs.
        let bundle = w.bundle("image", &["sh"]);
        let tar = w.tmp.path().join("bb.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(bundle.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let out = p
            .cmd()
            .args(["import"])
            .arg(&tar)
            .arg("localhost/bb:latest")
            .output()
            .unwrap();
        assert!(out.status.success(), "podman import: {}", stderr(&out));
        p
    }

    fn cmd(&self) -> Command {
        let dir = self.w.tmp.path();
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(&self.runtime)
            .stdin(Stdio::null());
        cmd
    }

    /// `podman run` with the rlimits this host allows (see host-notes).
    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .arg("run")
            .args([
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            stderr(&out),
            self.w.log()
        );
        stdout(&out)
    }
}

/// Asserts that `text` starts with the kernel version the world's
/// containers see: the guest image's in a VM, the host's in container mode.
fn assert_kernel(w: &World, text: &str) {
    if w.plain {
        let host = std::fs::read_to_string("/proc/version").unwrap();
        assert!(text.starts_with(&host), "not the host kernel: {text}");
    } else {
        common::guest::assert_guest_kernel(&common::image_dir(), text);
    }
}

#[test]
fn vm_podman_run_rm_shows_the_guest_kernel_and_exit_status() {
    require_tool!("/usr/bin/podman");
    podman_run_rm_shows_the_kernel_and_exit_status(&World::new());
}

#[test]
fn plain_podman_run_rm_shows_the_hosts_kernel_and_exit_status() {
    require_tool!(plain, "/usr/bin/podman");
    podman_run_rm_shows_the_kernel_and_exit_status(&World::plain());
}

fn podman_run_rm_shows_the_kernel_and_exit_status(w: &World) {
    let p = Podman::new(w);
    let out = p.run(&["--rm", "localhost/bb", "cat", "/proc/version"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_kernel(w, &stdout(&out));
    let out = p.run(&["--rm", "localhost/bb", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}\n{}", stderr(&out), w.log());
    assert_eq!(w.settled_processes(), Vec::<String>::new());
    assert_eq!(w.mounts(), Vec::<String>::new());
}

#[test]
fn vm_podman_detached_exec_stop_rm() {
    require_tool!("/usr/bin/podman");
    podman_detached_exec_stop_rm(&World::new());
}

#[test]
fn plain_podman_detached_exec_stop_rm() {
    require_tool!(plain, "/usr/bin/podman");
    podman_detached_exec_stop_rm(&World::plain());
}

fn podman_detached_exec_stop_rm(w: &World) {
    let p = Podman::new(w);
    let out = p.run(&["-d", "--name", "d1", "localhost/bb", "sleep", "1000"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    let exec = p.ok(&[
        "exec",
        "d1",
        "sh",
        "-c",
        "echo exec-in-container; cat /proc/version",
    ]);
    let version = exec
        .strip_prefix("exec-in-container\n")
        .unwrap_or_else(|| panic!("{exec}"));
    assert_kernel(w, version);
    let out = p
        .cmd()
        .args(["exec", "d1", "sh", "-c", "exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    p.ok(&["stop", "-t", "1", "d1"]);
    let ps = p.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("d1 Exited"), "{ps}");
    p.ok(&["rm", "d1"]);
    assert_eq!(w.settled_processes(), Vec::<String>::new());
    assert_eq!(w.mounts(), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(&w.root).map(|d| d.count()).unwrap_or(0),
        0,
        "state left"
    );
}

#[test]
fn vm_podman_interactive_terminal_gets_a_shell_prompt() {
    require_tool!("/usr/bin/script");
    require_tool!("/usr/bin/podman");
    podman_interactive_terminal_gets_a_shell_prompt(&World::new());
}

#[test]
fn plain_podman_interactive_terminal_gets_a_shell_prompt() {
    require_tool!(plain, "/usr/bin/script");
    require_tool!(plain, "/usr/bin/podman");
    podman_interactive_terminal_gets_a_shell_prompt(&World::plain());
}

fn podman_interactive_terminal_gets_a_shell_prompt(w: &World) {
    let p = Podman::new(w);
    let storage = w.tmp.path();
    let podman = format!(
        "podman --root {0}/storage --runroot {0}/runroot --cgroup-manager cgroupfs --events-backend file --runtime {1} \
         run -it --rm --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 localhost/bb sh",
        storage.display(),
        p.runtime.display()
    );
    // `script` gives podman a terminal; the shell reads what we type there.
    let mut child: Child = Command::new("script")
        .args(["-qfec", &podman, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let typist = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_secs(8));
        let _ = stdin.write_all(b"echo sum=$((40+2)); tty\n");
        std::thread::sleep(Duration::from_secs(2));
        let _ = stdin.write_all(b"exit 5\n");
        std::thread::sleep(Duration::from_secs(30));
    });
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    drop(typist);
    let text = stdout(&out);
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(
        text.contains("/ # "),
        "no shell prompt: {text:?}\n{}",
        w.log()
    );
    assert!(text.contains("sum=42"), "command did not run: {text:?}");
    assert_eq!(out.status.code(), Some(5), "{text:?}\n{}", stderr(&out));
}

#[test]
fn vm_podman_runs_a_plain_container_beside_a_vm_one() {
    require_tool!("/usr/bin/podman");
    let w = World::new();
    let p = Podman::new(&w);
    let plain = plain_wrapper(&w);
    let out = p.run(&[
        "-d",
        "--name",
        "plain1",
        "--runtime",
        plain.to_str().unwrap(),
        "localhost/bb",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    // The VM container runs while the plain one does.
    let out = p.run(&["--rm", "localhost/bb", "cat", "/proc/version"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    common::guest::assert_guest_kernel(&common::image_dir(), &stdout(&out));
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let exec = p.ok(&["exec", "plain1", "cat", "/proc/version"]);
    assert_eq!(exec, host, "the plain container runs on the host kernel");
    let out = p
        .cmd()
        .args(["exec", "plain1", "sh", "-c", "exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    p.ok(&["rm", "-f", "-t", "1", "plain1"]);
    assert_eq!(w.settled_processes(), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(&w.root).map(|d| d.count()).unwrap_or(0),
        0,
        "state left"
    );
}

/// containerd with its root, state and socket in the world's temp dir.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(w: &World) -> Self {
        let dir = w.tmp.path().join("ctd");
        std::fs::create_dir_all(&dir).unwrap();
        let (config, socket) = common::containerd::write_config(&dir);
        let child = common::containerd::spawn(&dir, &config, std::iter::empty::<(&str, &str)>());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, socket }
    }

    /// containerd with the busybox image of `p` imported.
    fn with_image(w: &World, p: &Podman) -> Self {
        let archive = w.tmp.path().join("bb-oci.tar");
        p.ok(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().unwrap(),
            "localhost/bb:latest",
        ]);
        let c = Self::start(w);
        let out = c
            .ctr()
            .args(["image", "import", "--base-name", "localhost/bb"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr import: {}", stderr(&out));
        c
    }

    /// `ctr run --rm` of `cat /proc/version` as task `id` with `runtime`
    /// as the runc binary: the guest's kernel answers.
    fn run_rm_shows_the_guest_kernel(&self, w: &World, runtime: &str, id: &str) {
        let out = self
            .ctr()
            .args([
                "run",
                "--rm",
                "--runc-binary",
                runtime,
                "localhost/bb:latest",
                id,
            ])
            .args(["cat", "/proc/version"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr run: {}\n{}",
            stderr(&out),
            w.log()
        );
        common::guest::assert_guest_kernel(&common::image_dir(), &stdout(&out));
    }

    /// SIGKILLs task `id` and waits until `ctr task ls` says it stopped.
    fn kill_and_wait_stopped(&self, w: &World, id: &str) {
        let out = self
            .ctr()
            .args(["task", "kill", "-s", "SIGKILL", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ls = stdout(&self.ctr().args(["task", "ls"]).output().unwrap());
            if ls
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task did not stop: {ls}\n{}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).args(["-n", "skerry-test"]);
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn vm_containerd_runc_shim_runs_execs_and_kills() {
    require_tool!("/usr/bin/containerd");
    require_tool!("/usr/bin/podman");
    let w = World::new();
    let p = Podman::new(&w);
    let c = Containerd::with_image(&w, &p);
    let runtime = p.runtime.to_str().unwrap().to_string();
    c.run_rm_shows_the_guest_kernel(&w, &runtime, "ctr1");

    let out = c
        .ctr()
        .args([
            "run",
            "-d",
            "--runc-binary",
            &runtime,
            "localhost/bb:latest",
            "ctr2",
            "sleep",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr run -d: {}\n{}",
        stderr(&out),
        w.log()
    );
    let out = c
        .ctr()
        .args([
            "task",
            "exec",
            "--exec-id",
            "e1",
            "ctr2",
            "sh",
            "-c",
            "echo exec-in-vm; exit 4",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "exec-in-vm\n", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(4));
    c.kill_and_wait_stopped(&w, "ctr2");
    let out = c.ctr().args(["task", "delete", "ctr2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("137") || stdout(&out).contains("137"),
        "exit status: {}",
        stderr(&out)
    );
    let _ = c.ctr().args(["container", "rm", "ctr2"]).output();
    // Nothing of either container survives on the host.
    let leftovers: Vec<String> = processes_mentioning(&["ctr1", "ctr2"]);
    assert_eq!(leftovers, Vec::<String>::new());
}

#[test]
fn vm_containerd_runc_shim_runs_a_plain_container_beside_a_vm_one() {
    require_tool!("/usr/bin/containerd");
    require_tool!("/usr/bin/podman");
    let w = World::new();
    let p = Podman::new(&w);
    let c = Containerd::with_image(&w, &p);
    let plain = plain_wrapper(&w);
    let out = c
        .ctr()
        .args(["run", "-d", "--runc-binary"])
        .arg(&plain)
        .args(["localhost/bb:latest", "plain2", "sleep", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr run -d: {}\n{}",
        stderr(&out),
        w.log()
    );
    let vm = p.runtime.to_str().unwrap().to_string();
    c.run_rm_shows_the_guest_kernel(&w, &vm, "vm2");
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let out = c
        .ctr()
        .args([
            "task",
            "exec",
            "--exec-id",
            "e1",
            "plain2",
            "cat",
            "/proc/version",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), host, "{}", stderr(&out));
    c.kill_and_wait_stopped(&w, "plain2");
    let out = c.ctr().args(["task", "delete", "plain2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = c.ctr().args(["container", "rm", "plain2"]).output();
    assert_eq!(
        processes_mentioning(&["plain2", "vm2"]),
        Vec::<String>::new()
    );
}

/// Host processes whose command line contains one of `needles` as a word,
/// once none is left or after 10 s: a shim exits a moment after containerd
/// deleted its last task.
fn processes_mentioning(needles: &[&str]) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = processes_now_mentioning(needles);
        if found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn processes_now_mentioning(needles: &[&str]) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let is_ours = words
            .iter()
            .any(|w| w.contains("skerry") || w.contains("qemu"));
        if is_ours
            && words.iter().any(|w| {
                needles
                    .iter()
                    .any(|n| w == n || w.ends_with(&format!("/{n}")))
            })
        {
            found.push(words.join(" "));
        }
    }
    found
}
