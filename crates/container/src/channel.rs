//! The parent <-> `init` channel: framed JSON messages over a Unix socketpair.
//!
//! The parent sends one [`InitConfig`]; the child answers with [`SyncMsg`]s. After
//! `Ready` the child blocks until the parent sends the start byte; a successful
//! execve closes the child's (close-on-exec) end, so the parent then sees EOF.
//! With a terminal, the child opens the pty in the container's own devpts and sends the
//! master with [`SyncMsg::Console`] as `SCM_RIGHTS`, before `Ready`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

/// Environment variable naming the channel fd in `init` mode.
pub const INIT_FD_ENV: &str = "_SKERRY_INIT_FD";

/// Fd number the channel gets in the child.
pub const INIT_FD: i32 = 3;

/// Largest frame either side accepts.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the `init` child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InitConfig {
    /// Set up a new container (fresh namespaces, or some of its pod sandbox's) and exec
    /// its process.
    Container {
        /// Container id (for messages).
        id: String,
        /// The container's spec.
        spec: Box<Spec>,
        /// Root filesystem path as the parent sees it.
        rootfs: PathBuf,
        /// Pid (parent's view) of the pod sandbox's init, and the names under
        /// /proc/<pid>/ns of its namespaces to join first; `None` outside a pod.
        join: Option<(i32, Vec<String>)>,
    },
    /// Join a running container's namespaces and exec an extra process.
    Exec {
        /// Container id (for messages).
        id: String,
        /// The process to run.
        process: Box<Process>,
        /// Pid (parent's view) of the container init whose namespaces are joined.
        target_pid: i32,
        /// Namespace names under /proc/<pid>/ns to join, e.g. `["ipc","uts","pid","mnt"]`.
        namespaces: Vec<String>,
        /// The container's seccomp filter, which the process gets too.
        seccomp: Option<Box<LinuxSeccomp>>,
    },
}

impl InitConfig {
    /// Whether the process asks for a terminal (then the child sends a [`SyncMsg::Console`]).
    pub fn terminal(&self) -> bool {
        match self {
            InitConfig::Container { spec, .. } => spec
                .process()
                .as_ref()
                .and_then(|p| p.terminal())
                .unwrap_or(false),
            InitConfig::Exec { process, .. } => process.terminal().unwrap_or(false),
        }
    }
}

/// The parent's answer to [`SyncMsg::UserNamespace`] once the maps are written.
pub const USERNS_MAPPED: u8 = b'm';

/// Messages from the child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SyncMsg {
    /// (exec only) pid of the final process, in the parent's pid namespace.
    Pid(i32),
    /// The pty master of the process's terminal travels with this frame (`SCM_RIGHTS`).
    Console,
    /// (container only) The child unshared its user namespace: the parent writes its
    /// maps and answers with one byte ([`USERNS_MAPPED`]).
    UserNamespace,
    /// Setup done; waiting for the start byte. (Nothing is skipped or degraded: a step
    /// that cannot be done is an [`SyncMsg::Error`].)
    Ready,
    /// Setup or exec failed; the child exits non-zero.
    Error(String),
}

/// A broken channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Read or write failed.
    #[error("channel i/o")]
    Io(#[from] std::io::Error),
    /// A frame was too large.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// A frame was not the expected JSON.
    #[error("malformed frame")]
    Json(#[from] serde_json::Error),
    /// Sending or receiving with file descriptors failed.
    #[error("passing file descriptors")]
    Fds(#[source] crate::sys::SysError),
}

fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ChannelError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ChannelError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| ChannelError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Writes one framed JSON message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ChannelError> {
    w.write_all(&frame(msg)?)?;
    Ok(())
}

/// Writes one framed message with `fd` attached to its first bytes (`SCM_RIGHTS`).
pub fn send_with_fd<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fd: BorrowedFd<'_>,
) -> Result<(), ChannelError> {
    let frame = frame(msg)?;
    let sent = loop {
        match crate::sys::send_with_fds(sock.as_fd(), &frame, &[fd]) {
            Err(e) if e.errno == nix::errno::Errno::EINTR => {}
            r => break r.map_err(ChannelError::Fds)?,
        }
    };
    // The fd went with the first byte; a short send leaves only plain bytes to write.
    let mut w = sock;
    w.write_all(&frame[sent..])?;
    Ok(())
}

/// Fills `buf` with `recvmsg`, collecting passed fds; returns the bytes read (short at EOF).
fn fill(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, ChannelError> {
    let mut got = 0;
    while got < buf.len() {
        match crate::sys::recv_with_fds(sock.as_fd(), &mut buf[got..], fds) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.errno == nix::errno::Errno::EINTR => {}
            Err(e) if e.errno == nix::errno::Errno::EMSGSIZE => return Err(ChannelError::Fds(e)),
            // Plain socket errors (a read timeout shows up as EAGAIN) stay i/o errors.
            Err(e) => return Err(std::io::Error::from(e.errno).into()),
        }
    }
    Ok(got)
}

/// Reads one framed message and every fd that arrived with its bytes; `Ok(None)` at a
/// clean EOF. Use this (not [`recv`]) wherever the peer may pass fds: a plain read would
/// silently drop them.
pub fn recv_with_fds<T: for<'de> Deserialize<'de>>(
    sock: &UnixStream,
) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    match fill(sock, &mut len, &mut fds)? {
        0 if fds.is_empty() => return Ok(None),
        4 => {}
        _ => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ChannelError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    if fill(sock, &mut body, &mut fds)? != len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some((serde_json::from_slice(&body)?, fds)))
}

/// Reads one framed JSON message; `Ok(None)` at a clean EOF.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Option<T>, ChannelError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ChannelError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        send(&mut buf, &SyncMsg::Pid(42)).unwrap();
        send(&mut buf, &SyncMsg::Ready).unwrap();
        let mut r = &buf[..];
        assert_eq!(recv::<SyncMsg>(&mut r).unwrap(), Some(SyncMsg::Pid(42)));
        assert_eq!(recv::<SyncMsg>(&mut r).unwrap(), Some(SyncMsg::Ready));
        assert_eq!(recv::<SyncMsg>(&mut r).unwrap(), None);
    }

    #[test]
    fn hostile_frames_are_rejected() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            recv::<SyncMsg>(&mut r),
            Err(ChannelError::TooLarge(_))
        ));
        let mut r: &[u8] = &[3, 0, 0, 0, b'{', b'x', b'}'];
        assert!(matches!(
            recv::<SyncMsg>(&mut r),
            Err(ChannelError::Json(_))
        ));
        let mut r: &[u8] = &[3, 0];
        assert!(recv::<SyncMsg>(&mut r).is_err());
    }

    #[test]
    fn fds_travel_with_their_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(&mut &a, &SyncMsg::Pid(7)).unwrap();
        send_with_fd(&a, &SyncMsg::Console, r.as_fd()).unwrap();
        send(&mut &a, &SyncMsg::Ready).unwrap();
        drop(a);
        let (m, fds) = recv_with_fds::<SyncMsg>(&b).unwrap().unwrap();
        assert_eq!((m, fds.len()), (SyncMsg::Pid(7), 0));
        let (m, fds) = recv_with_fds::<SyncMsg>(&b).unwrap().unwrap();
        assert_eq!((m, fds.len()), (SyncMsg::Console, 1));
        // The received fd is the pipe's read end: what is written to `w` comes out of it.
        nix::unistd::write(&w, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&fds[0]), &mut byte).unwrap(),
            1
        );
        let (m, fds) = recv_with_fds::<SyncMsg>(&b).unwrap().unwrap();
        assert!(m == SyncMsg::Ready && fds.is_empty());
        assert!(recv_with_fds::<SyncMsg>(&b).unwrap().is_none());
    }
}
