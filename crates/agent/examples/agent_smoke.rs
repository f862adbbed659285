//! Host-side smoke test of a running skerry-agent.
//!
//! Connects over a hybrid-vsock Unix socket (`--hybrid PATH`, as vhost-device-vsock or
//! Firecracker expose it: `CONNECT <port>\n` -> `OK <port>\n`) or straight to a
//! development agent's ttrpc socket (`--unix PATH`), then drives the API. Container
//! root filesystems (busybox) must already exist under the agent's shared directory as
//! `<id>/rootfs` for ids c1..c6.
//!
//! `cargo run -p skerry-agent --example agent_smoke -- --hybrid /tmp/x/vm.vsock [--full]`

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use skerry_protocol as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::asynchronous::transport::Socket;
use ttrpc::context;

async fn connect(args: &[String]) -> anyhow::Result<pb::AgentClient> {
    let pos = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let client = if let Some(path) = pos("--hybrid") {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match try_hybrid(path).await {
                Ok(s) => break ttrpc::asynchronous::Client::new(Socket::new(s)),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    } else if let Some(path) = pos("--unix") {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting {path}"))?;
        ttrpc::asynchronous::Client::new(Socket::new(s))
    } else {
        bail!("usage: agent_smoke (--hybrid PATH | --unix PATH) [--full]");
    };
    Ok(pb::AgentClient::new(client))
}

async fn try_hybrid(path: &str) -> anyhow::Result<tokio::net::UnixStream> {
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(format!("CONNECT {}\n", pb::AGENT_VSOCK_PORT).as_bytes())
        .await?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        if s.read(&mut b).await? == 0 {
            bail!("hybrid vsock closed during CONNECT");
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!("hybrid vsock answered {:?}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

fn ctx() -> context::Context {
    context::with_timeout(60_000_000_000)
}

fn spec(args: &[&str], terminal: bool) -> Vec<u8> {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "smoke",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
    .to_string()
    .into_bytes()
}

struct Run {
    client: pb::AgentClient,
    start: Instant,
    failures: u32,
}

impl Run {
    fn step(&mut self, name: &str, t0: Instant, ok: bool, detail: &str) {
        let mark = if ok { "ok  " } else { "FAIL" };
        println!(
            "[{:>8.1} ms] {mark} {name} ({:.1} ms) {detail}",
            self.start.elapsed().as_secs_f64() * 1e3,
            t0.elapsed().as_secs_f64() * 1e3
        );
        if !ok {
            self.failures += 1;
        }
    }

    async fn read_all(&self, id: &str, exec: &str, stderr: bool) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let req = pb::ReadStreamRequest {
                container_id: id.into(),
                exec_id: exec.into(),
                len: 65536,
                ..Default::default()
            };
            let r = if stderr {
                self.client.read_stderr(ctx(), &req).await?
            } else {
                self.client.read_stdout(ctx(), &req).await?
            };
            if r.data.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&r.data);
        }
    }

    async fn wait(&self, id: &str, exec: &str) -> anyhow::Result<(i32, u32)> {
        let req = pb::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        let r = self.client.wait_process(ctx(), &req).await?;
        Ok((r.status, r.signal))
    }

    async fn create(&self, id: &str, args: &[&str], terminal: bool) -> ttrpc::Result<u32> {
        let req = pb::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec(args, terminal),
            ..Default::default()
        };
        Ok(self.client.create_container(ctx(), &req).await?.pid)
    }

    async fn start_c(&self, id: &str) -> ttrpc::Result<()> {
        let req = pb::StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.start_container(ctx(), &req).await.map(drop)
    }

    async fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let req = pb::RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.remove_container(ctx(), &req).await.map(drop)
    }
}

fn code(r: &ttrpc::Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(ttrpc::Error::RpcStatus(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => format!("{e}"),
    }
}

fn is_code(r: &ttrpc::Result<impl std::fmt::Debug>, c: ttrpc::Code) -> bool {
    matches!(r, Err(ttrpc::Error::RpcStatus(s)) if s.code() == c)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let t0 = Instant::now();
    let client = connect(&args).await?;
    let mut run = Run {
        client,
        start: t0,
        failures: 0,
    };

    // Check (retried: the agent may still be booting behind the vsock proxy).
    let t = Instant::now();
    let check = loop {
        let req = pb::CheckRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            ..Default::default()
        };
        match run
            .client
            .check(context::with_timeout(2_000_000_000), &req)
            .await
        {
            Ok(r) => break r,
            Err(e) if t.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
                run.client = connect(&args).await?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    run.step(
        "Check",
        t,
        check.protocol_version == pb::PROTOCOL_VERSION,
        &format!(
            "agent {} kernel {}",
            check.agent_version, check.kernel_release
        ),
    );

    let t = Instant::now();
    let r = run
        .client
        .create_sandbox(
            ctx(),
            &pb::CreateSandboxRequest {
                sandbox_id: "sb1".into(),
                hostname: "skerry-sb1".into(),
                shared_fs_tag: pb::SHARED_FS_TAG.into(),
                ..Default::default()
            },
        )
        .await;
    run.step("CreateSandbox", t, r.is_ok(), &code(&r));

    // c1: the basic flow.
    let t = Instant::now();
    let r = run
        .create(
            "c1",
            &[
                "sh",
                "-c",
                "cat /proc/version; echo hi; echo oops >&2; exit 3",
            ],
            false,
        )
        .await;
    run.step("CreateContainer c1", t, r.is_ok(), &code(&r));
    let t = Instant::now();
    let r = run.start_c("c1").await;
    run.step("StartContainer c1", t, r.is_ok(), &code(&r));
    let t = Instant::now();
    let out = run.read_all("c1", "", false).await?;
    let text = String::from_utf8_lossy(&out);
    run.step(
        "ReadStdout c1 to EOF",
        t,
        text.contains("Linux version") && text.ends_with("hi\n"),
        &format!("{text:?}"),
    );
    let err = run.read_all("c1", "", true).await?;
    run.step(
        "ReadStderr c1 to EOF",
        t,
        err == b"oops\n",
        &format!("{:?}", String::from_utf8_lossy(&err)),
    );
    let t = Instant::now();
    let w = run.wait("c1", "").await?;
    run.step("WaitProcess c1", t, w == (3, 0), &format!("{w:?}"));

    if full {
        full_scenario(&mut run).await?;
    }

    let t = Instant::now();
    let r = run
        .client
        .destroy_sandbox(ctx(), &pb::DestroySandboxRequest::new())
        .await;
    run.step("DestroySandbox", t, r.is_ok(), &code(&r));
    println!(
        "total {:.1} ms, {} failure(s)",
        t0.elapsed().as_secs_f64() * 1e3,
        run.failures
    );
    if run.failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn full_scenario(run: &mut Run) -> anyhow::Result<()> {
    use ttrpc::Code;
    // Errors.
    let t = Instant::now();
    let r = run.create("c1", &["true"], false).await;
    run.step(
        "duplicate id -> AlreadyExists",
        t,
        is_code(&r, Code::ALREADY_EXISTS),
        &code(&r),
    );
    let r = run.create("c2", &["/bin/nope"], false).await;
    run.step(
        "missing program -> InvalidArgument",
        t,
        is_code(&r, Code::INVALID_ARGUMENT),
        &code(&r),
    );
    let r = run.start_c("zz").await;
    run.step(
        "unknown id -> NotFound",
        t,
        is_code(&r, Code::NOT_FOUND),
        &code(&r),
    );
    let r = run.create("../x", &["true"], false).await;
    run.step(
        "bad id -> InvalidArgument",
        t,
        is_code(&r, Code::INVALID_ARGUMENT),
        &code(&r),
    );
    let r = run
        .client
        .check(
            ctx(),
            &pb::CheckRequest {
                protocol_version: 99,
                ..Default::default()
            },
        )
        .await;
    run.step(
        "Check v99 -> FailedPrecondition",
        t,
        is_code(&r, Code::FAILED_PRECONDITION),
        &code(&r),
    );
    let r = run.start_c("c1").await;
    run.step(
        "start stopped -> FailedPrecondition",
        t,
        is_code(&r, Code::FAILED_PRECONDITION),
        &code(&r),
    );
    let r = run.remove("c1").await;
    run.step("RemoveContainer c1", t, r.is_ok(), &code(&r));

    // c2: stdin.
    let t = Instant::now();
    let r = run.create("c2", &["cat"], false).await;
    run.step("CreateContainer c2 (cat)", t, r.is_ok(), &code(&r));
    let r = run.start_c("c2").await;
    run.step("StartContainer c2", t, r.is_ok(), &code(&r));
    let w = run
        .client
        .write_stdin(
            ctx(),
            &pb::WriteStreamRequest {
                container_id: "c2".into(),
                data: b"hello stdin\n".to_vec(),
                ..Default::default()
            },
        )
        .await;
    run.step(
        "WriteStdin c2",
        t,
        w.as_ref().is_ok_and(|w| w.len == 12),
        &code(&w),
    );
    let r = run
        .client
        .close_stdin(
            ctx(),
            &pb::CloseStdinRequest {
                container_id: "c2".into(),
                ..Default::default()
            },
        )
        .await;
    run.step("CloseStdin c2", t, r.is_ok(), &code(&r));
    let out = run.read_all("c2", "", false).await?;
    run.step(
        "ReadStdout c2 echoes stdin",
        t,
        out == b"hello stdin\n",
        &format!("{:?}", String::from_utf8_lossy(&out)),
    );
    let w = run.wait("c2", "").await?;
    run.step("WaitProcess c2", t, w == (0, 0), &format!("{w:?}"));

    // c3: signals.
    let t = Instant::now();
    let r = run.create("c3", &["sleep", "1000"], false).await;
    run.step("CreateContainer c3 (sleep)", t, r.is_ok(), &code(&r));
    let r = run.start_c("c3").await;
    run.step("StartContainer c3", t, r.is_ok(), &code(&r));
    let r = run
        .client
        .signal_process(
            ctx(),
            &pb::SignalProcessRequest {
                container_id: "c3".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .await;
    run.step("SignalProcess c3 SIGKILL", t, r.is_ok(), &code(&r));
    let w = run.wait("c3", "").await?;
    run.step(
        "WaitProcess c3 -> 137/9",
        t,
        w == (137, 9),
        &format!("{w:?}"),
    );
    let w2 = run.wait("c3", "").await?;
    run.step(
        "WaitProcess c3 again (stored)",
        t,
        w2 == w,
        &format!("{w2:?}"),
    );

    // c4: terminal.
    let t = Instant::now();
    let r = run
        .create(
            "c4",
            &[
                "sh",
                "-c",
                "stty size; tty >/dev/null && echo is-a-tty; echo done",
            ],
            true,
        )
        .await;
    run.step("CreateContainer c4 (terminal)", t, r.is_ok(), &code(&r));
    let r = run
        .client
        .tty_win_resize(
            ctx(),
            &pb::TtyWinResizeRequest {
                container_id: "c4".into(),
                rows: 40,
                columns: 100,
                ..Default::default()
            },
        )
        .await;
    run.step("TtyWinResize c4", t, r.is_ok(), &code(&r));
    let r = run.start_c("c4").await;
    run.step("StartContainer c4", t, r.is_ok(), &code(&r));
    let out = run.read_all("c4", "", false).await?;
    let text = String::from_utf8_lossy(&out);
    run.step(
        "ReadStdout c4 (pty)",
        t,
        text.contains("40 100") && text.contains("done"),
        &format!("{text:?}"),
    );
    let err = run.read_all("c4", "", true).await?;
    run.step("ReadStderr c4 is EOF", t, err.is_empty(), "");
    let w = run.wait("c4", "").await?;
    run.step("WaitProcess c4", t, w == (0, 0), &format!("{w:?}"));

    // c5: exec.
    let t = Instant::now();
    let r = run.create("c5", &["sleep", "1000"], false).await;
    run.step("CreateContainer c5", t, r.is_ok(), &code(&r));
    let r = run.start_c("c5").await;
    run.step("StartContainer c5", t, r.is_ok(), &code(&r));
    let proc_json = json!({
        "args": ["sh", "-c", "echo exec-ok; hostname; ps -o pid,comm | head -5; exit 7"],
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    });
    let r = run
        .client
        .exec_process(
            ctx(),
            &pb::ExecProcessRequest {
                container_id: "c5".into(),
                exec_id: "e1".into(),
                oci_process_json: proc_json.to_string().into_bytes(),
                ..Default::default()
            },
        )
        .await;
    run.step("ExecProcess c5/e1", t, r.is_ok(), &code(&r));
    let out = run.read_all("c5", "e1", false).await?;
    let text = String::from_utf8_lossy(&out);
    run.step(
        "ReadStdout c5/e1",
        t,
        text.starts_with("exec-ok\nsmoke\n"),
        &format!("{text:?}"),
    );
    let w = run.wait("c5", "e1").await?;
    run.step("WaitProcess c5/e1", t, w == (7, 0), &format!("{w:?}"));
    let r = run.remove("c5").await;
    run.step(
        "RemoveContainer c5 (running -> killed)",
        t,
        r.is_ok(),
        &code(&r),
    );
    let r = run.remove("c5").await;
    run.step(
        "RemoveContainer c5 again -> NotFound",
        t,
        is_code(&r, Code::NOT_FOUND),
        &code(&r),
    );

    // c6: output after exit is complete.
    let t = Instant::now();
    let r = run.create("c6", &["sh", "-c", "seq 1 10000"], false).await;
    run.step("CreateContainer c6 (seq)", t, r.is_ok(), &code(&r));
    let r = run.start_c("c6").await;
    run.step("StartContainer c6", t, r.is_ok(), &code(&r));
    let w = run.wait("c6", "").await?;
    let out = run.read_all("c6", "", false).await?;
    let expect: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    run.step(
        "wait then read: output complete",
        t,
        w == (0, 0) && out == expect.as_bytes(),
        &format!("{} bytes", out.len()),
    );
    Ok(())
}
