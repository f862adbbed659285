//! Tier 3: `skerry` driven as a user would, with a real guest kernel, the
//! real agent and QEMU. Each test boots its own VM (a few seconds under TCG).

mod common;

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{stderr, stdout, World};
use sha2::{Digest, Sha256};

#[test]
fn vm_run_prints_the_guest_kernel_not_the_hosts() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "cat /proc/version; echo hello from the container; hostname",
        ],
    );
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "c1"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "status {:?}\n{}\n{}",
        out.status,
        stderr(&out),
        w.log()
    );
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let version = text.lines().next().unwrap_or_default();
    assert!(
        version.starts_with("Linux version 6.1."),
        "guest /proc/version: {text}"
    );
    assert_ne!(version, host.trim(), "container saw the host kernel");
    assert!(text.contains("hello from the container\n"), "{text}");
    assert!(
        text.contains("skerry-test\n"),
        "hostname from the spec: {text}"
    );
    w.assert_clean("c1");
}

#[test]
fn vm_exit_statuses_come_back() {
    require_vm!();
    let w = World::new();
    for (id, script, want) in [("e0", "true", 0), ("e3", "exit 3", 3)] {
        let bundle = w.bundle(id, &["sh", "-c", script]);
        let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), id]);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{script}: {}\n{}",
            stderr(&out),
            w.log()
        );
        w.assert_clean(id);
    }
    // A container killed by SIGKILL (from outside: the init of a pid
    // namespace cannot be SIGKILLed from inside it) exits 128 + 9.
    let bundle = w.bundle("e137", &["sh", "-c", "touch /tmp/ready; exec sleep 1000"]);
    let run = w
        .skerry()
        .args(["run", "--bundle", bundle.to_str().unwrap(), "e137"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&w, &bundle);
    let out = w.run(&["kill", "e137", "KILL"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    let out = run.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}\n{}",
        stderr(&out),
        w.log()
    );
    w.assert_clean("e137");
}

/// Waits until the container has created /tmp/ready in its rootfs (which
/// the host sees through the bundle): its program is past start-up.
fn wait_ready(w: &World, bundle: &std::path::Path) {
    let marker = bundle.join("rootfs/tmp/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "container never got ready\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_of(w: &World, id: &str) -> serde_json::Value {
    let out = w.run(&["state", id]);
    assert!(out.status.success(), "state: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn vm_lifecycle_create_start_kill_delete_leaves_nothing() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; touch /tmp/ready; while true; do sleep 1; done",
        ],
    );
    let pid_file = w.tmp.path().join("pid");
    let out = w
        .skerry()
        .args(["create", "--bundle", bundle.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg("lc")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success(), "create failed\n{}", w.log());
    let state = status_of(&w, "lc");
    assert_eq!(state["status"], "created");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["id"], "lc");
    let pid = state["pid"].as_u64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let out = w.run(&["start", "lc"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(status_of(&w, "lc")["status"], "running");
    // A second start is refused.
    assert!(!w.run(&["start", "lc"]).status.success());
    // Deleting a running container needs --force.
    let out = w.run(&["delete", "lc"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not stopped"), "{}", stderr(&out));

    // SIGTERM reaches a pid-namespace init only once it has a handler.
    wait_ready(&w, &bundle);
    let out = w.run(&["kill", "lc", "TERM"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&w, "lc")["status"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "container did not stop\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_of(&w, "lc")["pid"], 0);
    assert!(
        w.log().contains("status=143"),
        "exit status not logged\n{}",
        w.log()
    );
    let out = w.run(&["delete", "lc"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("lc");
}

#[test]
fn vm_stdin_reaches_the_container() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle("b", &["cat"]);
    let mut child = w
        .skerry()
        .args(["run", "--bundle", bundle.to_str().unwrap(), "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back altered");
    w.assert_clean("cat");
}

#[test]
fn vm_ten_mib_stdout_arrives_intact() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "head -c 10485760 /dev/urandom > /tmp/data && sha256sum /tmp/data >&2 && cat /tmp/data",
        ],
    );
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "big"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    let got = format!("{:x}", Sha256::digest(&out.stdout));
    let want = stderr(&out);
    assert!(
        want.starts_with(&got),
        "checksum inside {want:?} != outside {got}"
    );
    w.assert_clean("big");
}

#[test]
fn vm_duplicate_id_is_refused_and_the_first_survives() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle("b", &["sleep", "1000"]);
    // The container keeps the stdio it was created with: give the first
    // create no pipe that the test would wait on.
    let first = w
        .skerry()
        .args(["create", "--bundle", bundle.to_str().unwrap(), "dup"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(first.success(), "{}", w.log());
    let out = w.run(&["create", "--bundle", bundle.to_str().unwrap(), "dup"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"dup\" already exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(status_of(&w, "dup")["status"], "created");
    let out = w.run(&["delete", "--force", "dup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean("dup");
}
