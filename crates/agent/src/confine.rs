//! The agent confines itself once the guest is set up: every thread that
//! serves the API runs with `no_new_privs`, a seccomp allow-list of the
//! system calls the agent still makes, and bounded resource limits.
//!
//! Seccomp filters, `no_new_privs` and resource limits are inherited by what
//! a process forks, so containers must not be forked by the confined agent:
//! they would get the agent's limits (no setuid binaries, no ptrace) instead
//! of their spec's. They are created by the launcher process
//! (`crate::launcher`), forked before the confinement.
//!
//! The filter is an allow list ([`ALLOWED`]): file and socket I/O, memory,
//! threads, signals, the mounts, netlink and cgroup writes of container
//! set-up, and `reboot` only as the power-off the agent performs. Kernel
//! modules, kexec, BPF, ptrace, keyrings, perf, io_uring, the clock, swap and
//! everything else fail with EPERM. A denied call is trapped and logged on
//! the console with its number before it returns EPERM, so a call missing
//! from the list shows up in the field as one line, not as a silent failure.
//!
//! The agent's own resource limits ([`AGENT_RLIMITS`]): no core dumps, no
//! locked memory, a bounded number of open files.

use std::collections::BTreeMap;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
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
    /// The handler that logs denied calls could not be installed.
    #[error("installing the SIGSYS handler that logs denied calls")]
    Handler(#[source] std::io::Error),
    /// A resource limit could not be read or set.
    #[error("setting the agent's {0}")]
    Rlimit(&'static str, #[source] std::io::Error),
}

/// The system calls the agent's threads may make, whatever their arguments.
const ALLOWED: &[i64] = &[
    // Memory.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // Threads (tokio's workers, the blocking pool) and their synchronisation.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Identity and time.
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    // Signals, and the containers' processes.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_wait4,
    libc::SYS_waitid,
    // File descriptors and files (state, cgroups, /proc, the share's rootfs).
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_getdents64,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_flock,
    // Readiness.
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // Sockets: the API (vsock), stdio channels (unix), netlink.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    // The sandbox: hostname and the share.
    libc::SYS_sethostname,
    libc::SYS_mount,
    libc::SYS_umount2,
];

/// `prctl(2)` options the agent's threads may use (naming threads).
const PRCTL_ALLOWED: &[u64] = &[libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64];

/// The agent's own resource limits (resource, name, soft = hard): no core
/// dumps of its memory, no locked memory, a bounded number of open files.
pub const AGENT_RLIMITS: &[(Resource, &str, u64)] = &[
    (Resource::RLIMIT_CORE, "RLIMIT_CORE", 0),
    (Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", 0),
    (Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE", 4096),
];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, ConfineError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(ConfineError::Build)
}

/// The agent's filter: [`ALLOWED`], `prctl` for [`PRCTL_ALLOWED`],
/// `prlimit64` that only reads, and `reboot` that powers off; anything else
/// traps (logged, then EPERM: see [`on_denied`]).
fn filter() -> Result<BpfProgram, ConfineError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, vec![])).collect();
    let one = |c: SeccompCondition| SeccompRule::new(vec![c]).map_err(ConfineError::Build);
    let prctl = PRCTL_ALLOWED
        .iter()
        .map(|&op| condition(0, SeccompCmpOp::Eq, op).and_then(one))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_prctl, prctl);
    // getrlimit(2) is prlimit64(0, resource, NULL, old): no new limit.
    rules.insert(
        libc::SYS_prlimit64,
        vec![one(condition(2, SeccompCmpOp::Eq, 0)?)?],
    );
    let power_off = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        REBOOT_CMD_POWER_OFF,
    )
    .map_err(ConfineError::Build)?;
    rules.insert(libc::SYS_reboot, vec![one(power_off)?]);
    SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(ConfineError::Build)
}

/// The `_sigsys` member of the kernel's `siginfo_t` for SIGSYS (libc has no
/// accessor for it): after the three ints and padding, the calling address,
/// the system call number and the audit architecture.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    _code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// SIGSYS handler for a call the filter denied: writes one line naming the
/// call's number to stderr (the console) and makes the call return EPERM.
/// Only async-signal-safe work: formatting into a stack buffer and write(2).
extern "C" fn on_denied(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a SIGSYS siginfo (SA_SIGINFO), laid out as
    // `SigsysInfo`; it is valid for the handler's duration.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    const PREFIX: &[u8] = b"skerry-agent: seccomp denied system call ";
    let mut line = [0u8; PREFIX.len() + 11];
    line[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut count) = (nr.unsigned_abs(), 0);
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..count].iter().rev().enumerate() {
        line[PREFIX.len() + i] = *d;
    }
    line[PREFIX.len() + count] = b'\n';
    let len = PREFIX.len() + count + 1;
    // SAFETY: write(2) of a stack buffer to fd 2; the ucontext is the one
    // the kernel saved for this thread, and RAX holds the call's result
    // once the handler returns.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        let context = context.cast::<libc::ucontext_t>();
        (*context).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

/// Installs [`on_denied`] for SIGSYS (process-wide; children reset it when
/// they exec).
fn log_denied_calls() -> Result<(), ConfineError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"`
    // function of the SA_SIGINFO signature.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_denied as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ConfineError::Handler(std::io::Error::last_os_error()))
    }
}

/// Lowers the process's limits to [`AGENT_RLIMITS`].
fn limit_resources() -> Result<(), ConfineError> {
    for &(resource, name, value) in AGENT_RLIMITS {
        let failed = |e: nix::Error| ConfineError::Rlimit(name, e.into());
        let (_, hard) = getrlimit(resource).map_err(failed)?;
        let value = value.min(hard);
        setrlimit(resource, value, value).map_err(failed)?;
    }
    Ok(())
}

/// Confines the agent: lowers the process's resource limits, logs denied
/// calls, and sets `no_new_privs` and the filter on the calling thread (and
/// so on every thread it starts later).
pub fn confine_this_thread() -> Result<(), ConfineError> {
    let filter = filter()?;
    limit_resources()?;
    log_denied_calls()?;
    seccompiler::apply_filter(&filter).map_err(ConfineError::Apply)
}

/// The process's [`AGENT_RLIMITS`] as `NAME soft/hard`, for the log.
pub fn limits_of_this_process() -> String {
    AGENT_RLIMITS
        .iter()
        .map(|&(resource, name, _)| match getrlimit(resource) {
            Ok((soft, hard)) => format!("{name} {soft}/{hard}"),
            Err(_) => format!("{name} unknown"),
        })
        .collect::<Vec<_>>()
        .join(", ")
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// A system call with up to four integer arguments: its result and errno.
    fn call(nr: i64, args: [u64; 4]) -> (i64, Option<i32>) {
        // SAFETY: each call the test makes takes integer arguments or NULL
        // pointers only, or is denied before the kernel reads them.
        let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3]) };
        (ret, std::io::Error::last_os_error().raw_os_error())
    }

    /// In a child process (the filter cannot be taken off again): the
    /// confined thread may make what the agent needs, every other call is
    /// denied with EPERM and logged with its number on stderr, the process's
    /// limits are the agent's, and a process forked before is not confined.
    #[test]
    fn a_confined_thread_is_limited_to_the_allow_list_and_the_launcher_is_not() {
        let (log_read, log_write) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only runs this test's code and then _exits; the
        // test process is not multi-threaded in a way that matters here
        // (the child touches no lock held by another thread).
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| {
                    nix::unistd::dup2(log_write.as_raw_fd(), 2).ok()?;
                    // The launcher: forked first, it reports its status when
                    // the confined parent asks (a byte on the pipe).
                    let (ask_r, ask_w) = nix::unistd::pipe().ok()?;
                    let (tell_r, tell_w) = nix::unistd::pipe().ok()?;
                    // SAFETY: this child process has one thread.
                    if unsafe { libc::fork() } == 0 {
                        let mut byte = [0u8; 1];
                        let _ = nix::unistd::read(ask_r.as_raw_fd(), &mut byte);
                        let _ = nix::unistd::write(&tell_w, status_of_this_thread().as_bytes());
                        // SAFETY: leaving the forked launcher.
                        unsafe { libc::_exit(0) }
                    }
                    drop(tell_w);
                    confine_this_thread().ok()?;
                    let mut bad = Vec::new();
                    let confined = status_of_this_thread();
                    nix::unistd::write(&ask_w, b"?").ok()?;
                    let mut answer = vec![0u8; 256];
                    let n = nix::unistd::read(tell_r.as_raw_fd(), &mut answer).ok()?;
                    let free = String::from_utf8_lossy(&answer[..n]).into_owned();
                    if confined != "NoNewPrivs: 1, Seccomp: 2"
                        || free != "NoNewPrivs: 0, Seccomp: 0"
                    {
                        bad.push(format!("confined {confined:?}, launcher {free:?}"));
                    }
                    let denied: &[(&str, i64, [u64; 4])] = &[
                        ("keyctl", libc::SYS_keyctl, [0; 4]),
                        (
                            "ptrace",
                            libc::SYS_ptrace,
                            [libc::PTRACE_ATTACH as u64, 1, 0, 0],
                        ),
                        ("bpf", libc::SYS_bpf, [0; 4]),
                        ("init_module", libc::SYS_init_module, [0; 4]),
                        ("kexec_load", libc::SYS_kexec_load, [0; 4]),
                        ("perf_event_open", libc::SYS_perf_event_open, [0; 4]),
                        ("io_uring_setup", libc::SYS_io_uring_setup, [1, 0, 0, 0]),
                        (
                            "unshare",
                            libc::SYS_unshare,
                            [libc::CLONE_NEWUSER as u64, 0, 0, 0],
                        ),
                        ("setns", libc::SYS_setns, [0; 4]),
                        ("personality", libc::SYS_personality, [0xffff_ffff, 0, 0, 0]),
                        ("setuid", libc::SYS_setuid, [0; 4]),
                        (
                            "setrlimit",
                            libc::SYS_setrlimit,
                            [libc::RLIMIT_CORE as u64, 0, 0, 0],
                        ),
                        (
                            "prlimit64 (set)",
                            libc::SYS_prlimit64,
                            [0, libc::RLIMIT_CORE as u64, 8, 0],
                        ),
                        (
                            "prctl(PR_SET_DUMPABLE)",
                            libc::SYS_prctl,
                            [libc::PR_SET_DUMPABLE as u64, 1, 0, 0],
                        ),
                        ("reboot (restart)", libc::SYS_reboot, [0, 0, 0x0123_4567, 0]),
                    ];
                    for (name, nr, args) in denied {
                        let got = call(*nr, *args);
                        if got != (-1, Some(libc::EPERM)) {
                            bad.push(format!("{name}: {got:?}, not EPERM"));
                        }
                    }
                    // Allowed: reading a limit (the agent's own now), naming a
                    // thread, /proc.
                    let core = getrlimit(Resource::RLIMIT_CORE);
                    if core != Ok((0, 0)) {
                        bad.push(format!("RLIMIT_CORE {core:?}"));
                    }
                    let name = b"confined\0";
                    if call(
                        libc::SYS_prctl,
                        [libc::PR_SET_NAME as u64, name.as_ptr() as u64, 0, 0],
                    )
                    .0 != 0
                    {
                        bad.push("prctl(PR_SET_NAME) denied".into());
                    }
                    if std::fs::read_to_string("/proc/self/status").is_err() {
                        bad.push("reading /proc/self/status failed".into());
                    }
                    let mut log = vec![0u8; 4096];
                    // Every denied call above logged one line before returning.
                    let n = nix::unistd::read(log_read.as_raw_fd(), &mut log).unwrap_or(0);
                    let log = String::from_utf8_lossy(&log[..n]).into_owned();
                    let logged = |nr: i64| {
                        log.contains(&format!("skerry-agent: seccomp denied system call {nr}\n"))
                    };
                    for (name, nr, _) in denied {
                        if !logged(*nr) {
                            bad.push(format!("{name} not logged in {log:?}"));
                        }
                    }
                    for b in &bad {
                        println!("{b}");
                    }
                    bad.is_empty().then_some(())
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
