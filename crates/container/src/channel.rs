//! The parent <-> `init` channel: framed JSON messages over a Unix socketpair.
//!
//! The parent sends one [`InitConfig`]; the child answers with [`SyncMsg`]s. After
//! `Ready` the child blocks until the parent sends the start byte; a successful
//! execve closes the child's (close-on-exec) end, so the parent then sees EOF.

use std::io::{Read, Write};
use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec};
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
    /// Set up a new container (fresh namespaces) and exec its process.
    Container {
        /// Container id (for messages).
        id: String,
        /// The container's spec.
        spec: Box<Spec>,
        /// Root filesystem path as the parent sees it.
        rootfs: PathBuf,
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
    },
}

/// Messages from the child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum SyncMsg {
    /// (exec only) pid of the final process, in the parent's pid namespace.
    Pid(i32),
    /// Setup done; waiting for the start byte. Carries non-fatal warnings.
    Ready {
        /// Things that were skipped or degraded.
        warnings: Vec<String>,
    },
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
}

/// Writes one framed JSON message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ChannelError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ChannelError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| ChannelError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    Ok(())
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
        send(
            &mut buf,
            &SyncMsg::Ready {
                warnings: vec!["w".into()],
            },
        )
        .unwrap();
        let mut r = &buf[..];
        assert_eq!(recv::<SyncMsg>(&mut r).unwrap(), Some(SyncMsg::Pid(42)));
        assert!(matches!(
            recv::<SyncMsg>(&mut r).unwrap(),
            Some(SyncMsg::Ready { .. })
        ));
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
}
