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
fn cgroup_dir(w: &World, controller: &str, id: &str) -> std::path::PathBuf {
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    let root = if v1.is_dir() {
        v1
    } else {
        Path::new("/sys/fs/cgroup").to_path_buf()
    };
    root.join(w.namespace()).join(id)
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
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        w.log()
    );
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
    // The task's pid is its init's, as with runc (CRI joins a sandbox's
    // namespaces through /proc/<pid>/ns).
    let ls = w.ok(&["task", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("c3")).unwrap();
    assert_eq!(
        row.split_whitespace().nth(1),
        Some(pids[0].to_string().as_str())
    );
    let cgroup = cgroup_dir(&w, "pids", "c3");
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
    require_script!();
    let w = World::with_config(CONTAINER_MODE);
    let run = format!("run --rm -t --runtime {RUNTIME} {IMAGE} t1 sh -c 'tty; exit 3'");
    let (said, status) = w.ctr_on_terminal("", &run);
    assert!(said.contains("/dev/pts/"), "{said}\n{}", w.log());
    assert_eq!(status, Some(3), "{said}");

    // An exec'd process with a terminal, and ResizePty (ctr sends the size
    // once the process started: it sleeps first). The id is as long as a
    // CRI one (64 characters): its console socket must still fit a socket
    // address.
    let t2 = "t2".repeat(32);
    w.run_detached(&[], &t2, &["sleep", "1000"]);
    let exec = format!("task exec -t --exec-id x {t2} sh -c 'sleep 1; tty; stty size; exit 5'");
    let (said, status) = w.ctr_on_terminal("stty rows 33 cols 77;", &exec);
    assert!(said.contains("/dev/pts/"), "{said}\n{}", w.log());
    assert!(said.contains("33 77"), "{said}\n{}", w.log());
    assert_eq!(status, Some(5), "{said}");
    w.ok(&["task", "kill", "-s", "SIGKILL", &t2]);
    w.wait_stopped(&t2, Duration::from_secs(10));
    w.delete_all(&[&t2]);
}

#[test]
fn plain_shim_stdin_reaches_the_container_and_ends() {
    require_host!();
    let w = World::with_config(CONTAINER_MODE);
    let mut cmd = w.ctr();
    cmd.args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "i1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"ping\npong\n").unwrap();
    }
    // cat exits only once the shim closed its stdin after the client's end.
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "ping\npong\n", "{}", w.log());
    assert_eq!(out.status.code(), Some(0));
    w.assert_clean();
}

#[test]
fn plain_shim_pod_containers_share_the_isolation() {
    require_host!();
    let w = World::with_config(&format!(
        "{CONTAINER_MODE}allow_isolation_annotation = true\n"
    ));
    w.run_detached(&pod_annotations("p1", true), "p1", &["sleep", "1000"]);
    w.run_detached(&pod_annotations("p1", false), "p1c", &["sleep", "1000"]);
    // Both are host containers served by the pod's one shim: p1c's cgroup
    // holds one process, `sleep` (once libcontainer's init has exec'd it;
    // start returns before that, as runc's does).
    let only_sleep = || {
        let pids = task_pids(&w, "p1c");
        pids.len() == 1
            && std::fs::read_to_string(format!("/proc/{}/comm", pids[0]))
                .is_ok_and(|comm| comm.trim() == "sleep")
    };
    eventually("p1c is not one `sleep` process", only_sleep);

    let mut vm = pod_annotations("p1", false);
    vm.extend(["--annotation".into(), "io.skerry.isolation=vm".into()]);
    let mut args: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend(vm.iter().map(String::as_str));
    args.extend([IMAGE, "p1vm", "true"]);
    let out = w.run(&args);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "container \"p1vm\" asks for vm isolation but its pod \"p1\" runs in container \
             isolation"
        ),
        "{}",
        text(&out.stderr)
    );
    w.ok(&["container", "rm", "p1vm"]);
    for id in ["p1c", "p1"] {
        w.ok(&["task", "kill", "-s", "SIGKILL", id]);
        w.wait_stopped(id, Duration::from_secs(10));
    }
    w.delete_all(&["p1c", "p1"]);
}

#[test]
fn plain_shim_oom_kill_publishes_task_oom() {
    require_host!();
    oom_kill_publishes_task_oom(&World::with_config(CONTAINER_MODE));
}

#[test]
fn plain_shim_policy_floor_refuses_a_privileged_task() {
    require_host!();
    privileged_task_is_refused_by_the_floor(&World::with_config(&format!(
        "{CONTAINER_MODE}{DENY_PRIVILEGED}"
    )));
}
