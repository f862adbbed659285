//! The per-sandbox monitor: the host process that owns the VM and the agent
//! connection between CLI invocations, carries the container's stdio, and
//! stands for the container on the host: it lives exactly as long as the
//! container process and exits with its status.

use std::{io::Write, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::UnixListener,
    sync::Mutex,
};
use tracing::{debug, error, info, warn};

use crate::{
    agent_client::AgentConn,
    bundle::Bundle,
    control::{self, ControlReply, ControlRequest},
    mounts::HostMounts,
    sandbox::{Sandbox, SandboxParams, SandboxPaths, VmLauncher},
    state::{ContainerState, ProcessId, StateStore, Status},
};

/// Exit status the monitor reports when the VM died under the container.
pub const VM_LOST_STATUS: i32 = 255;

/// How long to wait for the last output after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The container's stdio as the monitor holds it.
pub struct MonitorStdio {
    /// Fed to the container's stdin.
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    /// Receives the container's stdout.
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Receives the container's stderr.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
}

/// What the monitor needs to run one container.
pub struct MonitorOptions {
    /// Container (and sandbox) id; its state directory exists.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// The state store.
    pub store: StateStore,
    /// VM sizing and image.
    pub params: SandboxParams,
    /// Told "ok" or the error once the container is created, then closed.
    pub ready: Box<dyn Write + Send>,
    /// Forward SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2 received by this
    /// process to the container.
    pub forward_signals: bool,
}

/// Formats an error with its chain of causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the monitor to completion and returns the exit status it must exit
/// with: the container's, or non-zero if the container never ran.
pub async fn run(
    mut opts: MonitorOptions,
    launcher: &dyn VmLauncher,
    mounts: Box<dyn HostMounts>,
    stdio: MonitorStdio,
) -> i32 {
    let id = opts.id.clone();
    let store = opts.store.clone();
    let dir = store.dir(&id);
    let fail = |opts: &mut MonitorOptions, message: String| {
        error!(container = %id, "create failed: {message}");
        let _ = writeln!(opts.ready, "{message}");
        if let Err(e) = store.remove(&id) {
            error!(container = %id, error = %e, "removing state after failed create");
        }
        1
    };
    let bundle = match Bundle::load(&opts.bundle) {
        Ok(b) => b,
        Err(e) => return fail(&mut opts, error_chain(&e)),
    };
    let mut state = ContainerState {
        id: id.clone(),
        bundle: bundle.dir.clone(),
        status: Status::Creating,
        monitor: ProcessId::of(std::process::id()),
        vm_processes: vec![],
        exit_status: None,
        created: now_rfc3339(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
    };
    if let Err(e) = store.save(&state) {
        return fail(&mut opts, error_chain(&e));
    }
    let paths = SandboxPaths::new(&dir);
    let mut sandbox =
        match Sandbox::create(&id, &bundle, &opts.params, &paths, launcher, mounts).await {
            Ok(s) => s,
            Err(e) => return fail(&mut opts, error_chain(&e)),
        };
    state.status = Status::Created;
    state.vm_processes = sandbox
        .vm_pids()
        .into_iter()
        .filter_map(ProcessId::of)
        .collect();
    let listener = UnixListener::bind(dir.join(control::SOCKET_NAME));
    let saved = store.save(&state);
    let listener = match (listener, saved) {
        (Ok(l), Ok(())) => l,
        (Err(e), _) => {
            sandbox.shutdown().await;
            return fail(&mut opts, format!("control socket: {e}"));
        }
        (_, Err(e)) => {
            sandbox.shutdown().await;
            return fail(&mut opts, error_chain(&e));
        }
    };
    let _ = writeln!(opts.ready, "ok");
    drop(opts.ready);

    let agent = sandbox.agent().clone();
    let state = Arc::new(Mutex::new(state));
    let server = tokio::spawn(serve_control(
        listener,
        agent.clone(),
        Arc::clone(&state),
        store.clone(),
    ));
    let stdout = tokio::spawn(pump_output(agent.clone(), id.clone(), false, stdio.stdout));
    let stderr = tokio::spawn(pump_output(agent.clone(), id.clone(), true, stdio.stderr));
    let stdin = tokio::spawn(pump_input(agent.clone(), id.clone(), stdio.stdin));
    let signals = opts
        .forward_signals
        .then(|| tokio::spawn(forward_signals(agent.clone(), id.clone())));

    let status = match sandbox.wait().await {
        Ok(exit) => {
            info!(container = %id, status = exit.status, signal = exit.signal, "container exited");
            let drain = async {
                let _ = stdout.await;
                let _ = stderr.await;
            };
            if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
                warn!(container = %id, "container output did not end; dropping the rest");
            }
            exit.status
        }
        Err(e) => {
            error!(container = %id, error = %error_chain(&e), "container lost");
            VM_LOST_STATUS
        }
    };
    stdin.abort();
    server.abort();
    if let Some(s) = signals {
        s.abort();
    }
    {
        let mut state = state.lock().await;
        state.status = Status::Stopped;
        state.exit_status = Some(status);
        if let Err(e) = store.save(&state) {
            error!(container = %id, error = %e, "recording exit status");
        }
    }
    sandbox.shutdown().await;
    let _ = std::fs::remove_file(dir.join(control::SOCKET_NAME));
    status
}

async fn serve_control(
    listener: UnixListener,
    agent: AgentConn,
    state: Arc<Mutex<ContainerState>>,
    store: StateStore,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        let state = Arc::clone(&state);
        let store = store.clone();
        tokio::spawn(async move {
            let reply = match control::read_line::<ControlRequest>(&mut stream).await {
                Ok(req) => handle(req, &agent, &state, &store).await,
                Err(e) => Err(format!("bad control request: {e}")),
            };
            let reply = ControlReply { error: reply.err() };
            let _ = control::write_line(&mut stream, &reply).await;
        });
    }
}

async fn handle(
    req: ControlRequest,
    agent: &AgentConn,
    state: &Mutex<ContainerState>,
    store: &StateStore,
) -> Result<(), String> {
    debug!(?req, "control request");
    let mut state = state.lock().await;
    let id = state.id.clone();
    match req {
        ControlRequest::Start => {
            if state.status != Status::Created {
                return Err(format!(
                    "cannot start container {id:?}: it is {}, not created",
                    state.status
                ));
            }
            agent
                .start_container(&id)
                .await
                .map_err(|e| error_chain(&e))?;
            state.status = Status::Running;
            store.save(&state).map_err(|e| error_chain(&e))
        }
        ControlRequest::Kill { signal, all } => {
            if state.status == Status::Stopped {
                return Err(format!("container {id:?} is not running"));
            }
            agent
                .signal(&id, signal, all)
                .await
                .map_err(|e| error_chain(&e))
        }
    }
}

/// Copies one output stream of the container to `out` until EOF.
async fn pump_output(
    agent: AgentConn,
    id: String,
    stderr: bool,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
) {
    loop {
        match agent.read_output(&id, stderr).await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
                    // The reader went away; keep draining so the guest never blocks.
                    continue;
                }
            }
            Err(e) => {
                debug!(container = %id, stderr, error = %e, "output stream ended");
                break;
            }
        }
    }
}

/// Copies `input` to the container's stdin; closes it at EOF.
async fn pump_input(agent: AgentConn, id: String, mut input: Box<dyn AsyncRead + Send + Unpin>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            match agent.write_stdin(&id, data).await {
                Ok(0) => return,
                Ok(taken) => data = &data[taken..],
                Err(e) => {
                    debug!(container = %id, error = %e, "stdin closed by the guest");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(&id).await {
        debug!(container = %id, error = %e, "closing stdin");
    }
}

/// Forwards the signals a supervisor sends to the monitor pid.
async fn forward_signals(agent: AgentConn, id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(16);
    for kind in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(kind.as_raw_value()).await.is_err() {
                    break;
                }
            }
        });
    }
    while let Some(sig) = rx.recv().await {
        info!(container = %id, signal = sig, "forwarding signal");
        if let Err(e) = agent.signal(&id, sig as u32, false).await {
            warn!(container = %id, error = %e, "forwarding signal");
        }
    }
}

/// The current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::state::StateError::Io {
            id: "c1".into(),
            path: "/x".into(),
            source: inner,
        };
        assert_eq!(
            error_chain(&outer),
            "state of container \"c1\": /x: disk on fire"
        );
    }
}
