//! The per-sandbox monitor: the host process that owns the VM and the agent
//! connection between CLI invocations, carries the container's stdio, and
//! stands for the container on the host: it lives exactly as long as the
//! container process and exits with its status.

use std::{io::Write, path::PathBuf, sync::Arc};

use nix::sys::signal::Signal;
use tokio::{net::UnixListener, sync::Mutex};
use tracing::{debug, error, info};

use crate::{
    agent_client::{AgentConn, Proc},
    bundle::Bundle,
    config::Isolation,
    control::{self, ControlReply, ControlRequest},
    hooks::{run_hooks, HookKind},
    lifecycle::{bundle_hooks, spec_hooks},
    mounts::HostMounts,
    relay::{ProcessStdio, Relay, RelayOptions},
    sandbox::{RecordingLauncher, Sandbox, SandboxParams, SandboxPaths, VmLauncher},
    state::{ContainerState, ProcessId, StateStore, Status},
};

/// Exit status the monitor reports when the VM died under the container.
pub const VM_LOST_STATUS: i32 = 255;

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
    /// Signal forwarding and terminal size following.
    pub relay: RelayOptions,
}

/// Formats an error with its chain of causes on one line.
pub use skerry_container::error_chain;

/// Runs the monitor to completion and returns the exit status it must exit
/// with: the container's, or non-zero if the container never ran.
pub async fn run(
    mut opts: MonitorOptions,
    launcher: &dyn VmLauncher,
    mounts: Box<dyn HostMounts>,
    stdio: ProcessStdio,
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
        let _ = std::fs::remove_dir_all(SandboxPaths::new(&store, &id).run_dir);
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
        agent_socket: None,
        exit_status: None,
        created: now_rfc3339(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        isolation: Isolation::Vm,
    };
    if let Err(e) = store.save(&state) {
        return fail(&mut opts, error_chain(&e));
    }
    let paths = SandboxPaths::new(&store, &id);
    let launcher = RecordingLauncher {
        inner: launcher,
        store: &store,
        id: &id,
    };
    let sandbox = match Sandbox::create(&id, &bundle, &opts.params, &paths, &launcher, mounts).await
    {
        Ok(s) => s,
        Err(e) => return fail(&mut opts, error_chain(&e)),
    };
    state.status = Status::Created;
    // As recorded at launch (the monitor rewrites the whole state from here).
    state.vm_processes = sandbox
        .vm_pids()
        .into_iter()
        .filter_map(ProcessId::of)
        .collect();
    state.agent_socket = Some(sandbox.vsock_path());
    for kind in [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
    ] {
        let hooks = spec_hooks(&bundle.spec, kind);
        if let Err(e) = run_hooks(kind, &hooks, &state.oci_state()).await {
            sandbox.shutdown().await;
            return fail(&mut opts, error_chain(&e));
        }
    }
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
    let ctx = Arc::new(Control {
        agent: agent.clone(),
        state: Mutex::new(state),
        store: store.clone(),
    });
    let server = tokio::spawn(serve_control(listener, Arc::clone(&ctx)));
    let relay = Relay::start(&agent, &id, "", stdio, opts.relay);

    let status = match sandbox.wait().await {
        Ok(exit) => {
            info!(container = %id, status = exit.status, signal = exit.signal, "container exited");
            relay.finish().await;
            exit.status
        }
        Err(e) => {
            error!(container = %id, error = %error_chain(&e), "container lost");
            VM_LOST_STATUS
        }
    };
    server.abort();
    {
        let mut state = ctx.state.lock().await;
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

/// What control requests act on.
struct Control {
    agent: AgentConn,
    state: Mutex<ContainerState>,
    store: StateStore,
}

impl Control {
    /// Stops (or continues) every process of the container.
    async fn freeze(&self, id: &str, freeze: bool) -> Result<(), String> {
        self.agent
            .freeze(id, freeze)
            .await
            .map_err(|e| error_chain(&e))
    }
}

async fn serve_control(listener: UnixListener, ctx: Arc<Control>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of fds, most likely: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let reply = match control::read_line::<ControlRequest>(&mut stream).await {
                Ok(req) => handle(req, &ctx).await,
                Err(e) => Err(format!("bad control request: {e}")),
            };
            let reply = ControlReply { error: reply.err() };
            let _ = control::write_line(&mut stream, &reply).await;
        });
    }
}

async fn handle(req: ControlRequest, ctx: &Control) -> Result<(), String> {
    debug!(?req, "control request");
    let mut state = ctx.state.lock().await;
    let id = state.id.clone();
    let wrong = |state: &ContainerState, what: &str| {
        Err(format!(
            "cannot {what} container {id:?}: it is {}",
            state.status
        ))
    };
    match req {
        ControlRequest::Start => {
            if state.status != Status::Created {
                return wrong(&state, "start");
            }
            let start_hooks = bundle_hooks(&state.bundle, HookKind::StartContainer);
            run_hooks(HookKind::StartContainer, &start_hooks, &state.oci_state())
                .await
                .map_err(|e| error_chain(&e))?;
            ctx.agent
                .start_container(&id)
                .await
                .map_err(|e| error_chain(&e))?;
            state.status = Status::Running;
            ctx.store.save(&state).map_err(|e| error_chain(&e))?;
            let poststart = bundle_hooks(&state.bundle, HookKind::Poststart);
            // Failures of poststart hooks are warnings (logged by run_hooks).
            let _ = run_hooks(HookKind::Poststart, &poststart, &state.oci_state()).await;
            Ok(())
        }
        ControlRequest::Pause => {
            if state.status != Status::Running {
                return wrong(&state, "pause");
            }
            ctx.freeze(&id, true).await?;
            state.status = Status::Paused;
            ctx.store.save(&state).map_err(|e| error_chain(&e))
        }
        ControlRequest::Resume => {
            if state.status != Status::Paused {
                return wrong(&state, "resume");
            }
            ctx.freeze(&id, false).await?;
            state.status = Status::Running;
            ctx.store.save(&state).map_err(|e| error_chain(&e))
        }
        ControlRequest::Kill { signal, all } => {
            if state.status == Status::Stopped {
                return Err(format!("container {id:?} is not running"));
            }
            if state.status == Status::Paused && signal != Signal::SIGKILL as u32 {
                // Stopped processes only act on a signal once continued.
                ctx.freeze(&id, false).await?;
                state.status = Status::Running;
                ctx.store.save(&state).map_err(|e| error_chain(&e))?;
            }
            ctx.agent
                .signal(Proc::init(&id), signal, all)
                .await
                .map_err(|e| error_chain(&e))
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
