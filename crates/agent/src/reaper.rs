//! The PID 1 reaper: one SIGCHLD-driven task collects every exited child and routes the
//! statuses of processes the agent started to their waiters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Statuses of unregistered children kept for a late registration (bounded).
const MAX_UNCLAIMED: usize = 256;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number.
    pub status: i32,
    /// Terminating signal, 0 for a normal exit.
    pub signal: u32,
}

impl ExitInfo {
    /// Maps a wait status; `None` for stop/continue events.
    pub fn from_wait(ws: WaitStatus) -> Option<(i32, Self)> {
        match ws {
            WaitStatus::Exited(pid, code) => Some((
                pid.as_raw(),
                ExitInfo {
                    status: code,
                    signal: 0,
                },
            )),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid.as_raw(),
                ExitInfo {
                    status: 128 + sig as i32,
                    signal: sig as u32,
                },
            )),
            _ => None,
        }
    }
}

/// Receives a process's exit once (`None` while it runs).
pub type ExitReceiver = watch::Receiver<Option<ExitInfo>>;

/// Installing the SIGCHLD handler failed.
#[derive(Debug, thiserror::Error)]
#[error("installing the SIGCHLD handler")]
pub struct ReaperError(#[source] std::io::Error);

#[derive(Default)]
struct Table {
    waiters: HashMap<i32, watch::Sender<Option<ExitInfo>>>,
    unclaimed: VecDeque<(i32, ExitInfo)>,
}

/// Routes child exits to waiters.
#[derive(Default)]
pub struct Reaper {
    table: Mutex<Table>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a child (a container's init or exec'd process, the launcher's
    /// worker's children until it exits): its exit, also one reaped before.
    pub fn register(&self, pid: i32) -> ExitReceiver {
        let mut table = self.lock();
        if let Some(i) = table.unclaimed.iter().position(|(p, _)| *p == pid) {
            let (_, info) = table.unclaimed.remove(i).unwrap_or((
                pid,
                ExitInfo {
                    status: 0,
                    signal: 0,
                },
            ));
            return watch::channel(Some(info)).1;
        }
        let (tx, rx) = watch::channel(None);
        table.waiters.insert(pid, tx);
        rx
    }

    /// Reaps every exited child without blocking.
    pub fn reap_all(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
                Ok(ws) => {
                    if let Some((pid, info)) = ExitInfo::from_wait(ws) {
                        self.deliver(pid, info);
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: i32, info: ExitInfo) {
        let mut table = self.lock();
        if let Some(tx) = table.waiters.remove(&pid) {
            tracing::debug!(pid, status = info.status, "process exited");
            let _ = tx.send(Some(info));
        } else {
            if table.unclaimed.len() >= MAX_UNCLAIMED {
                table.unclaimed.pop_front();
            }
            table.unclaimed.push_back((pid, info));
        }
    }

    /// Installs the SIGCHLD handler and spawns the reaping task.
    pub fn start(self: &Arc<Self>) -> Result<(), ReaperError> {
        let mut sig = signal(SignalKind::child()).map_err(ReaperError)?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.reap_all();
            while sig.recv().await.is_some() {
                me.reap_all();
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn maps_exit_and_signal() {
        let p = Pid::from_raw(7);
        assert_eq!(
            ExitInfo::from_wait(WaitStatus::Exited(p, 3)),
            Some((
                7,
                ExitInfo {
                    status: 3,
                    signal: 0
                }
            ))
        );
        assert_eq!(
            ExitInfo::from_wait(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some((
                7,
                ExitInfo {
                    status: 137,
                    signal: 9
                }
            ))
        );
        assert_eq!(ExitInfo::from_wait(WaitStatus::StillAlive), None);
    }

    #[test]
    fn late_registration_finds_unclaimed_status() {
        let r = Reaper::default();
        r.deliver(
            42,
            ExitInfo {
                status: 1,
                signal: 0,
            },
        );
        let rx = r.register(42);
        assert_eq!(
            *rx.borrow(),
            Some(ExitInfo {
                status: 1,
                signal: 0
            })
        );
        let rx = r.register(43);
        r.deliver(
            43,
            ExitInfo {
                status: 0,
                signal: 0,
            },
        );
        assert_eq!(
            *rx.borrow(),
            Some(ExitInfo {
                status: 0,
                signal: 0
            })
        );
    }
}
