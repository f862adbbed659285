//! Runs the real agent binary in development mode (Unix socket, no VM) and drives it over
//! ttrpc with busybox containers. Needs root and /bin/busybox; skips otherwise.

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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn busybox_rootfs(shared: &Path, id: &str) {
    let bin = shared.join(id).join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "sleep", "hostname"] {
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
        eprintln!("skipped: needs root and /bin/busybox");
        return;
    }
    let dir = std::env::temp_dir().join(format!("skerry-dev-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shared = dir.join("shared");
    for id in ["t1", "t2"] {
        busybox_rootfs(&shared, id);
    }
    let sock = dir.join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_skerry-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--shared-dir")
        .arg(&shared)
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
    let r = code_of(
        c.create_container(ctx(), &bad("t1", &spec(&["sh"], "/missing")))
            .await,
    );
    let (code, msg) = r.unwrap();
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("process.cwd") && msg.contains("/missing"),
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
    let remove = pb::RemoveContainerRequest {
        container_id: "t2".into(),
        ..Default::default()
    };
    c.remove_container(ctx(), &remove).await.unwrap();
    let r = code_of(c.remove_container(ctx(), &remove).await);
    assert_eq!(r.map(|r| r.0), Some(Code::NOT_FOUND));

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
}
