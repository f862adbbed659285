//! A task's stdio as containerd hands it over: FIFO paths (empty: none),
//! opened here and given to the runtime's relay.

use std::{
    io,
    path::Path,
    pin::Pin,
    task::{Context, Poll},
};

use skerry_runtime::relay::ProcessStdio;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::unix::pipe,
    sync::watch,
};

use crate::error::TaskError;

/// The FIFO paths of one process, as Create/Exec name them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// Fed to the process's stdin; empty: no stdin.
    pub stdin: String,
    /// Receives stdout (with a terminal: all output); empty: discarded.
    pub stdout: String,
    /// Receives stderr; empty, or unused with a terminal: discarded.
    pub stderr: String,
    /// The process has a terminal (the agent gives it a pty).
    pub terminal: bool,
}

/// Tells when the relay has read stdin to its end (and so has passed
/// everything on to the guest).
#[derive(Debug, Clone)]
pub struct StdinEnd(watch::Receiver<bool>);

impl StdinEnd {
    /// Waits until stdin reached its end.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|done| *done).await;
    }
}

/// Opens the FIFOs: outputs read-write (as containerd's runc shim does, so
/// that opening never fails for want of a reader), stdin read-only.
pub fn open(paths: &StdioPaths) -> Result<(ProcessStdio, StdinEnd), TaskError> {
    let (done, end) = watch::channel(paths.stdin.is_empty());
    let stdin: Box<dyn AsyncRead + Send + Unpin> = if paths.stdin.is_empty() {
        Box::new(tokio::io::empty())
    } else {
        let fifo = pipe::OpenOptions::new()
            .open_receiver(&paths.stdin)
            .map_err(stdio_err("stdin", &paths.stdin))?;
        Box::new(SignalEof {
            inner: fifo,
            done: Some(done),
        })
    };
    let stderr_path = if paths.terminal { "" } else { &paths.stderr };
    let stdio = ProcessStdio {
        stdin,
        stdout: output("stdout", &paths.stdout)?,
        stderr: output("stderr", stderr_path)?,
    };
    Ok((stdio, StdinEnd(end)))
}

fn output(
    stream: &'static str,
    path: &str,
) -> Result<Box<dyn AsyncWrite + Send + Unpin>, TaskError> {
    if path.is_empty() {
        return Ok(Box::new(tokio::io::sink()));
    }
    let fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(stdio_err(stream, path))?;
    Ok(Box::new(fifo))
}

fn stdio_err(stream: &'static str, path: &str) -> impl FnOnce(io::Error) -> TaskError {
    let path = Path::new(path).to_path_buf();
    move |source| TaskError::Stdio {
        stream,
        path,
        source,
    }
}

/// A reader that reports its end (EOF or error) once.
struct SignalEof<R> {
    inner: R,
    done: Option<watch::Sender<bool>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for SignalEof<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let ended = match &polled {
            Poll::Ready(Ok(())) => buf.filled().len() == before && buf.remaining() > 0,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        };
        if ended {
            if let Some(done) = self.done.take() {
                let _ = done.send(true);
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[tokio::test]
    async fn fifos_carry_data_and_stdin_end_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
        mkfifo(&i);
        mkfifo(&o);
        let paths = StdioPaths {
            stdin: i.to_string_lossy().into(),
            stdout: o.to_string_lossy().into(),
            stderr: String::new(),
            terminal: false,
        };
        // Opening works before the client has opened its ends.
        let (mut stdio, mut end) = open(&paths).unwrap();
        let mut client_out = pipe::OpenOptions::new().open_receiver(&o).unwrap();
        let mut client_in = pipe::OpenOptions::new().open_sender(&i).unwrap();
        client_in.write_all(b"ping").await.unwrap();
        drop(client_in);
        let mut got = Vec::new();
        stdio.stdin.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        end.wait().await;
        stdio.stdout.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        client_out.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn missing_fifo_is_named() {
        let paths = StdioPaths {
            stdout: "/nonexistent/out".into(),
            ..Default::default()
        };
        let err = open(&paths).err().unwrap().to_string();
        assert_eq!(err, "stdout /nonexistent/out: cannot open");
    }
}
