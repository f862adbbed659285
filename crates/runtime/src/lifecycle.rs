//! Container operations the CLI performs between monitor lifetimes:
//! `state`, `start`, `pause`/`resume`, `kill`, `delete`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::{
    config::Isolation,
    control::{self, ControlError, ControlRequest},
    hooks::{run_hooks, HookKind},
    hypervisor::identity,
    mounts::{mounted_under, HostMounts, SysMounts},
    net,
    plain::{self, PlainError},
    sandbox::SandboxPaths,
    state::{ContainerState, StateError, StateStore, Status},
};

/// OCI runtime spec version this runtime reports.
pub const OCI_VERSION: &str = "1.0.2";

/// How long `delete` waits for a monitor to finish its own teardown.
const MONITOR_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Failure of a lifecycle operation.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// State store failure (unknown id, corrupt state, ...).
    #[error(transparent)]
    State(#[from] StateError),
    /// The operation does not fit the container's status.
    #[error("container {id:?} is {status}: {message}")]
    WrongStatus {
        /// Container.
        id: String,
        /// Its status.
        status: Status,
        /// What was refused.
        message: &'static str,
    },
    /// The monitor could not be reached or refused.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A container-mode operation failed.
    #[error(transparent)]
    Plain(#[from] PlainError),
    /// The guest agent could not be reached or refused.
    #[error(transparent)]
    Agent(#[from] crate::exec::ExecError),
    /// The VM's host cgroup could not be updated.
    #[error(transparent)]
    HostCgroup(#[from] crate::hypervisor::HostCgroupError),
    /// Host cleanup failed.
    #[error("cleaning up container {id:?}")]
    Cleanup {
        /// Container.
        id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The OCI state document (`skerry state`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// Spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// creating | created | running | stopped.
    pub status: String,
    /// Host pid standing for the container (0 once stopped).
    pub pid: u32,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// The spec's annotations.
    pub annotations: HashMap<String, String>,
    /// Creation time (RFC 3339).
    pub created: String,
}

/// The state of container `id`.
pub fn state(store: &StateStore, id: &str) -> Result<OciState, LifecycleError> {
    Ok(store.load(id)?.oci_state())
}

impl ContainerState {
    /// The OCI state document of this container.
    pub fn oci_state(&self) -> OciState {
        let status = self.effective_status();
        OciState {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            status: status.to_string(),
            pid: match status {
                Status::Stopped => 0,
                _ => self.monitor.map_or(0, |m| m.pid),
            },
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
            created: self.created.clone(),
        }
    }
}

/// The hooks of `kind` in `spec`.
pub fn spec_hooks(spec: &oci_spec::runtime::Spec, kind: HookKind) -> Vec<oci_spec::runtime::Hook> {
    spec.hooks()
        .as_ref()
        .map(|hooks| kind.select(hooks).to_vec())
        .unwrap_or_default()
}

/// The hooks of `kind` in the bundle's config.json (none if it is gone).
pub fn bundle_hooks(bundle: &std::path::Path, kind: HookKind) -> Vec<oci_spec::runtime::Hook> {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map(|spec| spec_hooks(&spec, kind))
        .unwrap_or_default()
}

fn monitor_socket(store: &StateStore, id: &str) -> PathBuf {
    store.dir(id).join(control::SOCKET_NAME)
}

/// Starts a created container.
pub async fn start(store: &StateStore, id: &str) -> Result<(), LifecycleError> {
    let s = store.load(id)?;
    let status = s.effective_status();
    if status != Status::Created {
        return Err(LifecycleError::WrongStatus {
            id: id.into(),
            status,
            message: "only a created container can be started",
        });
    }
    if s.isolation == Isolation::Container {
        return Ok(plain::start(store, id)?);
    }
    control::call(&monitor_socket(store, id), &ControlRequest::Start).await?;
    Ok(())
}

/// Suspends every process of a running container (`pause`) or continues them.
pub async fn pause(store: &StateStore, id: &str, pause: bool) -> Result<(), LifecycleError> {
    let s = store.load(id)?;
    let (status, want) = (
        s.effective_status(),
        if pause {
            Status::Running
        } else {
            Status::Paused
        },
    );
    if status != want {
        return Err(LifecycleError::WrongStatus {
            id: id.into(),
            status,
            message: if pause {
                "only a running container can be paused"
            } else {
                "only a paused container can be resumed"
            },
        });
    }
    if s.isolation == Isolation::Container {
        return Ok(plain::pause(store, id, pause)?);
    }
    let req = if pause {
        ControlRequest::Pause
    } else {
        ControlRequest::Resume
    };
    control::call(&monitor_socket(store, id), &req).await?;
    Ok(())
}

/// Applies `resources` to a running container: to its host cgroup in
/// container mode; in a VM to its cgroup in the guest and to the VM's host
/// cgroup (the VM keeps its size).
pub async fn update(
    store: &StateStore,
    id: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<(), LifecycleError> {
    let s = store.load(id)?;
    if s.isolation == Isolation::Container {
        return Ok(plain::update(store, id, resources)?);
    }
    let agent = crate::exec::connect(store, id).await?;
    let json = serde_json::to_vec(resources).expect("LinuxResources serialises");
    agent
        .update(id, &json)
        .await
        .map_err(crate::exec::ExecError::from)?;
    let run_dir = SandboxPaths::new(store, id).run_dir;
    Ok(crate::hypervisor::cgroup::update(&run_dir, resources)?)
}

/// Sends `signal` to the container's process (or all of its processes).
pub async fn kill(
    store: &StateStore,
    id: &str,
    signal: u32,
    all: bool,
) -> Result<(), LifecycleError> {
    let s = store.load(id)?;
    let status = s.effective_status();
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        return Err(LifecycleError::WrongStatus {
            id: id.into(),
            status,
            message: "cannot signal a container that is not running",
        });
    }
    if s.isolation == Isolation::Container {
        return Ok(plain::kill(store, id, signal as i32, all)?);
    }
    control::call(
        &monitor_socket(store, id),
        &ControlRequest::Kill { signal, all },
    )
    .await?;
    Ok(())
}

/// Deletes a stopped container (any container with `force`; a created one
/// in container mode, as runc), leaving nothing behind: no monitor, no VM
/// processes, no mount, no cgroup, no state.
pub async fn delete(store: &StateStore, id: &str, force: bool) -> Result<(), LifecycleError> {
    let s = store.load(id)?;
    let status = s.effective_status();
    let plain = s.isolation == Isolation::Container;
    if status != Status::Stopped && !(plain && status == Status::Created) && !force {
        return Err(LifecycleError::WrongStatus {
            id: id.into(),
            status,
            message: "cannot delete a container that is not stopped (use --force)",
        });
    }
    if plain {
        return Ok(plain::delete(store, id, force)?);
    }
    if status != Status::Stopped {
        let kill = ControlRequest::Kill {
            signal: Signal::SIGKILL as u32,
            all: true,
        };
        if let Err(e) = control::call(&monitor_socket(store, id), &kill).await {
            tracing::warn!(container = id, error = %e, "asking the monitor to kill the container");
        }
    }
    // The monitor tears the VM down itself once the container has exited;
    // give it the time to, then make sure of everything it owned.
    if let Some(monitor) = s.monitor {
        if !monitor.wait_exit(MONITOR_EXIT_TIMEOUT).await {
            tracing::warn!(
                container = id,
                pid = monitor.pid,
                "monitor did not exit; killing it"
            );
            monitor.kill_and_wait().await;
        }
    }
    for p in &s.vm_processes {
        p.kill_and_wait().await;
    }
    // A monitor that died left its tap in the pod's network namespace.
    let spec = oci_spec::runtime::Spec::load(s.bundle.join("config.json")).ok();
    if let Some(netns) = spec.as_ref().and_then(net::netns_path) {
        if let Err(e) = net::disconnect(&netns, &net::tap_name(id)).await {
            tracing::warn!(container = id, error = %e, "disconnecting the pod network");
        }
    }
    let poststop = bundle_hooks(&s.bundle, HookKind::Poststop);
    if !poststop.is_empty() {
        let mut state = s.oci_state();
        state.status = Status::Stopped.to_string();
        // Failures of poststop hooks are warnings (logged by run_hooks).
        let _ = run_hooks(HookKind::Poststop, &poststop, &state).await;
    }
    // The VM and its helpers are gone: no guest can change these paths now.
    for path in mounted_under(&store.dir(id)) {
        SysMounts
            .unmount_path(&path)
            .map_err(|source| LifecycleError::Cleanup {
                id: id.into(),
                source,
            })?;
    }
    let run_dir = SandboxPaths::new(store, id).run_dir;
    if let Err(e) = crate::hypervisor::remove_leftovers(&run_dir) {
        tracing::warn!(container = id, error = %e, "removing what the VM left");
    }
    // A monitor that died left its VM's uid leased.
    if let Err(e) = identity::release_leftover(Path::new(identity::LEASE_DIR), &run_dir) {
        tracing::warn!(container = id, error = %e, "releasing the VM's uid");
    }
    match std::fs::remove_dir_all(&run_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LifecycleError::Cleanup {
                id: id.into(),
                source: e,
            })
        }
        _ => {}
    }
    if let Some(parent) = run_dir.parent() {
        // Fails harmlessly while other sandboxes use it.
        let _ = std::fs::remove_dir(parent);
    }
    store.remove(id)?;
    Ok(())
}
