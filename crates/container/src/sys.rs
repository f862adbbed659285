//! The raw, `unsafe` system calls of container setup, fenced in one place.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;

/// A raw system call failed.
#[derive(Debug, thiserror::Error)]
#[error("{call}")]
pub struct SysError {
    /// The call, with its main argument.
    pub call: String,
    /// The errno.
    #[source]
    pub errno: Errno,
}

fn check(ret: libc::c_long, call: impl FnOnce() -> String) -> Result<libc::c_long, SysError> {
    if ret < 0 {
        Err(SysError {
            call: call(),
            errno: Errno::last(),
        })
    } else {
        Ok(ret)
    }
}

/// Result of [`clone_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent; the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// fork(2)-like clone with namespace `flags`; the child gets SIGCHLD as exit signal.
///
/// # Safety
/// In a multi-threaded caller the child may only do async-signal-safe work (no allocation,
/// no locks) until it execs or exits.
pub unsafe fn clone_process(flags: libc::c_int) -> Result<Forked, SysError> {
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork(2): the
    // child runs on a copy of the caller's stack. The caller upholds the async-signal-safe
    // contract documented above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_ulong::from((flags | libc::SIGCHLD) as u32),
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    let pid = check(ret, || format!("clone(flags={flags:#x})"))?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid as i32)
    })
}

/// The async-signal-safe tail of a freshly cloned child: wire up stdio and the channel,
/// then exec `exe`. Never returns.
///
/// # Safety
/// Must only be called in a child created by [`clone_process`]; `argv` and `envp` must be
/// NULL-terminated arrays of pointers to valid C strings that outlive the call.
pub unsafe fn child_exec(
    stdio: [RawFd; 3],
    channel: RawFd,
    channel_target: RawFd,
    exe: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: only async-signal-safe calls (dup2, fcntl, execve, _exit) on fds and
    // pointers the caller prepared before cloning.
    unsafe {
        for (target, src) in stdio.iter().enumerate() {
            if libc::dup2(*src, target as RawFd) < 0 {
                libc::_exit(126);
            }
        }
        if channel == channel_target {
            libc::fcntl(channel, libc::F_SETFD, 0);
        } else if libc::dup2(channel, channel_target) < 0 {
            libc::_exit(126);
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// pivot_root(2).
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<(), SysError> {
    // SAFETY: both arguments are valid NUL-terminated strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(ret, || format!("pivot_root({new_root:?})")).map(drop)
}

/// Makes the terminal on fd 0 the controlling terminal of the calling session leader.
pub fn set_controlling_tty() -> Result<(), SysError> {
    // SAFETY: TIOCSCTTY takes an int argument, no memory is passed.
    let ret = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    check(ret.into(), || "ioctl(0, TIOCSCTTY)".into()).map(drop)
}

/// Sets the window size of a terminal.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> Result<(), SysError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the valid pointer.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    check(ret.into(), || "ioctl(TIOCSWINSZ)".into()).map(drop)
}

/// Sets one resource limit.
pub fn set_rlimit(
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> Result<(), SysError> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads a valid `rlimit`.
    let ret = unsafe { libc::setrlimit(resource, &lim) };
    check(ret.into(), || format!("setrlimit({resource})")).map(drop)
}

/// Sets the process umask.
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, args: &[std::ffi::CString], env: &[std::ffi::CString]) -> Errno {
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: both arrays are NULL-terminated and point into CStrings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}
