//! Stdio of a container-mode task: the process gets pipes (or, with a
//! terminal, the pty libcontainer makes and sends to a console socket), and
//! the shim copies between them and containerd's FIFOs (opened by
//! `stdio::open`), as for a VM task's relay.

use std::{
    fs::File,
    io,
    os::{fd::OwnedFd, unix::net::UnixListener},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{fcntl::OFlag, unistd::pipe2};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use skerry_runtime::{plain::ProcessFds, relay::ProcessStdio};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::unix::pipe,
    task::JoinHandle,
};

use crate::error::TaskError;

/// How long the end of a process waits for its output to reach the FIFOs
/// (a process it left behind may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// A process's stdio before it runs: what libcontainer gives it, and the
/// shim's ends.
pub struct Plumbing {
    /// The process's stdin, stdout, stderr; `None` with a terminal.
    pub fds: Option<ProcessFds>,
    /// Where libcontainer sends the terminal's master.
    pub console_socket: Option<PathBuf>,
    shim: ShimEnds,
}

enum ShimEnds {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console(ConsoleSocket),
}

/// The listening console socket; its file goes with it.
struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Its directory goes with the last socket (fails while others use it).
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The running copies of a process's stdio.
pub struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    /// The terminal's master (for ResizePty).
    pub pty: Option<OwnedFd>,
}

fn pipe_err(stream: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TaskError {
    let path = path.to_path_buf();
    move |source| TaskError::Stdio {
        stream,
        path,
        source,
    }
}

impl Plumbing {
    /// Pipes for a process without a terminal; a console socket at the
    /// path `socket` makes for one with a terminal.
    pub fn new(
        terminal: bool,
        socket: impl FnOnce() -> Result<PathBuf, TaskError>,
    ) -> Result<Self, TaskError> {
        if terminal {
            let socket = socket()?;
            let listener = UnixListener::bind(&socket).map_err(pipe_err("terminal", &socket))?;
            return Ok(Self {
                fds: None,
                console_socket: Some(socket.clone()),
                shim: ShimEnds::Console(ConsoleSocket {
                    listener,
                    path: socket,
                }),
            });
        }
        let pipe = |stream| {
            pipe2(OFlag::O_CLOEXEC).map_err(|e| pipe_err(stream, Path::new("pipe"))(e.into()))
        };
        let (stdin_r, stdin_w) = pipe("stdin")?;
        let (stdout_r, stdout_w) = pipe("stdout")?;
        let (stderr_r, stderr_w) = pipe("stderr")?;
        Ok(Self {
            fds: Some(ProcessFds {
                stdin: stdin_r,
                stdout: stdout_w,
                stderr: stderr_w,
            }),
            console_socket: None,
            shim: ShimEnds::Pipes {
                stdin: stdin_w,
                stdout: stdout_r,
                stderr: stderr_r,
            },
        })
    }

    /// Once the process exists: starts copying between it and `stdio`.
    pub fn connect(self, stdio: ProcessStdio) -> Result<Pumps, TaskError> {
        match self.shim {
            ShimEnds::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let err = |stream| move |e| pipe_err(stream, Path::new("pipe"))(e);
                let stdin = pipe::Sender::from_owned_fd(stdin).map_err(err("stdin"))?;
                let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(err("stdout"))?;
                let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(err("stderr"))?;
                tokio::spawn(copy(stdio.stdin, stdin));
                Ok(Pumps {
                    outputs: vec![
                        tokio::spawn(copy(stdout, stdio.stdout)),
                        tokio::spawn(copy(stderr, stdio.stderr)),
                    ],
                    pty: None,
                })
            }
            ShimEnds::Console(socket) => {
                let path = socket.path.clone();
                let master = receive_master(&socket.listener).map_err(pipe_err("terminal", &path));
                drop(socket);
                let master = master?;
                let clone = |fd: &OwnedFd| {
                    fd.try_clone()
                        .map(|f| tokio::fs::File::from_std(File::from(f)))
                        .map_err(pipe_err("terminal", &path))
                };
                let (input, output) = (clone(&master)?, clone(&master)?);
                tokio::spawn(copy(stdio.stdin, input));
                Ok(Pumps {
                    outputs: vec![tokio::spawn(copy(output, stdio.stdout))],
                    pty: Some(master),
                })
            }
        }
    }
}

/// Receives the pty master libcontainer sent (runc's console-socket protocol).
fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    let (conn, _) = listener.accept()?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut name = [0u8; 256];
    rustix::net::recvmsg(
        &conn,
        &mut [io::IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .ok_or_else(|| io::Error::other("no terminal received"))
}

/// Copies until the end of `from` (a pty's EIO included), then closes `to`.
async fn copy(mut from: impl AsyncRead + Unpin + Send, mut to: impl AsyncWrite + Unpin + Send) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

impl Pumps {
    /// Waits (≤ 2 s) until the process's output has been passed on.
    pub async fn finish(self) {
        let all = join_all(self.outputs);
        let _ = tokio::time::timeout(OUTPUT_DRAIN, all).await;
    }
}

/// Waits for every copy.
async fn join_all(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
