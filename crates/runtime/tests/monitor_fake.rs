//! Tier 1: the monitor driven end to end against a fake VM and a fake agent
//! speaking the real ttrpc protocol over a Unix socket. No root, no KVM.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use async_trait::async_trait;
use skerry_protocol as proto;
use skerry_runtime::{
    bundle::Bundle,
    config::{HypervisorConfig, PolicyConfig},
    control::{self, ControlRequest},
    hypervisor::cgroup::HostOverhead,
    hypervisor::{HypervisorError, Vm, VmExit, VmSpec},
    monitor::{self, MonitorOptions},
    mounts::{HostMounts, MountPoint},
    relay::{ProcessStdio, RelayOptions},
    sandbox::{Sandbox, SandboxParams, SandboxPaths, VmLauncher},
    state::{StateStore, Status},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::{mpsc, watch, Mutex},
};
use ttrpc::asynchronous::TtrpcContext;

/// What a hostile agent repeats in its error: a colour, a window title,
/// a bell, a line break and a bidi override.
const HOSTILE_LINE: &str = "\x1b[31m\x1b]0;pwned\x07\nowned\u{202e}!";

/// A scripted container process inside the fake agent.
struct FakeProc {
    args: Vec<String>,
    stdout_tx: StdMutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    stdout_rx: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    stdin_tx: StdMutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    stdin_rx: StdMutex<Option<mpsc::UnboundedReceiver<Vec<u8>>>>,
    signal_tx: mpsc::UnboundedSender<u32>,
    signal_rx: StdMutex<Option<mpsc::UnboundedReceiver<u32>>>,
    exit: watch::Sender<Option<i32>>,
}

struct FakeAgent {
    procs: StdMutex<HashMap<String, Arc<FakeProc>>>,
    /// The "VM" is down: set by DestroySandbox (power off) or FakeVm::stop.
    vm_down: Arc<watch::Sender<bool>>,
}

fn status(code: ttrpc::Code, msg: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

impl FakeAgent {
    fn get(&self, id: &str) -> ttrpc::Result<Arc<FakeProc>> {
        self.procs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| status(ttrpc::Code::NOT_FOUND, "no such container"))
    }
}

#[async_trait]
impl proto::Agent for FakeAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        req: proto::CheckRequest,
    ) -> ttrpc::Result<proto::CheckResponse> {
        assert_eq!(req.protocol_version, proto::PROTOCOL_VERSION);
        Ok(proto::CheckResponse {
            protocol_version: proto::PROTOCOL_VERSION,
            kernel_release: "6.1.0-fake".into(),
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        _: proto::CreateSandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        Ok(proto::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: proto::DestroySandboxRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.vm_down.send_replace(true);
        Ok(proto::Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: proto::CreateContainerRequest,
    ) -> ttrpc::Result<proto::CreateContainerResponse> {
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&req.oci_spec_json)
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, &e.to_string()))?;
        let args = spec.process().as_ref().unwrap().args().clone().unwrap();
        match args[0].as_str() {
            "fail-create" => {
                return Err(status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    "container c: process.args[0] not found",
                ))
            }
            // A hostile guest: a 3 MiB error of terminal escape sequences.
            "hostile-error" => {
                return Err(status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    &HOSTILE_LINE.repeat((3 << 20) / HOSTILE_LINE.len()),
                ))
            }
            // A hostile guest that never answers.
            "silent" => std::future::pending::<()>().await,
            _ => {}
        }
        let (stdout_tx, stdout_rx) = mpsc::unbounded_channel();
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        let proc = FakeProc {
            args,
            stdout_tx: StdMutex::new(Some(stdout_tx)),
            stdout_rx: Mutex::new(stdout_rx),
            stdin_tx: StdMutex::new(Some(stdin_tx)),
            stdin_rx: StdMutex::new(Some(stdin_rx)),
            signal_tx,
            signal_rx: StdMutex::new(Some(signal_rx)),
            exit: watch::channel(None).0,
        };
        self.procs
            .lock()
            .unwrap()
            .insert(req.container_id, Arc::new(proc));
        Ok(proto::CreateContainerResponse {
            pid: 7,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: proto::StartContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let p = self.get(&req.container_id)?;
        tokio::spawn(async move {
            let out = p.stdout_tx.lock().unwrap().take().unwrap();
            let mut stdin = p.stdin_rx.lock().unwrap().take().unwrap();
            let mut signals = p.signal_rx.lock().unwrap().take().unwrap();
            let code = match p.args[0].as_str() {
                "echo" => {
                    out.send(format!("{}\n", p.args[1..].join(" ")).into_bytes())
                        .unwrap();
                    0
                }
                "exit" => p.args[1].parse().unwrap(),
                "cat" => {
                    while let Some(chunk) = stdin.recv().await {
                        out.send(chunk).unwrap();
                    }
                    0
                }
                "sleep" => 128 + signals.recv().await.unwrap() as i32,
                other => panic!("fake agent cannot run {other}"),
            };
            drop(out);
            p.exit.send_replace(Some(code));
        });
        Ok(proto::Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: proto::RemoveContainerRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.procs
            .lock()
            .unwrap()
            .remove(&req.container_id)
            .ok_or_else(|| status(ttrpc::Code::NOT_FOUND, "no such container"))?;
        Ok(proto::Empty::new())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: proto::SignalProcessRequest,
    ) -> ttrpc::Result<proto::Empty> {
        let _ = self.get(&req.container_id)?.signal_tx.send(req.signal);
        Ok(proto::Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: proto::WaitProcessRequest,
    ) -> ttrpc::Result<proto::WaitProcessResponse> {
        let p = self.get(&req.container_id)?;
        let mut rx = p.exit.subscribe();
        let code = *rx.wait_for(|c| c.is_some()).await.unwrap();
        let code = code.unwrap();
        Ok(proto::WaitProcessResponse {
            status: code,
            signal: if code > 128 { (code - 128) as u32 } else { 0 },
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: proto::WriteStreamRequest,
    ) -> ttrpc::Result<proto::WriteStreamResponse> {
        let p = self.get(&req.container_id)?;
        let len = req.data.len() as u32;
        if let Some(tx) = p.stdin_tx.lock().unwrap().as_ref() {
            let _ = tx.send(req.data);
        }
        Ok(proto::WriteStreamResponse {
            len,
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: proto::CloseStdinRequest,
    ) -> ttrpc::Result<proto::Empty> {
        self.get(&req.container_id)?.stdin_tx.lock().unwrap().take();
        Ok(proto::Empty::new())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: proto::ReadStreamRequest,
    ) -> ttrpc::Result<proto::ReadStreamResponse> {
        let p = self.get(&req.container_id)?;
        let data = p.stdout_rx.lock().await.recv().await.unwrap_or_default();
        Ok(proto::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: proto::ReadStreamRequest,
    ) -> ttrpc::Result<proto::ReadStreamResponse> {
        self.get(&req.container_id)?;
        Ok(proto::ReadStreamResponse::default())
    }
}

/// A VM whose "guest" is the fake agent on a Unix socket.
struct FakeVm {
    agent_socket: PathBuf,
    down: Arc<watch::Sender<bool>>,
}

#[async_trait]
impl Vm for FakeVm {
    async fn connect(&self, _port: u32) -> Result<UnixStream, HypervisorError> {
        Ok(UnixStream::connect(&self.agent_socket).await.unwrap())
    }
    fn vsock_path(&self) -> PathBuf {
        self.agent_socket.clone()
    }
    fn pids(&self) -> Vec<u32> {
        vec![]
    }
    async fn wait(&mut self) -> VmExit {
        let mut rx = self.down.subscribe();
        let _ = rx.wait_for(|s| *s).await;
        VmExit::Poweroff
    }
    async fn stop(&mut self) -> Result<(), HypervisorError> {
        self.down.send_replace(true);
        Ok(())
    }
}

struct FakeLauncher {
    agent_socket: PathBuf,
    vm_down: Arc<watch::Sender<bool>>,
}

#[async_trait]
impl VmLauncher for FakeLauncher {
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        assert!(spec.run_dir.is_dir());
        Ok(Box::new(FakeVm {
            agent_socket: self.agent_socket.clone(),
            down: Arc::clone(&self.vm_down),
        }))
    }
}

/// Records mount calls instead of making them.
#[derive(Clone, Default)]
struct RecordingMounts(Arc<StdMutex<Vec<String>>>);

impl HostMounts for RecordingMounts {
    fn bind(&self, src: &Path, dst: &MountPoint, read_only: bool) -> std::io::Result<()> {
        let ro = if read_only { " ro" } else { "" };
        self.0.lock().unwrap().push(format!(
            "bind {} {}{ro}",
            src.display(),
            dst.path().display()
        ));
        Ok(())
    }
    /// The view is a symlink to the skeleton here (there is no root to
    /// mount a tmpfs and bind it read-only).
    fn mount_share(&self, rw: &Path, view: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(view)?;
        std::os::unix::fs::symlink(rw, view)?;
        self.0
            .lock()
            .unwrap()
            .push(format!("mount-share {}", view.display()));
        Ok(())
    }
    fn unmount(&self, dst: &MountPoint) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("unmount {}", dst.path().display()));
        Ok(())
    }
    fn unmount_path(&self, dir: &Path) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("unmount {}", dir.display()));
        Ok(())
    }
}

/// How the agent's end of the wire misbehaves when the host calls
/// CreateContainer (in ways a ttrpc server cannot be made to).
#[derive(Clone, Copy, Debug)]
enum WireFault {
    /// A header declaring a 1 GiB reply, then bytes at a steady pace.
    Oversized,
    /// A frame of sane length whose payload is not a ttrpc Response.
    Garbage,
    /// A well-formed Response whose payload is not a CreateContainerResponse.
    WrongMessage,
    /// A frame of a message type that does not exist.
    UnknownType,
    /// A well-formed reply on a stream the host never opened.
    WrongStream,
    /// Reads the request and hangs up.
    Hangup,
    /// A 4 MiB reply (the most ttrpc takes), one byte a second.
    Trickle,
}

/// What the wire fault saw of the host.
#[derive(Default)]
struct WireLog {
    /// Bytes of a hostile reply the host took (socket buffers included).
    taken: std::sync::atomic::AtomicUsize,
    /// The host closed its connection (or the fault did).
    closed: watch::Sender<bool>,
}

/// Sits between the runtime and the fake agent, forwarding frames until
/// CreateContainer, which it answers with `fault` itself.
async fn wire_proxy(host: UnixStream, agent: PathBuf, fault: WireFault, log: Arc<WireLog>) {
    use ttrpc::proto::{Codec, GenMessage, MessageHeader, Request, Response};
    let (mut host_r, host_w) = host.into_split();
    let host_w = Arc::new(Mutex::new(host_w));
    let (mut agent_r, mut agent_w) = UnixStream::connect(&agent).await.unwrap().into_split();
    let replies = tokio::spawn({
        let host_w = Arc::clone(&host_w);
        async move {
            while let Ok(msg) = GenMessage::read_from(&mut agent_r).await {
                if msg.write_to(&mut *host_w.lock().await).await.is_err() {
                    break;
                }
            }
        }
    });
    // Until the host hangs up (or the fault does).
    while let Ok(msg) = GenMessage::read_from(&mut host_r).await {
        let req = Request::decode(&msg.payload).unwrap();
        if req.method != "CreateContainer" {
            msg.write_to(&mut agent_w).await.unwrap();
            continue;
        }
        let id = msg.header.stream_id;
        let frame = |header: MessageHeader, payload: Vec<u8>| GenMessage { header, payload };
        let mut w = host_w.lock().await;
        let sent = match fault {
            WireFault::Hangup => break,
            WireFault::Garbage => {
                frame(MessageHeader::new_response(id, 64), vec![0xff; 64])
                    .write_to(&mut *w)
                    .await
            }
            WireFault::WrongMessage | WireFault::WrongStream => {
                let (id, payload) = match fault {
                    // The host only opens odd streams.
                    WireFault::WrongStream => {
                        let resp = proto::CreateContainerResponse {
                            pid: 7,
                            ..Default::default()
                        };
                        (id + 1, Codec::encode(&resp).unwrap())
                    }
                    _ => (id, vec![0xff; 16]),
                };
                let resp = Response {
                    payload,
                    ..Default::default()
                };
                let bytes = Codec::encode(&resp).unwrap();
                frame(MessageHeader::new_response(id, bytes.len() as u32), bytes)
                    .write_to(&mut *w)
                    .await
            }
            WireFault::UnknownType => {
                let mut header = MessageHeader::new_response(id, 0);
                header.type_ = 0x7f;
                frame(header, vec![]).write_to(&mut *w).await
            }
            WireFault::Oversized | WireFault::Trickle => {
                let (len, chunk, pace) = match fault {
                    WireFault::Oversized => (1 << 30, 64 << 10, Duration::from_millis(10)),
                    _ => (4 << 20, 1, Duration::from_secs(1)),
                };
                let header: Vec<u8> = MessageHeader::new_response(id, len).into();
                // The header, then zeros, `chunk` bytes a `pace`, until the
                // host stops reading and hangs up.
                let mut bytes = header.into_iter().chain(std::iter::repeat(0));
                loop {
                    let piece: Vec<u8> = bytes.by_ref().take(chunk).collect();
                    if w.write_all(&piece).await.is_err() {
                        break;
                    }
                    log.taken
                        .fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(pace).await;
                }
                break;
            }
        };
        sent.unwrap();
    }
    replies.abort();
    log.closed.send_replace(true);
}

struct Harness {
    _tmp: tempfile::TempDir,
    store: StateStore,
    /// The containers started, whose VM run dirs (under the real
    /// `VM_RUN_BASE` when the tests run as root) go with the harness: the
    /// tests end without the `delete` that removes them.
    started: StdMutex<Vec<String>>,
    bundle: PathBuf,
    launcher: FakeLauncher,
    mounts: RecordingMounts,
    /// Set when the guest's end of the wire is a [`wire_proxy`].
    wire: Option<Arc<WireLog>>,
}

async fn harness(args: &[&str]) -> Harness {
    harness_with_wire(args, None).await
}

/// A harness whose agent connection passes through [`wire_proxy`] with `fault`.
async fn harness_with_wire(args: &[&str], fault: Option<WireFault>) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    for prog in [
        "echo",
        "exit",
        "cat",
        "sleep",
        "fail-create",
        "hostile-error",
        "silent",
    ] {
        let p = bundle.join("rootfs/bin").join(prog);
        std::fs::write(&p, "").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&p).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"cwd": "/", "args": args, "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
        "annotations": {"org.example/a": "b"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]},
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let agent_socket = tmp.path().join("agent.sock");
    let vm_down = Arc::new(watch::channel(false).0);
    let agent = FakeAgent {
        procs: StdMutex::default(),
        vm_down: Arc::clone(&vm_down),
    };
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&format!("unix://{}", agent_socket.display()))
        .unwrap()
        .register_service(proto::create_agent(Arc::new(agent)));
    server.start().await.unwrap();
    // Keep the server alive for the whole test.
    std::mem::forget(server);
    let (agent_socket, wire) = match fault {
        None => (agent_socket, None),
        Some(fault) => {
            let wire_socket = tmp.path().join("wire.sock");
            let listener = tokio::net::UnixListener::bind(&wire_socket).unwrap();
            let log = Arc::new(WireLog::default());
            let proxy_log = Arc::clone(&log);
            tokio::spawn(async move {
                while let Ok((host, _)) = listener.accept().await {
                    let log = Arc::clone(&proxy_log);
                    tokio::spawn(wire_proxy(host, agent_socket.clone(), fault, log));
                }
            });
            (wire_socket, Some(log))
        }
    };
    Harness {
        store: StateStore::new(tmp.path().join("root")),
        bundle,
        launcher: FakeLauncher {
            agent_socket,
            vm_down,
        },
        mounts: RecordingMounts::default(),
        wire,
        started: StdMutex::default(),
        _tmp: tmp,
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        for id in started.iter() {
            let _ = std::fs::remove_dir_all(SandboxPaths::new(&self.store, id).run_dir);
        }
    }
}

struct Running {
    monitor: tokio::task::JoinHandle<i32>,
    ready: String,
    stdin: tokio::io::DuplexStream,
    stdout: tokio::io::DuplexStream,
}

async fn start_monitor(h: &Harness, id: &str) -> Running {
    start_monitor_with(h, id, PolicyConfig::default()).await
}

async fn start_monitor_with(h: &Harness, id: &str, policy: PolicyConfig) -> Running {
    h.store.create_dir(id).unwrap();
    h.started.lock().unwrap().push(id.to_string());
    let (mut ready_r, ready_w) = std::io::pipe().unwrap();
    let (stdin, monitor_stdin) = tokio::io::duplex(1 << 16);
    let (monitor_stdout, stdout) = tokio::io::duplex(1 << 16);
    let opts = MonitorOptions {
        id: id.into(),
        bundle: h.bundle.clone(),
        store: h.store.clone(),
        params: params(policy),
        ready: Box::new(ready_w),
        relay: RelayOptions::default(),
    };
    let stdio = ProcessStdio {
        stdin: Box::new(monitor_stdin),
        stdout: Box::new(monitor_stdout),
        stderr: Box::new(tokio::io::sink()),
    };
    let launcher = FakeLauncher {
        agent_socket: h.launcher.agent_socket.clone(),
        vm_down: Arc::clone(&h.launcher.vm_down),
    };
    let mounts = h.mounts.clone();
    let monitor =
        tokio::spawn(async move { monitor::run(opts, &launcher, Box::new(mounts), stdio).await });
    let ready = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        ready_r.read_to_string(&mut s).unwrap();
        s
    })
    .await
    .unwrap();
    Running {
        monitor,
        ready,
        stdin,
        stdout,
    }
}

fn params(policy: PolicyConfig) -> SandboxParams {
    SandboxParams {
        kernel: "/k".into(),
        initrd: "/i".into(),
        kernel_params: String::new(),
        vcpus: 1,
        memory_mib: 128,
        boot_timeout: Duration::from_secs(5),
        boot_attempts: 1,
        console_log_max: 1 << 20,
        policy,
        host_overhead: HostOverhead::from_config(&Default::default()),
        host_cgroup: None,
        vm_uid_range: HypervisorConfig::default().vm_uid_range,
    }
}

fn socket(h: &Harness, id: &str) -> PathBuf {
    h.store.dir(id).join(control::SOCKET_NAME)
}

#[tokio::test]
async fn output_and_exit_status_come_back_and_nothing_is_left_mounted() {
    let h = harness(&["echo", "hello", "from", "guest"]).await;
    let mut r = start_monitor(&h, "c1").await;
    assert_eq!(r.ready, "ok\n");
    let state = h.store.load("c1").unwrap();
    assert_eq!(state.status, Status::Created);
    assert_eq!(state.annotations["org.example/a"], "b");
    control::call(&socket(&h, "c1"), &ControlRequest::Start)
        .await
        .unwrap();
    let mut out = String::new();
    r.stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hello from guest\n");
    assert_eq!(r.monitor.await.unwrap(), 0);
    let state = h.store.load("c1").unwrap();
    assert_eq!(
        (state.status, state.exit_status),
        (Status::Stopped, Some(0))
    );
    assert!(!socket(&h, "c1").exists(), "control socket left behind");
    assert!(*h.launcher.vm_down.borrow(), "guest was not powered off");
    let calls = h.mounts.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls[0].starts_with("mount-share ") && calls[0].ends_with("c1/shared"));
    assert!(calls[1].starts_with("bind ") && calls[2].starts_with("unmount "));
    assert!(calls[2].ends_with("c1/shared/c1/rootfs"), "{calls:?}");
    let dir = h.store.dir("c1");
    assert_eq!(
        calls[3],
        format!("unmount {}", dir.join("shared").display())
    );
    assert_eq!(
        calls[4],
        format!("unmount {}", dir.join("share-rw").display())
    );
}

#[tokio::test]
async fn nonzero_exit_status_is_the_monitors() {
    let h = harness(&["exit", "3"]).await;
    let r = start_monitor(&h, "c3").await;
    control::call(&socket(&h, "c3"), &ControlRequest::Start)
        .await
        .unwrap();
    assert_eq!(r.monitor.await.unwrap(), 3);
}

#[tokio::test]
async fn stdin_reaches_the_container() {
    let h = harness(&["cat"]).await;
    let mut r = start_monitor(&h, "cat").await;
    control::call(&socket(&h, "cat"), &ControlRequest::Start)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    r.stdin.write_all(&payload).await.unwrap();
    r.stdin.shutdown().await.unwrap();
    drop(r.stdin);
    let mut out = Vec::new();
    r.stdout.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, payload);
    assert_eq!(r.monitor.await.unwrap(), 0);
}

#[tokio::test]
async fn kill_and_state_transitions() {
    let h = harness(&["sleep"]).await;
    let r = start_monitor(&h, "k").await;
    control::call(&socket(&h, "k"), &ControlRequest::Start)
        .await
        .unwrap();
    assert_eq!(h.store.load("k").unwrap().status, Status::Running);
    let err = control::call(&socket(&h, "k"), &ControlRequest::Start)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot start container \"k\": it is running"),
        "{err}"
    );
    control::call(
        &socket(&h, "k"),
        &ControlRequest::Kill {
            signal: 9,
            all: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(r.monitor.await.unwrap(), 137);
    assert_eq!(h.store.load("k").unwrap().exit_status, Some(137));
}

#[tokio::test]
async fn agent_refusal_fails_create_and_leaves_nothing() {
    let h = harness(&["fail-create"]).await;
    let r = start_monitor(&h, "bad").await;
    assert!(r.ready.contains("process.args[0] not found"), "{}", r.ready);
    assert_eq!(r.monitor.await.unwrap(), 1);
    assert!(!h.store.dir("bad").exists(), "state dir left behind");
    let calls = h.mounts.0.lock().unwrap().clone();
    assert!(calls.last().unwrap().starts_with("unmount "), "{calls:?}");
}

/// A guest agent answering with megabytes of escape sequences: create fails
/// with a bounded error that carries no control character to a log or a
/// terminal, and nothing is left.
#[tokio::test]
async fn a_hostile_agents_error_is_bounded_and_escaped() {
    let h = harness(&["hostile-error"]).await;
    let r = start_monitor(&h, "hostile").await;
    assert!(r.ready.len() < 8192, "{} bytes", r.ready.len());
    assert!(r.ready.contains("bytes dropped"), "{}", r.ready);
    assert!(r.ready.contains("\\x1b[31m"), "{}", r.ready);
    assert!(
        !r.ready
            .trim_end()
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "{:?}",
        r.ready
    );
    assert_eq!(r.monitor.await.unwrap(), 1);
    assert!(!h.store.dir("hostile").exists(), "state dir left behind");
}

/// A guest agent that never answers: create fails once the call's timeout
/// has passed, and nothing is left.
#[tokio::test]
async fn a_silent_agent_fails_create_within_its_timeout() {
    let h = harness(&["silent"]).await;
    let started = std::time::Instant::now();
    let r = start_monitor(&h, "silent").await;
    assert!(r.ready.contains("agent CreateContainer"), "{}", r.ready);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.monitor.await.unwrap(), 1);
    assert!(!h.store.dir("silent").exists(), "state dir left behind");
}

#[tokio::test]
async fn policy_floor_is_enforced_by_the_sandbox_itself() {
    let h = harness(&["echo", "hi"]).await;
    let policy = PolicyConfig {
        require_seccomp: true,
        ..Default::default()
    };
    let r = start_monitor_with(&h, "pol", policy).await;
    assert!(r.ready.contains("policy: linux.seccomp"), "{}", r.ready);
    assert_eq!(r.monitor.await.unwrap(), 1);
    assert!(!h.store.dir("pol").exists(), "state dir left behind");
    assert!(
        h.mounts.0.lock().unwrap().is_empty(),
        "mounted before the check"
    );
}

#[tokio::test]
async fn one_sandbox_holds_several_containers_and_undoes_each_share() {
    let h = harness(&["sleep", "100"]).await;
    let bundle = Bundle::load(&h.bundle).unwrap();
    let paths = SandboxPaths::new(&h.store, "pod");
    let sandbox = Sandbox::boot(
        "pod",
        "pod",
        None,
        &params(PolicyConfig::default()),
        &paths,
        &h.launcher,
        Box::new(h.mounts.clone()),
    )
    .await
    .unwrap();
    sandbox.add_container("c1", &bundle).await.unwrap();
    sandbox.add_container("c2", &bundle).await.unwrap();
    sandbox.remove_container("c2").await.unwrap();
    let err = sandbox
        .remove_container("c2")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such container"), "{err}");
    assert!(!*h.launcher.vm_down.borrow());
    sandbox.shutdown().await;
    assert!(*h.launcher.vm_down.borrow(), "guest was not powered off");
    let shared = &paths.shared_dir;
    let rootfs = |id: &str| shared.join(id).join("rootfs").display().to_string();
    let calls = h.mounts.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            format!("mount-share {}", shared.display()),
            format!("bind {} {}", bundle.rootfs.display(), rootfs("c1")),
            format!("bind {} {}", bundle.rootfs.display(), rootfs("c2")),
            format!("unmount {}", rootfs("c2")),
            format!("unmount {}", rootfs("c1")),
            format!("unmount {}", shared.display()),
            format!("unmount {}", paths.share_rw.display()),
        ]
    );
}

/// Creates a container whose agent answers CreateContainer with `fault`:
/// create fails within `within` with an error naming the call and `cause`,
/// the monitor exits 1, no state is left, and the host lets go of the
/// connection. (Where the connection is gone, DestroySandbox cannot power
/// the guest off: 5 s of the time is the shutdown grace before the kill.)
async fn create_fails_through(fault: WireFault, within: Duration, cause: &str) -> Arc<WireLog> {
    let h = harness_with_wire(&["echo", "hi"], Some(fault)).await;
    let id = format!("{fault:?}").to_lowercase();
    let started = std::time::Instant::now();
    let r = start_monitor(&h, &id).await;
    let elapsed = started.elapsed();
    assert!(
        r.ready.starts_with("agent CreateContainer: "),
        "{fault:?}: {}",
        r.ready
    );
    assert!(r.ready.contains(cause), "{fault:?}: {}", r.ready);
    assert!(r.ready.len() < 1024, "{fault:?}: {} bytes", r.ready.len());
    assert!(
        elapsed < within,
        "{fault:?}: create failed after {elapsed:?}"
    );
    assert_eq!(r.monitor.await.unwrap(), 1);
    assert!(!h.store.dir(&id).exists(), "state dir left behind");
    let log = h.wire.clone().unwrap();
    let mut closed = log.closed.subscribe();
    tokio::time::timeout(Duration::from_secs(5), closed.wait_for(|c| *c))
        .await
        .unwrap_or_else(|_| panic!("{fault:?}: the host kept the agent connection"))
        .unwrap();
    log
}

/// A reply declaring 1 GiB fails the call at its header: the host neither
/// allocates nor reads (and discards) what the header declares.
#[tokio::test]
async fn an_oversized_reply_fails_the_call_at_its_header() {
    let log = create_fails_through(
        WireFault::Oversized,
        Duration::from_secs(15),
        "exceeds the 4194304 byte limit",
    )
    .await;
    let taken = log.taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(taken < 16 << 20, "the host took {taken} bytes of the reply");
}

/// Bytes that are no ttrpc Response, a Response that holds no
/// CreateContainerResponse, a frame of no known type: each fails the call
/// at once.
#[tokio::test]
async fn a_malformed_reply_fails_the_call_at_once() {
    for (fault, cause) in [
        (WireFault::Garbage, "Unpack response error"),
        (WireFault::WrongMessage, "Unpack get error"),
        (WireFault::UnknownType, "malformed packet"),
    ] {
        create_fails_through(fault, Duration::from_secs(10), cause).await;
    }
}

/// An agent hanging up mid-call fails the call when the close is seen, not
/// at the call's timeout.
#[tokio::test]
async fn an_agent_hanging_up_mid_call_fails_it_at_once() {
    create_fails_through(
        WireFault::Hangup,
        Duration::from_secs(15),
        "connection failed",
    )
    .await;
}

/// A reply on a stream the host never opened is ignored; the call's timeout
/// ends it.
#[tokio::test]
async fn a_reply_on_a_foreign_stream_leaves_the_call_to_its_timeout() {
    create_fails_through(
        WireFault::WrongStream,
        Duration::from_secs(45),
        "deadline elapsed",
    )
    .await;
}

/// A 4 MiB reply at one byte a second: the call's timeout ends it.
#[tokio::test]
async fn a_trickling_agent_is_cut_off_by_the_call_timeout() {
    let log = create_fails_through(
        WireFault::Trickle,
        Duration::from_secs(45),
        "deadline elapsed",
    )
    .await;
    let taken = log.taken.load(std::sync::atomic::Ordering::Relaxed);
    assert!(taken < 64, "{taken} bytes in 30 s");
}
