//! Host side of the agent API: a ttrpc client over a guest vsock stream.
//!
//! The guest is untrusted: every reply is checked (protocol version, reply
//! sizes, exit status range) before the runtime acts on it, and every string it
//! carries passes through [`guest_text`] here, before anything logs or shows it.

use std::{
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use skerry_protocol as proto;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
};
use ttrpc::context::{self, Context};
use ttrpc::proto::{MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX};

use crate::guest_text::guest_text;

/// Timeout of calls that should answer promptly.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status (its message carries context, escaped and
    /// bounded by [`guest_text`]).
    #[error("agent {call}: {message}")]
    Status {
        /// The RPC.
        call: &'static str,
        /// ttrpc status code.
        code: ttrpc::Code,
        /// The agent's message, escaped and bounded.
        message: String,
    },
    /// The connection failed.
    #[error("agent {call}: connection failed")]
    Transport {
        /// The RPC.
        call: &'static str,
        /// The cause.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent answered something it must not.
    #[error("agent {call}: invalid reply: {message}")]
    InvalidReply {
        /// The RPC.
        call: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl AgentError {
    /// The status code the agent sent, if it sent one.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn map_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentError {
    move |e| match e {
        ttrpc::Error::RpcStatus(status) => AgentError::Status {
            call,
            code: status.code(),
            message: guest_text(status.message.as_bytes()),
        },
        source => AgentError::Transport { call, source },
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Shell-style status: the exit code, or 128 + signal.
    pub status: i32,
    /// Terminating signal, 0 if the process exited.
    pub signal: u32,
}

/// Names a process in the guest: a container's init (empty `exec`) or one
/// of its exec'd processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc<'a> {
    /// Container id.
    pub container: &'a str,
    /// Exec id; empty for the container's init process.
    pub exec: &'a str,
}

impl<'a> Proc<'a> {
    /// The init process of `container`.
    pub fn init(container: &'a str) -> Self {
        Self {
            container,
            exec: "",
        }
    }
}

/// The agent's stream, failing the connection at the header of a reply
/// frame longer than ttrpc accepts. ttrpc itself reads and discards the
/// whole declared length (up to 4 GiB a frame, at the agent's pace) before
/// failing the call: a hostile agent would hold the call to its timeout and
/// keep the host reading what it throws away.
struct FrameLimit<S> {
    inner: S,
    /// The current frame's header: read from the agent up to `header_read`,
    /// handed to ttrpc up to `header_given`.
    header: [u8; MESSAGE_HEADER_LENGTH],
    header_read: usize,
    header_given: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
}

impl<S> FrameLimit<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            header: [0; MESSAGE_HEADER_LENGTH],
            header_read: 0,
            header_given: 0,
            payload_left: 0,
        }
    }

    fn declared_len(&self) -> usize {
        u32::from_be_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ]) as usize
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameLimit<S> {
    /// Reads no further than the end of the current header or payload, and
    /// hands a header over only once it is whole and checked.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.payload_left > 0 {
            let want = buf.remaining().min(this.payload_left);
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            this.payload_left -= n;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        while this.header_read < MESSAGE_HEADER_LENGTH {
            let mut part = ReadBuf::new(&mut this.header[this.header_read..]);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            if n == 0 {
                // End of stream (ttrpc reports a short header as such).
                return Poll::Ready(Ok(()));
            }
            this.header_read += n;
        }
        let len = this.declared_len();
        if len > MESSAGE_LENGTH_MAX {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds the {MESSAGE_LENGTH_MAX} byte limit"),
            )));
        }
        let n = buf
            .remaining()
            .min(MESSAGE_HEADER_LENGTH - this.header_given);
        buf.put_slice(&this.header[this.header_given..this.header_given + n]);
        this.header_given += n;
        if this.header_given == MESSAGE_HEADER_LENGTH {
            (this.header_read, this.header_given, this.payload_left) = (0, 0, len);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connected agent.
#[derive(Clone)]
pub struct AgentConn {
    client: proto::AgentClient,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentConn")
    }
}

fn timed() -> Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

fn untimed() -> Context {
    context::with_timeout(0)
}

impl AgentConn {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        let socket = ttrpc::asynchronous::transport::Socket::new(FrameLimit::new(stream));
        let client = ttrpc::asynchronous::Client::new(socket);
        Self {
            client: proto::AgentClient::new(client),
        }
    }

    /// Version handshake; returns the agent's version and guest kernel release (escaped
    /// and bounded).
    pub async fn check(&self) -> Result<proto::CheckResponse, AgentError> {
        let req = proto::CheckRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            ..Default::default()
        };
        let mut resp = self
            .client
            .check(timed(), &req)
            .await
            .map_err(map_err("Check"))?;
        resp.agent_version = guest_text(resp.agent_version.as_bytes());
        resp.kernel_release = guest_text(resp.kernel_release.as_bytes());
        if resp.protocol_version != proto::PROTOCOL_VERSION {
            return Err(AgentError::InvalidReply {
                call: "Check",
                message: format!(
                    "agent speaks protocol {}, runtime speaks {}",
                    resp.protocol_version,
                    proto::PROTOCOL_VERSION
                ),
            });
        }
        Ok(resp)
    }

    /// Prepares the guest for containers.
    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
        interfaces: Vec<proto::Interface>,
    ) -> Result<(), AgentError> {
        let req = proto::CreateSandboxRequest {
            sandbox_id: sandbox_id.into(),
            hostname: hostname.into(),
            shared_fs_tag: proto::SHARED_FS_TAG.into(),
            interfaces,
            ..Default::default()
        };
        self.client
            .create_sandbox(timed(), &req)
            .await
            .map_err(map_err("CreateSandbox"))?;
        Ok(())
    }

    /// Powers the guest off.
    pub async fn destroy_sandbox(&self) -> Result<(), AgentError> {
        self.client
            .destroy_sandbox(timed(), &proto::DestroySandboxRequest::default())
            .await
            .map_err(map_err("DestroySandbox"))?;
        Ok(())
    }

    /// Creates a container whose process waits for `start_container`; it joins the
    /// namespaces of pod sandbox container `join_namespaces_of` unless that is empty.
    pub async fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        join_namespaces_of: &str,
    ) -> Result<u32, AgentError> {
        let req = proto::CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: spec_json.to_vec(),
            join_namespaces_of: join_namespaces_of.into(),
            ..Default::default()
        };
        let resp = self
            .client
            .create_container(timed(), &req)
            .await
            .map_err(map_err("CreateContainer"))?;
        Ok(resp.pid)
    }

    /// Lets the container process exec the user's program.
    pub async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        let req = proto::StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .start_container(timed(), &req)
            .await
            .map_err(map_err("StartContainer"))?;
        Ok(())
    }

    /// Kills what is left of a container and forgets it.
    pub async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        let req = proto::RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client
            .remove_container(timed(), &req)
            .await
            .map_err(map_err("RemoveContainer"))?;
        Ok(())
    }

    /// Forgets an exec'd process that has exited.
    pub async fn remove_process(&self, name: Proc<'_>) -> Result<(), AgentError> {
        let req = proto::RemoveProcessRequest {
            container_id: name.container.into(),
            exec_id: name.exec.into(),
            ..Default::default()
        };
        self.client
            .remove_process(timed(), &req)
            .await
            .map_err(map_err("RemoveProcess"))?;
        Ok(())
    }

    /// Resource usage and guest pids of a container (its guest cgroup).
    pub async fn stats(&self, id: &str) -> Result<proto::StatsContainerResponse, AgentError> {
        let req = proto::StatsContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let resp = self
            .client
            .stats_container(timed(), &req)
            .await
            .map_err(map_err("StatsContainer"))?;
        if resp.pids.contains(&0) {
            return Err(AgentError::InvalidReply {
                call: "StatsContainer",
                message: "pid 0 in the container's pids".into(),
            });
        }
        Ok(resp)
    }

    /// Applies new limits (OCI `linux.resources` JSON) to a container.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentError> {
        let req = proto::UpdateContainerRequest {
            container_id: id.into(),
            resources_json: resources_json.to_vec(),
            ..Default::default()
        };
        self.client
            .update_container(timed(), &req)
            .await
            .map_err(map_err("UpdateContainer"))?;
        Ok(())
    }

    /// Sends `signal` to a process (or all processes of the container).
    pub async fn signal(&self, p: Proc<'_>, signal: u32, all: bool) -> Result<(), AgentError> {
        let req = proto::SignalProcessRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            signal,
            all,
            ..Default::default()
        };
        self.client
            .signal_process(timed(), &req)
            .await
            .map_err(map_err("SignalProcess"))?;
        Ok(())
    }

    /// Stops (`freeze`) or continues every process of `container` with
    /// SIGSTOP/SIGCONT: the guest's freezer, which leaves the agent working.
    pub async fn freeze(&self, container: &str, freeze: bool) -> Result<(), AgentError> {
        let signal = if freeze {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        self.signal(Proc::init(container), signal as u32, true)
            .await
    }

    /// Waits, without a time limit, for a process to exit.
    pub async fn wait(&self, p: Proc<'_>) -> Result<ExitStatus, AgentError> {
        let req = proto::WaitProcessRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            ..Default::default()
        };
        let resp = self
            .client
            .wait_process(untimed(), &req)
            .await
            .map_err(map_err("WaitProcess"))?;
        let valid = (0..=255).contains(&resp.status)
            && resp.signal < 65
            && (resp.signal == 0 || resp.status == 128 + resp.signal as i32);
        if !valid {
            return Err(AgentError::InvalidReply {
                call: "WaitProcess",
                message: format!("status {} with signal {}", resp.status, resp.signal),
            });
        }
        Ok(ExitStatus {
            status: resp.status,
            signal: resp.signal,
        })
    }

    /// Writes to the process's stdin; returns how much was taken.
    pub async fn write_stdin(&self, p: Proc<'_>, data: &[u8]) -> Result<usize, AgentError> {
        let req = proto::WriteStreamRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            data: data.to_vec(),
            ..Default::default()
        };
        let resp = self
            .client
            .write_stdin(untimed(), &req)
            .await
            .map_err(map_err("WriteStdin"))?;
        let len = resp.len as usize;
        if len > data.len() {
            return Err(AgentError::InvalidReply {
                call: "WriteStdin",
                message: format!("took {len} of {} bytes", data.len()),
            });
        }
        Ok(len)
    }

    /// Closes the process's stdin.
    pub async fn close_stdin(&self, p: Proc<'_>) -> Result<(), AgentError> {
        let req = proto::CloseStdinRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            ..Default::default()
        };
        self.client
            .close_stdin(timed(), &req)
            .await
            .map_err(map_err("CloseStdin"))?;
        Ok(())
    }

    /// Starts an additional process (OCI `process` JSON) in a running container.
    pub async fn exec_process(&self, p: Proc<'_>, process_json: &[u8]) -> Result<u32, AgentError> {
        let req = proto::ExecProcessRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            oci_process_json: process_json.to_vec(),
            ..Default::default()
        };
        let resp = self
            .client
            .exec_process(timed(), &req)
            .await
            .map_err(map_err("ExecProcess"))?;
        Ok(resp.pid)
    }

    /// Sets the window size of a process's terminal.
    pub async fn resize_tty(&self, p: Proc<'_>, rows: u16, columns: u16) -> Result<(), AgentError> {
        let req = proto::TtyWinResizeRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            rows: rows.into(),
            columns: columns.into(),
            ..Default::default()
        };
        self.client
            .tty_win_resize(timed(), &req)
            .await
            .map_err(map_err("TtyWinResize"))?;
        Ok(())
    }

    /// Reads the next chunk of stdout (`stderr == false`) or stderr; empty at EOF.
    pub async fn read_output(&self, p: Proc<'_>, stderr: bool) -> Result<Vec<u8>, AgentError> {
        let req = proto::ReadStreamRequest {
            container_id: p.container.into(),
            exec_id: p.exec.into(),
            len: proto::MAX_READ_LEN,
            ..Default::default()
        };
        let (call, resp) = if stderr {
            ("ReadStderr", self.client.read_stderr(untimed(), &req).await)
        } else {
            ("ReadStdout", self.client.read_stdout(untimed(), &req).await)
        };
        let data = resp.map_err(map_err(call))?.data;
        if data.len() > proto::MAX_READ_LEN as usize {
            return Err(AgentError::InvalidReply {
                call,
                message: format!("{} bytes for a {} byte read", data.len(), req.len),
            });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_text::GUEST_TEXT_MAX;

    /// Frames pass through whole, read in pieces of any size; a header
    /// declaring more than ttrpc accepts fails the read before any of it.
    #[tokio::test]
    async fn frames_pass_and_an_oversized_header_fails_the_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut wire = Vec::new();
        for (len, id) in [(3u32, 1u32), (0, 3), (MESSAGE_LENGTH_MAX as u32, 5)] {
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend_from_slice(&id.to_be_bytes());
            wire.extend_from_slice(&[2, 0]);
            wire.extend((0..len).map(|i| i as u8));
        }
        let good = wire.len();
        wire.extend_from_slice(&(MESSAGE_LENGTH_MAX as u32 + 1).to_be_bytes());
        wire.extend_from_slice(&[0, 0, 0, 7, 2, 0, 0xaa]);
        let (mut agent, host) = tokio::io::duplex(4096);
        let writer = tokio::spawn({
            let wire = wire.clone();
            async move { agent.write_all(&wire).await }
        });
        let mut host = FrameLimit::new(host);
        let mut seen = Vec::new();
        let mut piece = [0u8; 7];
        let err = loop {
            match host.read(&mut piece).await {
                Ok(0) => panic!("end of stream"),
                Ok(n) => seen.extend_from_slice(&piece[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(seen, wire[..good]);
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("4194305 bytes"), "{err}");
        drop(host);
        let _ = writer.await;
    }

    #[test]
    fn a_hostile_error_status_is_escaped_and_bounded() {
        let message = "\x1b[2J\x1b]0;owned\x07\n".repeat(1 << 18);
        let status = ttrpc::get_status(ttrpc::Code::INTERNAL, message);
        let e = map_err("StartContainer")(ttrpc::Error::RpcStatus(status));
        assert_eq!(e.code(), Some(ttrpc::Code::INTERNAL));
        let shown = e.to_string();
        assert!(
            shown.starts_with("agent StartContainer: \\x1b[2J"),
            "{shown:.40}"
        );
        assert!(shown.len() < GUEST_TEXT_MAX + 64, "{}", shown.len());
        assert!(!shown.contains(|c: char| c.is_control()));
    }
}
