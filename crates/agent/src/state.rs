//! Containers and processes of the sandbox, and the operations the API performs on them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use skerry_container::engine;
use skerry_container::security::{self, ChannelGuard, SecurityError};
use skerry_container::{spec, IdError, SpecError};
use tracing::{info, warn};

use crate::cgroup::{CgroupError, Cgroups};
use crate::guest_spec;
use crate::launcher::{Launcher, LauncherError, Request};
use crate::reaper::{ExitInfo, ExitReceiver, Reaper};
use crate::stdio::{NewStdio, ParentStdio, ProcessIo, StdioError};

/// libcontainer's state root, under the agent's state directory.
const LIBCONTAINER_DIR: &str = "lc";

/// How long RemoveContainer waits for a killed container to exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A request on the sandbox's containers failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An id from the host is malformed.
    #[error(transparent)]
    BadId(#[from] IdError),
    /// No container with this id.
    #[error("container {0} not found")]
    UnknownContainer(String),
    /// No exec with this id in the container.
    #[error("container {container}: exec {exec} not found")]
    UnknownExec {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The container id is taken.
    #[error("container {0} already exists")]
    DuplicateContainer(String),
    /// The exec id is taken.
    #[error("container {container}: exec {exec} already exists")]
    DuplicateExec {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The spec or process is unusable.
    #[error("container {id}")]
    BadSpec {
        /// Container id.
        id: String,
        /// What is wrong.
        #[source]
        source: SpecError,
    },
    /// A request field is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The operation does not fit the current state.
    #[error("{0}")]
    WrongState(String),
    /// The host speaks another protocol version.
    #[error("protocol version {host} not supported (agent speaks {agent})")]
    ProtocolMismatch {
        /// The host's version.
        host: u32,
        /// Ours.
        agent: u32,
    },
    /// Creating or starting the process failed (libcontainer's message).
    #[error("container {id}")]
    Setup {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: LauncherError,
    },
    /// The container's seccomp filter or limits cannot be applied.
    #[error("container {id}")]
    Security {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: SecurityError,
    },
    /// Stdio failed.
    #[error("container {id}")]
    Stdio {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: StdioError,
    },
    /// A container's cgroup could not be set up or read.
    #[error("container {id}")]
    Cgroup {
        /// Container id.
        id: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// A system operation of the agent failed.
    #[error("{what}")]
    System {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A process the agent started (a container init or an exec).
pub struct Process {
    /// Pid in the agent's pid namespace.
    pub pid: i32,
    exit: ExitReceiver,
    /// Its stdio.
    pub io: ProcessIo,
}

impl Process {
    /// The exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Option<ExitInfo> {
        let mut rx = self.exit.clone();
        let r = rx.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s);
        r
    }
}

/// One container.
pub struct Container {
    id: String,
    init: Arc<Process>,
    /// It has a pid namespace of its own (not the pod's).
    own_pid_ns: bool,
    /// The guest's spec: an exec gets its seccomp filter and, where it names
    /// none, its process's limits.
    spec: Spec,
    /// The init waits for StartContainer.
    pending_start: Mutex<bool>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// All containers of the sandbox.
pub struct Sandbox {
    reaper: Arc<Reaper>,
    /// Creates container processes: the agent's own threads are multi-threaded
    /// and confined.
    launcher: Launcher,
    shared_dir: PathBuf,
    /// Per container: its bundle (the guest's config.json), console and exec
    /// files; and libcontainer's state root ([`LIBCONTAINER_DIR`]).
    state_dir: PathBuf,
    /// What keeps containers off the agent's channels in this guest.
    guard: ChannelGuard,
    /// Names console sockets and exec process files.
    seq: AtomicU64,
    /// Per-container cgroups; `None` without a cgroup2 hierarchy (development agent).
    cgroups: Option<Cgroups>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    reserved: Mutex<HashSet<String>>,
}

fn blocking_failed(e: tokio::task::JoinError) -> AgentError {
    AgentError::System {
        what: "blocking task".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Sandbox {
    /// An empty sandbox whose container rootfses live under `shared_dir`
    /// and whose containers get cgroups in `cgroups`.
    pub fn new(
        reaper: Arc<Reaper>,
        launcher: Launcher,
        (shared_dir, state_dir): (PathBuf, PathBuf),
        guard: ChannelGuard,
        cgroups: Option<Cgroups>,
    ) -> Self {
        Sandbox {
            reaper,
            launcher,
            shared_dir,
            state_dir,
            guard,
            seq: AtomicU64::new(0),
            cgroups,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
        }
    }

    fn lc_root(&self) -> PathBuf {
        self.state_dir.join(LIBCONTAINER_DIR)
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// A fresh path in container `id`'s bundle directory (`<prefix><n><ext>`,
    /// short: console sockets must fit in 108 bytes).
    fn fresh_path(&self, id: &str, prefix: &str, ext: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.bundle_dir(id).join(format!("{prefix}{n}{ext}"))
    }

    /// The directory shared by the host.
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        skerry_container::validate_container_id(id)?;
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::UnknownContainer(id.to_string()))
    }

    /// Finds a process: the init for an empty `exec_id`, else the exec.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        skerry_container::validate_exec_id(exec_id)?;
        let execs = lock(&c.execs);
        execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::UnknownExec {
                container: id.to_string(),
                exec: exec_id.to_string(),
            })
    }

    /// Forgets exec'd process `exec_id` of container `id` once it has exited,
    /// so that a long-lived container does not accumulate one entry per exec
    /// (e.g. Kubernetes exec probes) and the id can be used again.
    pub fn remove_exec(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        if exec_id.is_empty() || p.exited().is_none() {
            return Err(AgentError::WrongState(format!(
                "container {id}: process {exec_id:?} is not an exited exec"
            )));
        }
        lock(&c.execs).remove(exec_id);
        Ok(())
    }

    /// Creates a container that waits for [`Sandbox::start`]; returns its init pid. A
    /// non-empty `join_namespaces_of` names the pod's sandbox container, whose IPC, UTS
    /// and pid namespaces the new one joins where its spec joins them by path.
    pub async fn create(
        self: &Arc<Self>,
        id: &str,
        spec_json: &[u8],
        join_namespaces_of: &str,
    ) -> Result<i32, AgentError> {
        skerry_container::validate_container_id(id)?;
        let pod_init = self.pod_sandbox_init(id, join_namespaces_of)?;
        {
            let containers = lock(&self.containers);
            let mut reserved = lock(&self.reserved);
            if containers.contains_key(id) || !reserved.insert(id.to_string()) {
                return Err(AgentError::DuplicateContainer(id.to_string()));
            }
        }
        let me = Arc::clone(self);
        let idc = id.to_string();
        let spec_json = spec_json.to_vec();
        let result = tokio::task::spawn_blocking(move || {
            let spec = spec::parse_spec(&spec_json).map_err(|source| AgentError::BadSpec {
                id: idc.clone(),
                source,
            })?;
            me.create_blocking(&idc, &spec, pod_init)
        })
        .await
        .map_err(blocking_failed)
        .and_then(|r| r);
        let result = result.and_then(|(pid, exit, stdio, guest)| {
            let io = ProcessIo::new(stdio).map_err(|source| AgentError::Stdio {
                id: id.to_string(),
                source,
            });
            match io {
                Ok(io) => Ok((pid, exit, io, guest)),
                Err(e) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    Err(self.undo_create(id, e))
                }
            }
        });
        lock(&self.reserved).remove(id);
        let (pid, exit, io, guest) = result?;
        let container = Arc::new(Container {
            id: id.to_string(),
            init: Arc::new(Process { pid, exit, io }),
            own_pid_ns: guest.own_pid_ns,
            spec: guest.spec,
            pending_start: Mutex::new(true),
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.containers).insert(id.to_string(), container);
        info!(container_id = id, pid, "container created");
        Ok(pid)
    }

    /// The init pid of pod sandbox container `sandbox` that container `id` joins (`None`
    /// for an empty `sandbox`); it must be another container, and running.
    fn pod_sandbox_init(&self, id: &str, sandbox: &str) -> Result<Option<i32>, AgentError> {
        if sandbox.is_empty() {
            return Ok(None);
        }
        skerry_container::validate_container_id(sandbox)?;
        let field = "join_namespaces_of";
        if sandbox == id {
            return Err(AgentError::BadRequest(format!(
                "container {id}: {field} names the container itself"
            )));
        }
        let not = |what: &str| {
            AgentError::WrongState(format!(
                "container {id}: {field}: pod sandbox container {sandbox} is {what}"
            ))
        };
        let c = lock(&self.containers)
            .get(sandbox)
            .cloned()
            .ok_or_else(|| not("not in this guest"))?;
        if c.init.exited().is_some() || *lock(&c.pending_start) {
            return Err(not("not running"));
        }
        Ok(Some(c.init.pid))
    }

    fn create_blocking(
        &self,
        id: &str,
        spec: &Spec,
        pod_init: Option<i32>,
    ) -> Result<(i32, ExitReceiver, ParentStdio, guest_spec::GuestSpec), AgentError> {
        let rootfs = self.shared_dir.join(id).join("rootfs");
        if !rootfs.is_dir() {
            return Err(AgentError::WrongState(format!(
                "container {id}: rootfs {} does not exist (not shared by the host?)",
                rootfs.display()
            )));
        }
        spec::validate_spec(spec, &rootfs).map_err(|source| AgentError::BadSpec {
            id: id.to_string(),
            source,
        })?;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
        security::check_seccomp(seccomp).map_err(|source| AgentError::Security {
            id: id.to_string(),
            source,
        })?;
        engine::create_cwd(spec, &rootfs).map_err(|source| AgentError::BadSpec {
            id: id.to_string(),
            source,
        })?;
        let cgroup_path = match &self.cgroups {
            Some(_) => PathBuf::from(format!("/{id}")),
            None => PathBuf::from(format!("/skerry-dev-agent/{id}")),
        };
        let container_dir = self.shared_dir.join(id);
        let guest = guest_spec::for_guest(spec, &rootfs, &container_dir, pod_init, cgroup_path);
        for w in &guest.warnings {
            warn!(container_id = id, "{w}");
        }
        let bundle = self.bundle_dir(id);
        let system = |what: String| {
            move |source| AgentError::System {
                what: format!("container {id}: {what}"),
                source,
            }
        };
        std::fs::create_dir_all(&bundle)
            .map_err(system(format!("creating {}", bundle.display())))?;
        let created = self.create_in(id, &bundle, &guest, spec);
        match created {
            Ok((pid, exit, stdio)) => Ok((pid, exit, stdio, guest)),
            Err(e) => Err(self.undo_create(id, e)),
        }
    }

    /// Writes the guest's spec to `bundle`, makes the cgroup and the stdio,
    /// and has the launcher create the container.
    fn create_in(
        &self,
        id: &str,
        bundle: &Path,
        guest: &guest_spec::GuestSpec,
        spec: &Spec,
    ) -> Result<(i32, ExitReceiver, ParentStdio), AgentError> {
        let config = bundle.join("config.json");
        guest.spec.save(&config).map_err(|e| AgentError::System {
            what: format!("container {id}: writing {}", config.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        for (key, value) in &guest.net_sysctls {
            write_sysctl(key, value).map_err(|source| AgentError::System {
                what: format!("container {id}: linux.sysctl[{key}]"),
                source,
            })?;
        }
        if let Some(cgroups) = &self.cgroups {
            let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
            cgroups
                .create(id, resources)
                .map_err(|source| cgroup_failed(id, source))?;
        }
        let process = spec.process().as_ref();
        let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
        let cwd = process.map(|p| p.cwd().clone()).unwrap_or_default();
        let stdio =
            NewStdio::new(terminal, self.fresh_path(id, "c", ".sock")).map_err(|source| {
                AgentError::Stdio {
                    id: id.to_string(),
                    source,
                }
            })?;
        let request = Request::Create {
            id: id.to_string(),
            root: self.lc_root(),
            bundle: bundle.to_path_buf(),
            console_socket: stdio.console_socket(),
            channel_filter: self.guard == ChannelGuard::Seccomp,
        };
        self.launch(id, &request, stdio, &cwd)
    }

    /// Has the launcher create container `id`'s init or exec'd process
    /// (`request`) with `stdio`; registers it with the reaper and returns it
    /// with the agent's ends of its stdio. A failure names what libcontainer's
    /// set-up logged (`cwd` is the process's, to name a failed `chdir`).
    fn launch(
        &self,
        id: &str,
        request: &Request,
        stdio: NewStdio,
        cwd: &Path,
    ) -> Result<(i32, ExitReceiver, ParentStdio), AgentError> {
        let setup = |source| AgentError::Setup {
            id: id.to_string(),
            source,
        };
        let pid = self
            .launcher
            .run(request, &stdio.child_fds())
            .map_err(|e| setup(e.with_log(&stdio.setup_errors(cwd))))?
            .ok_or_else(|| setup(LauncherError::Malformed))?;
        let exit = self.reaper.register(pid);
        match stdio.into_parent() {
            Ok(parent) => Ok((pid, exit, parent)),
            Err(source) => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(AgentError::Stdio {
                    id: id.to_string(),
                    source,
                })
            }
        }
    }

    /// Removes what a failed create of container `id` left: libcontainer's
    /// state, the cgroup and the bundle; returns `e`.
    fn undo_create(&self, id: &str, e: AgentError) -> AgentError {
        self.forget(id);
        e
    }

    /// Deletes container `id`'s libcontainer state (killing what is left in
    /// its cgroup), its cgroup and its bundle directory.
    fn forget(&self, id: &str) {
        let state = self.lc_root().join(id);
        if state.exists() {
            let request = Request::Delete {
                id: id.to_string(),
                root: self.lc_root(),
            };
            if let Err(e) = self.launcher.run(&request, &[]) {
                warn!(container_id = id, error = %skerry_container::error_chain(&e), "deleting libcontainer's state");
            }
            let _ = std::fs::remove_dir_all(&state);
        }
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(id);
        }
        let _ = std::fs::remove_dir_all(self.bundle_dir(id));
    }

    /// Lets a created container exec its program.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        {
            let mut pending = lock(&c.pending_start);
            if !*pending {
                let state = if c.init.exited().is_some() {
                    "stopped"
                } else {
                    "running"
                };
                return Err(AgentError::WrongState(format!(
                    "container {id} is {state}, not created"
                )));
            }
            *pending = false;
        }
        let request = Request::Start {
            id: id.to_string(),
            root: self.lc_root(),
        };
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.launcher.run(&request, &[]))
            .await
            .map_err(blocking_failed)?
            .map_err(|source| AgentError::Setup {
                id: id.to_string(),
                source,
            })?;
        info!(container_id = id, pid = c.init.pid, "container started");
        Ok(())
    }

    /// Runs an extra process in a running container; returns its pid.
    pub async fn exec(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<i32, AgentError> {
        let c = self.container(id)?;
        skerry_container::validate_exec_id(exec_id)?;
        if c.init.exited().is_some() || *lock(&c.pending_start) {
            return Err(AgentError::WrongState(format!(
                "container {id} is not running"
            )));
        }
        if lock(&c.execs).contains_key(exec_id) {
            return Err(AgentError::DuplicateExec {
                container: id.to_string(),
                exec: exec_id.to_string(),
            });
        }
        let bad = |source| AgentError::BadSpec {
            id: id.to_string(),
            source,
        };
        let process = spec::parse_process(process_json).map_err(bad)?;
        let plan = engine::exec::plan(&c.spec, process).map_err(|source| AgentError::Security {
            id: id.to_string(),
            source,
        })?;
        let root = PathBuf::from(format!("/proc/{}/root", c.init.pid));
        spec::validate_process(&plan.process, &root).map_err(bad)?;
        let me = Arc::clone(self);
        let c2 = Arc::clone(&c);
        let (pid, exit, stdio) = tokio::task::spawn_blocking(move || me.exec_blocking(&c2, plan))
            .await
            .map_err(blocking_failed)??;
        let io = ProcessIo::new(stdio).map_err(|source| AgentError::Stdio {
            id: id.to_string(),
            source,
        })?;
        let p = Arc::new(Process { pid, exit, io });
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(AgentError::DuplicateExec {
                container: id.to_string(),
                exec: exec_id.to_string(),
            });
        }
        execs.insert(exec_id.to_string(), p);
        info!(container_id = id, exec_id, pid, "exec started");
        Ok(pid)
    }

    fn exec_blocking(
        &self,
        c: &Container,
        plan: engine::exec::Plan,
    ) -> Result<(i32, ExitReceiver, ParentStdio), AgentError> {
        let id = &c.id;
        let stdio_failed = |source| AgentError::Stdio {
            id: id.clone(),
            source,
        };
        let terminal = plan.process.terminal().unwrap_or(false);
        let cwd = plan.process.cwd().clone();
        let process_file = self.fresh_path(id, "p", ".json");
        let json = serde_json::to_vec(&plan.process).map_err(|e| AgentError::System {
            what: format!("container {id}: exec process JSON"),
            source: e.into(),
        })?;
        std::fs::write(&process_file, json).map_err(|source| AgentError::System {
            what: format!("container {id}: writing {}", process_file.display()),
            source,
        })?;
        let stdio = NewStdio::new(terminal, self.fresh_path(id, "c", ".sock"));
        let result = stdio.map_err(stdio_failed).and_then(|stdio| {
            let request = Request::Exec {
                id: id.clone(),
                root: self.lc_root(),
                init_pid: c.init.pid,
                plan: Box::new(plan),
                process_file: process_file.clone(),
                console_socket: stdio.console_socket(),
                channel_filter: self.guard == ChannelGuard::Seccomp,
            };
            self.launch(id, &request, stdio, &cwd)
        });
        let _ = std::fs::remove_file(&process_file);
        result
    }

    /// Sends a signal to a process, or with `all` to every process of the container.
    pub fn signal(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> Result<(), AgentError> {
        let signal = i32::try_from(sig)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::BadRequest(format!("signal {sig} is not a valid signal")))?;
        let p = self.process(id, exec_id)?;
        if p.exited().is_some() {
            return Ok(());
        }
        if all {
            let c = self.container(id)?;
            // The container's cgroup holds exactly its processes. Its pid namespace
            // may be the pod's (shared with the sandbox and the other containers), so
            // it names them only when the container has its own.
            let pids = match (&self.cgroups, c.own_pid_ns) {
                (Some(cgroups), _) => cgroups
                    .pids(id)
                    .map_err(|source| cgroup_failed(id, source))?,
                (None, true) => processes_in_pid_ns_of(c.init.pid),
                (None, false) => {
                    return Err(AgentError::WrongState(format!(
                        "container {id} shares the pod's pid namespace and this agent has \
                         no cgroups to tell its processes apart"
                    )))
                }
            };
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
        match kill(Pid::from_raw(p.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::System {
                what: format!("container {id}: kill({}, {signal})", p.pid),
                source: e.into(),
            }),
        }
    }

    /// Kills (if needed) and forgets a container.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        if c.init.exited().is_none() {
            let _ = kill(Pid::from_raw(c.init.pid), Signal::SIGKILL);
            if tokio::time::timeout(KILL_WAIT, c.init.wait())
                .await
                .is_err()
            {
                return Err(AgentError::WrongState(format!(
                    "container {id}: init {} did not exit after SIGKILL",
                    c.init.pid
                )));
            }
        }
        lock(&self.containers).remove(id);
        let me = Arc::clone(self);
        let idc = id.to_string();
        tokio::task::spawn_blocking(move || me.forget(&idc))
            .await
            .map_err(blocking_failed)?;
        info!(container_id = id, "container removed");
        Ok(())
    }

    /// The resource usage and guest pids of container `id`.
    pub fn stats(&self, id: &str) -> Result<skerry_protocol::StatsContainerResponse, AgentError> {
        self.container(id)?;
        self.cgroups()?
            .stats(id)
            .map_err(|source| cgroup_failed(id, source))
    }

    /// Applies new limits (OCI `linux.resources` JSON) to container `id`.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentError> {
        self.container(id)?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(resources_json)
            .map_err(|e| {
            AgentError::BadRequest(format!("resources: not OCI linux.resources: {e}"))
        })?;
        self.cgroups()?
            .update(id, &resources)
            .map_err(|source| cgroup_failed(id, source))
    }

    fn cgroups(&self) -> Result<&Cgroups, AgentError> {
        self.cgroups.as_ref().ok_or_else(|| {
            AgentError::WrongState("this agent has no cgroup2 hierarchy for containers".into())
        })
    }

    /// Pids of all container inits still running.
    pub fn running_inits(&self) -> Vec<i32> {
        lock(&self.containers)
            .values()
            .filter(|c| c.init.exited().is_none())
            .map(|c| c.init.pid)
            .collect()
    }
}

/// Writes sysctl `key` (`net.ipv4.x`: `/proc/sys/net/ipv4/x`) of the guest.
fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    if key
        .split('.')
        .any(|part| part.is_empty() || part == ".." || part.contains('/'))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a sysctl name",
        ));
    }
    std::fs::write(Path::new("/proc/sys").join(key.replace('.', "/")), value)
}

fn cgroup_failed(id: &str, source: CgroupError) -> AgentError {
    AgentError::Cgroup {
        id: id.to_string(),
        source,
    }
}

/// Every pid whose pid namespace is that of `init`.
fn processes_in_pid_ns_of(init: i32) -> Vec<i32> {
    let Ok(target) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == target))
        .collect()
}
