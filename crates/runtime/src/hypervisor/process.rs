//! A child process owned by a background task that reaps it, so that it can be
//! signalled without racing pid reuse and waited on from anywhere.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{find_binary, HypervisorError};

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcExit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Could not be waited on.
    Unknown,
}

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcExit::Code(c) => write!(f, "exited with status {c}"),
            ProcExit::Signal(s) => write!(f, "killed by signal {s}"),
            ProcExit::Unknown => f.write_str("ended"),
        }
    }
}

/// A spawned child; dropping it kills the child (`kill_on_drop`).
pub(crate) struct Process {
    pub(crate) what: &'static str,
    pid: u32,
    signals: mpsc::UnboundedSender<Signal>,
    exit: watch::Receiver<Option<ProcExit>>,
    task: JoinHandle<()>,
}

impl Process {
    /// Spawns `cmd` (stdin null, stdout and stderr appended to `log`).
    pub(crate) fn spawn(what: &'static str, cmd: Command, log: &Path) -> std::io::Result<Process> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        Process::spawn_with(what, cmd, out, err)
    }

    /// Spawns `cmd` with stdin null and the given stdout and stderr.
    pub(crate) fn spawn_with(
        what: &'static str,
        mut cmd: Command,
        stdout: File,
        stderr: File,
    ) -> std::io::Result<Process> {
        cmd.stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or_default();
        let (signals, mut signal_rx) = mpsc::unbounded_channel::<Signal>();
        let (exit_tx, exit) = watch::channel(None);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let exit = match status {
                            Ok(s) => match (s.code(), s.signal()) {
                                (Some(c), _) => ProcExit::Code(c),
                                (None, Some(sig)) => ProcExit::Signal(sig),
                                _ => ProcExit::Unknown,
                            },
                            Err(_) => ProcExit::Unknown,
                        };
                        let _ = exit_tx.send(Some(exit));
                        return;
                    }
                    Some(sig) = signal_rx.recv() => {
                        // The child is not reaped yet (only this task reaps it), so the pid is still ours.
                        if let Some(id) = child.id() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(id as i32),
                                sig,
                            );
                        }
                    }
                }
            }
        });
        Ok(Process {
            what,
            pid,
            signals,
            exit,
            task,
        })
    }

    /// Its pid (reaped or not).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, if it has.
    pub(crate) fn exited(&self) -> Option<ProcExit> {
        *self.exit.borrow()
    }

    /// Sends `sig` unless it has been reaped.
    pub(crate) fn signal(&self, sig: Signal) {
        let _ = self.signals.send(sig);
    }

    /// Resolves when it has exited (cancel-safe).
    pub(crate) async fn wait(&self) -> ProcExit {
        let mut rx = self.exit.clone();
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(ProcExit::Unknown),
            Err(_) => ProcExit::Unknown,
        };
        exit
    }

    /// Waits up to `grace` for it to exit by itself.
    pub(crate) async fn wait_timeout(&self, grace: Duration) -> Option<ProcExit> {
        tokio::time::timeout(grace, self.wait()).await.ok()
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once reaped.
    pub(crate) async fn terminate(&self, grace: Duration) -> ProcExit {
        if let Some(e) = self.exited() {
            return e;
        }
        self.signal(Signal::SIGTERM);
        if let Some(e) = self.wait_timeout(grace).await {
            return e;
        }
        self.signal(Signal::SIGKILL);
        self.wait().await
    }

    /// Pids of its direct children, then of itself, while it runs (children
    /// first, so that killing them in order never orphans a child).
    pub(crate) fn pids(&self) -> Vec<u32> {
        if self.exited().is_some() {
            return Vec::new();
        }
        let children = format!("/proc/{0}/task/{0}/children", self.pid);
        let mut pids: Vec<u32> = std::fs::read_to_string(children)
            .map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_default();
        pids.push(self.pid);
        pids
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Dropping the task drops the Child, whose kill_on_drop SIGKILLs it.
        self.task.abort();
    }
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(4096);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => return String::new(),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Resolves a configured binary or fails naming it.
pub(crate) fn resolve(what: &'static str, name: &Path) -> Result<PathBuf, HypervisorError> {
    find_binary(name).ok_or_else(|| HypervisorError::BinaryNotFound {
        what,
        name: name.to_path_buf(),
    })
}

/// [`Process::spawn`] with the error naming the program.
pub(crate) fn spawn(
    what: &'static str,
    binary: &Path,
    cmd: Command,
    log: &Path,
) -> Result<Process, HypervisorError> {
    Process::spawn(what, cmd, log).map_err(|source| HypervisorError::Spawn {
        what,
        binary: binary.to_path_buf(),
        source,
    })
}

/// [`Process::spawn_with`] with `stdout`, stderr appended to `log`, and errors naming the program.
pub(crate) fn spawn_with_stdout(
    what: &'static str,
    binary: &Path,
    cmd: Command,
    stdout: File,
    log: &Path,
) -> Result<Process, HypervisorError> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| HypervisorError::RunDir(log.to_path_buf(), e))?;
    Process::spawn_with(what, cmd, stdout, stderr).map_err(|source| HypervisorError::Spawn {
        what,
        binary: binary.to_path_buf(),
        source,
    })
}

/// Waits until `sock` exists, failing early if the process dies.
pub(crate) async fn wait_for_socket(
    proc_: &Process,
    sock: &Path,
    log: &Path,
    deadline: Instant,
) -> Result<(), HypervisorError> {
    loop {
        if let Some(exit) = proc_.exited() {
            return Err(start_failed(proc_.what, &exit.to_string(), log));
        }
        if std::fs::symlink_metadata(sock).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = format!("socket {} did not appear", sock.display());
            return Err(start_failed(proc_.what, &what, log));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A start-up failure of `what`, with the last lines of its log.
pub(crate) fn start_failed(what: &'static str, happened: &str, log: &Path) -> HypervisorError {
    let tail = log_tail(log, 5);
    let detail = if tail.is_empty() {
        format!("{happened} (log {})", log.display())
    } else {
        format!("{happened}; {}: {tail}", log.display())
    };
    HypervisorError::StartFailed { what, detail }
}
