//! Control API: a Unix socket served by one thread. Each request is one JSON line
//! (`{"action":"status"|"pause"|"resume"|"shutdown"}`), each reply one JSON line
//! (`{"ok":true,"state":"running"}` or `{"ok":false,"error":"..."}`). Requests become one
//! [`ApiRequest`] enum handed to the VMM loop, which owns all VM state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::{self, allow, SeccompError, ThreadFilter, ThreadKind};

/// Longest request line accepted.
pub const MAX_REQUEST_LINE: u64 = 4096;

/// Failure of the API front end.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("cannot bind the API socket {path}")]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The API thread could not be started.
    #[error("cannot spawn the API thread")]
    Spawn(#[source] std::io::Error),
}

/// What a client can ask the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// Report the run state.
    Status,
    /// Stop all vCPUs (they park; devices stay).
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// End the VM; the VMM exits with status 5.
    Shutdown,
}

/// The VMM loop's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiReply {
    /// Success, with the run state after the request.
    State(&'static str),
    /// Failure.
    Error(String),
}

impl ApiReply {
    /// The JSON line sent to the client.
    pub fn to_json(&self) -> String {
        match self {
            ApiReply::State(s) => serde_json::json!({"ok": true, "state": s}).to_string(),
            ApiReply::Error(e) => serde_json::json!({"ok": false, "error": e}).to_string(),
        }
    }
}

/// A request plus where to send its reply.
pub type ApiMessage = (ApiRequest, Sender<ApiReply>);

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<ApiRequest, String> {
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("invalid JSON: {e}"))?;
    match v.get("action").and_then(|a| a.as_str()) {
        Some("status") => Ok(ApiRequest::Status),
        Some("pause") => Ok(ApiRequest::Pause),
        Some("resume") => Ok(ApiRequest::Resume),
        Some("shutdown") => Ok(ApiRequest::Shutdown),
        Some(other) => Err(format!("unknown action {other:?}")),
        None => Err("missing \"action\"".into()),
    }
}

/// Binds the API socket (before any seccomp filter is installed). An existing path is an
/// error: the socket of another VMM must not be taken over.
pub fn bind(path: &std::path::Path) -> Result<UnixListener, ApiError> {
    UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Starts the API thread: installs `filter`, then serves one connection at a time, forever
/// (the thread ends with the process).
pub fn spawn(
    listener: UnixListener,
    requests: Sender<ApiMessage>,
    wake: EventFd,
    filter: Option<BpfProgram>,
) -> Result<JoinHandle<()>, ApiError> {
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Some(prog) = filter {
                if let Err(e) = seccomp::apply(&prog) {
                    log::error!("api: {e}");
                    return;
                }
            }
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => serve(stream, &requests, &wake),
                    Err(_) => continue,
                }
            }
        })
        .map_err(ApiError::Spawn)
}

fn serve(stream: UnixStream, requests: &Sender<ApiMessage>, wake: &EventFd) {
    let mut out = &stream;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_REQUEST_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            let r = ApiReply::Error("request line too long".into());
            let _ = writeln!(out, "{}", r.to_json());
            return;
        }
        let reply = match parse_request(&line) {
            Err(e) => ApiReply::Error(e),
            Ok(ApiRequest::Shutdown) => {
                // Reply first: the process may be gone once the VMM acts on it.
                let _ = writeln!(out, "{}", ApiReply::State("stopping").to_json());
                let (tx, _rx) = channel();
                let _ = requests.send((ApiRequest::Shutdown, tx));
                let _ = wake.write(1);
                return;
            }
            Ok(req) => ask(requests, wake, req),
        };
        if writeln!(out, "{}", reply.to_json()).is_err() {
            return;
        }
    }
}

fn ask(requests: &Sender<ApiMessage>, wake: &EventFd, req: ApiRequest) -> ApiReply {
    let (tx, rx): (Sender<ApiReply>, Receiver<ApiReply>) = channel();
    if requests.send((req, tx)).is_err() || wake.write(1).is_err() {
        return ApiReply::Error("the VMM is shutting down".into());
    }
    rx.recv()
        .unwrap_or_else(|_| ApiReply::Error("the VMM is shutting down".into()))
}

/// The API thread's allowlist: accept, read and write the connection, hand requests over
/// (futex, eventfd write), and allocate.
pub fn seccomp_filter() -> Result<ThreadFilter, SeccompError> {
    Ok(ThreadFilter {
        kind: ThreadKind::Api,
        allowed: vec![
            allow("accept4", libc::SYS_accept4),
            // std's UnixStream reads with recv(2) and writes with send(2).
            allow("recvfrom", libc::SYS_recvfrom),
            allow("sendto", libc::SYS_sendto),
            // Wake-up eventfd.
            allow("write", libc::SYS_write),
            allow("close", libc::SYS_close),
            allow("futex", libc::SYS_futex),
            allow("mmap", libc::SYS_mmap),
            allow("munmap", libc::SYS_munmap),
            allow("brk", libc::SYS_brk),
            allow("madvise", libc::SYS_madvise),
            // Debug builds only: std checks that an fd being closed is open.
            #[cfg(debug_assertions)]
            allow("fcntl", libc::SYS_fcntl),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_an_error() {
        assert_eq!(
            parse_request("{\"action\":\"pause\"}\n"),
            Ok(ApiRequest::Pause)
        );
        assert_eq!(
            parse_request(" {\"action\":\"status\"} "),
            Ok(ApiRequest::Status)
        );
        assert!(parse_request("{\"action\":\"reboot\"}").is_err());
        assert!(parse_request("{}").is_err());
        assert!(parse_request("pause").is_err());
        assert_eq!(
            ApiReply::State("running").to_json(),
            "{\"ok\":true,\"state\":\"running\"}"
        );
    }
}
