//! A process's stdio: made before the process ([`NewStdio`]: pipes, or a
//! console socket its pty master arrives on) and read and written
//! asynchronously for the pull-based API ([`ProcessIo`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

/// How long the agent waits for a process's pty master once it runs (it was
/// sent during the set-up, so it is there already).
const CONSOLE_WAIT: Duration = Duration::from_secs(5);

/// A stdio stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// Registering an fd with the reactor failed.
    #[error("registering stdio with the event loop")]
    Register(#[source] std::io::Error),
    /// Reading or writing failed.
    #[error("{0} i/o")]
    Io(&'static str, #[source] std::io::Error),
    /// Stdin was closed before.
    #[error("stdin is closed")]
    StdinClosed,
    /// Making the pipes or the console socket failed.
    #[error("preparing {0}")]
    Prepare(&'static str, #[source] std::io::Error),
    /// What arrived on the console socket is not a pty master.
    #[error("process.terminal: {0}")]
    BadConsole(String),
}

/// The agent's ends of a process's stdio.
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

/// The stdio of a process about to be created.
#[derive(Debug)]
pub enum NewStdio {
    /// Pipes: the process gets `child` as fds 0-2.
    Pipes {
        /// The process's ends (stdin, stdout, stderr).
        child: [OwnedFd; 3],
        /// The agent's.
        parent: ParentStdio,
    },
    /// A terminal: the process makes its pty in the container's devpts and
    /// sends the master to this socket.
    Console {
        /// Listening at `path`.
        listener: UnixListener,
        /// Removed once the master arrived.
        path: PathBuf,
    },
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map(drop)
}

impl NewStdio {
    /// Pipes, or with `terminal` a console socket at `console`.
    pub fn new(terminal: bool, console: PathBuf) -> Result<Self, StdioError> {
        let prep = |what, e: nix::Error| StdioError::Prepare(what, e.into());
        if terminal {
            let listener = UnixListener::bind(&console)
                .map_err(|e| StdioError::Prepare("the console socket", e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| StdioError::Prepare("the console socket", e))?;
            return Ok(Self::Console {
                listener,
                path: console,
            });
        }
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| prep("stdio pipes", e));
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&in_w, &out_r, &err_r] {
            set_nonblocking(fd).map_err(|e| prep("stdio pipes", e))?;
        }
        Ok(Self::Pipes {
            child: [in_r, out_w, err_w],
            parent: ParentStdio {
                stdin: in_w,
                stdout: out_r,
                stderr: Some(err_r),
                terminal: false,
            },
        })
    }

    /// The process's fds 0-2, when they are pipes.
    pub fn child_fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Self::Pipes { child, .. } => child.iter().map(AsFd::as_fd).collect(),
            Self::Console { .. } => Vec::new(),
        }
    }

    /// The console socket's path, with a terminal.
    pub fn console_socket(&self) -> Option<PathBuf> {
        match self {
            Self::Pipes { .. } => None,
            Self::Console { path, .. } => Some(path.clone()),
        }
    }

    /// What libcontainer's set-up logged to the process's stderr before it
    /// failed (its own error names only the step): the `ERROR` lines, at
    /// most 4 KiB read, without their timestamps, the failed `chdir` named as
    /// the process's `cwd`. Empty with a terminal.
    pub fn setup_errors(&self, cwd: &Path) -> String {
        let Self::Pipes { parent, .. } = self else {
            return String::new();
        };
        let Some(stderr) = &parent.stderr else {
            return String::new();
        };
        let mut buf = vec![0u8; 4096];
        let n = nix::unistd::read(stderr.as_raw_fd(), &mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter_map(|l| l.split_once(" ERROR ").map(|(_, msg)| msg.trim()))
            .map(|msg| match msg.contains("failed to chdir") {
                true => format!("process.cwd {cwd:?}: {msg}"),
                false => msg.to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The agent's ends once the process exists: the pipes, or the pty
    /// master it sent (validated, then shared by stdin and stdout).
    pub fn into_parent(self) -> Result<ParentStdio, StdioError> {
        let (listener, path) = match self {
            Self::Pipes { parent, .. } => return Ok(parent),
            Self::Console { listener, path } => (listener, path),
        };
        let _ = std::fs::remove_file(&path);
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(CONSOLE_WAIT).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout).map_err(|e| StdioError::Prepare("the console", e.into()))? == 0 {
            return Err(StdioError::BadConsole("no pty master arrived".into()));
        }
        let (conn, _) = listener
            .accept()
            .map_err(|e| StdioError::Prepare("the console", e))?;
        let mut buf = [0u8; 256];
        let (_, received) = crate::launcher::recv(conn.as_fd(), &mut buf)
            .map_err(|e| StdioError::Prepare("the console", e.into()))?;
        let master = validate_console(received)?;
        set_nonblocking(&master).map_err(|e| StdioError::Prepare("the pty master", e.into()))?;
        let stdin = master
            .try_clone()
            .map_err(|e| StdioError::Prepare("the pty master", e))?;
        Ok(ParentStdio {
            stdin,
            stdout: master,
            stderr: None,
            terminal: true,
        })
    }
}

/// Checks what arrived on a console socket: exactly one fd, and a pty master.
fn validate_console(mut fds: Vec<OwnedFd>) -> Result<OwnedFd, StdioError> {
    if fds.len() != 1 {
        return Err(StdioError::BadConsole(format!(
            "expected 1 file descriptor, got {}",
            fds.len()
        )));
    }
    let fd = fds.remove(0);
    if !nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
        return Err(StdioError::BadConsole("not a terminal".into()));
    }
    skerry_container::sys::pty_number(fd.as_fd())
        .map_err(|_| StdioError::BadConsole("a terminal, but not a pty master".into()))?;
    Ok(fd)
}

/// Ctrl-D: end of input for a terminal in canonical mode.
const VEOF: u8 = 0x04;

/// One readable stream; reads are serialised and EOF is sticky.
struct Reader {
    fd: AsyncFd<OwnedFd>,
    eof: Mutex<bool>,
    name: &'static str,
}

impl Reader {
    async fn read(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        let mut eof = self.eof.lock().await;
        if *eof {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; max];
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| StdioError::Io(self.name, e))?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(std::io::Error::from)
            }) {
                Ok(Ok(0)) => {
                    *eof = true;
                    return Ok(Vec::new());
                }
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // A pty master reports EIO once every slave fd is closed: that is EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    *eof = true;
                    return Ok(Vec::new());
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(StdioError::Io(self.name, e)),
                Err(_would_block) => {}
            }
        }
    }
}

fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, StdioError> {
    // SAFETY: an OwnedFd is open and returns the same fd for as long as it lives, and the
    // AsyncFd owns it for its whole lifetime.
    unsafe { AsyncFd::register(fd) }.map_err(|e| StdioError::Register(e.into_parts().1))
}

/// The agent's side of one process's stdio.
pub struct ProcessIo {
    stdin: Mutex<Option<AsyncFd<OwnedFd>>>,
    stdout: Reader,
    stderr: Option<Reader>,
    terminal: bool,
}

impl ProcessIo {
    /// Registers the parent's fds (already non-blocking) with the reactor.
    pub fn new(p: ParentStdio) -> Result<Self, StdioError> {
        let reader = |fd, name| -> Result<Reader, StdioError> {
            Ok(Reader {
                fd: register(fd)?,
                eof: Mutex::new(false),
                name,
            })
        };
        Ok(ProcessIo {
            stdin: Mutex::new(Some(register(p.stdin)?)),
            stdout: reader(p.stdout, "stdout")?,
            stderr: p.stderr.map(|fd| reader(fd, "stderr")).transpose()?,
            terminal: p.terminal,
        })
    }

    /// Waits for stdout data; empty at EOF.
    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        self.stdout.read(max).await
    }

    /// Waits for stderr data; empty at EOF (immediately with a terminal).
    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        match &self.stderr {
            Some(r) => r.read(max).await,
            None => Ok(Vec::new()),
        }
    }

    /// Writes all of `data` to stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let guard = self.stdin.lock().await;
        let fd = guard.as_ref().ok_or(StdioError::StdinClosed)?;
        let mut done = 0;
        while done < data.len() {
            let mut ready = fd
                .writable()
                .await
                .map_err(|e| StdioError::Io("stdin", e))?;
            match ready
                .try_io(|fd| nix::unistd::write(fd, &data[done..]).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => done += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(StdioError::Io("stdin", e)),
                Err(_would_block) => {}
            }
        }
        Ok(done)
    }

    /// Closes stdin (a pty gets an end-of-file character instead, as the master is shared).
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        if self.terminal {
            self.write_stdin(&[VEOF]).await.map(drop)
        } else {
            self.stdin.lock().await.take();
            Ok(())
        }
    }

    /// Sets the pty window size; `None` when the process has no terminal.
    pub async fn resize(
        &self,
        rows: u16,
        cols: u16,
    ) -> Option<Result<(), skerry_container::sys::SysError>> {
        if !self.terminal {
            return None;
        }
        let guard = self.stdin.lock().await;
        let fd = guard.as_ref()?;
        Some(skerry_container::sys::set_winsize(
            fd.as_raw_fd(),
            rows,
            cols,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_pty_master_is_accepted_as_console() {
        let bad = |fds: Vec<OwnedFd>| match validate_console(fds) {
            Err(StdioError::BadConsole(reason)) => reason,
            other => panic!("accepted: {other:?}"),
        };
        assert!(bad(Vec::new()).contains("got 0"));
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(bad(vec![r]).contains("not a terminal"));
        let pty = nix::pty::openpty(None, None).unwrap();
        assert!(bad(vec![pty.slave]).contains("not a pty master"));
        assert!(bad(vec![pty.master.try_clone().unwrap(), w]).contains("got 2"));
        assert!(validate_console(vec![pty.master]).is_ok());
    }

    #[test]
    fn a_pty_master_sent_to_the_console_socket_becomes_stdin_and_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let stdio = NewStdio::new(true, path.clone()).unwrap();
        assert_eq!(stdio.console_socket().as_deref(), Some(path.as_path()));
        assert!(stdio.child_fds().is_empty());
        let pty = nix::pty::openpty(None, None).unwrap();
        let conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let raw = [pty.master.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(b"/dev/ptmx")],
            &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let parent = stdio.into_parent().unwrap();
        assert!(parent.terminal && parent.stderr.is_none());
        assert!(!path.exists(), "the socket is removed");
        let pipes = NewStdio::new(false, path).unwrap();
        assert_eq!(pipes.child_fds().len(), 3);
        assert!(!pipes.into_parent().unwrap().terminal);
    }
}
