//! The shim binary's three lives, as containerd starts it: `start` (spawn
//! the long-lived shim, print its address), serving the Task service, and
//! `delete` (clean up after a shim that is gone).
//!
//! containerd-shim 0.12 serves only `containerd.task.v3.Task` and answers
//! `start` in the containerd 2.x formats; containerd 1.6/1.7 speak
//! `containerd.task.v2.Task` and read a bare address. The two services are
//! the same messages under two names, so this shim registers the handlers
//! under both and prints a bare address, which every containerd since 1.2
//! reads as a v2 shim. The crate still provides the Task trait and types,
//! flag parsing, spawning, the event publisher and the exit signal.

use std::{path::PathBuf, sync::Arc};

use containerd_shim::{
    asynchronous::{spawn, ExitSignal},
    protos::{
        api::DeleteResponse,
        protobuf::Message,
        shim_async::{create_task, Task},
        ttrpc::r#async::Server,
    },
    publisher::RemotePublisher,
    Flags, StartOpts,
};
use skerry_runtime::{lifecycle, mounts::HostMounts, mounts::SysMounts, state::StateStore};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use crate::{events::Events, options, pod, service::TaskService};
use oci_spec::runtime::Spec;

/// The Task service name containerd 1.x calls.
const TASK_V2: &str = "containerd.task.v2.Task";

/// Environment variable through which containerd names its ttrpc socket.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// Exit status reported for a task whose shim died (killed, as runc's shim says).
const KILLED_STATUS: u32 = 128 + 9;

/// Failure of a shim action.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// containerd's shim library failed (spawn, publisher, ...).
    #[error(transparent)]
    Shim(#[from] containerd_shim::Error),
    /// The ttrpc server failed.
    #[error("ttrpc server on {address}")]
    Server {
        /// The socket address.
        address: String,
        /// The cause.
        #[source]
        source: containerd_shim::protos::ttrpc::Error,
    },
    /// A required environment variable or flag is missing.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// Writing the reply to containerd failed.
    #[error("writing the reply to containerd")]
    Reply(#[source] std::io::Error),
    /// Creating the socket directory or handing over stdout failed.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Cleaning up after a dead shim failed.
    #[error(transparent)]
    Cleanup(#[from] lifecycle::LifecycleError),
    /// The bundle's config.json is unusable.
    #[error("{path}: invalid OCI spec")]
    Spec {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The task names a pod whose shim is not running.
    #[error("pod sandbox {sandbox:?}: no shim serving it at {address}")]
    NoPodShim {
        /// The sandbox id.
        sandbox: String,
        /// Where its shim would serve.
        address: String,
    },
    /// Grouping the task into its pod failed.
    #[error(transparent)]
    Pod(#[from] crate::error::TaskError),
}

/// `start`: prints the address of the shim serving this task's pod:
/// the running one of its sandbox for a later container of a pod, else a
/// newly spawned one.
pub async fn start(flags: &Flags) -> Result<(), ShimError> {
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var(TTRPC_ADDRESS).unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    // One shim (and one VM) per pod: the address derives from the sandbox id.
    let bundle = bundle_dir(flags)?;
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|source| ShimError::Spec { path, source })?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let sandbox = pod::sandbox_id(&flags.id, &annotations)?;
    let address = if sandbox == flags.id {
        spawn(opts, &flags.id, Vec::new()).await?
    } else {
        let address = opts.socket_address(&sandbox);
        let socket = address.trim_start_matches("unix://");
        if tokio::net::UnixStream::connect(socket).await.is_err() {
            return Err(ShimError::NoPodShim { sandbox, address });
        }
        address
    };
    // containerd 1.x reads the address from the bundle when it restarts.
    let file = bundle.join("address");
    std::fs::write(&file, &address).map_err(|source| ShimError::Io {
        what: format!("writing {}", file.display()),
        source,
    })?;
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(address.as_bytes())
        .await
        .map_err(ShimError::Reply)?;
    stdout.flush().await.map_err(ShimError::Reply)
}

/// Serves the Task service on `flags.socket` until Shutdown.
pub async fn serve(flags: &Flags) -> Result<(), ShimError> {
    if flags.socket.is_empty() {
        return Err(ShimError::Missing("-socket"));
    }
    let ttrpc_address =
        std::env::var(TTRPC_ADDRESS).map_err(|_| ShimError::Missing(TTRPC_ADDRESS))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    // Out of containerd's session and process group, so that the pod
    // survives containerd's restart and signals sent to its group.
    if let Err(e) = nix::unistd::setsid() {
        warn!(error = %e, "setsid");
    }
    let exit = Arc::new(ExitSignal::default());
    let store = StateStore::new(options::state_root(&flags.namespace));
    let events = Events::new(publisher, flags.namespace.clone());
    let task: Arc<dyn Task + Send + Sync> =
        Arc::new(TaskService::new(store, events, Arc::clone(&exit)));
    let mut services = create_task(Arc::clone(&task));
    services.extend(
        create_task(task)
            .into_values()
            .map(|service| (TASK_V2.to_string(), service)),
    );
    let path = PathBuf::from(flags.socket.trim_start_matches("unix://"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ShimError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let server_err = |source| ShimError::Server {
        address: flags.socket.clone(),
        source,
    };
    let mut server = Server::new()
        .bind(&flags.socket)
        .map_err(server_err)?
        .register_service(services);
    server.start().await.map_err(server_err)?;
    // `start` copies our stdout until it closes: tell it we are serving.
    nix::unistd::dup2(2, 1).map_err(|e| ShimError::Io {
        what: "closing stdout".into(),
        source: e.into(),
    })?;
    info!(socket = %flags.socket, "shim serving");
    exit.wait().await;
    info!("shim exiting");
    if let Err(e) = server.shutdown().await {
        warn!(error = %e, "stopping the ttrpc server");
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// `delete`: removes what a dead shim left of task `flags.id` (VM
/// processes, mounts, state) and prints the task's final status.
pub async fn delete(flags: &Flags) -> Result<(), ShimError> {
    let store = StateStore::new(options::state_root(&flags.namespace));
    if store.dir(&flags.id).exists() {
        lifecycle::delete(&store, &flags.id, true).await?;
    }
    let bundle = bundle_dir(flags)?;
    if let Err(e) = SysMounts.unmount_path(&bundle.join("rootfs")) {
        warn!(container = %flags.id, error = %e, "unmounting the rootfs");
    }
    let reply = DeleteResponse {
        exit_status: KILLED_STATUS,
        exited_at: Some(std::time::SystemTime::now().into()).into(),
        ..Default::default()
    };
    let bytes = reply
        .write_to_bytes()
        .map_err(|e| ShimError::Shim(e.into()))?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&bytes).await.map_err(ShimError::Reply)?;
    stdout.flush().await.map_err(ShimError::Reply)
}

/// The task's bundle: `-bundle`, else the working directory containerd
/// starts the shim in.
fn bundle_dir(flags: &Flags) -> Result<PathBuf, ShimError> {
    if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|source| ShimError::Io {
            what: "finding the bundle (cwd)".into(),
            source,
        })
    } else {
        Ok(PathBuf::from(&flags.bundle))
    }
}
