//! Tier 3: `skerry` driven as a user would. The lifecycle tests run twice:
//! `vm_*` with a real guest kernel, the real agent and QEMU (each boots its
//! own VM, a few seconds under TCG), and `plain_*` in container mode on the
//! host kernel. Tests of the VM machinery itself are `vm_*` only.

mod common;

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{stderr, stdout, World};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Declares `#[test] fn $vm` and `#[test] fn $plain`, each running
/// `$body(&World)` in a world of that isolation.
macro_rules! both_isolations {
    ($vm:ident, $plain:ident, $body:ident) => {
        #[test]
        fn $vm() {
            require_vm!();
            $body(&World::new());
        }

        #[test]
        fn $plain() {
            require_plain!();
            $body(&World::plain());
        }
    };
}

both_isolations!(
    vm_run_prints_the_guest_kernel_not_the_hosts,
    plain_run_prints_the_hosts_kernel,
    run_prints_the_kernel
);

/// A VM container sees the guest's kernel, a container-mode one the host's; both see
/// `lo` up.
fn run_prints_the_kernel(w: &World) {
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "cat /proc/version; echo hello from the container; hostname; \
             echo lo flags $(cat /sys/class/net/lo/flags)",
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
    if w.plain {
        assert_eq!(
            version,
            host.trim(),
            "container mode runs on the host kernel"
        );
    } else {
        common::guest::assert_guest_kernel(&common::image_dir(), &text);
    }
    assert!(text.contains("hello from the container\n"), "{text}");
    assert!(
        text.contains("skerry-test\n"),
        "hostname from the spec: {text}"
    );
    // The container shares the guest's (or the host's) network namespace, whose lo is up.
    assert!(text.contains("lo flags 0x9\n"), "lo is up: {text}");
    w.assert_clean("c1");
}

both_isolations!(
    vm_exit_statuses_come_back,
    plain_exit_statuses_come_back,
    exit_statuses_come_back
);

fn exit_statuses_come_back(w: &World) {
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
    w.wait_ready(&bundle);
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

both_isolations!(
    vm_a_missing_cwd_is_made_as_runc_makes_it,
    plain_a_missing_cwd_is_made_as_runc_makes_it,
    a_missing_cwd_is_made_as_runc_makes_it
);

/// runc's init creates a missing `process.cwd` (`docker run -w /new`), inside
/// the rootfs; a symlink in the rootfs cannot make it create a host directory.
fn a_missing_cwd_is_made_as_runc_makes_it(w: &World) {
    let bundle = w.bundle("cwd", &["sh", "-c", "pwd; ls -ld . | cut -c1-10"]);
    common::edit_spec(&bundle, |spec| spec["process"]["cwd"] = "/work/new".into());
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "cwd"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_eq!(stdout(&out), "/work/new\ndrwxr-xr-x\n");
    assert!(bundle.join("rootfs/work/new").is_dir());
    w.assert_clean("cwd");

    let outside = w.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let bundle = w.bundle("cwdlink", &["true"]);
    std::os::unix::fs::symlink(&outside, bundle.join("rootfs/out")).unwrap();
    common::edit_spec(&bundle, |spec| {
        spec["process"]["cwd"] = "/out/planted".into()
    });
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "cwdlink"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("process.cwd"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    w.assert_clean("cwdlink");
}

fn status_of(w: &World, id: &str) -> serde_json::Value {
    let out = w.run(&["state", id]);
    assert!(out.status.success(), "state: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

both_isolations!(
    vm_lifecycle_create_start_kill_delete_leaves_nothing,
    plain_lifecycle_create_start_kill_delete_leaves_nothing,
    lifecycle_create_start_kill_delete_leaves_nothing
);

fn lifecycle_create_start_kill_delete_leaves_nothing(w: &World) {
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
    let state = status_of(w, "lc");
    assert_eq!(state["status"], "created");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["id"], "lc");
    assert_eq!(
        state["bundle"].as_str().map(std::path::PathBuf::from),
        Some(std::fs::canonicalize(&bundle).unwrap())
    );
    assert!(state["annotations"].is_object(), "{state}");
    let pid = state["pid"].as_u64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    if w.plain {
        // As runc: the pid is the container's init, in the container's
        // namespaces, not a monitor of ours.
        let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
            own,
            "the init is not in its own pid namespace"
        );
    }

    let out = w.run(&["start", "lc"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    assert_eq!(status_of(w, "lc")["status"], "running");
    // A second start is refused.
    assert!(!w.run(&["start", "lc"]).status.success());
    // Deleting a running container needs --force.
    let out = w.run(&["delete", "lc"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not stopped"), "{}", stderr(&out));

    // SIGTERM reaches a pid-namespace init only once it has a handler.
    w.wait_ready(&bundle);
    let out = w.run(&["kill", "lc", "TERM"]);
    assert!(out.status.success(), "kill: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(w, "lc")["status"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "container did not stop\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_of(w, "lc")["pid"], 0);
    if !w.plain {
        assert!(
            w.log().contains("status=143"),
            "exit status not logged\n{}",
            w.log()
        );
    }
    let out = w.run(&["delete", "lc"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("lc");
}

both_isolations!(
    vm_stdin_reaches_the_container,
    plain_stdin_reaches_the_container,
    stdin_reaches_the_container
);

fn stdin_reaches_the_container(w: &World) {
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

both_isolations!(
    vm_ten_mib_stdout_arrives_intact,
    plain_ten_mib_stdout_arrives_intact,
    ten_mib_stdout_arrives_intact
);

fn ten_mib_stdout_arrives_intact(w: &World) {
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

both_isolations!(
    vm_duplicate_id_is_refused_and_the_first_survives,
    plain_duplicate_id_is_refused_and_the_first_survives,
    duplicate_id_is_refused_and_the_first_survives
);

fn duplicate_id_is_refused_and_the_first_survives(w: &World) {
    let bundle = w.bundle("b", &["sleep", "1000"]);
    w.create(&bundle, "dup");
    let out = w.run(&["create", "--bundle", bundle.to_str().unwrap(), "dup"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"dup\" already exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(status_of(w, "dup")["status"], "created");
    let out = w.run(&["delete", "--force", "dup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean("dup");
}

/// Creates and starts `id` running `sh -c 'touch /tmp/ready; exec sleep 1000'`.
fn start_sleeper(w: &World, id: &str) -> std::path::PathBuf {
    let bundle = w.bundle(id, &["sh", "-c", "touch /tmp/ready; exec sleep 1000"]);
    w.create(&bundle, id);
    let out = w.run(&["start", id]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    w.wait_ready(&bundle);
    bundle
}

both_isolations!(
    vm_sigpipe_keeps_its_default_action_in_the_init_and_an_exec,
    plain_sigpipe_keeps_its_default_action_in_the_init_and_an_exec,
    sigpipe_keeps_its_default_action
);

/// SIGPIPE is not ignored in a container (the Rust processes that drive
/// libcontainer ignore it, and an ignored signal survives exec): `yes | head`
/// ends, in the init and in an exec'd process alike.
fn sigpipe_keeps_its_default_action(w: &World) {
    const SIGPIPE_BIT: u64 = 1 << (13 - 1);
    let ignored = |text: &str| {
        let mask = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .unwrap_or_else(|| panic!("no SigIgn in {text:?}"));
        u64::from_str_radix(mask.trim(), 16).unwrap()
    };
    let script = "grep SigIgn /proc/self/status";
    let bundle = w.bundle("sp", &["sh", "-c", script]);
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "sp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ignored(&stdout(&out)) & SIGPIPE_BIT,
        0,
        "init: {}",
        stdout(&out)
    );
    start_sleeper(w, "spx");
    let out = w.run(&["exec", "spx", "sh", "-c", script]);
    assert_eq!(
        ignored(&stdout(&out)) & SIGPIPE_BIT,
        0,
        "exec: {}",
        stdout(&out)
    );
    assert!(w.run(&["delete", "--force", "spx"]).status.success());
    w.assert_clean("spx");
}

both_isolations!(
    vm_exec_joins_the_containers_user_namespace,
    plain_exec_joins_the_containers_user_namespace,
    exec_joins_the_containers_user_namespace
);

/// A container with a user namespace of its own: an exec joins it (its
/// maps, root there, the init's capabilities), so it is as unprivileged as
/// the init where it runs: no device node, which root of the host's (or the
/// guest's) namespace with CAP_MKNOD could make. libcontainer 0.7's exec
/// leaves the user namespace out; without skerry's executor the process ran
/// as the real root of the namespace it was started from.
fn exec_joins_the_containers_user_namespace(w: &World) {
    let dir = w.bundle("uns", &["sleep", "600"]);
    common::edit_spec(&dir, |spec| {
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .extend([json!({"type": "user"}), json!({"type": "network"})]);
        spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    w.create(&dir, "uns");
    assert!(w.run(&["start", "uns"]).status.success());
    let script = "tr -s ' ' < /proc/self/uid_map; id -u; tr -s ' ' < /proc/1/uid_map; \
                  grep CapEff /proc/self/status; grep CapEff /proc/1/status; \
                  mknod /tmp/null c 1 3 2>/dev/null && echo mknod; echo done";
    let out = w.run(&["exec", "uns", "sh", "-c", script]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let why = format!("{text}\n{}\n{}", stderr(&out), w.log());
    assert_eq!(lines.len(), 6, "{why}");
    assert_eq!(lines[0], " 0 100000 65536", "{why}");
    assert_eq!((lines[1], lines[2]), ("0", lines[0]), "{why}");
    assert_eq!(lines[3], lines[4], "the init's capabilities: {why}");
    assert_eq!(lines[5], "done", "{why}");
    assert!(w.run(&["delete", "--force", "uns"]).status.success());
    w.assert_clean("uns");
}

both_isolations!(
    vm_exec_runs_inside_the_container,
    plain_exec_runs_inside_the_container,
    exec_runs_inside_the_container
);

fn exec_runs_inside_the_container(w: &World) {
    start_sleeper(w, "ex");
    // Foreground: output, environment, namespaces and exit status come back.
    let out = w.run(&[
        "exec",
        "-e",
        "GREETING=hi",
        "ex",
        "sh",
        "-c",
        "echo $GREETING; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 7",
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{text}\n{}\n{}",
        stderr(&out),
        w.log()
    );
    assert!(text.starts_with("hi\nskerry-test\n"), "{text}");
    assert!(
        text.contains("sleep 1000"),
        "exec is not in the container's pid namespace: {text}"
    );

    // --process FILE and a cwd.
    let process = w.tmp.path().join("process.json");
    let spec = common::spec(&["sh", "-c", "pwd"]);
    let mut p = spec["process"].clone();
    p["cwd"] = "/tmp".into();
    std::fs::write(&process, p.to_string()).unwrap();
    let out = w.run(&["exec", "--process", process.to_str().unwrap(), "ex"]);
    assert_eq!(stdout(&out), "/tmp\n", "{}", stderr(&out));

    // Detached: the pid-file process stands for the exec'd process.
    let pid_file = w.tmp.path().join("exec.pid");
    let out = w.run(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "ex",
        "sh",
        "-c",
        "sleep 1; exit 5",
    ]);
    assert!(
        out.status.success(),
        "exec -d: {}\n{}",
        stderr(&out),
        w.log()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")) {
        assert!(
            Instant::now() < deadline,
            "exec proxy outlived its process\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Bad input is named.
    let out = w.run(&["exec", "ex"]);
    assert!(
        stderr(&out).contains("no command given"),
        "{}",
        stderr(&out)
    );
    let out = w.run(&["exec", "ex", "/bin/no-such"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/bin/no-such"), "{}", stderr(&out));

    // pause freezes the VM, resume thaws it.
    let out = w.run(&["pause", "ex"]);
    assert!(out.status.success(), "pause: {}", stderr(&out));
    assert_eq!(status_of(w, "ex")["status"], "paused");
    assert!(!w.run(&["pause", "ex"]).status.success(), "paused twice");
    let out = w.run(&["resume", "ex"]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_eq!(status_of(w, "ex")["status"], "running");
    let out = w.run(&["exec", "ex", "echo", "alive"]);
    assert_eq!(stdout(&out), "alive\n", "after resume: {}", stderr(&out));

    // update applies the limit to the container's cgroup: on the host in
    // container mode, in the guest for a VM (where a 64 MiB buffer that fits
    // before no longer fits under 32 MiB).
    let resources = w.tmp.path().join("resources.json");
    let dd = [
        "exec",
        "ex",
        "/bin/busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ];
    if !w.plain {
        let out = w.run(&dd);
        assert!(out.status.success(), "dd before update: {}", stderr(&out));
    }
    let limit = if w.plain { 104857600 } else { 33554432 };
    std::fs::write(&resources, format!(r#"{{"memory": {{"limit": {limit}}}}}"#)).unwrap();
    let out = w.run(&["update", "--resources", resources.to_str().unwrap(), "ex"]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    if w.plain {
        let path = w.cgroup_path("ex");
        let v1 = format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes");
        let v2 = format!("/sys/fs/cgroup{path}/memory.max");
        let file = if std::path::Path::new(&v1).exists() {
            v1
        } else {
            v2
        };
        let limit = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(limit.trim(), "104857600");
    } else {
        let out = w.run(&dd);
        assert_eq!(
            out.status.code(),
            Some(137),
            "dd under 32 MiB: {}",
            stderr(&out)
        );
    }
    let out = w.run(&["update", "--resources", "/no/such.json", "ex"]);
    assert_eq!(
        stderr(&out).trim_end(),
        "skerry: --resources /no/such.json: No such file or directory (os error 2)"
    );

    // A paused container can still be killed.
    assert!(w.run(&["pause", "ex"]).status.success());
    w.kill_delete_and_assert_clean("ex");
}

both_isolations!(
    vm_bind_mounts_reach_the_guest,
    plain_bind_mounts_reach_the_container,
    bind_mounts_reach_the_container
);

fn bind_mounts_reach_the_container(w: &World) {
    let data = w.tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello"), "from the host\n").unwrap();
    let file = w.tmp.path().join("hostinfo");
    std::fs::write(&file, "a single file\n").unwrap();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "cat /data/hello /etc/hostinfo; echo written > /data/out",
        ],
    );
    common::edit_spec(&bundle, |spec| {
        let mounts = spec["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]}));
        mounts.push(serde_json::json!({"destination": "/etc/hostinfo", "type": "bind", "source": file, "options": ["bind", "ro"]}));
    });
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "bm"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_eq!(stdout(&out), "from the host\na single file\n");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "written\n"
    );
    w.assert_clean("bm");
}

both_isolations!(
    vm_console_socket_gives_the_container_a_terminal,
    plain_console_socket_gives_the_container_a_terminal,
    console_socket_gives_the_container_a_terminal
);

fn console_socket_gives_the_container_a_terminal(w: &World) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    let bundle = w.bundle("b", &["sh", "-c", "tty; stty size; echo done; sleep 2"]);
    common::edit_spec(&bundle, |spec| spec["process"]["terminal"] = true.into());
    let socket = w.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("no fd in the console socket message");
        // SAFETY: the fd was just received with SCM_RIGHTS and is owned by no one else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let out = w
        .skerry()
        .args([
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--console-socket",
        ])
        .arg(&socket)
        .arg("tty")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create: {}\n{}",
        stderr(&out),
        w.log()
    );
    let master = receiver.join().unwrap();
    let mut master = std::fs::File::from(master);
    // Set the size before start: the container must see it.
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid Winsize from the pointer.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(w.run(&["start", "tty"]).status.success());
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1024];
    while !text.contains("done") {
        assert!(
            Instant::now() < deadline,
            "no output on the terminal: {text:?}\n{}",
            w.log()
        );
        use std::io::Read;
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
    assert!(text.contains("33 101"), "window size not passed: {text:?}");
    assert!(
        text.contains("\r\n"),
        "no terminal line discipline: {text:?}"
    );
    let out = w.run(&["delete", "--force", "tty"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean("tty");
}

both_isolations!(
    vm_hooks_run_on_the_host_with_the_state,
    plain_hooks_run_on_the_host_with_the_state,
    hooks_run_on_the_host_with_the_state
);

fn hooks_run_on_the_host_with_the_state(w: &World) {
    let bundle = w.bundle("b", &["true"]);
    let out = w.tmp.path().join("hooks");
    std::fs::create_dir(&out).unwrap();
    let hook = |name: &str| {
        let file = out.join(name);
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", file.display())]})
    };
    common::edit_spec(&bundle, |spec| {
        spec["hooks"] = serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let run = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "hk"]);
    assert!(run.status.success(), "{}\n{}", stderr(&run), w.log());
    // Container mode passes libcontainer's state, which says "creating"
    // before the init waits for start, as runc's does.
    let before_start = if w.plain { "creating" } else { "created" };
    for (name, status) in [
        ("prestart", before_start),
        ("createRuntime", before_start),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text =
            std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["id"], "hk", "{name}: {text}");
        assert_eq!(state["status"], status, "{name}: {text}");
        let version = state["ociVersion"].as_str().unwrap_or_default();
        assert!(version.starts_with("1."), "{name}: {text}");
    }

    // A failing prestart hook fails create, leaving nothing behind.
    common::edit_spec(&bundle, |spec| {
        spec["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network >&2; exit 3"]}]});
    });
    let run = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "hk2"]);
    assert!(!run.status.success());
    let err = stderr(&run);
    if w.plain {
        // libcontainer's hook leaves its stderr to ours.
        assert!(err.contains("no network"), "{err}");
        assert!(err.contains("exited with non-zero exit code: 3"), "{err}");
    } else {
        assert!(
            err.contains("prestart hook /bin/sh exited with status 3: no network"),
            "{err}"
        );
    }
    w.assert_clean("hk2");
}

#[test]
fn plain_preserved_fds_reach_the_container() {
    require_plain!();
    let w = World::plain();
    let bundle = w.bundle("b", &["sh", "-c", "cat <&3"]);
    let file = w.tmp.path().join("fd3");
    std::fs::write(&file, "through fd 3\n").unwrap();
    // The shell opens fd 3 for skerry, as a caller passing fds would.
    let script = format!(
        "exec 3<{} && exec {} --root {} --config {} run --preserve-fds 1 --bundle {} pf",
        file.display(),
        env!("CARGO_BIN_EXE_skerry"),
        w.root.display(),
        w.config.display(),
        bundle.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    assert_eq!(stdout(&out), "through fd 3\n");
    w.assert_clean("pf");
}

/// Runs a container whose spec carries an AppArmor profile, an SELinux
/// process label and a mount label; returns `run`'s stderr after checking
/// that it ran.
fn run_with_mac_labels(w: &World) -> String {
    let bundle = w.bundle("mac", &["true"]);
    common::edit_spec(&bundle, |spec| {
        spec["process"]["apparmorProfile"] = "tenant-profile".into();
        spec["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
        spec["linux"]["mountLabel"] = "system_u:object_r:container_file_t:s0".into();
    });
    let out = w.run(&["run", "--bundle", bundle.to_str().unwrap(), "mac"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.log());
    w.assert_clean("mac");
    stderr(&out) + &w.log()
}

/// One rule for AppArmor and SELinux fields in both isolations (runc's): a
/// label the kernel running the container cannot apply is not applied, and
/// create warns naming the field. Container mode: the host's kernel.
#[test]
fn plain_mac_labels_the_host_lacks_are_named_and_not_applied() {
    require_plain!();
    let host = skerry_runtime::mac_labels::KernelLsms::host();
    if host.apparmor || host.selinux {
        eprintln!("SKIPPED: this host has AppArmor or SELinux enabled");
        return;
    }
    let text = run_with_mac_labels(&World::plain());
    for warning in [
        "process.apparmorProfile \"tenant-profile\": not applied: AppArmor is not enabled on \
         this host",
        "process.selinuxLabel \"system_u:system_r:container_t:s0\": not applied: SELinux is \
         not enabled on this host",
        "linux.mountLabel \"system_u:object_r:container_file_t:s0\": not applied: SELinux is \
         not enabled on this host",
    ] {
        assert!(text.contains(warning), "{warning}: {text}");
    }
}

/// The same rule in a VM: the guest kernel has neither module.
#[test]
fn vm_mac_labels_are_named_and_not_applied_in_the_guest() {
    require_vm!();
    let text = run_with_mac_labels(&World::new());
    for field in [
        "process.apparmorProfile \"tenant-profile\": not applied: AppArmor is not enabled on \
         the guest kernel",
        "process.selinuxLabel",
        "linux.mountLabel",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
}

fn state_json(w: &World, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(w.root.join(id).join("state.json")).unwrap()).unwrap()
}

/// The pids of the VM processes a state document records.
fn vm_pids(state: &serde_json::Value) -> Vec<i32> {
    state["vm_processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect()
}

fn qemu_pid(w: &World, id: &str) -> i32 {
    vm_pids(&state_json(w, id))
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu"))
        })
        .expect("no QEMU process recorded")
}

/// A guest flooding its serial console (8 MiB to a ttyS0 node of its own;
/// ~4 s a MiB under TCG) leaves a host `console.log` within its cap (1 MiB
/// here): the boot head, a marker, the latest output; the container still
/// ends normally.
#[test]
fn vm_console_flood_keeps_the_console_log_within_its_cap() {
    require_vm!();
    const CAP: u64 = 1 << 20;
    let w = World::new();
    let config = std::fs::read_to_string(&w.config).unwrap().replace(
        "[hypervisor]\n",
        &format!("[hypervisor]\nconsole_log_max_kib = {}\n", CAP >> 10),
    );
    std::fs::write(&w.config, config).unwrap();
    let bundle = w.bundle(
        "b",
        &[
            "sh",
            "-c",
            "mknod /dev/s c 4 64 && yes console-flood-line | head -c 8388608 > /dev/s \
             && echo flood-done > /dev/s",
        ],
    );
    w.create(&bundle, "cf");
    let console = w.root.join("cf/console.log");
    let out = w.run(&["start", "cf"]);
    assert!(out.status.success(), "start: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(600);
    while status_of(&w, "cf")["status"] != "stopped" {
        let len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
        assert!(len <= CAP, "console.log grew to {len} bytes");
        assert!(
            Instant::now() < deadline,
            "container did not stop\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read(&console).unwrap();
    assert!(
        text.len() as u64 <= CAP,
        "console.log is {} bytes",
        text.len()
    );
    let text = String::from_utf8_lossy(&text);
    let marker = text.find(" bytes dropped ...]").expect("no drop marker");
    let (head, tail) = text.split_at(marker);
    assert!(
        !head.starts_with("console-flood-line"),
        "the boot head is gone: {:?}",
        &head[..200.min(head.len())]
    );
    // The latest output: the end of the flood (the guest's shutdown lines may follow).
    let done = tail
        .rfind("flood-done\r\n")
        .expect("the flood's last line is gone");
    assert!(
        !tail[done..].contains("console-flood-line"),
        "{:?}",
        &tail[done..]
    );
    assert!(tail.contains("console-flood-line\r\nconsole-flood-line\r\n"));
    let log = w.log();
    let exited = log.lines().find(|l| l.contains("container exited"));
    assert!(
        exited.is_some_and(|l| l.contains("status=0 ")),
        "exit status\n{log}"
    );
    let out = w.run(&["delete", "cf"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("cf");
}

#[test]
fn vm_killing_qemu_ends_the_container_and_delete_cleans_up() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle("b", &["sh", "-c", "touch /tmp/ready; exec sleep 1000"]);
    let run = w
        .skerry()
        .args(["run", "--bundle", bundle.to_str().unwrap(), "kq"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    w.wait_ready(&bundle);
    let monitor = status_of(&w, "kq")["pid"].as_i64().unwrap() as i32;
    let qemu = qemu_pid(&w, "kq");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    // The monitor (the container's pid) exits within 5 s, with a failure status.
    while std::path::Path::new(&format!("/proc/{monitor}")).exists()
        && std::fs::read_to_string(format!("/proc/{monitor}/stat"))
            .is_ok_and(|s| !s.contains(") Z"))
    {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "monitor outlived QEMU\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", w.log());
    w.assert_clean("kq");
}

#[test]
fn vm_monitor_killed_while_the_guest_boots_leaves_nothing() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle("b", &["true"]);
    let create = w
        .skerry()
        .args(["create", "--bundle", bundle.to_str().unwrap(), "kb"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The VM's processes are in the state as soon as they run, while the
    // guest still boots (status "creating").
    let deadline = Instant::now() + Duration::from_secs(30);
    let (monitor, vm) = loop {
        if let Ok(bytes) = std::fs::read(w.root.join("kb/state.json")) {
            let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let vm = vm_pids(&state);
            if !vm.is_empty() {
                assert_eq!(state["status"], "creating", "recorded only after boot");
                break (state["monitor"]["pid"].as_i64().unwrap() as i32, vm);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no VM process recorded\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // `create` fails, after stopping what the monitor launched.
    let out = create.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", w.log());
    assert!(
        stderr(&out).contains("exited before reporting"),
        "{}",
        stderr(&out)
    );
    for pid in vm {
        assert!(
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z")),
            "VM process {pid} left running"
        );
    }
    w.assert_clean("kb");
}

both_isolations!(
    vm_killing_the_monitor_then_delete_force_cleans_up,
    plain_killing_the_init_then_delete_force_cleans_up,
    killing_the_state_pid_then_delete_force_cleans_up
);

/// Kills the pid `state` reports (the monitor of a VM container, the init
/// in container mode) from outside: the container is stopped, and
/// `delete --force` leaves nothing.
fn killing_the_state_pid_then_delete_force_cleans_up(w: &World) {
    start_sleeper(w, "km");
    let monitor = status_of(w, "km")["pid"].as_i64().unwrap() as i32;
    assert!(monitor > 0);
    let out = w.run(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "km", "{list}");
    assert_eq!(list[0]["pid"], monitor, "{list}");
    assert_eq!(list[0]["status"], "running", "{list}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(w, "km")["status"] != "stopped" {
        assert!(Instant::now() < deadline, "state still says running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = w.run(&["delete", "--force", "km"]);
    assert!(out.status.success(), "{}", stderr(&out));
    w.assert_clean("km");
}

/// A cgroup file of `path`, from cgroup v1's `controller` hierarchy or v2's
/// unified one (`v2_file`).
fn host_cgroup_file(controller: &str, v1_file: &str, v2_file: &str, path: &str) -> String {
    let v1 = format!("/sys/fs/cgroup/{controller}{path}/{v1_file}");
    let v2 = format!("/sys/fs/cgroup{path}/{v2_file}");
    let file = if std::path::Path::new(&v1).exists() {
        v1
    } else {
        v2
    };
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

/// The cgroup of `pid` in cgroup v1's `controller` hierarchy (or v2's).
fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == controller))
        })
        .or_else(|| text.lines().find(|l| l.starts_with("0::")));
    line.and_then(|l| l.splitn(3, ':').nth(2))
        .unwrap_or_default()
        .to_string()
}

/// Every host process of a VM (QEMU, virtiofsd and its sandbox child,
/// vhost-device-vsock) runs in the sandbox's host cgroup (the spec's
/// `linux.cgroupsPath`), limited to the VM's size plus the configured
/// overhead; `update` changes the host limit too, and `delete` removes it.
#[test]
fn vm_host_cgroup_holds_every_vm_process_and_follows_update_and_delete() {
    require_vm!();
    let w = World::new();
    let bundle = w.bundle("hc", &["sh", "-c", "touch /tmp/ready; exec sleep 1000"]);
    w.create(&bundle, "hc");
    assert!(w.run(&["start", "hc"]).status.success());
    w.wait_ready(&bundle);
    let path = w.cgroup_path("hc");
    let state = state_json(&w, "hc");
    let vm = vm_pids(&state);
    let comms: Vec<String> = vm
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap())
        .collect();
    for name in ["qemu", "virtiofsd", "vhost-device-vs"] {
        assert!(
            comms.iter().any(|c| c.starts_with(name)),
            "{name} not among the VM's processes: {comms:?}"
        );
    }
    // Every process of this world but the monitor, and every thread of them.
    let monitor = state["monitor"]["pid"].as_i64().unwrap() as i32;
    let world: Vec<i32> = w
        .processes()
        .iter()
        .map(|p| p.split(':').next().unwrap().parse().unwrap())
        .filter(|&pid| pid != monitor)
        .collect();
    for pid in vm.iter().chain(&world) {
        let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| t.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        for task in tasks {
            for controller in ["memory", "pids", "cpu"] {
                assert_eq!(
                    cgroup_of(task, controller),
                    path,
                    "{controller} cgroup of {pid}/{task} ({})",
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
                );
            }
        }
    }
    assert_eq!(
        cgroup_of(monitor, "memory"),
        cgroup_of(std::process::id() as i32, "memory")
    );

    // The test config's VM: 1 vCPU, 256 MiB; the default overhead: 256 MiB,
    // half a CPU, 1024 tasks.
    let mib = 1024 * 1024;
    let memory = || host_cgroup_file("memory", "memory.limit_in_bytes", "memory.max", &path);
    assert_eq!(memory(), ((256 + 256) * mib).to_string());
    assert_eq!(
        host_cgroup_file("pids", "pids.max", "pids.max", &path),
        "1024"
    );
    let cpu = format!(
        "{} {}",
        host_cgroup_file("cpu", "cpu.cfs_quota_us", "cpu.max", &path),
        host_cgroup_file("cpu", "cpu.cfs_period_us", "cpu.max", &path)
    );
    assert!(
        cpu == "150000 100000" || cpu == "150000 100000 150000 100000",
        "cpu: {cpu}"
    );

    // A lower memory limit for the container lowers the host's too.
    let resources = w.tmp.path().join("resources.json");
    std::fs::write(
        &resources,
        format!(r#"{{"memory": {{"limit": {}}}}}"#, 64 * mib),
    )
    .unwrap();
    let out = w.run(&["update", "--resources", resources.to_str().unwrap(), "hc"]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    assert_eq!(memory(), ((64 + 256) * mib).to_string());

    w.kill_delete_and_assert_clean("hc");
}

/// A guest that floods its share and spawns many tasks does it inside its
/// host cgroup: virtiofsd's writes for the guest (400 MiB into a volume) are
/// charged to the sandbox's cgroup, whose peak stays at its memory limit
/// (guest RAM + overhead), and its tasks stay under pids.max, however many
/// processes the guest runs.
#[test]
fn vm_a_flooding_guest_stays_within_its_host_cgroup() {
    require_vm!();
    let w = World::new();
    let volume = w.tmp.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let script = "dd if=/dev/zero of=/vol/big bs=1M count=400 2>/dev/null; \
                  for j in 1 2 3 4 5 6 7 8; do cat /vol/big > /dev/null & done; wait; \
                  i=0; while [ $i -lt 300 ]; do sleep 600 & i=$((i+1)); done; \
                  touch /tmp/ready; exec sleep 1000";
    let dir = w.bundle("fl", &["sh", "-c", script]);
    common::edit_spec(&dir, |spec| {
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"destination": "/vol", "type": "bind",
                                     "source": volume, "options": ["rbind", "rw"]}));
    });
    w.create(&dir, "fl");
    assert!(w.run(&["start", "fl"]).status.success());
    w.wait_ready(&dir);
    assert_eq!(
        std::fs::metadata(volume.join("big")).unwrap().len(),
        400 << 20,
        "the guest's write reached the volume"
    );
    let path = w.cgroup_path("fl");
    let limit: u64 = host_cgroup_file("memory", "memory.limit_in_bytes", "memory.max", &path)
        .parse()
        .unwrap();
    let peak: u64 = host_cgroup_file("memory", "memory.max_usage_in_bytes", "memory.peak", &path)
        .parse()
        .unwrap();
    assert_eq!(limit, 512 << 20);
    assert!(peak <= limit, "peak {peak} over the limit {limit}");
    // virtiofsd's page cache for the guest's 400 MiB is charged here: the
    // cgroup filled up to its limit, beyond what the guest's RAM alone holds.
    assert!(
        peak > 300 << 20,
        "peak {peak}: virtiofsd's work is not charged to the VM"
    );
    let tasks: u64 = host_cgroup_file("pids", "pids.current", "pids.current", &path)
        .parse()
        .unwrap();
    let max: u64 = host_cgroup_file("pids", "pids.max", "pids.max", &path)
        .parse()
        .unwrap();
    assert!(
        tasks <= max && tasks < 300,
        "{tasks} host tasks (max {max})"
    );
    assert!(w.run(&["delete", "--force", "fl"]).status.success());
    w.assert_clean("fl");
}

/// A container with CAP_NET_ADMIN makes a bridge in its VM, as it can
/// under runc (skerry's guest kernel has bridge built in, Debian's loads the
/// module at boot; CRI's "adding capability NET_ADMIN" test runs `brctl addbr`).
#[test]
fn vm_a_net_admin_container_makes_a_bridge() {
    require_vm!();
    let w = World::new();
    let dir = w.bundle(
        "br",
        &[
            "sh",
            "-c",
            "brctl addbr br0 && ip link show br0 | grep -o 'br0: <[A-Z,]*>'",
        ],
    );
    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), "br"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "br0: <BROADCAST,MULTICAST>\n");
    w.assert_clean("br");
}

/// A line of `/proc/<pid>/status` (`"Uid"` → its value), if the process runs.
fn proc_status(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
}

/// The recorded VM processes of `id`, with their `comm`.
fn vm_processes(w: &World, id: &str) -> Vec<(i32, String)> {
    state_json(w, id)["vm_processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// Two VMs created at the same time: QEMU and vhost-device-vsock of each run
/// as a uid (and gid) of that VM's own, leased under /run/skerry/.uids and
/// released at delete; QEMU runs with its seccomp sandbox; both sit in a
/// network namespace that is not the host's (no pod network here);
/// virtiofsd's sandboxed child runs under seccomp.
#[test]
fn vm_each_vm_runs_as_its_own_uid_in_its_own_netns_under_seccomp() {
    require_vm!();
    let w = World::new();
    let ids = ["ida", "idb"];
    let bundles: Vec<_> = ids
        .iter()
        .map(|id| w.bundle(id, &["sleep", "1000"]))
        .collect();
    std::thread::scope(|s| {
        for (id, bundle) in ids.iter().zip(&bundles) {
            s.spawn(|| w.create(bundle, id));
        }
    });
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut uids = Vec::new();
    for id in ids {
        let procs = vm_processes(&w, id);
        let of = |comm: &str| -> Vec<i32> {
            procs
                .iter()
                .filter(|(_, c)| c.starts_with(comm))
                .map(|(p, _)| *p)
                .collect()
        };
        let (qemu, vsock) = (of("qemu")[0], of("vhost-device-vs")[0]);
        let uid = proc_status(qemu, "Uid").unwrap();
        let first: u32 = uid.split_whitespace().next().unwrap().parse().unwrap();
        assert_ne!(first, 0, "{id}: QEMU runs as root");
        // real, effective, saved and fs uid; the gid has the same number.
        assert_eq!(uid, format!("{first}\t{first}\t{first}\t{first}"), "{id}");
        assert_eq!(proc_status(qemu, "Gid").unwrap(), uid, "{id}");
        assert_eq!(proc_status(qemu, "Groups").unwrap(), "", "{id}");
        assert_eq!(proc_status(vsock, "Uid").unwrap(), uid, "{id}: vsock");
        let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let at = args
            .iter()
            .position(|a| a == b"-sandbox")
            .expect("-sandbox");
        assert!(args[at + 1].starts_with(b"on,"), "{id}");
        // What the guest makes them log is bounded: helper_log_max_kib (16
        // MiB), for QEMU beside its 256 MiB guest RAM file.
        let mib = 1024 * 1024;
        for (pid, fsize) in [(qemu, (16 + 256) * mib), (vsock, 16 * mib)] {
            let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
            assert_ne!(netns, host_netns, "{id}: pid {pid} in the host netns");
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let line = limits.lines().find(|l| l.starts_with("Max file size"));
            let fsize = fsize.to_string();
            assert_eq!(
                line.map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>()),
                Some(vec![fsize.as_str(), &fsize, "bytes"]),
                "{id}: pid {pid}"
            );
        }
        assert!(
            of("virtiofsd")
                .iter()
                .any(|&p| proc_status(p, "Seccomp").as_deref() == Some("2")),
            "{id}: no virtiofsd process under seccomp"
        );
        assert!(
            std::path::Path::new(&format!("/run/skerry/.uids/{first}")).exists(),
            "{id}: uid {first} not leased"
        );
        uids.push(first);
    }
    assert_ne!(uids[0], uids[1], "two VMs share a uid");
    for id in ids {
        let out = w.run(&["delete", "--force", id]);
        assert!(out.status.success(), "delete {id}: {}", stderr(&out));
    }
    for id in ids {
        w.assert_clean(id);
    }
    for uid in uids {
        assert!(
            !std::path::Path::new(&format!("/run/skerry/.uids/{uid}")).exists(),
            "uid {uid} still leased after delete"
        );
    }
}
