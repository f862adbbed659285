//! Parent side of starting a container process: stdio, the `init` channel and the clone.
//!
//! The clone child only rewires fds and re-executes the current binary as
//! `<exe> init` (see [`crate::init`]), which is safe in a multi-threaded parent.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::channel::{self, ChannelError, InitConfig, SyncMsg, INIT_FD, INIT_FD_ENV};
use crate::sys::{self, Forked, SysError};
use crate::userns;

/// How long the parent waits for the child's setup before giving up.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starting a container process failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Creating pipes or the channel, or preparing the pty master, failed.
    #[error("preparing {what}")]
    Prepare {
        /// What was being prepared.
        what: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// clone(2) failed.
    #[error("creating the process")]
    Clone(#[source] SysError),
    /// The channel to the child broke.
    #[error("talking to the container's init process")]
    Channel(#[from] ChannelError),
    /// The child reported a setup or exec failure.
    #[error("{0}")]
    Child(String),
    /// The child went away without a report.
    #[error("container init process exited during setup without a report")]
    Vanished,
    /// The child sent a message out of order.
    #[error("container init process sent an unexpected message")]
    Protocol,
    /// The terminal the child sent is unusable.
    #[error("container init process sent a bad terminal: {0}")]
    BadConsole(String),
    /// The container's user namespace could not be mapped.
    #[error("linux.namespaces: user namespace")]
    UserNamespace(#[from] userns::UserNsError),
    /// The pod's pid namespace could not be opened, entered or left.
    #[error("{what} the pod's pid namespace")]
    PidNamespace {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The parent's ends of a process's stdio.
#[derive(Debug)]
pub struct ParentStdio {
    /// Where stdin is written (pipe write end or pty master); non-blocking.
    pub stdin: OwnedFd,
    /// Where stdout is read (pipe read end or pty master); non-blocking.
    pub stdout: OwnedFd,
    /// Where stderr is read; `None` with a terminal. Non-blocking.
    pub stderr: Option<OwnedFd>,
    /// Whether the process has a pty (then `stdin`/`stdout` are the master).
    pub terminal: bool,
}

/// Everything built before the clone, so the child does no allocation.
#[derive(Debug)]
pub struct Prepared {
    flags: CloneFlags,
    exe: CString,
    _args: [CString; 2],
    argv: [*const libc::c_char; 3],
    _env: CString,
    envp: [*const libc::c_char; 2],
    child_stdio: [OwnedFd; 3],
    child_chan: OwnedFd,
    parent_chan: UnixStream,
    /// The parent's pipe ends; `None` with a terminal (the child sends the pty master).
    pipes: Option<ParentStdio>,
    /// The pid namespace the child is cloned into, if not a new or the caller's one.
    pid_ns: Option<OwnedFd>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same struct (heap data that
// does not move with the struct), so sending it to another thread keeps them valid.
unsafe impl Send for Prepared {}

/// Resource limits every cloned child sets first (see [`set_child_rlimits`]).
static CHILD_RLIMITS: OnceLock<Vec<(libc::c_int, libc::rlimit)>> = OnceLock::new();

/// Records the resource limits (resource, limit) every child cloned from here on sets
/// before it execs: the ones the process had before it lowered its own (the agent
/// confines itself; its containers must not inherit that). Only the first call counts.
pub fn set_child_rlimits(limits: Vec<(libc::c_int, libc::rlimit)>) {
    let _ = CHILD_RLIMITS.set(limits);
}

fn prep<T>(what: &'static str, r: nix::Result<T>) -> Result<T, LaunchError> {
    r.map_err(|source| LaunchError::Prepare { what, source })
}

fn set_cloexec(fd: &OwnedFd) -> nix::Result<()> {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map(drop)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    prep("stdio pipe", nix::unistd::pipe2(OFlag::O_CLOEXEC))
}

/// Builds stdio, the channel and the exec arguments for one child. With a terminal the
/// child starts on `/dev/null` and allocates its pty itself, inside the container (see
/// [`handshake`] and [`parent_stdio`]); otherwise it gets pipes.
pub fn prepare(terminal: bool, flags: CloneFlags) -> Result<Prepared, LaunchError> {
    let (child_stdio, pipes) = if terminal {
        let null = prep(
            "/dev/null for a terminal process's setup",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(io_to_nix),
        )?;
        let n1 = prep("/dev/null", null.try_clone().map_err(io_to_nix))?;
        let n2 = prep("/dev/null", null.try_clone().map_err(io_to_nix))?;
        ([null, n1, n2], None)
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&in_w, &out_r, &err_r] {
            prep("stdio pipe", set_nonblocking(fd))?;
        }
        (
            [in_r, out_w, err_w],
            Some(ParentStdio {
                stdin: in_w,
                stdout: out_r,
                stderr: Some(err_r),
                terminal: false,
            }),
        )
    };
    let (parent_chan, child_chan) = prep(
        "init channel",
        UnixStream::pair()
            .map(|(a, b)| (a, OwnedFd::from(b)))
            .map_err(io_to_nix),
    )?;
    prep(
        "init channel",
        parent_chan
            .set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(io_to_nix),
    )?;
    let exe = CString::from(c"/proc/self/exe");
    let args = [CString::from(c"skerry-agent"), CString::from(c"init")];
    let argv = [args[0].as_ptr(), args[1].as_ptr(), std::ptr::null()];
    let env = CString::new(format!("{INIT_FD_ENV}={INIT_FD}")).expect("no NUL in env");
    let envp = [env.as_ptr(), std::ptr::null()];
    Ok(Prepared {
        // The init unshares its cgroup namespace itself, once the parent has moved it
        // into its cgroup, so that the namespace is rooted there (see `init`), and its
        // user namespace once it is set up (see `userns`).
        flags: flags.difference(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWUSER),
        exe,
        _args: args,
        argv,
        _env: env,
        envp,
        child_stdio,
        child_chan,
        parent_chan,
        pipes,
        pid_ns: None,
    })
}

fn io_to_nix(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Prepared {
    /// Makes the child be cloned into the pid namespace of process `pid` (the pod sandbox
    /// container's init) instead of a new one.
    pub fn in_pid_namespace_of(&mut self, pid: i32) -> Result<(), LaunchError> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/pid")).map_err(|source| {
            LaunchError::PidNamespace {
                what: "opening",
                source,
            }
        })?;
        self.flags.remove(CloneFlags::CLONE_NEWPID);
        self.pid_ns = Some(ns.into());
        Ok(())
    }

    /// Clones the child (which re-execs as `init`); returns its pid. Keep this call short:
    /// callers hold their reaper lock around it. With [`Prepared::in_pid_namespace_of`]
    /// the calling thread's namespace for children is that one around the clone and
    /// its own again after.
    pub fn clone_child(&self) -> Result<i32, LaunchError> {
        let Some(pod) = &self.pid_ns else {
            return self.clone_here();
        };
        let ns_err = |what| {
            move |e: nix::Error| LaunchError::PidNamespace {
                what,
                source: e.into(),
            }
        };
        let own = std::fs::File::open("/proc/self/ns/pid").map_err(|source| {
            LaunchError::PidNamespace {
                what: "opening the agent's own pid namespace to return from",
                source,
            }
        })?;
        nix::sched::setns(pod, CloneFlags::CLONE_NEWPID).map_err(ns_err("entering"))?;
        let cloned = self.clone_here();
        nix::sched::setns(&own, CloneFlags::CLONE_NEWPID).map_err(ns_err("leaving"))?;
        cloned
    }

    fn clone_here(&self) -> Result<i32, LaunchError> {
        let stdio: [RawFd; 3] = [
            self.child_stdio[0].as_raw_fd(),
            self.child_stdio[1].as_raw_fd(),
            self.child_stdio[2].as_raw_fd(),
        ];
        let chan = self.child_chan.as_raw_fd();
        let rlimits = CHILD_RLIMITS.get().map_or(&[][..], Vec::as_slice);
        // SAFETY: the child branch only calls `child_exec`, which is async-signal-safe and
        // uses fds and C strings built above, all alive for the duration of the call.
        match unsafe { sys::clone_process(self.flags.bits()) }.map_err(LaunchError::Clone)? {
            Forked::Parent(pid) => Ok(pid),
            // SAFETY: we are the freshly cloned child; argv/envp are NULL-terminated.
            Forked::Child => unsafe {
                sys::child_exec(
                    rlimits, stdio, chan, INIT_FD, &self.exe, &self.argv, &self.envp,
                )
            },
        }
    }

    /// Drops the child's fd ends and returns the channel and the parent's pipe ends
    /// (`None` with a terminal: see [`parent_stdio`]).
    pub fn into_parent(self) -> (UnixStream, Option<ParentStdio>) {
        (self.parent_chan, self.pipes)
    }
}

/// What the child reported by `Ready`.
#[derive(Debug)]
pub struct Ready {
    /// The pty master the child allocated in the container's devpts (terminal only).
    pub console: Option<OwnedFd>,
}

/// Checks what arrived with a [`SyncMsg::Console`]: exactly one fd, and a pty master.
pub fn validate_console(mut fds: Vec<OwnedFd>) -> Result<OwnedFd, LaunchError> {
    if fds.len() != 1 {
        return Err(LaunchError::BadConsole(format!(
            "expected 1 file descriptor, got {}",
            fds.len()
        )));
    }
    let fd = fds.remove(0);
    if !nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
        return Err(LaunchError::BadConsole("not a terminal".into()));
    }
    sys::pty_number(fd.as_fd())
        .map_err(|_| LaunchError::BadConsole("a terminal, but not a pty master".into()))?;
    Ok(fd)
}

/// Sends the config to child `child` and waits for `Ready`; `on_pid` sees an exec's final
/// pid first. With a terminal, the pty master must arrive (validated) before `Ready`. A
/// container that unshares its user namespace gets its maps written (see [`userns`]).
pub fn handshake(
    chan: &mut UnixStream,
    child: i32,
    config: &InitConfig,
    mut on_pid: impl FnMut(i32),
) -> Result<Ready, LaunchError> {
    channel::send(chan, config)?;
    let terminal = config.terminal();
    let mut console = None;
    loop {
        let Some((msg, fds)) = channel::recv_with_fds::<SyncMsg>(chan)? else {
            return Err(LaunchError::Vanished);
        };
        match msg {
            // The child's own report wins over anything else wrong with the frame.
            SyncMsg::Error(msg) => return Err(LaunchError::Child(msg)),
            SyncMsg::Console if terminal && console.is_none() => {
                console = Some(validate_console(fds)?);
            }
            SyncMsg::Console => {
                return Err(LaunchError::BadConsole(
                    "sent without a terminal requested, or twice".into(),
                ))
            }
            _ if !fds.is_empty() => return Err(LaunchError::Protocol),
            SyncMsg::Pid(pid) => on_pid(pid),
            SyncMsg::UserNamespace => {
                let InitConfig::Container { spec, .. } = config else {
                    return Err(LaunchError::Protocol);
                };
                if !userns::wanted(spec) {
                    return Err(LaunchError::Protocol);
                }
                userns::write_maps(child, spec)?;
                chan.write_all(&[channel::USERNS_MAPPED])
                    .map_err(ChannelError::Io)?;
            }
            SyncMsg::Ready => {
                if terminal && console.is_none() {
                    return Err(LaunchError::BadConsole("missing before ready".into()));
                }
                return Ok(Ready { console });
            }
        }
    }
}

/// The parent's stdio: the pipe ends from [`Prepared::into_parent`], or the pty master
/// from [`Ready::console`] (then shared by stdin and stdout, non-blocking).
pub fn parent_stdio(
    pipes: Option<ParentStdio>,
    console: Option<OwnedFd>,
) -> Result<ParentStdio, LaunchError> {
    match (pipes, console) {
        (Some(p), None) => Ok(p),
        (None, Some(master)) => {
            prep("pty master", set_nonblocking(&master))?;
            prep("pty master", set_cloexec(&master))?;
            let stdin = prep("pty master", master.try_clone().map_err(io_to_nix))?;
            Ok(ParentStdio {
                stdin,
                stdout: master,
                stderr: None,
                terminal: true,
            })
        }
        _ => Err(LaunchError::Protocol),
    }
}

/// Releases a ready child to exec its program; `Ok` once the exec succeeded.
pub fn release(mut chan: UnixStream) -> Result<(), LaunchError> {
    chan.write_all(&[1]).map_err(ChannelError::Io)?;
    match channel::recv_with_fds::<SyncMsg>(&chan)? {
        None => Ok(()),
        Some((SyncMsg::Error(msg), _)) => Err(LaunchError::Child(msg)),
        Some(_) => Err(LaunchError::Protocol),
    }
}

/// How a new container gets its namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNamespaces {
    /// Namespaces created by the clone.
    pub flags: CloneFlags,
    /// Names (under /proc/<pid>/ns) of the pod sandbox container's namespaces to join.
    pub join: Vec<String>,
    /// The pod sandbox container's pid namespace is the container's: the clone must
    /// happen in it (a process cannot enter a pid namespace itself, only its children).
    pub join_pid: bool,
    /// Namespaces that were ignored, and why.
    pub warnings: Vec<String>,
}

/// The namespaces of a new container. With `in_pod` (the container joins a pod whose
/// sandbox container runs in this guest), the IPC, UTS and pid namespaces the spec joins
/// by a host path (CRI's `/proc/<pause pid>/ns/...`) are the sandbox container's.
pub fn container_namespaces(spec: &Spec, in_pod: bool) -> ContainerNamespaces {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    let mut join = Vec::new();
    let mut join_pid = false;
    let mut warnings = Vec::new();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in namespaces {
        let t = ns.typ();
        // A network namespace joined by path is the pod's (made by CNI on the
        // host): inside the VM that is the guest's own, which holds the pod's
        // NIC, so the container shares it; no path means a new, empty one.
        if t == LinuxNamespaceType::Network && ns.path().is_some() {
            continue;
        }
        let shared = match t {
            LinuxNamespaceType::Ipc => Some((CloneFlags::CLONE_NEWIPC, "ipc")),
            LinuxNamespaceType::Uts => Some((CloneFlags::CLONE_NEWUTS, "uts")),
            LinuxNamespaceType::Pid => Some((CloneFlags::CLONE_NEWPID, "pid")),
            _ => None,
        };
        if let (Some((flag, name)), Some(_), true) = (shared, ns.path(), in_pod) {
            flags.remove(flag);
            if flag == CloneFlags::CLONE_NEWPID {
                join_pid = true;
            } else {
                join.push(name.to_string());
            }
            continue;
        }
        if let Some(path) = ns.path() {
            warnings.push(format!(
                "linux.namespaces: joining {t} namespace {path:?} is not supported, ignored"
            ));
            continue;
        }
        match t {
            LinuxNamespaceType::Network => flags |= CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Cgroup => flags |= CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => flags |= CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Time => {
                warnings.push("linux.namespaces: time namespace not supported, ignored".into())
            }
            _ => {}
        }
    }
    ContainerNamespaces {
        flags,
        join,
        join_pid,
        warnings,
    }
}

/// Whether `spec` asks for a cgroup namespace of the container's own, which
/// its init creates once it is in its cgroup (runc's order: `/proc/self/cgroup`
/// then reads `0::/`, and the container's cgroup2 mount shows its own cgroup).
pub fn own_cgroup_namespace(spec: &Spec) -> bool {
    container_namespaces(spec, false)
        .flags
        .contains(CloneFlags::CLONE_NEWCGROUP)
}

/// Names (under /proc/<pid>/ns) of the namespaces an exec joins, mount and then user last.
pub fn exec_namespaces(flags: CloneFlags) -> Vec<String> {
    let mut out: Vec<String> = vec!["ipc".into(), "uts".into()];
    if flags.contains(CloneFlags::CLONE_NEWNET) {
        out.push("net".into());
    }
    if flags.contains(CloneFlags::CLONE_NEWCGROUP) {
        out.push("cgroup".into());
    }
    out.push("pid".into());
    out.push("mnt".into());
    // Last: once in it, the process has no privilege over the others.
    if flags.contains(CloneFlags::CLONE_NEWUSER) {
        out.push("user".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_pty_master_is_accepted_as_console() {
        let bad = |fds: Vec<OwnedFd>| match validate_console(fds) {
            Err(LaunchError::BadConsole(reason)) => reason,
            other => panic!("accepted: {other:?}"),
        };
        assert!(bad(Vec::new()).contains("got 0"));
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(bad(vec![r]).contains("not a terminal"));
        let pty = nix::pty::openpty(None, None).unwrap();
        assert!(bad(vec![pty.slave]).contains("not a pty master"));
        let master2 = pty.master.try_clone().unwrap();
        assert!(bad(vec![pty.master.try_clone().unwrap(), w]).contains("got 2"));
        let master = validate_console(vec![master2]).unwrap();
        let stdio = parent_stdio(None, Some(master)).unwrap();
        assert!(stdio.terminal && stdio.stderr.is_none());
        assert!(matches!(
            parent_stdio(None, None),
            Err(LaunchError::Protocol)
        ));
    }

    #[test]
    fn default_namespaces_and_extras() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"network"},
            {"type":"user"},{"type":"ipc","path":"/proc/1/ns/ipc"}]}}"#,
        )
        .unwrap();
        let ContainerNamespaces {
            flags,
            join,
            join_pid,
            warnings,
        } = container_namespaces(&spec, false);
        assert!(join.is_empty() && !join_pid, "not in a pod: {join:?}");
        assert!(flags.contains(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID));
        assert!(flags.contains(CloneFlags::CLONE_NEWNET));
        // A user namespace of its own (the init unshares it; see `userns`); the
        // ipc path is not the pod's here.
        assert!(flags.contains(CloneFlags::CLONE_NEWUSER));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(
            exec_namespaces(flags),
            ["ipc", "uts", "net", "pid", "mnt", "user"].map(String::from)
        );
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        )
        .unwrap();
        let ns = container_namespaces(&spec, false);
        let (flags, warnings) = (ns.flags, ns.warnings);
        assert!(
            !flags.contains(CloneFlags::CLONE_NEWNET),
            "the pod's netns is the guest's"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_pod_container_joins_the_sandbox_ipc_uts_and_pid_it_names_by_path() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"mount"},
            {"type":"ipc","path":"/proc/7/ns/ipc"},{"type":"uts","path":"/proc/7/ns/uts"},
            {"type":"pid","path":"/proc/7/ns/pid"}]}}"#,
        )
        .unwrap();
        let ns = container_namespaces(&spec, true);
        assert_eq!(ns.join, ["ipc", "uts"].map(String::from));
        assert!(!ns
            .flags
            .intersects(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS));
        // The pod's pid namespace (CRI's PodPID, the default) is entered by the clone.
        assert!(ns.join_pid && !ns.flags.contains(CloneFlags::CLONE_NEWPID));
        assert!(ns.warnings.is_empty(), "{:?}", ns.warnings);
        let alone = container_namespaces(&spec, false);
        assert!(alone.join.is_empty() && !alone.join_pid);
        assert!(alone.flags.contains(CloneFlags::CLONE_NEWPID));
        assert!(alone
            .flags
            .contains(CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS));
        assert_eq!(alone.warnings.len(), 3, "{:?}", alone.warnings);
        let own = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"ipc"},{"type":"uts"}]}}"#,
        )
        .unwrap();
        let own = container_namespaces(&own, true);
        assert!(
            own.join.is_empty() && !own.join_pid,
            "no path: own namespaces"
        );
    }
}
