//! Asynchronous access to a process's stdio (pipes or a pty master) for the pull-based API.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use skerry_container::ParentStdio;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

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
