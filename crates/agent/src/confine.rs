//! The agent confines itself once the guest is set up: every thread that
//! serves the API runs with `no_new_privs` and a seccomp filter that denies
//! what a compromised agent would reach for first (kernel modules, kexec,
//! BPF, ptrace and cross-process memory, keyrings, perf, userfaultfd, file
//! handles, swap, the clock, io_uring, and reboot other than the poweroff it
//! performs).
//!
//! Seccomp filters and `no_new_privs` are per thread and inherited by what a
//! thread forks, so containers must not be forked by a confined thread: they
//! would inherit the agent's limits (no setuid binaries, no ptrace) instead
//! of their spec's. They are cloned by the [`Launcher`], one thread started
//! before the confinement, which does nothing but run the clone calls it is
//! handed. A filter per thread is the same model as the VMM's; threads share
//! memory, so this raises the bar for a compromised agent thread rather than
//! walls it off (a separate launcher process would; see docs/architecture.md).
//!
//! The filter is a deny list, not an allow list: after boot the agent still
//! mounts (the share), configures the network over netlink, manages cgroups
//! and sends signals, and an allow list missing one rarely used call would
//! break a container in the field; what it denies, no agent path needs.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Mutex;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// `reboot(2)`'s command for a power-off (LINUX_REBOOT_CMD_POWER_OFF).
const REBOOT_CMD_POWER_OFF: u64 = 0x4321_fedc;

/// Failure to confine the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The filter could not be built.
    #[error("building the agent's seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter (or no_new_privs).
    #[error("installing the agent's seccomp filter")]
    Apply(#[source] seccompiler::Error),
    /// The launcher thread could not be started.
    #[error("starting the launcher thread")]
    Launcher(#[source] std::io::Error),
}

/// The syscalls the agent's threads may not make.
const DENIED: &[(&str, i64)] = &[
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// The agent's filter: everything allowed but [`DENIED`] and a `reboot`
/// that is not a power-off, which fail with EPERM.
fn filter() -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, vec![])).collect();
    let not_power_off = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Ne,
        REBOOT_CMD_POWER_OFF,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(ConfineError::Build)?;
    rules.insert(libc::SYS_reboot, vec![not_power_off]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(ConfineError::Build)
}

/// Sets `no_new_privs` and installs the agent's filter on the calling
/// thread (and so on every thread it starts later).
pub fn confine_this_thread() -> Result<(), ConfineError> {
    seccompiler::apply_filter(&filter()?).map_err(ConfineError::Apply)
}

/// What the calling thread's `/proc` status says of its confinement
/// (`Seccomp` and `NoNewPrivs`), for the log.
pub fn status_of_this_thread() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("Seccomp:") || l.starts_with("NoNewPrivs:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread, unconfined, that runs the calls which clone container
/// processes, one at a time.
pub struct Launcher {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Launcher {
    /// Starts the thread; call before [`confine_this_thread`].
    pub fn start() -> Result<Self, ConfineError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .map_err(ConfineError::Launcher)?;
        Ok(Self {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `f` on the launcher thread and returns what it returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .expect("the launcher thread runs as long as the agent");
        result
            .recv()
            .expect("the launcher thread answers every job")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (the filter cannot be taken off again): the
    /// confined thread is denied what the filter lists and keeps the rest,
    /// and the launcher started before it is not confined.
    #[test]
    fn a_confined_thread_is_denied_the_list_and_the_launcher_is_not() {
        // SAFETY: the child only runs this test's code and then _exits; the
        // test process is not multi-threaded in a way that matters here
        // (the child touches no lock held by another thread).
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| {
                    let launcher = Launcher::start().ok()?;
                    confine_this_thread().ok()?;
                    let confined = status_of_this_thread();
                    let free = launcher.run(status_of_this_thread);
                    // SAFETY: plain syscalls with integer arguments.
                    let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    // SAFETY: a reboot that is not a power-off: denied
                    // before the kernel sees it (else EINVAL for the bad
                    // magic numbers).
                    let reboot = unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0x0123_4567, 0) };
                    let reboot_errno = std::io::Error::last_os_error().raw_os_error();
                    let ok = confined == "NoNewPrivs: 1, Seccomp: 2"
                        && free == "NoNewPrivs: 0, Seccomp: 0"
                        && keyctl == -1
                        && errno == Some(libc::EPERM)
                        && reboot == -1
                        && reboot_errno == Some(libc::EPERM)
                        && std::fs::read_to_string("/proc/self/status").is_ok();
                    if !ok {
                        eprintln!("confined {confined:?}, launcher {free:?}, keyctl {errno:?}, reboot {reboot_errno:?}");
                    }
                    ok.then_some(())
                })();
                // SAFETY: leaving the forked child without running the
                // parent's destructors.
                unsafe { libc::_exit(if code.is_some() { 0 } else { 1 }) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for the child forked above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
    }
}
