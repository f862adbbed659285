//! Container mode (`isolation = "container"`): the OCI spec executed on the
//! host kernel by youki's `libcontainer` (namespaces, pivot_root, mounts,
//! cgroups v1/v2 through cgroupfs, rlimits, capabilities, seccomp, masked and
//! read-only paths, sysctls, devices, hooks). No monitor process: as with runc,
//! the container's init is the pid `state` reports.
//!
//! The CLI and the containerd shim both drive container mode through this
//! module; the shim passes each process's stdio as fds
//! ([`create_with_stdio`], [`exec_with_stdio`]) and waits with [`wait`].
//!
//! Layout: `<root>/<id>/state.json` is ours (as for a VM container, with
//! `isolation: container`); libcontainer keeps its own state under
//! `<root>/<id>/lc/<id>/`, so deleting the container directory removes both;
//! `<root>/<id>/lock` serialises operations on one container.

use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use libcontainer::{
    container::{builder::ContainerBuilder, Container, ContainerStatus},
    error::LibcontainerError,
    signal::Signal,
    syscall::syscall::SyscallType,
};
use nix::{
    sys::wait::{waitpid, WaitStatus},
    unistd::Pid,
};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use skerry_container::engine::{self, exec};
use skerry_container::{cgroup_file, security::SecurityError};
use skerry_protocol::StatsContainerResponse;

use crate::{
    bundle::Bundle,
    config::Isolation,
    mac_labels::{self, KernelLsms},
    monitor::now_rfc3339,
    state::{lock_exclusive, ContainerState, ProcessId, StateError, StateStore, Status},
};

/// libcontainer's root inside a container's state directory.
const LIBCONTAINER_DIR: &str = "lc";

/// The lock file in the container's state directory, beside libcontainer's
/// root (inside it, it could clash with a container named like it; see
/// [`locked`]).
const LOCK_FILE: &str = "lock";

/// Failure of a container-mode operation.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// State store failure.
    #[error(transparent)]
    State(#[from] StateError),
    /// libcontainer refused or failed.
    #[error("container {id:?}: {what}")]
    Libcontainer {
        /// Container.
        id: String,
        /// The operation.
        what: &'static str,
        /// The cause (boxed: libcontainer's error is large).
        #[source]
        source: Box<LibcontainerError>,
    },
    /// The container has stopped: nothing to signal.
    #[error("container {id:?} is not running")]
    NotRunning {
        /// Container.
        id: String,
    },
    /// Not a signal number.
    #[error("invalid signal number {0}")]
    Signal(i32),
    /// The container's cgroup could not be read or written.
    #[error("container {id:?}: cgroup: {message}")]
    Cgroup {
        /// Container.
        id: String,
        /// What libcgroups said.
        message: String,
    },
    /// Waiting for a container process failed.
    #[error("waiting for process {pid}")]
    Wait {
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `process.cwd` could not be made inside the rootfs.
    #[error("container {id:?}")]
    Cwd {
        /// Container.
        id: String,
        /// What stood in the way.
        #[source]
        source: skerry_container::SpecError,
    },
    /// The container's limits cannot be applied to an exec'd process.
    #[error("container {id:?}: exec")]
    Exec {
        /// Container.
        id: String,
        /// The limit.
        #[source]
        source: SecurityError,
    },
    /// The container's config.json could not be read again.
    #[error("container {id:?}: {path}")]
    Spec {
        /// Container.
        id: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// A file of the container's state directory.
    #[error("container {id:?}: {path}")]
    Io {
        /// Container.
        id: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How `create` runs the container's init.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Write the init's host pid here.
    pub pid_file: Option<PathBuf>,
    /// Send the terminal's master here.
    pub console_socket: Option<PathBuf>,
    /// Pass fds 3..3+N to the init.
    pub preserve_fds: u32,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// The caller exits after create (a terminal then needs a console socket).
    pub detached: bool,
}

/// How `exec` runs a process in the container.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The OCI process; what it leaves out of its limits is the init's.
    pub process: Process,
    /// Write the process's host pid here.
    pub pid_file: Option<PathBuf>,
    /// Send the terminal's master here.
    pub console_socket: Option<PathBuf>,
    /// Pass fds 3..3+N to the process.
    pub preserve_fds: u32,
    /// The caller returns once the process runs.
    pub detached: bool,
}

/// The stdio of a container process when it is not the caller's own (the
/// containerd shim passes pipes or /dev/null).
#[derive(Debug)]
pub struct ProcessFds {
    /// Becomes fd 0.
    pub stdin: OwnedFd,
    /// Becomes fd 1.
    pub stdout: OwnedFd,
    /// Becomes fd 2.
    pub stderr: OwnedFd,
}

fn lc_error<'a>(
    id: &'a str,
    what: &'static str,
) -> impl FnOnce(LibcontainerError) -> PlainError + 'a {
    move |source| PlainError::Libcontainer {
        id: id.to_string(),
        what,
        source: Box::new(source),
    }
}

/// The bundle directory libcontainer creates the container from: the
/// bundle itself, or a copy of its config.json in the container's state dir
/// (with an absolute root) when libcontainer 0.7 needs the spec changed
/// ([`engine::libcontainer_spec`]; `host` tells whether it has AppArmor).
fn libcontainer_bundle(
    store: &StateStore,
    id: &str,
    bundle: &Bundle,
    host: KernelLsms,
) -> Result<PathBuf, PlainError> {
    let Some(mut spec) = engine::libcontainer_spec(&bundle.spec, host.apparmor) else {
        return Ok(bundle.dir.clone());
    };
    let dir = store.dir(id).join("bundle");
    let io = |path: &Path, source| PlainError::Io {
        id: id.into(),
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir(&dir).map_err(|e| io(&dir, e))?;
    if let Some(mut root) = spec.root().clone() {
        root.set_path(bundle.rootfs.clone());
        spec.set_root(Some(root));
    }
    let config = dir.join("config.json");
    spec.save(&config).map_err(|source| PlainError::Spec {
        id: id.into(),
        path: config,
        source,
    })?;
    Ok(dir)
}

fn lc_root(store: &StateStore, id: &str) -> PathBuf {
    store.dir(id).join(LIBCONTAINER_DIR)
}

/// A builder rooted in the container's libcontainer directory.
fn builder(
    store: &StateStore,
    id: &str,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    preserve_fds: u32,
    stdio: Option<ProcessFds>,
) -> Result<ContainerBuilder, PlainError> {
    let what = "container state directory";
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(lc_root(store, id))
        .and_then(|b| b.with_pid_file(pid_file))
        .map(|b| {
            b.with_console_socket(console_socket)
                .with_preserved_fds(preserve_fds as i32)
        })
        .map_err(lc_error(id, what))?;
    Ok(match stdio {
        Some(fds) => builder
            .with_stdin(fds.stdin)
            .with_stdout(fds.stdout)
            .with_stderr(fds.stderr),
        None => builder,
    })
}

/// Runs `f` holding the container's lock: libcontainer rewrites its state
/// file in place, so two commands on one container must not overlap.
fn locked<T>(
    store: &StateStore,
    id: &str,
    f: impl FnOnce() -> Result<T, PlainError>,
) -> Result<T, PlainError> {
    let path = store.dir(id).join(LOCK_FILE);
    let io = |source| PlainError::Io {
        id: id.into(),
        path: path.clone(),
        source,
    };
    let _lock = lock_exclusive(&path).map_err(io)?;
    f()
}

fn load(store: &StateStore, id: &str) -> Result<Container, PlainError> {
    Container::load(lc_root(store, id).join(id)).map_err(lc_error(id, "loading its state"))
}

/// Creates container `id` from `bundle`: its init waits for `start`.
/// Returns the init's pid. On failure nothing is left in the store.
pub fn create(
    store: &StateStore,
    id: &str,
    bundle: &Bundle,
    opts: &CreateOptions,
) -> Result<u32, PlainError> {
    create_with_stdio(store, id, bundle, opts, None)
}

/// [`create`], with `stdio` as the init's stdio (else the caller's own).
pub fn create_with_stdio(
    store: &StateStore,
    id: &str,
    bundle: &Bundle,
    opts: &CreateOptions,
    stdio: Option<ProcessFds>,
) -> Result<u32, PlainError> {
    // Read once: the warnings and libcontainer's copy of the spec agree.
    let host = KernelLsms::host();
    for warning in mac_labels::not_applied(&bundle.spec, host, false) {
        tracing::warn!(container = id, "{warning}");
    }
    let dir = store.create_dir(id)?;
    let created = create_in(store, id, bundle, host, opts, stdio);
    if created.is_err() {
        if let Ok(mut container) = load(store, id) {
            let _ = container.delete(true);
        }
        if let Err(e) = store.remove(id) {
            tracing::warn!(container = id, dir = %dir.display(), error = %e, "removing state after failed create");
        }
    }
    created
}

fn create_in(
    store: &StateStore,
    id: &str,
    bundle: &Bundle,
    host: KernelLsms,
    opts: &CreateOptions,
    stdio: Option<ProcessFds>,
) -> Result<u32, PlainError> {
    let root = lc_root(store, id);
    fs::create_dir(&root).map_err(|source| PlainError::Io {
        id: id.into(),
        path: root.clone(),
        source,
    })?;
    engine::create_cwd(&bundle.spec, &bundle.rootfs).map_err(|source| PlainError::Cwd {
        id: id.into(),
        source,
    })?;
    let init = builder(
        store,
        id,
        opts.pid_file.as_deref(),
        opts.console_socket.as_deref(),
        opts.preserve_fds,
        stdio,
    )?
    .with_executor(engine::InitExecutor)
    .as_init(libcontainer_bundle(store, id, bundle, host)?)
    .with_systemd(false)
    .with_detach(opts.detached)
    .with_no_pivot(opts.no_pivot);
    let container = engine::build(|| init.build()).map_err(lc_error(id, "create"))?;
    let pid =
        container
            .pid()
            .map(|p| p.as_raw() as u32)
            .ok_or_else(|| PlainError::Libcontainer {
                id: id.into(),
                what: "create",
                source: Box::new(LibcontainerError::Other("no init pid recorded".into())),
            })?;
    protect_cgroup_mounts(id, &bundle.spec, pid)?;
    let state = ContainerState {
        id: id.to_string(),
        bundle: bundle.dir.clone(),
        status: Status::Created,
        monitor: ProcessId::of(pid),
        vm_processes: vec![],
        agent_socket: None,
        exit_status: None,
        created: now_rfc3339(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        isolation: Isolation::Container,
    };
    store.save(&state)?;
    Ok(pid)
}

/// Makes a `cgroup` mount the spec asks for read-only (`ro`) read-only in
/// the created container, as runc does. libcontainer 0.7 mounts cgroup v1
/// hierarchies read-write whatever the options say, which would let the
/// container's root raise its own limits (without a user namespace, the
/// cgroup files are its to write).
fn protect_cgroup_mounts(id: &str, spec: &Spec, pid: u32) -> Result<(), PlainError> {
    let readonly_cgroups: Vec<&Path> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.typ().as_deref() == Some("cgroup"))
        .filter(|m| m.options().iter().flatten().any(|o| o == "ro"))
        .map(|m| m.destination().as_path())
        .collect();
    if readonly_cgroups.is_empty() {
        return Ok(());
    }
    let error = |message: String| PlainError::Cgroup {
        id: id.into(),
        message,
    };
    let mounts = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.mountinfo())
        .map_err(|e| error(format!("reading the container's mounts: {e}")))?;
    // The hierarchies in the cgroup tmpfs (which stays writable, as runc
    // leaves it: it is the container's own).
    let paths: Vec<std::ffi::CString> = mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| {
            readonly_cgroups
                .iter()
                .any(|dest| p.starts_with(dest) && p != dest)
        })
        .filter_map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok())
        .collect();
    skerry_container::sys::remount_readonly_in(pid as i32, &paths)
        .map_err(|e| error(format!("{}: {}", e.call, e.errno)))
}

/// Records `status` in our state once libcontainer has moved there, unless
/// the container has stopped meanwhile (a short-lived init may exit, and its
/// waiter record that, before `start` returns).
fn record(store: &StateStore, id: &str, status: Status) -> Result<(), PlainError> {
    store.update(id, |s| {
        if s.status != Status::Stopped {
            s.status = status;
        }
    })?;
    Ok(())
}

/// Starts a created container (runs its poststart hooks).
pub fn start(store: &StateStore, id: &str) -> Result<(), PlainError> {
    locked(store, id, || {
        load(store, id)?.start().map_err(lc_error(id, "start"))?;
        record(store, id, Status::Running)
    })
}

/// Freezes (`pause`) or thaws the container's cgroup.
pub fn pause(store: &StateStore, id: &str, pause: bool) -> Result<(), PlainError> {
    locked(store, id, || {
        let mut container = load(store, id)?;
        if pause {
            container.pause().map_err(lc_error(id, "pause"))?;
            record(store, id, Status::Paused)
        } else {
            container.resume().map_err(lc_error(id, "resume"))?;
            record(store, id, Status::Running)
        }
    })
}

/// Sends `signal` to the init (or every process of the container).
pub fn kill(store: &StateStore, id: &str, signal: i32, all: bool) -> Result<(), PlainError> {
    let signal = Signal::try_from(signal).map_err(|_| PlainError::Signal(signal))?;
    locked(store, id, || {
        load(store, id)?.kill(signal, all).map_err(|e| match e {
            LibcontainerError::IncorrectStatus(ContainerStatus::Stopped) => {
                PlainError::NotRunning { id: id.into() }
            }
            e => lc_error(id, "kill")(e),
        })
    })
}

/// Kills what is left (with `force`), runs poststop hooks, removes the
/// cgroup and every piece of state.
pub fn delete(store: &StateStore, id: &str, force: bool) -> Result<(), PlainError> {
    locked(store, id, || {
        match load(store, id) {
            Ok(mut container) => match container.delete(force) {
                Ok(()) => {}
                // A failing poststop hook is only a warning (OCI runtime
                // spec, and runc): libcontainer has removed the cgroup by
                // then, and the state goes below.
                Err(LibcontainerError::Hook(e)) => {
                    tracing::warn!(container = id, error = %e, "poststop hook failed");
                }
                Err(e) => return Err(lc_error(id, "delete")(e)),
            },
            // A create that died before libcontainer wrote its state.
            Err(e) if !lc_root(store, id).join(id).exists() => {
                tracing::warn!(container = id, error = %e, "no libcontainer state");
            }
            Err(e) => return Err(e),
        }
        Ok(store.remove(id)?)
    })
}

/// Runs a new process in the running container, with the container's
/// seccomp filter and, where the process names none, the init's
/// capabilities, noNewPrivileges, rlimits and MAC labels; returns its host
/// pid.
pub fn exec(store: &StateStore, id: &str, opts: &ExecOptions) -> Result<u32, PlainError> {
    exec_with_stdio(store, id, opts, None)
}

/// [`exec`], with `stdio` as the process's stdio (else the caller's own).
pub fn exec_with_stdio(
    store: &StateStore,
    id: &str,
    opts: &ExecOptions,
    stdio: Option<ProcessFds>,
) -> Result<u32, PlainError> {
    let pid = locked(store, id, || {
        let config = load(store, id)?.bundle().join("config.json");
        let init = Spec::load(&config).map_err(|source| PlainError::Spec {
            id: id.into(),
            path: config,
            source,
        })?;
        let exec_failed = |source| PlainError::Exec {
            id: id.into(),
            source,
        };
        let mut plan = exec::plan(&init, opts.process.clone()).map_err(exec_failed)?;
        let init_pid = load(store, id)?.pid().map_or(0, |p| p.as_raw());
        // Open until the build returns: libcontainer's processes join it.
        let _user_ns = plan.open_user_namespace(init_pid).map_err(exec_failed)?;
        let file = store.dir(id).join(exec::process_file_name());
        let io = |source| PlainError::Io {
            id: id.into(),
            path: file.clone(),
            source,
        };
        let json = serde_json::to_vec(&plan.process).map_err(|e| io(e.into()))?;
        fs::write(&file, json).map_err(io)?;
        let pid = builder(
            store,
            id,
            opts.pid_file.as_deref(),
            opts.console_socket.as_deref(),
            opts.preserve_fds,
            stdio,
        )
        .map(|b| b.with_executor(plan.executor))
        .and_then(|b| {
            let tenant = b
                .as_tenant()
                .with_detach(opts.detached)
                .with_process(Some(&file));
            engine::build(|| tenant.build()).map_err(lc_error(id, "exec"))
        });
        let _ = fs::remove_file(&file);
        pid
    })?;
    Ok(pid.as_raw() as u32)
}

/// The container's cgroup manager, and its cgroup path.
fn cgroup_manager(store: &StateStore, id: &str) -> Result<(AnyCgroupManager, PathBuf), PlainError> {
    let config = locked(store, id, || {
        load(store, id)?
            .spec()
            .map_err(lc_error(id, "reading its config"))
    })?;
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: config.cgroup_path.clone(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| cgroup_error(id, &e))?;
    Ok((manager, config.cgroup_path))
}

/// How many of the container's processes the kernel's OOM killer ended:
/// the `oom_kill` count of its memory cgroup (`memory.oom_control` on
/// cgroup v1, `memory.events` on v2).
fn oom_kills(id: &str, manager: &AnyCgroupManager, cgroup_path: &Path) -> Result<u64, PlainError> {
    let (mount, file) = match manager {
        AnyCgroupManager::V1(_) => (
            libcgroups::v1::util::get_subsystem_mount_point(
                &libcgroups::v1::ControllerType::Memory,
            )
            .map_err(|e| cgroup_error(id, &e))?,
            "memory.oom_control",
        ),
        _ => (
            libcgroups::v2::util::get_unified_mount_point().map_err(|e| cgroup_error(id, &e))?,
            "memory.events",
        ),
    };
    let path = mount
        .join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
        .join(file);
    let text = fs::read_to_string(&path).map_err(|source| PlainError::Io {
        id: id.into(),
        path,
        source,
    })?;
    Ok(cgroup_file::keyed(&text, "oom_kill"))
}

fn cgroup_error(id: &str, e: &dyn std::fmt::Display) -> PlainError {
    PlainError::Cgroup {
        id: id.into(),
        message: e.to_string(),
    }
}

/// Host pids of every process in the container's cgroup.
pub fn pids(store: &StateStore, id: &str) -> Result<Vec<u32>, PlainError> {
    sorted_pids(id, &cgroup_manager(store, id)?.0)
}

/// Host pids in the cgroup of `manager`, sorted.
fn sorted_pids(id: &str, manager: &AnyCgroupManager) -> Result<Vec<u32>, PlainError> {
    let mut pids: Vec<u32> = manager
        .get_all_pids()
        .map_err(|e| cgroup_error(id, &e))?
        .into_iter()
        .map(|p| p.as_raw() as u32)
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Waits for `pid`, a child of the caller (libcontainer starts a
/// container's init and exec'd processes as siblings of its intermediate
/// process, so as children of the process that called [`create`] or
/// [`exec`]); returns its status as a shell reports it (128 + signal).
pub async fn wait(pid: u32) -> Result<i32, PlainError> {
    let err = |source| PlainError::Wait { pid, source };
    let child = Pid::from_raw(pid as i32);
    let status = tokio::task::spawn_blocking(move || waitpid(child, None))
        .await
        .map_err(|e| err(std::io::Error::other(e)))?
        .map_err(|e| err(e.into()))?;
    match status {
        WaitStatus::Exited(_, code) => Ok(code),
        WaitStatus::Signaled(_, signal, _) => Ok(128 + signal as i32),
        other => Err(err(std::io::Error::other(format!(
            "unexpected wait status {other:?}"
        )))),
    }
}

/// Resource usage, OOM kills and host pids of the container, from its host
/// cgroup (CPU times in µs).
pub fn stats(store: &StateStore, id: &str) -> Result<StatsContainerResponse, PlainError> {
    let (manager, cgroup_path) = cgroup_manager(store, id)?;
    let s = manager.stats().map_err(|e| cgroup_error(id, &e))?;
    let cpu = &s.cpu.usage;
    let (usage, user, system) = match manager {
        // cpuacct: total in ns, user and system in USER_HZ (100/s) ticks.
        AnyCgroupManager::V1(_) => (
            cpu.usage_total / 1000,
            cpu.usage_user * 10_000,
            cpu.usage_kernel * 10_000,
        ),
        _ => (cpu.usage_total, cpu.usage_user, cpu.usage_kernel),
    };
    Ok(StatsContainerResponse {
        cpu_usage_usec: usage,
        cpu_user_usec: user,
        cpu_system_usec: system,
        memory_usage: s.memory.memory.usage,
        memory_limit: s.memory.memory.limit,
        pids_current: s.pids.current,
        pids_limit: s.pids.limit,
        oom_kills: oom_kills(id, &manager, &cgroup_path)?,
        pids: sorted_pids(id, &manager)?,
        ..Default::default()
    })
}

/// Applies new resource limits to the container's cgroup (`update`).
pub fn update(store: &StateStore, id: &str, resources: &LinuxResources) -> Result<(), PlainError> {
    cgroup_manager(store, id)?
        .0
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| cgroup_error(id, &e))
}
