//! The monitor's control socket: one JSON request line, one JSON reply line.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// File name of the control socket in the container's state directory.
pub const SOCKET_NAME: &str = "monitor.sock";

/// Longest request or reply line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// A request to the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    /// Start the created container.
    Start,
    /// Stop every process of the container.
    Pause,
    /// Continue the stopped processes.
    Resume,
    /// Send a signal to the container's process (or all its processes).
    Kill {
        /// Signal number.
        signal: u32,
        /// All processes of the container.
        all: bool,
    },
}

/// The monitor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ControlReply {
    /// Set when the request failed.
    pub error: Option<String>,
}

/// Failure to talk to a monitor.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached (the monitor is gone).
    #[error("cannot reach the container monitor at {path}")]
    Connect {
        /// The socket.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("container monitor did not answer")]
    Io(#[source] std::io::Error),
    /// The monitor refused the request.
    #[error("{0}")]
    Refused(String),
}

/// Reads one JSON line of at most `MAX_LINE` bytes.
pub async fn read_line<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<T> {
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE))
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one JSON line.
pub async fn write_line<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).expect("control messages serialise");
    bytes.push(b'\n');
    stream.write_all(&bytes).await
}

/// Sends `req` to the monitor listening on `socket` and waits for its reply.
pub async fn call(socket: &Path, req: &ControlRequest) -> Result<(), ControlError> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let exchange = async {
        write_line(&mut stream, req).await?;
        read_line::<ControlReply>(&mut stream).await
    };
    let reply = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|e| ControlError::Io(e.into()))?
        .map_err(ControlError::Io)?;
    match reply.error {
        Some(message) => Err(ControlError::Refused(message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let kill = ControlRequest::Kill {
            signal: 15,
            all: false,
        };
        let json = serde_json::to_string(&kill).unwrap();
        assert_eq!(json, r#"{"op":"kill","signal":15,"all":false}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&json).unwrap(), kill);
    }

    #[tokio::test]
    async fn oversized_line_is_rejected() {
        let big = vec![b'x'; MAX_LINE as usize + 10];
        let mut reader = &big[..];
        assert!(read_line::<ControlReply>(&mut reader).await.is_err());
    }
}
