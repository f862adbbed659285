//! Bounds every vhost-user exchange in time. The vhost crate retries reads that time out, so a
//! socket timeout cannot stop a back end that accepts and then never answers; instead this
//! thread shuts the socket down when one exchange (a [`Guard`]'s lifetime) lasts longer than
//! the timeout. The blocked read then sees end-of-file and the exchange fails.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use seccompiler::BpfProgram;

use crate::seccomp::{self, allow, allow_arg_in, SeccompError, ThreadFilter, ThreadKind};

#[derive(Default)]
struct State {
    /// Generation of the exchange under way (0: none).
    busy: u64,
    next: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The watchdog thread of one vhost-user socket.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// One exchange under watch; dropping it ends the watch.
pub struct Guard<'a>(&'a Shared);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.lock().busy = 0;
        self.0.cv.notify_one();
    }
}

impl Watchdog {
    /// Starts watching `fd` (which must outlive the watchdog); the thread installs `filter`
    /// first thing.
    pub fn spawn(
        fd: RawFd,
        timeout: Duration,
        filter: Option<BpfProgram>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || {
                if let Some(prog) = filter {
                    if let Err(e) = seccomp::apply(&prog) {
                        log::error!("vhost-watchdog: {e}");
                        return;
                    }
                }
                watch(&s, fd, timeout);
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches one exchange until the guard is dropped.
    pub fn guard(&self) -> Guard<'_> {
        let mut st = self.shared.lock();
        st.next += 1;
        st.busy = st.next;
        drop(st);
        self.shared.cv.notify_one();
        Guard(&self.shared)
    }
}

fn watch(s: &Shared, fd: RawFd, timeout: Duration) {
    let mut st = s.lock();
    loop {
        if st.stop {
            return;
        }
        if st.busy == 0 {
            st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let gen = st.busy;
        let (g, res) =
            s.cv.wait_timeout_while(st, timeout, |st| st.busy == gen && !st.stop)
                .unwrap_or_else(|e| e.into_inner());
        st = g;
        if res.timed_out() {
            // SAFETY: shutdown(2) on a descriptor the owner keeps open while we run; it only
            // changes the socket's state.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            while st.busy == gen && !st.stop {
                st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watchdog thread's allowlist: waiting (futex, and clock_gettime where the vDSO cannot
/// serve it), `shutdown` of the watched socket only (`fd`; None in the summary), thread exit.
pub fn seccomp_filter(fd: Option<RawFd>) -> Result<ThreadFilter, SeccompError> {
    let shutdown = match fd {
        Some(fd) => allow_arg_in("shutdown", libc::SYS_shutdown, 0, &[fd as u64])
            .map_err(|e| SeccompError::Build("vhost-watchdog", e))?,
        None => allow("shutdown", libc::SYS_shutdown),
    };
    Ok(ThreadFilter {
        kind: ThreadKind::VhostWatchdog,
        allowed: vec![
            allow("futex", libc::SYS_futex),
            allow("clock_gettime", libc::SYS_clock_gettime),
            shutdown,
            // Thread exit: std's alt stack teardown, glibc stack release.
            allow("sigaltstack", libc::SYS_sigaltstack),
            allow("munmap", libc::SYS_munmap),
            allow("madvise", libc::SYS_madvise),
            allow("rt_sigprocmask", libc::SYS_rt_sigprocmask),
            allow("exit", libc::SYS_exit),
        ],
    })
}
