//! The launcher: the one process of the agent that creates container processes.
//!
//! Containers are created by youki's libcontainer, the engine container mode
//! uses on the host (`skerry_container::engine`). It clones with a raw
//! `clone3` and runs Rust code in the children (allocations, logging), which
//! is only safe from a single-threaded process: from the multi-threaded agent
//! a child could inherit a lock another thread held at the clone and hang,
//! since no `atfork` handler runs. So the agent forks the launcher at boot,
//! before it starts any thread ([`Launcher::fork`]); the launcher stays
//! single-threaded and serves one request at a time on a `SOCK_SEQPACKET`
//! socket (a JSON [`Request`], the process's stdio fds with it). For each it
//! forks a *worker* that runs libcontainer, sends the [`Reply`] and exits, so
//! that the container's processes, the worker's children, become the
//! agent's: PID 1 in a guest (the development agent is a subreaper), whose
//! reaper collects them. The agent's threads are confined after the fork
//! (`confine`); the launcher keeps the limits the guest booted with, which
//! containers inherit.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use skerry_container::engine::{self, exec::Plan};
use skerry_container::{error_chain, security};

/// How long one create or exec may take before the launcher kills its worker.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request or reply (a spec's seccomp profile is the bulk of an exec's).
const MAX_MESSAGE: usize = 1 << 20;

/// What the launcher is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Create container `id` from the bundle (`config.json`) in `bundle`; its
    /// init waits for libcontainer's start.
    Create {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
        /// The bundle directory, holding the guest's config.json.
        bundle: PathBuf,
        /// Where the init sends its pty master (terminal only).
        console_socket: Option<PathBuf>,
        /// Load the guest's channel filter first (a kernel without skerry's LSM).
        channel_filter: bool,
    },
    /// Run a process in running container `id`.
    Exec {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
        /// The container's init, whose user namespace the process joins.
        init_pid: i32,
        /// The process and the executor that confines it.
        plan: Box<Plan>,
        /// The process JSON libcontainer reads (the agent wrote `plan.process` there).
        process_file: PathBuf,
        /// Where the process sends its pty master (terminal only).
        console_socket: Option<PathBuf>,
        /// Load the guest's channel filter first.
        channel_filter: bool,
    },
    /// Let created container `id` run its program.
    Start {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
    },
    /// Kill what is left of container `id` and delete its state and cgroup.
    Delete {
        /// Container id.
        id: String,
        /// libcontainer's state root.
        root: PathBuf,
    },
}

/// The launcher's answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    /// The container's init or the exec'd process runs (or waits for start) as this pid.
    Pid(i32),
    /// Started or deleted.
    Done,
    /// Why it failed.
    Error(String),
}

/// Talking to the launcher failed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// Forking the launcher or its socket failed.
    #[error("starting the launcher process")]
    Start(#[source] nix::Error),
    /// The request could not be sent or the reply read.
    #[error("talking to the launcher process")]
    Io(#[source] nix::Error),
    /// The reply is not one.
    #[error("the launcher process sent a malformed reply")]
    Malformed,
    /// The launcher process is gone.
    #[error("the launcher process is gone")]
    Gone,
    /// libcontainer failed (its message).
    #[error("{0}")]
    Failed(String),
}

impl LauncherError {
    /// libcontainer's failure with what its set-up logged (`log`, if any),
    /// which names the cause its own message leaves out.
    pub fn with_log(self, log: &str) -> Self {
        match self {
            Self::Failed(message) if !log.is_empty() => Self::Failed(format!("{message}: {log}")),
            other => other,
        }
    }
}

/// The agent's end of the launcher process.
#[derive(Debug)]
pub struct Launcher {
    sock: Mutex<OwnedFd>,
}

impl Launcher {
    /// Forks the launcher process; call while the agent has a single thread.
    pub fn fork() -> Result<Self, LauncherError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(LauncherError::Start)?;
        // A launcher that hangs must not hang the API for good: the launcher
        // answers within SETUP_TIMEOUT (it kills a stuck worker).
        let timeout = TimeVal::new((SETUP_TIMEOUT.as_secs() + 10) as i64, 0);
        setsockopt(&ours, sockopt::ReceiveTimeout, &timeout).map_err(LauncherError::Start)?;
        // SAFETY: the caller guarantees that the process has one thread, so the
        // child may run arbitrary code.
        match unsafe { fork() }.map_err(LauncherError::Start)? {
            ForkResult::Child => {
                drop(ours);
                serve(theirs)
            }
            ForkResult::Parent { .. } => Ok(Self {
                sock: Mutex::new(ours),
            }),
        }
    }

    /// Sends `request` with `fds` (the process's stdin, stdout and stderr, or
    /// none) and waits for the reply: the new process's pid (`None` for a
    /// start or delete).
    pub fn run(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<i32>, LauncherError> {
        let sock = self.sock.lock().unwrap_or_else(PoisonError::into_inner);
        let json = serde_json::to_vec(request).map_err(|_| LauncherError::Malformed)?;
        send(sock.as_fd(), &json, fds).map_err(LauncherError::Io)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (len, received) = recv(sock.as_fd(), &mut buf).map_err(LauncherError::Io)?;
        if len == 0 {
            return Err(LauncherError::Gone);
        }
        if !received.is_empty() {
            return Err(LauncherError::Malformed);
        }
        let creates = matches!(request, Request::Create { .. } | Request::Exec { .. });
        match serde_json::from_slice(&buf[..len]).map_err(|_| LauncherError::Malformed)? {
            Reply::Pid(pid) if pid > 0 && creates => Ok(Some(pid)),
            Reply::Done if !creates => Ok(None),
            Reply::Error(message) => Err(LauncherError::Failed(message)),
            Reply::Pid(_) | Reply::Done => Err(LauncherError::Malformed),
        }
    }
}

fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// Receives one message into `buf`: its length (0 at end of stream) and the
/// fds that came with it. A message larger than `buf` is an error.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these fds in this process for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    Ok((msg.bytes, fds))
}

/// The launcher process's loop; exits when the agent closes its end.
fn serve(sock: OwnedFd) -> ! {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let reply = match recv(sock.as_fd(), &mut buf) {
            Ok((0, _)) => std::process::exit(0),
            Ok((len, fds)) => match serde_json::from_slice::<Request>(&buf[..len]) {
                Ok(request) => dispatch(sock.as_fd(), request, fds),
                Err(e) => Some(Reply::Error(format!("malformed launcher request: {e}"))),
            },
            Err(e) => Some(Reply::Error(format!("receiving a launcher request: {e}"))),
        };
        if let Some(reply) = reply {
            let json = serde_json::to_vec(&reply).unwrap_or_default();
            if send(sock.as_fd(), &json, &[]).is_err() {
                std::process::exit(1);
            }
        }
    }
}

/// Runs `request` in a worker; the reply when the launcher must send it
/// itself (the worker failed to, or was killed).
fn dispatch(sock: BorrowedFd<'_>, request: Request, fds: Vec<OwnedFd>) -> Option<Reply> {
    // SAFETY: the launcher is single-threaded.
    let worker = match unsafe { fork() } {
        Err(e) => return Some(Reply::Error(format!("forking a launcher worker: {e}"))),
        Ok(ForkResult::Child) => {
            let reply = match work(request, fds) {
                Ok(Some(pid)) => Reply::Pid(pid),
                Ok(None) => Reply::Done,
                Err(message) => Reply::Error(message),
            };
            let json = serde_json::to_vec(&reply).unwrap_or_default();
            let sent = send(sock, &json, &[]);
            // SAFETY: _exit ends this process without running anything else.
            unsafe { libc::_exit(if sent.is_ok() { 0 } else { 2 }) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(fds);
    match wait_worker(worker) {
        Some(WaitStatus::Exited(_, 0)) => None,
        Some(status) => Some(Reply::Error(format!(
            "the launcher's worker ended without a reply ({status:?})"
        ))),
        None => Some(Reply::Error(format!(
            "creating the process took longer than {} s; the launcher's worker was killed",
            SETUP_TIMEOUT.as_secs()
        ))),
    }
}

/// Waits for worker `pid` up to [`SETUP_TIMEOUT`]; kills it after that
/// (`None`).
fn wait_worker(pid: Pid) -> Option<WaitStatus> {
    // SAFETY: pidfd_open takes a pid and flags only.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw >= 0 {
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let timeout = PollTimeout::try_from(SETUP_TIMEOUT).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let ready = loop {
            match poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        if ready == Ok(0) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return None;
        }
    }
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(status) => return Some(status),
            Err(e) => {
                return Some(WaitStatus::Exited(pid, -(e as i32)));
            }
        }
    }
}

/// The worker: runs libcontainer for `request`; the new process's pid.
fn work(request: Request, fds: Vec<OwnedFd>) -> Result<Option<i32>, String> {
    let failed = |e: LibcontainerError| error_chain(&e);
    let load = |root: &PathBuf, id: &str| Container::load(root.join(id)).map_err(failed);
    let channel_filter = match &request {
        Request::Create { channel_filter, .. } | Request::Exec { channel_filter, .. } => {
            *channel_filter
        }
        Request::Start { id, root } => {
            return load(root, id)?.start().map(|()| None).map_err(failed);
        }
        Request::Delete { id, root } => {
            return load(root, id)?.delete(true).map(|()| None).map_err(failed);
        }
    };
    if channel_filter {
        // Root with every capability loads it without no_new_privs; the
        // container's processes inherit it under their own filter.
        security::load_seccomp(&security::guest_channel_filter())
            .map_err(|e| format!("loading the guest's channel filter: {}", error_chain(&e)))?;
    }
    let base = |id: &str, root: &PathBuf, console: &Option<PathBuf>| {
        let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(root.clone())
            .map_err(|e| format!("libcontainer state root {}: {e}", root.display()))?
            .with_console_socket(console.as_ref());
        Ok::<_, String>(match <[OwnedFd; 3]>::try_from(fds) {
            Ok([stdin, stdout, stderr]) => builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr),
            Err(_) => builder,
        })
    };
    match &request {
        Request::Create {
            id,
            root,
            bundle,
            console_socket,
            ..
        } => {
            let init = base(id, root, console_socket)?
                .with_executor(engine::InitExecutor)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true);
            let container = engine::build(|| init.build()).map_err(failed)?;
            container
                .pid()
                .map(|p| Some(p.as_raw()))
                .ok_or_else(|| "libcontainer recorded no init pid".to_string())
        }
        Request::Exec {
            id,
            root,
            init_pid,
            plan,
            process_file,
            console_socket,
            ..
        } => {
            let mut plan = plan.clone();
            let _user_ns = plan
                .open_user_namespace(*init_pid)
                .map_err(|e| error_chain(&e))?;
            let tenant = base(id, root, console_socket)?
                .with_executor(plan.executor.clone())
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process_file));
            engine::build(|| tenant.build())
                .map(|pid| Some(pid.as_raw()))
                .map_err(failed)
        }
        Request::Start { .. } | Request::Delete { .. } => unreachable!("answered above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_the_socket_and_oversized_ones_are_refused() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), b"hello", &[r.as_fd(), w.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (len, fds) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(fds.len(), 2);
        send(a.as_fd(), &[7u8; 32], &[]).unwrap();
        assert_eq!(
            recv(b.as_fd(), &mut buf).unwrap_err(),
            nix::errno::Errno::EMSGSIZE
        );
        drop(a);
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap().0, 0);
    }
}
