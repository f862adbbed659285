//! End to end, no VM: containerd 1.6 runs busybox tasks through
//! `containerd-shim-skerry-v2` with `[runtime] isolation = "container"`, so
//! each task is a plain container on the host (libcontainer).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[macro_use]
mod common;

use common::*;

const CONTAINER_MODE: &str = "[runtime]\nisolation = \"container\"\n";

/// `ctr run --rm` of `args` as task `id`, in the foreground.
fn ctr_run(w: &World, id: &str, args: &[&str]) -> Command {
    let mut cmd = w.ctr();
    cmd.args(["run", "--rm", "--runtime", RUNTIME, IMAGE, id])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The task's host pids (`ctr task ps`).
fn task_pids(w: &World, id: &str) -> Vec<u32> {
    w.ok(&["task", "ps", id])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits (≤ 10 s) until `pred` holds.
fn eventually(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The task's cgroup directory for `controller` (cgroups v1 hybrid or v2).
fn cgroup_dir(controller: &str, id: &str) -> std::path::PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    let root = if v1.is_dir() {
        v1
    } else {
        Path::new("/sys/fs/cgroup").to_path_buf()
    };
    root.join("skerry-test").join(id)
}

#[test]
fn plain_shim_output_and_exit_status() {
    require_host!();
    let w = World::with_config(CONTAINER_MODE);
    let out = ctr_run(&w, "c1", &["echo", "hi"]).output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "{}\n{}",
        text(&out.stderr),
        w.log()
    );
    assert_eq!(out.status.code(), Some(0));
    let out = ctr_run(&w, "c2", &["sh", "-c", "echo oops >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", w.log());
    assert_eq!(text(&out.stderr), "oops\n");
    // No VM was booted.
    assert!(!w.log().contains("pod VM booted"), "{}", w.log());
    w.assert_clean();
}

#[test]
fn plain_shim_exec_pause_kill_and_nothing_left() {
    require_host!();
    let w = World::with_config(CONTAINER_MODE);
    let mut init = ctr_run(&w, "c3", &["sleep", "1000"]).spawn().unwrap();
    eventually("c3 did not start", || {
        w.run(&["task", "ls"])
            .stdout
            .windows(7)
            .any(|s| s == b"RUNNING")
    });
    // Host pids, in the task's own host cgroup.
    let pids = task_pids(&w, "c3");
    assert_eq!(pids.len(), 1, "{pids:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).unwrap();
    assert_eq!(comm.trim(), "sleep");
    let cgroup = cgroup_dir("pids", "c3");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pids[0].to_string());
    assert!(w.metric("c3", "pids.current") >= 1);
    assert!(w.metric("c3", "memory.usage") > 0);

    // Exec: output, status, and it runs in the container (its pid namespace).
    let out = w
        .ctr()
        .args(["task", "exec", "--exec-id", "e1", "c3", "sh", "-c"])
        .arg("echo from-exec; cat /proc/1/comm; exit 4")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "from-exec\nsleep\n", "{}", w.log());
    assert_eq!(out.status.code(), Some(4));

    // An exec'd process (not the namespace's init) dies of SIGTERM: 143.
    let mut exec = w
        .ctr()
        .args(["task", "exec", "--exec-id", "e2", "c3", "sleep", "1000"])
        .spawn()
        .unwrap();
    eventually("e2 did not start", || task_pids(&w, "c3").len() == 2);
    w.ok(&["task", "kill", "--exec-id", "e2", "c3"]);
    assert_eq!(exec.wait().unwrap().code(), Some(143));

    // Pause freezes the cgroup; resume thaws it.
    w.ok(&["task", "pause", "c3"]);
    assert!(w.ok(&["task", "ls"]).contains("PAUSED"));
    w.ok(&["task", "resume", "c3"]);
    assert!(w.ok(&["task", "ls"]).contains("RUNNING"));

    // SIGKILL of the init: ctr run reports 137 and removes the task.
    w.ok(&["task", "kill", "-s", "SIGKILL", "c3"]);
    let status = init.wait().unwrap();
    assert_eq!(status.code(), Some(137), "{}", w.log());
    assert!(!Path::new(&format!("/proc/{}", pids[0])).exists());
    eventually("cgroup left behind", || !cgroup.exists());
    w.assert_clean();
}

#[test]
fn plain_shim_tty() {
    require_host!();
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("SKIPPED: /usr/bin/script (bsdutils) is needed for a terminal");
        return;
    }
    let w = World::with_config(CONTAINER_MODE);
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
