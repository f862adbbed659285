//! The on-disk state store: one directory per container under the root
//! (`--root`, default `/run/skerry`), holding `state.json`, the monitor's
//! control socket, the VM's run files and the directory shared with the guest.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    fcntl::{Flock, FlockArg},
    sys::signal::Signal,
    unistd::Pid,
};

use serde::{Deserialize, Serialize};

use crate::config::Isolation;

/// Default state root.
pub const DEFAULT_ROOT: &str = "/run/skerry";

const STATE_FILE: &str = "state.json";

/// Serialises [`StateStore::update`]s of one container.
const UPDATE_LOCK_FILE: &str = ".state.lock";

/// Failure of a state-store operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id breaks the naming rule.
    #[error("invalid container id: {0}")]
    InvalidId(String),
    /// A container with this id exists already.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// Reading or writing a state file failed.
    #[error("state of container {id:?}: {path}")]
    Io {
        /// The container.
        id: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `state.json` is not what this runtime wrote.
    #[error("state of container {id:?}: corrupt {path}: {message}")]
    Corrupt {
        /// The container.
        id: String,
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
}

/// OCI lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The VM is being prepared.
    Creating,
    /// The container process waits for `start`.
    Created,
    /// The user program runs.
    Running,
    /// Every process of the container is stopped (`pause`).
    Paused,
    /// The user program has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A host process named by pid and its start time, so that a reused pid is
/// never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Host pid.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies the running process `pid`, or `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        proc_start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether this very process is still alive (not a zombie, not a reused pid).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        match parse_stat(&stat) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends `sig` if this very process is still alive.
    pub fn signal(&self, sig: Signal) {
        if self.is_alive() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// Waits up to `timeout` for it to exit; true once it has.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_alive() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// SIGKILLs it if it is still that very process, and waits (up to 5 s) for it to go.
    pub async fn kill_and_wait(&self) {
        if self.is_alive() {
            self.signal(Signal::SIGKILL);
            self.wait_exit(Duration::from_secs(5)).await;
        }
    }
}

/// Parses the state letter and start time out of a /proc/<pid>/stat line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may contain spaces and parentheses: split
    // after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 19 fields further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// What `state.json` records about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Lifecycle status as last recorded by the monitor.
    pub status: Status,
    /// The monitor: the process that stands for the container on the host.
    pub monitor: Option<ProcessId>,
    /// Host processes of the VM (hypervisor, device back ends), for cleanup
    /// when the monitor is gone.
    #[serde(default)]
    pub vm_processes: Vec<ProcessId>,
    /// Host socket through which exec proxies reach the guest agent.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Exit status of the container process, once stopped.
    pub exit_status: Option<i32>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// How the container is isolated (state files without it are VMs').
    #[serde(default)]
    pub isolation: Isolation,
}

impl ContainerState {
    /// The status a reader should believe: a created/running container whose
    /// monitor is gone has stopped.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Creating | Status::Created | Status::Running | Status::Paused
                if !self.monitor.is_some_and(|m| m.is_alive()) =>
            {
                Status::Stopped
            }
            s => s,
        }
    }
}

/// Opens (creating it) and exclusively `flock`s the file at `path`; the lock
/// holds until the returned guard is dropped.
pub fn lock_exclusive(path: &Path) -> std::io::Result<Flock<fs::File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno.into())
}

/// Longest container id on the host: the VM's socket paths, which live under
/// the container's state directory, must fit in a Unix socket address.
pub const MAX_ID_LEN: usize = 64;

/// Checks a container id: the guest agent's rule, and at most [`MAX_ID_LEN`]
/// bytes. It names a directory, so no path tricks get through.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    skerry_container::id::validate_container_id(id)
        .map_err(|e| StateError::InvalidId(e.to_string()))?;
    if id.len() > MAX_ID_LEN {
        return Err(StateError::InvalidId(format!(
            "container id is {} bytes long, at most {MAX_ID_LEN} allowed",
            id.len()
        )));
    }
    Ok(())
}

/// The state root directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// A store rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates the directory of a new container; fails if the id is taken.
    /// Creation is atomic, so two racing `create`s cannot both win.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        let io = |path: &Path, source| StateError::Io {
            id: id.to_string(),
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(&self.root).map_err(|e| io(&self.root, e))?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io(&dir, e)),
        }
    }

    /// Reads the state of container `id`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(source) => {
                return Err(StateError::Io {
                    id: id.to_string(),
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            id: id.to_string(),
            path,
            message: e.to_string(),
        })
    }

    /// Writes the state atomically (a temp file of its own + rename, so
    /// concurrent writers never share a half-written file).
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let dir = self.dir(&state.id);
        let path = dir.join(STATE_FILE);
        let io = |source| StateError::Io {
            id: state.id.clone(),
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        // Atomic, not durable: the state root is a tmpfs (/run) in practice,
        // and a container does not survive a host reboot anyway.
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.json.")
            .tempfile_in(&dir)
            .map_err(io)?;
        tmp.write_all(&json).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Reads, changes and writes back the state of container `id` as one
    /// step: two processes (or tasks) recording a status never lose each
    /// other's change. Returns the state written.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut ContainerState),
    ) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join(UPDATE_LOCK_FILE);
        let io = |source| StateError::Io {
            id: id.to_string(),
            path: path.clone(),
            source,
        };
        let _lock = lock_exclusive(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(id.to_string()),
            _ => io(e),
        })?;
        let mut state = self.load(id)?;
        change(&mut state);
        self.save(&state)?;
        Ok(state)
    }

    /// Ids of all containers with a state file, sorted.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    /// Removes the container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                id: id.to_string(),
                path: dir,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            bundle: "/b".into(),
            status: Status::Created,
            monitor: ProcessId::of(std::process::id()),
            vm_processes: vec![],
            agent_socket: None,
            exit_status: None,
            created: "2026-01-01T00:00:00Z".into(),
            annotations: HashMap::new(),
            isolation: Isolation::Vm,
        }
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "c1", "A.b-c_d", &"x".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "..", ".a", "a/b", "-a", "a b", &"x".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn save_load_round_trip_and_duplicate_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path().join("root"));
        store.create_dir("c1").unwrap();
        assert!(matches!(store.create_dir("c1"), Err(StateError::Exists(_))));
        let s = state("c1");
        store.save(&s).unwrap();
        assert_eq!(store.load("c1").unwrap(), s);
        assert_eq!(store.list(), vec!["c1".to_string()]);
        store.remove("c1").unwrap();
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
        assert!(store.list().is_empty());
    }

    #[test]
    fn concurrent_updates_are_neither_lost_nor_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        store.create_dir("c1").unwrap();
        store.save(&state("c1")).unwrap();
        // Writers in threads of one process, as the shim's tasks are.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        store
                            .update("c1", |s| {
                                let n: u32 =
                                    s.annotations.get("n").map_or(0, |n| n.parse().unwrap());
                                s.annotations.insert("n".into(), (n + 1).to_string());
                            })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(store.load("c1").unwrap().annotations["n"], "200");
        // Plain saves racing each other all succeed.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..50).for_each(|_| store.save(&state("c1")).unwrap()));
            }
        });
        // No temp file is left behind.
        let mut names: Vec<_> = fs::read_dir(store.dir("c1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [UPDATE_LOCK_FILE, STATE_FILE]);
        assert!(matches!(
            store.update("gone", |_| {}),
            Err(StateError::NotFound(_))
        ));
    }

    #[test]
    fn corrupt_state_is_reported_with_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path());
        let dir = store.create_dir("c1").unwrap();
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        let err = store.load("c1").unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    #[test]
    fn dead_monitor_means_stopped() {
        let mut s = state("c1");
        assert_eq!(s.effective_status(), Status::Created);
        s.monitor = Some(ProcessId {
            pid: std::process::id(),
            start_time: 1, // not our start time: a reused pid
        });
        assert_eq!(s.effective_status(), Status::Stopped);
        s.monitor = None;
        assert_eq!(s.effective_status(), Status::Stopped);
    }

    #[test]
    fn stat_parsing_handles_odd_command_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_stat(line), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
