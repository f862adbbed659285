//! One container of the shim: the pod VM it runs in, its init process and
//! exec'd processes, their exits.
//!
//! Waiter tasks wait for each process (or the VM's death: status 255),
//! then record and publish the exit. The pod's VM outlives its containers'
//! processes; it is powered off when the pod's last container is deleted.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use containerd_shim::{
    asynchronous::util::mount_rootfs,
    protos::{
        api::{CreateTaskRequest, Mount},
        events::task::{TaskExit, TaskOOM},
        protobuf::well_known_types::timestamp::Timestamp,
        topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC},
    },
};
use nix::sys::signal::Signal;
use skerry_protocol::StatsContainerResponse;
use skerry_runtime::{
    agent_client::{AgentConn, Proc},
    bundle::Bundle,
    config::Isolation,
    lifecycle,
    monitor::{error_chain, now_rfc3339, VM_LOST_STATUS},
    mounts::{HostMounts, SysMounts},
    relay::{Relay, RelayOptions},
    state::{self, ContainerState, ProcessId, StateStore, Status},
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    error::TaskError,
    events::Events,
    pod::Pod,
    stdio::{self, StdinEnd, StdioPaths},
};

/// How long CloseIO waits for the relay to pass the rest of stdin on.
const STDIN_DRAIN: Duration = Duration::from_secs(2);

/// How long deleting a created (never started) task waits for its exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Shell-style status (128 + signal for a signal death, 255: VM lost).
    pub status: u32,
    /// When the shim learnt of it.
    pub at: SystemTime,
}

impl Exit {
    fn now(status: i32) -> Self {
        Self {
            status: status as u32,
            at: SystemTime::now(),
        }
    }

    /// The exit time as containerd's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from(self.at)
    }
}

/// Task status as containerd knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, waiting for Start.
    Created,
    /// Started and not exited.
    Running,
    /// Every process of the container is stopped.
    Paused,
    /// Exited.
    Stopped,
}

/// One process: the container's init (empty exec id) or an exec'd one.
pub struct Process {
    /// Exec id; empty for init.
    pub exec_id: String,
    /// Its stdio FIFOs.
    pub io: StdioPaths,
    /// OCI `process` JSON of an exec'd process (empty for init).
    spec: Vec<u8>,
    started: AtomicBool,
    stdin_end: Mutex<Option<StdinEnd>>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    fn new(exec_id: String, io: StdioPaths, spec: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            exec_id,
            io,
            spec,
            started: AtomicBool::new(false),
            stdin_end: Mutex::new(None),
            exit: watch::channel(None).0,
        })
    }

    /// Its exit, once it exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits for it to exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let exit = rx.wait_for(Option::is_some).await;
        exit.map(|e| e.expect("waited for Some"))
            .unwrap_or_else(|_| Exit::now(VM_LOST_STATUS))
    }

    fn record_exit(&self, exit: Exit) {
        self.exit.send_replace(Some(exit));
    }
}

/// A container and the pod VM it runs in.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// The pod it belongs to.
    pub pod: Arc<Pod>,
    agent: AgentConn,
    store: StateStore,
    events: Arc<Events>,
    /// The init process.
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    paused: AtomicBool,
    /// Whether the shim mounted `<bundle>/rootfs` from the request's mounts.
    rootfs_mounted: bool,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).finish()
    }
}

/// Host pid reported for every process: the shim's own (see the crate README).
pub fn host_pid() -> u32 {
    std::process::id()
}

/// A task's bundle with its rootfs mounted and loaded, and its state
/// directory made: what a container needs before it joins a pod.
pub struct Prepared {
    /// The task id.
    pub id: String,
    /// The loaded bundle.
    pub bundle: Bundle,
    io: StdioPaths,
    rootfs_mounted: bool,
    store: StateStore,
}

impl Prepared {
    /// Mounts the request's rootfs, loads the bundle and records the task
    /// in the state store; on failure leaves nothing behind.
    pub async fn new(req: &CreateTaskRequest, store: StateStore) -> Result<Self, TaskError> {
        let id = req.id.clone();
        state::validate_id(&id)?;
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        mount_all(&req.rootfs, &rootfs).await?;
        let rootfs_mounted = !req.rootfs.is_empty();
        let unmount_rootfs = || {
            if rootfs_mounted {
                unmount(&id, &rootfs);
            }
        };
        let bundle = match Bundle::load(&bundle_dir) {
            Ok(b) => b,
            Err(e) => {
                unmount_rootfs();
                return Err(e.into());
            }
        };
        if let Err(e) = store.create_dir(&id) {
            unmount_rootfs();
            return Err(e.into());
        }
        let prepared = Self {
            io: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            id,
            bundle,
            rootfs_mounted,
            store,
        };
        let state = ContainerState {
            id: prepared.id.clone(),
            bundle: prepared.bundle.dir.clone(),
            status: Status::Creating,
            // The shim is not recorded: the state only serves the `delete`
            // action, which runs when the shim is gone.
            monitor: None,
            vm_processes: vec![],
            agent_socket: None,
            exit_status: None,
            created: now_rfc3339(),
            annotations: prepared.annotations(),
            isolation: Isolation::Vm,
        };
        if let Err(e) = prepared.store.save(&state) {
            prepared.abort().await;
            return Err(e.into());
        }
        Ok(prepared)
    }

    /// The spec's annotations.
    pub fn annotations(&self) -> HashMap<String, String> {
        self.bundle.spec.annotations().clone().unwrap_or_default()
    }

    /// Records the pod VM's processes, so that the `delete` action can stop
    /// them if the shim dies.
    pub fn record_vm(&self, pod: &Pod) -> Result<(), TaskError> {
        let mut state = self.store.load(&self.id)?;
        state.vm_processes = pod
            .sandbox
            .vm_pids()
            .into_iter()
            .filter_map(ProcessId::of)
            .collect();
        state.agent_socket = Some(pod.sandbox.vsock_path());
        Ok(self.store.save(&state)?)
    }

    /// Undoes `new`.
    pub async fn abort(&self) {
        if let Err(e) = lifecycle::delete(&self.store, &self.id, true).await {
            warn!(container = %self.id, error = %error_chain(&e), "cleaning up after failed create");
        }
        if self.rootfs_mounted {
            unmount(&self.id, &self.bundle.dir.join("rootfs"));
        }
    }
}

impl Container {
    /// Creates the prepared container in `pod`'s VM (its process waits for
    /// Start) and starts relaying its stdio. On failure the container is
    /// not in the VM; the caller aborts `prepared`.
    pub async fn create(
        prepared: &Prepared,
        pod: Arc<Pod>,
        events: Arc<Events>,
    ) -> Result<Arc<Self>, TaskError> {
        let id = &prepared.id;
        let (stdio, stdin_end) = stdio::open(&prepared.io)?;
        pod.sandbox.add_container(id, &prepared.bundle).await?;
        let init = Process::new(String::new(), prepared.io.clone(), Vec::new());
        *init.stdin_end.lock().expect("stdin lock") = Some(stdin_end);
        let agent = pod.sandbox.agent().clone();
        let container = Arc::new(Self {
            id: id.clone(),
            bundle: prepared.bundle.dir.clone(),
            pod,
            agent,
            store: prepared.store.clone(),
            events,
            init,
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            rootfs_mounted: prepared.rootfs_mounted,
        });
        container.save_status(Status::Created);
        let relay = Relay::start(&container.agent, id, "", stdio, RelayOptions::default());
        tokio::spawn(Arc::clone(&container).watch_init(relay));
        Ok(container)
    }

    /// The status of process `exec_id` (empty: init).
    pub fn status(&self, p: &Process) -> TaskStatus {
        if p.exit().is_some() {
            TaskStatus::Stopped
        } else if !p.started.load(Ordering::SeqCst) {
            TaskStatus::Created
        } else if self.paused.load(Ordering::SeqCst) {
            TaskStatus::Paused
        } else {
            TaskStatus::Running
        }
    }

    /// Process `exec_id` (empty: init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec_id:?} of container {:?}", self.id))
            })
    }

    /// Starts the init process or an exec'd process.
    pub async fn start(self: &Arc<Self>, exec_id: &str) -> Result<(), TaskError> {
        let p = self.process(exec_id)?;
        if self.status(&p) != TaskStatus::Created {
            return Err(self.wrong_status(&p, "start"));
        }
        if exec_id.is_empty() {
            self.agent.start_container(&self.id).await?;
            p.started.store(true, Ordering::SeqCst);
            self.save_status(Status::Running);
            info!(container = %self.id, "container started");
            return Ok(());
        }
        if self.status(&self.init) != TaskStatus::Running {
            return Err(self.wrong_status(&self.init, "exec in"));
        }
        let (stdio, stdin_end) = stdio::open(&p.io)?;
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        let guest_pid = self.agent.exec_process(name, &p.spec).await?;
        p.started.store(true, Ordering::SeqCst);
        *p.stdin_end.lock().expect("stdin lock") = Some(stdin_end);
        info!(container = %self.id, exec = exec_id, guest_pid, "exec started");
        let relay = Relay::start(
            &self.agent,
            &self.id,
            exec_id,
            stdio,
            RelayOptions::default(),
        );
        tokio::spawn(Arc::clone(self).watch_exec(p, relay));
        Ok(())
    }

    /// Adds an exec'd process (started later by `start`).
    pub fn add_exec(&self, exec_id: &str, io: StdioPaths, spec: Vec<u8>) -> Result<(), TaskError> {
        if exec_id.is_empty() {
            return Err(TaskError::InvalidArgument("exec_id: empty".into()));
        }
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec)
            .map_err(|e| TaskError::InvalidArgument(format!("spec: not an OCI process: {e}")))?;
        if self.status(&self.init) != TaskStatus::Running {
            return Err(self.wrong_status(&self.init, "exec in"));
        }
        let mut execs = self.execs.lock().expect("execs lock");
        if execs.contains_key(exec_id) {
            return Err(TaskError::AlreadyExists(format!("exec {exec_id:?}")));
        }
        execs.insert(
            exec_id.to_string(),
            Process::new(exec_id.to_string(), io, spec),
        );
        Ok(())
    }

    /// Sends `signal` to a process (or, `all`, every process of the container).
    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let p = self.process(exec_id)?;
        match self.status(&p) {
            TaskStatus::Stopped => {
                return Err(TaskError::NotFound(format!(
                    "process {:?} of container {:?} (already finished)",
                    p.exec_id, self.id
                )))
            }
            TaskStatus::Created if !exec_id.is_empty() => {
                return Err(self.wrong_status(&p, "signal"))
            }
            _ => {}
        }
        if self.paused.load(Ordering::SeqCst) && signal != Signal::SIGKILL as u32 {
            // Stopped processes only act on a signal once continued.
            self.freeze(false).await?;
        }
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        self.agent.signal(name, signal, all).await?;
        Ok(())
    }

    /// Stops (`freeze`) or continues every process of the container.
    pub async fn freeze(&self, freeze: bool) -> Result<(), TaskError> {
        let want = if freeze {
            TaskStatus::Running
        } else {
            TaskStatus::Paused
        };
        if self.status(&self.init) != want {
            return Err(self.wrong_status(&self.init, if freeze { "pause" } else { "resume" }));
        }
        self.agent.freeze(&self.id, freeze).await?;
        self.paused.store(freeze, Ordering::SeqCst);
        self.save_status(if freeze {
            Status::Paused
        } else {
            Status::Running
        });
        Ok(())
    }

    /// Resizes a process's terminal.
    pub async fn resize(&self, exec_id: &str, rows: u32, columns: u32) -> Result<(), TaskError> {
        let p = self.process(exec_id)?;
        if !p.io.terminal {
            return Err(TaskError::FailedPrecondition(format!(
                "process {exec_id:?} of container {:?} has no terminal",
                self.id
            )));
        }
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        self.agent
            .resize_tty(name, clamp(rows), clamp(columns))
            .await?;
        Ok(())
    }

    /// Closes a process's stdin once the relay has passed on what the client
    /// wrote before closing its end.
    pub async fn close_stdin(&self, exec_id: &str) -> Result<(), TaskError> {
        let p = self.process(exec_id)?;
        let end = p.stdin_end.lock().expect("stdin lock").clone();
        if let Some(mut end) = end {
            if tokio::time::timeout(STDIN_DRAIN, end.wait()).await.is_err() {
                debug!(container = %self.id, exec = exec_id, "stdin still open at CloseIO; closing it");
            }
        }
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        if let Err(e) = self.agent.close_stdin(name).await {
            // The relay closed it already, or the process is gone.
            debug!(container = %self.id, exec = exec_id, error = %e, "closing stdin");
        }
        Ok(())
    }

    /// Removes an exec'd process that is not running; returns its exit.
    pub fn delete_exec(&self, exec_id: &str) -> Result<Option<Exit>, TaskError> {
        let p = self.process(exec_id)?;
        if matches!(self.status(&p), TaskStatus::Running | TaskStatus::Paused) {
            return Err(self.wrong_status(&p, "delete"));
        }
        self.execs.lock().expect("execs lock").remove(exec_id);
        Ok(p.exit())
    }

    /// Deletes the container once its init has exited (a created one is
    /// killed first): removes it from the VM, its state and its mounts.
    /// Returns the init's exit.
    pub async fn delete(&self) -> Result<Exit, TaskError> {
        match self.status(&self.init) {
            TaskStatus::Running | TaskStatus::Paused => {
                return Err(self.wrong_status(&self.init, "delete"))
            }
            TaskStatus::Created => {
                self.agent
                    .signal(Proc::init(&self.id), Signal::SIGKILL as u32, true)
                    .await?;
                if tokio::time::timeout(KILL_WAIT, self.init.wait())
                    .await
                    .is_err()
                {
                    warn!(container = %self.id, "created task did not exit after SIGKILL");
                }
            }
            TaskStatus::Stopped => {}
        }
        if !*self.pod.vm_gone().borrow() {
            if let Err(e) = self.pod.sandbox.remove_container(&self.id).await {
                warn!(container = %self.id, error = %error_chain(&e), "removing the container from the VM");
            }
        }
        // The pod's own directory goes with the pod.
        if self.id != self.pod.id {
            lifecycle::delete(&self.store, &self.id, true).await?;
        }
        if self.rootfs_mounted {
            unmount(&self.id, &self.bundle.join("rootfs"));
        }
        Ok(self
            .init
            .exit()
            .unwrap_or_else(|| Exit::now(VM_LOST_STATUS)))
    }

    fn wrong_status(&self, p: &Process, what: &str) -> TaskError {
        let name = if p.exec_id.is_empty() {
            format!("container {:?}", self.id)
        } else {
            format!("exec {:?} of container {:?}", p.exec_id, self.id)
        };
        let status = format!("{:?}", self.status(p)).to_lowercase();
        TaskError::FailedPrecondition(format!("cannot {what} {name}: it is {status}"))
    }

    /// Records the status in state.json (read only by the `delete` action).
    fn save_status(&self, status: Status) {
        let saved = self.store.load(&self.id).and_then(|mut s| {
            s.status = status;
            s.exit_status = self.init.exit().map(|e| e.status as i32);
            self.store.save(&s)
        });
        if let Err(e) = saved {
            warn!(container = %self.id, error = %e, "recording status");
        }
    }

    async fn publish_exit(&self, p: &Process, exit: Exit) {
        let id = if p.exec_id.is_empty() {
            self.id.clone()
        } else {
            p.exec_id.clone()
        };
        let event = TaskExit {
            container_id: self.id.clone(),
            id,
            pid: host_pid(),
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        };
        self.events.send(TASK_EXIT_EVENT_TOPIC, event).await;
    }

    /// Waits for the init process (or the VM's death), then records and
    /// publishes the exit (after TaskOOM if the OOM killer struck).
    async fn watch_init(self: Arc<Self>, relay: Relay) {
        let mut vm_gone = self.pod.vm_gone();
        let status = tokio::select! {
            waited = self.agent.wait(Proc::init(&self.id)) => match waited {
                Ok(exit) => {
                    info!(container = %self.id, status = exit.status, signal = exit.signal, "container exited");
                    relay.finish().await;
                    self.report_oom().await;
                    exit.status
                }
                Err(e) => {
                    error!(container = %self.id, error = %error_chain(&e), "container lost");
                    VM_LOST_STATUS
                }
            },
            () = async {
                let _ = vm_gone.wait_for(|gone| *gone).await;
            } => VM_LOST_STATUS,
        };
        let exit = Exit::now(status);
        self.init.record_exit(exit);
        self.save_status(Status::Stopped);
        self.publish_exit(&self.init, exit).await;
    }

    /// Publishes TaskOOM if the guest's OOM killer ended a process of the
    /// container (its cgroup's `oom_kill` count).
    async fn report_oom(&self) {
        match self.agent.stats(&self.id).await {
            Ok(stats) if stats.oom_kills > 0 => {
                warn!(container = %self.id, kills = stats.oom_kills, "out of memory");
                let event = TaskOOM {
                    container_id: self.id.clone(),
                    ..Default::default()
                };
                self.events.send(TASK_OOM_EVENT_TOPIC, event).await;
            }
            Ok(_) => {}
            Err(e) => debug!(container = %self.id, error = %e, "no OOM count"),
        }
    }

    /// Applies new limits (OCI `linux.resources` JSON) to the container's
    /// guest cgroup.
    pub async fn update(&self, resources_json: &[u8]) -> Result<(), TaskError> {
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(resources_json).map_err(
            |e| TaskError::InvalidArgument(format!("resources: not OCI linux.resources: {e}")),
        )?;
        if self.status(&self.init) == TaskStatus::Stopped {
            return Err(self.wrong_status(&self.init, "update"));
        }
        Ok(self.agent.update(&self.id, resources_json).await?)
    }

    /// Resource usage and guest pids of the container.
    pub async fn stats(&self) -> Result<StatsContainerResponse, TaskError> {
        Ok(self.agent.stats(&self.id).await?)
    }

    /// Waits for an exec'd process; status 255 if the VM goes first.
    async fn watch_exec(self: Arc<Self>, p: Arc<Process>, relay: Relay) {
        let mut vm_gone = self.pod.vm_gone();
        let name = Proc {
            container: &self.id,
            exec: &p.exec_id,
        };
        let status = tokio::select! {
            waited = self.agent.wait(name) => match waited {
                Ok(exit) => {
                    relay.finish().await;
                    exit.status
                }
                Err(e) => {
                    error!(container = %self.id, exec = %p.exec_id, error = %error_chain(&e), "exec lost");
                    VM_LOST_STATUS
                }
            },
            () = async {
                let _ = vm_gone.wait_for(|gone| *gone).await;
            } => VM_LOST_STATUS,
        };
        info!(container = %self.id, exec = %p.exec_id, status, "exec exited");
        let exit = Exit::now(status);
        p.record_exit(exit);
        self.publish_exit(&p, exit).await;
    }
}

/// Mounts the request's rootfs mounts, in order, onto `target`.
async fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), TaskError> {
    if mounts.is_empty() {
        return Ok(());
    }
    let mount_err = |index, source| TaskError::Mount {
        index,
        target: target.to_path_buf(),
        source,
    };
    if let Err(e) = std::fs::create_dir(target) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(mount_err(
                0,
                containerd_shim::Error::IoError {
                    context: "create the rootfs directory".into(),
                    err: e,
                },
            ));
        }
    }
    for (index, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_rootfs(m, target).await {
            for _ in 0..index {
                unmount("", target);
            }
            return Err(mount_err(index, e));
        }
    }
    Ok(())
}

/// Detaches the mount at `path`, logging a failure.
fn unmount(id: &str, path: &Path) {
    if let Err(e) = SysMounts.unmount(path) {
        warn!(container = id, path = %path.display(), error = %e, "unmounting");
    }
}
