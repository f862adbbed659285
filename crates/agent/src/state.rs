//! Containers and processes of the sandbox, and the operations the API performs on them.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxSeccomp, Spec};
use skerry_container::launch::{self, LaunchError};
use skerry_container::{spec, IdError, InitConfig, SpecError};
use tracing::{info, warn};

use crate::cgroup::{CgroupError, Cgroups};
use crate::confine::Launcher;
use crate::reaper::{ExitInfo, ExitReceiver, Reaper};
use crate::stdio::{ProcessIo, StdioError};

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
    /// Creating or starting the process failed in the child.
    #[error("container {id}")]
    Setup {
        /// Container id.
        id: String,
        /// The launch failure, with the child's own message.
        #[source]
        source: LaunchError,
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
    clone_flags: CloneFlags,
    /// The spec's seccomp filter, for exec'd processes.
    seccomp: Option<LinuxSeccomp>,
    /// The spec's process: what an exec leaves out of its limits comes from it.
    init_spec: Option<oci_spec::runtime::Process>,
    /// Channel to the init process while it waits for StartContainer.
    pending_start: Mutex<Option<UnixStream>>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// All containers of the sandbox.
pub struct Sandbox {
    reaper: Arc<Reaper>,
    /// Clones container processes: the agent's own threads are confined.
    launcher: Launcher,
    shared_dir: PathBuf,
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
        shared_dir: PathBuf,
        cgroups: Option<Cgroups>,
    ) -> Self {
        Sandbox {
            reaper,
            launcher,
            shared_dir,
            cgroups,
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
        }
    }

    /// Clones `prepared`'s child on the launcher thread, registered with the
    /// reaper before it can be reaped; hands `prepared` back.
    #[allow(clippy::type_complexity)]
    fn spawn(
        &self,
        prepared: launch::Prepared,
    ) -> (
        launch::Prepared,
        Result<(i32, ExitReceiver), skerry_container::LaunchError>,
    ) {
        let mut back = None;
        let spawned = self.reaper.spawn_registered(|| {
            let (prepared, pid) = self.launcher.run(move || {
                let pid = prepared.clone_child();
                (prepared, pid)
            });
            back = Some(prepared);
            pid
        });
        (back.expect("the launcher hands it back"), spawned)
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
    /// non-empty `join_namespaces_of` names the pod's sandbox container, whose IPC and UTS
    /// namespaces the new one joins where its spec joins them by path.
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
        let parsed = spec::parse_spec(spec_json).map_err(|source| AgentError::BadSpec {
            id: id.to_string(),
            source,
        });
        let spec = match parsed {
            Ok(spec) => spec,
            Err(e) => {
                lock(&self.reserved).remove(id);
                return Err(e);
            }
        };
        // Exec'd processes get the container's seccomp filter too, and its
        // process limits where they ask for none.
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let init_spec = spec.process().clone();
        let me = Arc::clone(self);
        let idc = id.to_string();
        let result = tokio::task::spawn_blocking(move || me.create_blocking(&idc, spec, pod_init))
            .await
            .map_err(blocking_failed)
            .and_then(|r| r);
        let result = result.and_then(|(pid, exit, chan, stdio, flags)| {
            let io = ProcessIo::new(stdio).map_err(|source| AgentError::Stdio {
                id: id.to_string(),
                source,
            })?;
            Ok((pid, exit, chan, io, flags))
        });
        lock(&self.reserved).remove(id);
        let (pid, exit, chan, io, clone_flags) = result?;
        let container = Arc::new(Container {
            id: id.to_string(),
            init: Arc::new(Process { pid, exit, io }),
            clone_flags,
            seccomp,
            init_spec,
            pending_start: Mutex::new(Some(chan)),
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
        if c.init.exited().is_some() || lock(&c.pending_start).is_some() {
            return Err(not("not running"));
        }
        Ok(Some(c.init.pid))
    }

    #[allow(clippy::type_complexity)]
    fn create_blocking(
        &self,
        id: &str,
        spec: Spec,
        pod_init: Option<i32>,
    ) -> Result<
        (
            i32,
            ExitReceiver,
            UnixStream,
            skerry_container::ParentStdio,
            CloneFlags,
        ),
        AgentError,
    > {
        let bad = |source| AgentError::BadSpec {
            id: id.to_string(),
            source,
        };
        let rootfs = self.shared_dir.join(id).join("rootfs");
        if !rootfs.is_dir() {
            return Err(AgentError::WrongState(format!(
                "container {id}: rootfs {} does not exist (not shared by the host?)",
                rootfs.display()
            )));
        }
        spec::validate_spec(&spec, &rootfs).map_err(bad)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        // With a terminal, the init allocates the pty in the container's own devpts and
        // sends the master back during the handshake (as runc does).
        let namespaces = launch::container_namespaces(&spec, pod_init.is_some());
        let (flags, join) = (namespaces.flags, namespaces.join);
        for w in &namespaces.warnings {
            warn!(container_id = id, "{w}");
        }
        let setup = |source| AgentError::Setup {
            id: id.to_string(),
            source,
        };
        let mut prepared = launch::prepare(terminal, flags).map_err(setup)?;
        if let (true, Some(pod)) = (namespaces.join_pid, pod_init) {
            prepared.in_pid_namespace_of(pod).map_err(setup)?;
        }
        if let Some(cgroups) = &self.cgroups {
            let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
            cgroups
                .create(id, resources)
                .map_err(|source| cgroup_failed(id, source))?;
        }
        let (prepared, spawned) = self.spawn(prepared);
        let (pid, exit) = spawned.map_err(|e| self.cgroup_undo(id, setup(e)))?;
        let (mut chan, pipes) = prepared.into_parent();
        if let Some(cgroups) = &self.cgroups {
            if let Err(source) = cgroups.add(id, pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(self.cgroup_undo(id, cgroup_failed(id, source)));
            }
        }
        let config = InitConfig::Container {
            id: id.to_string(),
            spec: Box::new(spec),
            rootfs,
            join: pod_init
                .map(|pid| (pid, join))
                .filter(|(_, names)| !names.is_empty()),
        };
        let ready = launch::handshake(&mut chan, pid, &config, |_| {})
            .and_then(|ready| launch::parent_stdio(pipes, ready.console));
        match ready {
            Ok(stdio) => Ok((pid, exit, chan, stdio, flags)),
            Err(e) => {
                // The child exits by itself after reporting; make sure of it either way.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(self.cgroup_undo(id, setup(e)))
            }
        }
    }

    /// Lets a created container exec its program.
    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        let chan = lock(&c.pending_start).take().ok_or_else(|| {
            let state = if c.init.exited().is_some() {
                "stopped"
            } else {
                "running"
            };
            AgentError::WrongState(format!("container {id} is {state}, not created"))
        })?;
        tokio::task::spawn_blocking(move || launch::release(chan))
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
        if c.init.exited().is_some() || lock(&c.pending_start).is_some() {
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
        let mut process = spec::parse_process(process_json).map_err(bad)?;
        if let Some(init) = &c.init_spec {
            process = skerry_container::security::exec_process(init, process);
        }
        let root = PathBuf::from(format!("/proc/{}/root", c.init.pid));
        spec::validate_process(&process, &root).map_err(bad)?;
        let me = Arc::clone(self);
        let c2 = Arc::clone(&c);
        let (pid, exit, stdio) =
            tokio::task::spawn_blocking(move || me.exec_blocking(&c2, process))
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
        process: oci_spec::runtime::Process,
    ) -> Result<(i32, ExitReceiver, skerry_container::ParentStdio), AgentError> {
        let setup = |source| AgentError::Setup {
            id: c.id.clone(),
            source,
        };
        let terminal = process.terminal().unwrap_or(false);
        let prepared = launch::prepare(terminal, CloneFlags::empty()).map_err(setup)?;
        let (prepared, spawned) = self.spawn(prepared);
        let (child, _) = spawned.map_err(setup)?;
        let (mut chan, pipes) = prepared.into_parent();
        let config = InitConfig::Exec {
            id: c.id.clone(),
            process: Box::new(process),
            target_pid: c.init.pid,
            namespaces: launch::exec_namespaces(c.clone_flags),
            seccomp: c.seccomp.clone().map(Box::new),
        };
        let mut registered = None;
        let mut cgroup = Ok(());
        let r = launch::handshake(&mut chan, child, &config, |pid| {
            registered = Some((pid, self.reaper.register(pid)));
            if let Some(cgroups) = &self.cgroups {
                cgroup = cgroups.add(&c.id, pid);
            }
        })
        .and_then(|ready| launch::parent_stdio(pipes, ready.console));
        if let (Err(source), Some((pid, _))) = (cgroup, &registered) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            return Err(cgroup_failed(&c.id, source));
        }
        match (r, registered) {
            (Ok(stdio), Some((pid, exit))) => {
                launch::release(chan).map_err(setup)?;
                Ok((pid, exit, stdio))
            }
            (Ok(_), None) => Err(setup(LaunchError::Protocol)),
            (Err(e), reg) => {
                if let Some((pid, _)) = reg {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                Err(setup(e))
            }
        }
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
            let own_pid_ns = c.clone_flags.contains(CloneFlags::CLONE_NEWPID);
            let pids = match (&self.cgroups, own_pid_ns) {
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
    pub async fn remove(&self, id: &str) -> Result<(), AgentError> {
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
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(id);
        }
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

    /// Removes container `id`'s cgroup after a failed create; returns `e`.
    fn cgroup_undo(&self, id: &str, e: AgentError) -> AgentError {
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(id);
        }
        e
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
