//! One container of the shim: the pod VM it runs in (or, in container
//! isolation, the host), its init process and exec'd processes, their exits.
//!
//! Waiter tasks wait for each process (or the VM's death: status 255),
//! then record and publish the exit. The pod's VM outlives its containers'
//! processes; it is powered off when the pod's last container is deleted.
//! A container-mode task runs on the host through `skerry_runtime::plain`
//! (libcontainer); its processes are the shim's children.

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
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
use nix::{sys::signal::Signal, unistd::Pid};
use skerry_protocol::StatsContainerResponse;
use skerry_runtime::{
    agent_client::{AgentConn, Proc},
    bundle::Bundle,
    config::{Config, Isolation},
    isolation, lifecycle,
    monitor::{error_chain, now_rfc3339, VM_LOST_STATUS},
    mounts::{HostMounts, SysMounts},
    plain::{self, CreateOptions, ExecOptions},
    policy,
    relay::{Relay, RelayOptions},
    state::{self, ContainerState, StateStore, Status},
    vm_namespaces,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    error::TaskError,
    events::Events,
    host_io::{Plumbing, Pumps},
    pod::Pod,
    stdio::{self, StdinEnd, StdioPaths},
};

/// Numbers the console sockets of container-mode processes.
static PLAIN_SEQ: AtomicU64 = AtomicU64::new(0);

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
    /// Container mode: the host pid.
    host_pid: OnceLock<u32>,
    /// Container mode: the terminal's master.
    pty: OnceLock<OwnedFd>,
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
            host_pid: OnceLock::new(),
            pty: OnceLock::new(),
        })
    }

    /// The pid containerd is told: a container-mode process's own host pid
    /// (as runc reports it: CRI joins a pod sandbox's namespaces through
    /// `/proc/<pid>/ns`), else the shim's.
    pub fn pid(&self) -> u32 {
        self.host_pid.get().copied().unwrap_or_else(host_pid)
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

/// Where a container runs.
enum Engine {
    /// In its pod's VM.
    Vm { pod: Arc<Pod>, agent: AgentConn },
    /// On the host (container isolation).
    Plain,
}

/// A container and the pod VM it runs in.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    engine: Engine,
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

/// The shim's pid, reported for every process of a VM task (see the crate
/// README).
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
    /// The isolation the config (or the annotation) chose.
    pub isolation: Isolation,
    io: StdioPaths,
    rootfs_mounted: bool,
    store: StateStore,
}

impl Prepared {
    /// Mounts the request's rootfs, loads the bundle and records the task
    /// in the state store; on failure leaves nothing behind.
    pub async fn new(
        req: &CreateTaskRequest,
        store: StateStore,
        config: &Config,
    ) -> Result<Self, TaskError> {
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
        let loaded = Bundle::load(&bundle_dir)
            .map_err(TaskError::from)
            .and_then(|bundle| {
                // The tenant floor, before anything runs (a VM or a host
                // container), whatever the isolation.
                let annotations = bundle.spec.annotations().as_ref();
                let isolation = isolation::resolve(&config.runtime, annotations)
                    .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
                policy::check(&config.policy, &bundle.spec, isolation)
                    .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
                // What a VM cannot give, before the pod's VM boots.
                if isolation == Isolation::Vm {
                    vm_namespaces::check(&bundle.spec)
                        .map_err(|e| TaskError::InvalidArgument(error_chain(&e)))?;
                }
                Ok((bundle, isolation))
            });
        let (bundle, isolation) = match loaded {
            Ok(b) => b,
            Err(e) => {
                unmount_rootfs();
                return Err(e);
            }
        };
        if isolation == Isolation::Vm {
            if let Err(e) = store.create_dir(&id) {
                unmount_rootfs();
                return Err(e.into());
            }
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
            isolation,
            rootfs_mounted,
            store,
        };
        if isolation == Isolation::Container {
            // `plain::create` makes its state.
            return Ok(prepared);
        }
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

    /// Records the pod VM's agent socket (its processes were recorded at
    /// launch, see `RecordingLauncher`), for the `delete` action.
    pub fn record_vm(&self, pod: &Pod) -> Result<(), TaskError> {
        self.store.update(&self.id, |state| {
            state.agent_socket = Some(pod.sandbox.vsock_path());
        })?;
        Ok(())
    }

    /// Undoes `new`.
    pub async fn abort(&self) {
        let cleaned = match self.isolation {
            Isolation::Vm => lifecycle::delete(&self.store, &self.id, true).await,
            Isolation::Container => Ok(()),
        };
        if let Err(e) = cleaned {
            warn!(container = %self.id, error = %error_chain(&e), "cleaning up after failed create");
        }
        if self.rootfs_mounted {
            unmount(&self.id, &self.bundle.dir.join("rootfs"));
        }
    }
}

impl Container {
    fn new(
        prepared: &Prepared,
        engine: Engine,
        init: Arc<Process>,
        events: Arc<Events>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: prepared.id.clone(),
            bundle: prepared.bundle.dir.clone(),
            engine,
            store: prepared.store.clone(),
            events,
            init,
            execs: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            rootfs_mounted: prepared.rootfs_mounted,
        })
    }

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
        let engine = Engine::Vm {
            pod,
            agent: agent.clone(),
        };
        let container = Self::new(prepared, engine, init, events);
        container.save_status(Status::Created);
        let relay = Relay::start(&agent, id, "", stdio, RelayOptions::default());
        tokio::spawn(Arc::clone(&container).watch_init(relay));
        Ok(container)
    }

    /// Creates the prepared container on the host (container isolation)
    /// with libcontainer; its init waits for Start. On failure nothing of it
    /// is left but the prepared rootfs mount.
    pub async fn create_plain(
        prepared: &Prepared,
        events: Arc<Events>,
    ) -> Result<Arc<Self>, TaskError> {
        let id = prepared.id.clone();
        let (stdio, stdin_end) = stdio::open(&prepared.io)?;
        let mut plumbing = Plumbing::new(prepared.io.terminal, || console_socket(&prepared.store))?;
        let opts = CreateOptions {
            console_socket: plumbing.console_socket.clone(),
            detached: true,
            ..Default::default()
        };
        let fds = plumbing.fds.take();
        let (store, bundle) = (prepared.store.clone(), prepared.bundle.clone());
        let pid = {
            let id = id.clone();
            tokio::task::spawn_blocking(move || {
                plain::create_with_stdio(&store, &id, &bundle, &opts, fds)
            })
            .await
            .expect("create task")?
        };
        let mut pumps = match plumbing.connect(stdio) {
            Ok(p) => p,
            Err(e) => {
                if let Err(e) = lifecycle::delete(&prepared.store, &id, true).await {
                    warn!(container = %id, error = %error_chain(&e), "removing after failed create");
                }
                return Err(e);
            }
        };
        info!(container = %id, pid, "container created on the host");
        let init = Process::new(String::new(), prepared.io.clone(), Vec::new());
        *init.stdin_end.lock().expect("stdin lock") = Some(stdin_end);
        let _ = init.host_pid.set(pid);
        if let Some(master) = pumps.pty.take() {
            let _ = init.pty.set(master);
        }
        let container = Self::new(prepared, Engine::Plain, init, events);
        let init = Arc::clone(&container.init);
        tokio::spawn(Arc::clone(&container).watch_plain(init, pumps));
        Ok(container)
    }

    /// The pod VM it runs in; `None` in container isolation.
    pub fn pod(&self) -> Option<&Arc<Pod>> {
        match &self.engine {
            Engine::Vm { pod, .. } => Some(pod),
            Engine::Plain => None,
        }
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
            match &self.engine {
                Engine::Vm { agent, .. } => agent.start_container(&self.id).await?,
                Engine::Plain => lifecycle::start(&self.store, &self.id).await?,
            }
            p.started.store(true, Ordering::SeqCst);
            self.save_status(Status::Running);
            info!(container = %self.id, "container started");
            return Ok(());
        }
        if self.status(&self.init) != TaskStatus::Running {
            return Err(self.wrong_status(&self.init, "exec in"));
        }
        let (stdio, stdin_end) = stdio::open(&p.io)?;
        let agent = match &self.engine {
            Engine::Vm { agent, .. } => agent,
            Engine::Plain => {
                let pumps = self.exec_plain(&p, stdio).await?;
                p.started.store(true, Ordering::SeqCst);
                *p.stdin_end.lock().expect("stdin lock") = Some(stdin_end);
                tokio::spawn(Arc::clone(self).watch_plain(p, pumps));
                return Ok(());
            }
        };
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        let guest_pid = agent.exec_process(name, &p.spec).await?;
        p.started.store(true, Ordering::SeqCst);
        *p.stdin_end.lock().expect("stdin lock") = Some(stdin_end);
        info!(container = %self.id, exec = exec_id, guest_pid, "exec started");
        let relay = Relay::start(agent, &self.id, exec_id, stdio, RelayOptions::default());
        tokio::spawn(Arc::clone(self).watch_exec(p, relay));
        Ok(())
    }

    /// Runs exec'd process `p` on the host, in the container's namespaces.
    async fn exec_plain(
        &self,
        p: &Process,
        stdio: skerry_runtime::relay::ProcessStdio,
    ) -> Result<Pumps, TaskError> {
        let process = serde_json::from_slice(&p.spec)
            .map_err(|e| TaskError::InvalidArgument(format!("spec: not an OCI process: {e}")))?;
        let mut plumbing = Plumbing::new(p.io.terminal, || console_socket(&self.store))?;
        let opts = ExecOptions {
            process,
            console_socket: plumbing.console_socket.clone(),
            detached: true,
            ..Default::default()
        };
        let fds = plumbing.fds.take();
        let (store, id) = (self.store.clone(), self.id.clone());
        let pid =
            tokio::task::spawn_blocking(move || plain::exec_with_stdio(&store, &id, &opts, fds))
                .await
                .expect("exec task")?;
        info!(container = %self.id, exec = %p.exec_id, pid, "exec started on the host");
        let _ = p.host_pid.set(pid);
        let mut pumps = plumbing.connect(stdio)?;
        if let Some(master) = pumps.pty.take() {
            let _ = p.pty.set(master);
        }
        Ok(pumps)
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
        let agent = match &self.engine {
            Engine::Vm { agent, .. } => agent,
            Engine::Plain => return self.kill_plain(&p, signal, all).await,
        };
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        agent.signal(name, signal, all).await?;
        Ok(())
    }

    /// Signals the init through libcontainer (so `all` reaches the whole
    /// cgroup), an exec'd process by its host pid.
    async fn kill_plain(&self, p: &Process, signal: u32, all: bool) -> Result<(), TaskError> {
        if p.exec_id.is_empty() {
            lifecycle::kill(&self.store, &self.id, signal, all).await?;
            return Ok(());
        }
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| TaskError::InvalidArgument(format!("signal: {signal}: unknown")))?;
        let pid = *p.host_pid.get().expect("started exec has a pid");
        nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).map_err(|e| {
            TaskError::NotFound(format!(
                "process {:?} of container {:?} ({e})",
                p.exec_id, self.id
            ))
        })
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
        match &self.engine {
            Engine::Vm { agent, .. } => agent.freeze(&self.id, freeze).await?,
            Engine::Plain => lifecycle::pause(&self.store, &self.id, freeze).await?,
        }
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
        let agent = match &self.engine {
            Engine::Vm { agent, .. } => agent,
            Engine::Plain => {
                let master = p.pty.get().ok_or_else(|| self.wrong_status(&p, "resize"))?;
                let size = rustix::termios::Winsize {
                    ws_row: clamp(rows),
                    ws_col: clamp(columns),
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                return rustix::termios::tcsetwinsize(master, size).map_err(|e| {
                    TaskError::FailedPrecondition(format!(
                        "resizing the terminal of {exec_id:?}: {e}"
                    ))
                });
            }
        };
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        agent.resize_tty(name, clamp(rows), clamp(columns)).await?;
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
        // On the host, the copy closes the process's stdin pipe at the end.
        let Engine::Vm { agent, .. } = &self.engine else {
            return Ok(());
        };
        let name = Proc {
            container: &self.id,
            exec: exec_id,
        };
        if let Err(e) = agent.close_stdin(name).await {
            // The relay closed it already, or the process is gone.
            debug!(container = %self.id, exec = exec_id, error = %e, "closing stdin");
        }
        Ok(())
    }

    /// Removes an exec'd process that is not running; returns its exit.
    pub async fn delete_exec(&self, exec_id: &str) -> Result<Option<Exit>, TaskError> {
        let p = self.process(exec_id)?;
        let status = self.status(&p);
        if matches!(status, TaskStatus::Running | TaskStatus::Paused) {
            return Err(self.wrong_status(&p, "delete"));
        }
        self.execs.lock().expect("execs lock").remove(exec_id);
        if let Engine::Vm { pod, agent } = &self.engine {
            // An exec that never started is unknown to the agent.
            if status == TaskStatus::Stopped && !*pod.vm_gone().borrow() {
                let name = Proc {
                    container: &self.id,
                    exec: exec_id,
                };
                if let Err(e) = agent.remove_process(name).await {
                    warn!(container = %self.id, exec = exec_id, error = %error_chain(&e), "removing the exec from the VM");
                }
            }
        }
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
                self.kill("", Signal::SIGKILL as u32, true).await?;
                if tokio::time::timeout(KILL_WAIT, self.init.wait())
                    .await
                    .is_err()
                {
                    warn!(container = %self.id, "created task did not exit after SIGKILL");
                }
            }
            TaskStatus::Stopped => {}
        }
        match &self.engine {
            Engine::Vm { pod, .. } => {
                if !*pod.vm_gone().borrow() {
                    if let Err(e) = pod.sandbox.remove_container(&self.id).await {
                        warn!(container = %self.id, error = %error_chain(&e), "removing the container from the VM");
                    }
                }
                // The pod's own directory goes with the pod.
                if self.id != pod.id {
                    lifecycle::delete(&self.store, &self.id, true).await?;
                }
            }
            // Kills what is left, removes the cgroup and the state.
            Engine::Plain => lifecycle::delete(&self.store, &self.id, true).await?,
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
        let saved = self.store.update(&self.id, |s| {
            s.status = status;
            s.exit_status = self.init.exit().map(|e| e.status as i32);
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
            pid: p.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        };
        self.events.send(TASK_EXIT_EVENT_TOPIC, event).await;
    }

    /// Waits for the init process (or the VM's death), then records and
    /// publishes the exit (after TaskOOM if the OOM killer struck).
    async fn watch_init(self: Arc<Self>, relay: Relay) {
        let Engine::Vm { pod, agent } = &self.engine else {
            unreachable!("a VM container's waiter");
        };
        let mut vm_gone = pod.vm_gone();
        let status = tokio::select! {
            waited = agent.wait(Proc::init(&self.id)) => match waited {
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

    /// Waits for host process `p` (the init or an exec'd one) and its
    /// output, then records and publishes its exit.
    async fn watch_plain(self: Arc<Self>, p: Arc<Process>, pumps: Pumps) {
        let pid = *p.host_pid.get().expect("host process has a pid");
        let status = match plain::wait(pid).await {
            Ok(status) => status,
            Err(e) => {
                error!(container = %self.id, exec = %p.exec_id, error = %error_chain(&e), "process lost");
                VM_LOST_STATUS
            }
        };
        pumps.finish().await;
        info!(container = %self.id, exec = %p.exec_id, status, "process exited");
        if p.exec_id.is_empty() {
            self.report_oom().await;
        }
        let exit = Exit::now(status);
        p.record_exit(exit);
        if p.exec_id.is_empty() {
            self.save_status(Status::Stopped);
        }
        self.publish_exit(&p, exit).await;
    }

    /// Publishes TaskOOM if the OOM killer (the guest's, or the host's in
    /// container isolation) ended a process of the container (its cgroup's
    /// `oom_kill` count).
    async fn report_oom(&self) {
        match self.stats().await {
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
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| {
            TaskError::InvalidArgument(format!("resources: not OCI linux.resources: {e}"))
        })?;
        if self.status(&self.init) == TaskStatus::Stopped {
            return Err(self.wrong_status(&self.init, "update"));
        }
        match &self.engine {
            Engine::Vm { pod, agent } => {
                agent.update(&self.id, resources_json).await?;
                // The sandbox container's resources are the pod's: they bound the VM's host cgroup.
                if self.id == pod.id {
                    pod.sandbox.update_host_cgroup(&resources)?;
                }
                Ok(())
            }
            Engine::Plain => Ok(plain::update(&self.store, &self.id, &resources)?),
        }
    }

    /// Resource usage and pids (guest pids in a VM, host pids in container
    /// isolation) of the container.
    pub async fn stats(&self) -> Result<StatsContainerResponse, TaskError> {
        match &self.engine {
            Engine::Vm { agent, .. } => Ok(agent.stats(&self.id).await?),
            Engine::Plain => Ok(plain::stats(&self.store, &self.id)?),
        }
    }

    /// Waits for an exec'd process; status 255 if the VM goes first.
    async fn watch_exec(self: Arc<Self>, p: Arc<Process>, relay: Relay) {
        let Engine::Vm { pod, agent } = &self.engine else {
            unreachable!("a VM container's waiter");
        };
        let mut vm_gone = pod.vm_gone();
        let name = Proc {
            container: &self.id,
            exec: &p.exec_id,
        };
        let status = tokio::select! {
            waited = agent.wait(name) => match waited {
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

/// A new console socket path for a container-mode terminal, in the state
/// root's `.c/` (root only): under the bundle directory, a CRI bundle's
/// 64-character id left a path longer than a socket address can be (108
/// bytes).
fn console_socket(store: &StateStore) -> Result<PathBuf, TaskError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = store.root().join(".c");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| TaskError::Stdio {
            stream: "terminal",
            path: dir.clone(),
            source,
        })?;
    let seq = PLAIN_SEQ.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{}-{seq}.sock", std::process::id())))
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
    if let Err(e) = SysMounts.unmount_path(path) {
        warn!(container = id, path = %path.display(), error = %e, "unmounting");
    }
}
