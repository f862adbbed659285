//! `exec`: a host process (the exec proxy) that stands for one process exec'd
//! into a running container. It connects to the guest agent itself, starts the
//! process, relays its stdio and exits with its status, so that the pid that
//! `exec --pid-file` reports lives exactly as long as the guest process.

use std::io::Write;

use oci_spec::runtime::Process;
use tracing::{error, info, warn};

use crate::{
    agent_client::{AgentConn, Proc},
    hypervisor::connect_hybrid_vsock,
    monitor::{error_chain, VM_LOST_STATUS},
    relay::{ProcessStdio, Relay, RelayOptions},
    state::{StateStore, Status},
};

/// Failure to start an exec'd process.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The container's guest agent takes no requests now.
    #[error("container {id:?} is {status}: its guest agent takes no requests")]
    NotRunning {
        /// Container.
        id: String,
        /// Its status.
        status: Status,
    },
    /// State store failure.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The guest could not be reached.
    #[error("cannot reach the guest agent of container {id:?}")]
    Connect {
        /// Container.
        id: String,
        /// The cause.
        #[source]
        source: crate::hypervisor::HypervisorError,
    },
    /// The agent refused the process.
    #[error(transparent)]
    Agent(#[from] crate::agent_client::AgentError),
}

/// What an exec proxy needs.
pub struct ExecOptions {
    /// Container id.
    pub id: String,
    /// Exec id, unique within the container.
    pub exec_id: String,
    /// The OCI `process` to run.
    pub process: Process,
    /// The state store.
    pub store: StateStore,
    /// Told "ok" or the error once the process runs, then closed.
    pub ready: Box<dyn Write + Send>,
    /// Signal forwarding and terminal size following.
    pub relay: RelayOptions,
}

/// A fresh exec id.
pub fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("exec-{}-{nanos:08x}", std::process::id())
}

/// A checked connection to the guest agent of a created or running container.
pub(crate) async fn connect(store: &StateStore, id: &str) -> Result<AgentConn, ExecError> {
    let state = store.load(id)?;
    let status = state.effective_status();
    let socket = match (&state.agent_socket, status) {
        (Some(socket), Status::Created | Status::Running) => socket.clone(),
        _ => {
            return Err(ExecError::NotRunning {
                id: id.into(),
                status,
            })
        }
    };
    let stream = connect_hybrid_vsock(&socket, skerry_protocol::AGENT_VSOCK_PORT)
        .await
        .map_err(|source| ExecError::Connect {
            id: id.into(),
            source,
        })?;
    let agent = AgentConn::new(stream);
    agent.check().await?;
    Ok(agent)
}

/// Runs the exec proxy to completion and returns the status it must exit
/// with: the process's, or non-zero if it never ran.
pub async fn run(mut opts: ExecOptions, stdio: ProcessStdio) -> i32 {
    let (id, exec_id) = (opts.id.clone(), opts.exec_id.clone());
    let process = serde_json::to_vec(&opts.process).expect("OCI process serialises");
    let started = async {
        let agent = connect(&opts.store, &id).await?;
        let pid = agent
            .exec_process(
                Proc {
                    container: &id,
                    exec: &exec_id,
                },
                &process,
            )
            .await?;
        Ok::<_, ExecError>((agent, pid))
    };
    let agent = match started.await {
        Ok((agent, pid)) => {
            info!(container = %id, exec = %exec_id, guest_pid = pid, "exec started");
            let _ = writeln!(opts.ready, "ok");
            agent
        }
        Err(e) => {
            let message = error_chain(&e);
            error!(container = %id, exec = %exec_id, "exec failed: {message}");
            let _ = writeln!(opts.ready, "{message}");
            return 1;
        }
    };
    drop(opts.ready);
    let relay = Relay::start(&agent, &id, &exec_id, stdio, opts.relay);
    let name = Proc {
        container: &id,
        exec: &exec_id,
    };
    match agent.wait(name).await {
        Ok(exit) => {
            relay.finish().await;
            info!(container = %id, exec = %exec_id, status = exit.status, "exec exited");
            if let Err(e) = agent.remove_process(name).await {
                warn!(container = %id, exec = %exec_id, error = %error_chain(&e), "removing the exec from the VM");
            }
            exit.status
        }
        Err(e) => {
            error!(container = %id, exec = %exec_id, error = %error_chain(&e), "exec lost");
            VM_LOST_STATUS
        }
    }
}
