//! Runs the real agent binary in development mode (Unix socket, no VM) and drives it over
//! ttrpc with busybox containers. Needs root and /bin/busybox; skips otherwise.

#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use skerry_protocol as pb;
use ttrpc::asynchronous::transport::Socket;
use ttrpc::{context, Code};

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
            eprintln!("--- the agent's log:\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn busybox_rootfs(shared: &Path, id: &str) {
    let bin = shared.join(id).join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "sleep", "hostname", "tty", "stty", "readlink",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

fn spec(args: &[&str], cwd: &str) -> Vec<u8> {
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": args, "cwd": cwd, "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "ignored"},
        "hostname": "t1",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
    })
    .to_string()
    .into_bytes()
}

fn ctx() -> context::Context {
    context::with_timeout(20_000_000_000)
}

fn code_of<T>(r: ttrpc::Result<T>) -> Option<(Code, String)> {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => Some((s.code(), s.message().to_string())),
        _ => None,
    }
}

/// Reads stdout until `want` appears (or EOF / timeout); returns everything read.
async fn read_until(c: &pb::AgentClient, id: &str, exec: &str, want: &str) -> String {
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.contains(want) && Instant::now() < deadline {
        let req = pb::ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            len: 4096,
            ..Default::default()
        };
        let data = c.read_stdout(ctx(), &req).await.unwrap().data;
        if data.is_empty() {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&data));
    }
    out
}

async fn read_all(c: &pb::AgentClient, id: &str, exec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let req = pb::ReadStreamRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            len: 4096,
            ..Default::default()
        };
        let data = c.read_stdout(ctx(), &req).await.unwrap().data;
        if data.is_empty() {
            return out;
        }
        out.extend(data);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn containers_run_in_a_development_agent() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/bin/busybox").exists() {
        skip_rule::skip("needs root and /bin/busybox");
        return;
    }
    let dir = std::env::temp_dir().join(format!("skerry-dev-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shared = dir.join("shared");
    for id in ["t1", "t2", "t3", "t4"] {
        busybox_rootfs(&shared, id);
    }
    let sock = dir.join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_skerry-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--shared-dir")
        .arg(&shared)
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Agent { child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tokio::net::UnixStream::connect(&sock).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("agent socket: {e}"),
        }
    };
    let c = pb::AgentClient::new(ttrpc::asynchronous::Client::new(Socket::new(stream)));

    // Hostile or wrong input is rejected with the right code and a message naming the field.
    let bad = |id: &str, json: &[u8]| pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: json.to_vec(),
        ..Default::default()
    };
    let r = code_of(
        c.create_container(ctx(), &bad("t1", b"\xff{not json"))
            .await,
    );
    assert_eq!(r.map(|r| r.0), Some(Code::INVALID_ARGUMENT));
    let r = code_of(
        c.create_container(ctx(), &bad("t1", &spec(&["/bin/nope"], "/")))
            .await,
    );
    let (code, msg) = r.unwrap();
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(
        msg,
        "container t1: process.args[0] \"/bin/nope\" not found in rootfs"
    );
    // A missing cwd on the rootfs is made, as runc makes it; one under another
    // mount is not, and libcontainer's failed chdir is named as the field.
    let r = code_of(
        c.create_container(ctx(), &bad("t1", &spec(&["sh"], "/proc/missing")))
            .await,
    );
    let (code, msg) = r.unwrap();
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("process.cwd") && msg.contains("/proc/missing"),
        "{msg}"
    );

    // A failed create leaves nothing behind: the id is free again.
    let pid = c
        .create_container(
            ctx(),
            &bad("t1", &spec(&["sh", "-c", "hostname; exit 5"], "/")),
        )
        .await
        .unwrap()
        .pid;
    assert!(pid > 1);
    let dup = code_of(
        c.create_container(ctx(), &bad("t1", &spec(&["sh"], "/")))
            .await,
    );
    assert_eq!(dup.map(|r| r.0), Some(Code::ALREADY_EXISTS));
    let start = pb::StartContainerRequest {
        container_id: "t1".into(),
        ..Default::default()
    };
    c.start_container(ctx(), &start).await.unwrap();
    assert_eq!(read_all(&c, "t1", "").await, b"t1\n");
    let wait = pb::WaitProcessRequest {
        container_id: "t1".into(),
        ..Default::default()
    };
    let w = c.wait_process(ctx(), &wait).await.unwrap();
    assert_eq!((w.status, w.signal), (5, 0));

    // Exec into a running container, then remove it while it runs.
    c.create_container(ctx(), &bad("t2", &spec(&["sleep", "100"], "/")))
        .await
        .unwrap();
    let start = pb::StartContainerRequest {
        container_id: "t2".into(),
        ..Default::default()
    };
    c.start_container(ctx(), &start).await.unwrap();
    let process = json!({"args": ["sh", "-c", "echo $$"], "cwd": "/",
                         "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    let exec = pb::ExecProcessRequest {
        container_id: "t2".into(),
        exec_id: "e1".into(),
        oci_process_json: process.to_string().into_bytes(),
        ..Default::default()
    };
    c.exec_process(ctx(), &exec).await.unwrap();
    // The exec'd shell is in the container's pid namespace: a small pid, not the host's.
    let out = String::from_utf8(read_all(&c, "t2", "e1").await).unwrap();
    let inner_pid: u32 = out.trim().parse().unwrap();
    assert!(inner_pid < 10, "{out}");

    // A pod's container joins the IPC and UTS namespaces of its running sandbox
    // container (t2) where its spec joins them by path; it sets no hostname here.
    let show = "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; hostname";
    let mut pspec: serde_json::Value =
        serde_json::from_slice(&spec(&["sh", "-c", show], "/")).unwrap();
    pspec.as_object_mut().unwrap().remove("hostname");
    pspec["linux"] = json!({"namespaces": [
        {"type": "pid"}, {"type": "mount"},
        {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "uts", "path": "/proc/1/ns/uts"}]});
    let pod_member = |of: &str| pb::CreateContainerRequest {
        join_namespaces_of: of.into(),
        ..bad("t4", pspec.to_string().as_bytes())
    };
    for (of, why) in [
        ("t1", "pod sandbox container t1 is not running"),
        ("nope", "pod sandbox container nope is not in this guest"),
        ("t4", "join_namespaces_of names the container itself"),
    ] {
        let (_, msg) = code_of(c.create_container(ctx(), &pod_member(of)).await).unwrap();
        assert!(msg.contains(why), "joining {of}: {msg}");
    }
    c.create_container(ctx(), &pod_member("t2")).await.unwrap();
    let start = pb::StartContainerRequest {
        container_id: "t4".into(),
        ..Default::default()
    };
    c.start_container(ctx(), &start).await.unwrap();
    let joined = String::from_utf8(read_all(&c, "t4", "").await).unwrap();
    let exec = pb::ExecProcessRequest {
        container_id: "t2".into(),
        exec_id: "e3".into(),
        oci_process_json: json!({"args": ["sh", "-c", show], "cwd": "/",
                                 "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]})
        .to_string()
        .into_bytes(),
        ..Default::default()
    };
    c.exec_process(ctx(), &exec).await.unwrap();
    let sandbox = String::from_utf8(read_all(&c, "t2", "e3").await).unwrap();
    assert!(
        sandbox.starts_with("ipc:[") && sandbox.ends_with("\nt1\n"),
        "{sandbox}"
    );
    assert_eq!(joined, sandbox, "t4 did not join t2's namespaces");
    let remove = pb::RemoveContainerRequest {
        container_id: "t2".into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &remove).await.unwrap();
    let r = code_of(c.remove_container(ctx(), &remove).await);
    assert_eq!(r.map(|r| r.0), Some(Code::NOT_FOUND));

    // A terminal comes from the container's own devpts: `tty` names it, and a size set
    // before start is what the process sees. An exec'd terminal gets the next pty there.
    let mut tspec: serde_json::Value = serde_json::from_slice(&spec(
        &["sh", "-c", "tty; stty size; read x; echo bye"],
        "/",
    ))
    .unwrap();
    tspec["process"]["terminal"] = true.into();
    c.create_container(ctx(), &bad("t3", tspec.to_string().as_bytes()))
        .await
        .unwrap();
    let resize = |exec: &str, rows, columns| pb::TtyWinResizeRequest {
        container_id: "t3".into(),
        exec_id: exec.into(),
        rows,
        columns,
        ..Default::default()
    };
    c.tty_win_resize(ctx(), &resize("", 33, 101)).await.unwrap();
    let start = pb::StartContainerRequest {
        container_id: "t3".into(),
        ..Default::default()
    };
    c.start_container(ctx(), &start).await.unwrap();
    let out = read_until(&c, "t3", "", "33 101").await;
    assert!(
        out.contains("/dev/pts/0\r\n33 101\r\n"),
        "terminal container output: {out:?}"
    );
    let tprocess = json!({"args": ["sh", "-c", "tty"], "cwd": "/", "terminal": true,
                          "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    let exec = pb::ExecProcessRequest {
        container_id: "t3".into(),
        exec_id: "e2".into(),
        oci_process_json: tprocess.to_string().into_bytes(),
        ..Default::default()
    };
    c.exec_process(ctx(), &exec).await.unwrap();
    let out = String::from_utf8(read_all(&c, "t3", "e2").await).unwrap();
    assert_eq!(out, "/dev/pts/1\r\n");
    // A process without a terminal cannot be resized.
    let r = code_of(
        c.tty_win_resize(
            ctx(),
            &pb::TtyWinResizeRequest {
                container_id: "t1".into(),
                rows: 1,
                columns: 1,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(r.map(|r| r.0), Some(Code::FAILED_PRECONDITION));
    // CloseStdin on a terminal sends ^D: `read` returns and the shell finishes.
    let close = pb::CloseStdinRequest {
        container_id: "t3".into(),
        ..Default::default()
    };
    c.close_stdin(ctx(), &close).await.unwrap();
    let out = String::from_utf8(read_all(&c, "t3", "").await).unwrap();
    assert!(out.contains("bye"), "after CloseStdin: {out:?}");
    let wait = pb::WaitProcessRequest {
        container_id: "t3".into(),
        ..Default::default()
    };
    let w = c.wait_process(ctx(), &wait).await.unwrap();
    assert_eq!((w.status, w.signal), (0, 0));

    c.destroy_sandbox(ctx(), &pb::DestroySandboxRequest::new())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "agent did not exit after DestroySandbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent's seccomp allow-list denied nothing it did on the way.
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    assert!(log.contains("agent confined"), "{log}");
    assert!(!log.contains("seccomp denied"), "{log}");
}
