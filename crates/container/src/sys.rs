//! The raw, `unsafe` system calls skerry makes beyond libcontainer's, fenced in one place.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// The number N of a pty master's slave (`/dev/pts/N` in the devpts instance it came from).
/// Fails with `ENOTTY` when `fd` is not a pty master.
pub fn pty_number(fd: BorrowedFd<'_>) -> Result<u32, SysError> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one `unsigned int` to the valid pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    check(ret.into(), || "ioctl(TIOCGPTN)".into())?;
    Ok(n)
}

/// The type of the namespace `fd` refers to, as its `CLONE_NEW*` flag (the `NS_GET_NSTYPE`
/// ioctl). Fails with `ENOTTY` when `fd` is not a namespace file.
pub fn namespace_type(fd: BorrowedFd<'_>) -> Result<libc::c_int, SysError> {
    // SAFETY: NS_GET_NSTYPE takes no argument and passes no memory.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    check(ret.into(), || "ioctl(NS_GET_NSTYPE)".into()).map(|t| t as libc::c_int)
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

/// Makes the process `cmd` starts have RLIMIT_FSIZE `max` (soft and hard),
/// set in the child before it execs (after any uid change: lowering a limit
/// needs no privilege), so it never runs without it.
pub fn limit_file_size_on_exec(cmd: &mut std::process::Command, max: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: between fork and exec the hook only calls setrlimit, which is
    // async-signal-safe, on a value captured before the fork; it allocates
    // nothing (an OS error is a plain code).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Makes the process `cmd` starts get `fd` as its descriptor `target`
/// (duplicated in the child before it execs, without close-on-exec); the
/// caller's copy is closed when `cmd` is dropped. No other child inherits it.
pub fn pass_fd_on_exec(cmd: &mut std::process::Command, fd: OwnedFd, target: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the hook only calls dup2 (and fcntl, when
    // the numbers match), which are async-signal-safe, on descriptors the
    // closure owns or names; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let ret = if fd.as_raw_fd() == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd.as_raw_fd(), target)
            };
            if ret < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
}

/// Opens `/dev/net/tun` attached to the existing tap `name` of the calling
/// thread's network namespace (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, as
/// QEMU opens it), close-on-exec.
pub fn open_tap(name: &str) -> Result<OwnedFd, SysError> {
    let path = c"/dev/net/tun";
    // SAFETY: open reads a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    check(fd.into(), || "open(/dev/net/tun)".into())?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(SysError {
            call: format!("TUNSETIFF({name:?})"),
            errno: Errno::EINVAL,
        });
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may update) the valid `ifreq`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    check(ret.into(), || format!("TUNSETIFF({name})"))?;
    Ok(fd)
}

/// Makes the mount points `paths` of process `pid`'s mount namespace (as
/// that process sees them) read-only, each on its own (`MS_BIND`: a cgroup v1
/// mount shares its superblock with the host's hierarchy, which stays
/// writable), keeping `nosuid`, `nodev` and `noexec`. A child joins the
/// namespace to remount, so the caller's namespace and root are untouched.
pub fn remount_readonly_in(pid: i32, paths: &[std::ffi::CString]) -> Result<(), SysError> {
    let ns_path = format!("/proc/{pid}/ns/mnt");
    let ns = nix::fcntl::open(
        ns_path.as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| SysError {
        call: format!("open({ns_path})"),
        errno,
    })?;
    // SAFETY: `open` returned this fd and nothing else owns it.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    // The child reports a failure as (index of the path or -1 for setns, errno).
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| SysError {
            call: "pipe2".into(),
            errno,
        })?;
    let flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    // SAFETY: the child only makes async-signal-safe calls (setns, mount,
    // write, _exit) on fds and C strings prepared before the clone.
    match unsafe { clone_process(0) }? {
        // SAFETY: as above: async-signal-safe calls only, on prepared data.
        Forked::Child => unsafe {
            let fail = |index: i32| -> ! {
                let report = [index, *libc::__errno_location()];
                libc::write(report_w.as_raw_fd(), report.as_ptr().cast(), 8);
                libc::_exit(1)
            };
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                fail(-1);
            }
            for (index, path) in paths.iter().enumerate() {
                let ret = libc::mount(
                    std::ptr::null(),
                    path.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                );
                if ret != 0 {
                    fail(index as i32);
                }
            }
            libc::_exit(0)
        },
        Forked::Parent(child) => {
            drop(report_w);
            let mut report = [0u8; 8];
            let n = nix::unistd::read(report_r.as_raw_fd(), &mut report).unwrap_or(0);
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            if n == 8 {
                let index = i32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
                let errno =
                    Errno::from_raw(i32::from_ne_bytes(report[4..].try_into().expect("4 bytes")));
                let call = usize::try_from(index)
                    .ok()
                    .and_then(|i| paths.get(i))
                    .map_or_else(
                        || format!("setns({ns_path})"),
                        |p| format!("remount read-only {:?}", p),
                    );
                return Err(SysError { call, errno });
            }
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                other => Err(SysError {
                    call: format!("remount child: {other:?}"),
                    errno: Errno::EIO,
                }),
            }
        }
    }
}

/// `MOUNT_ATTR_*` of mount_setattr(2) (linux/mount.h; not in libc).
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Ignore set-user-id and set-group-id bits.
    pub const NOSUID: u64 = 0x2;
    /// No device files.
    pub const NODEV: u64 = 0x4;
}

/// A change of mount attributes for [`mount_setattr`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountSetattr {
    /// [`mount_attr`] bits to set.
    pub set: u64,
    /// [`mount_attr`] bits to clear.
    pub clear: u64,
    /// One of `MS_PRIVATE`, `MS_SHARED`, `MS_SLAVE`, `MS_UNBINDABLE`, or 0.
    pub propagation: u64,
    /// Apply to every mount below as well.
    pub recursive: bool,
}

/// mount_setattr(2) on mount `tree` (an `open_tree` or `fsmount` fd, attached or not).
pub fn mount_setattr(tree: BorrowedFd<'_>, change: MountSetattr) -> Result<(), SysError> {
    /// `struct mount_attr` (linux/mount.h).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let attr = MountAttr {
        attr_set: change.set,
        attr_clr: change.clear,
        propagation: change.propagation,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if change.recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `tree` is a live fd, the path is an empty C string, and `attr`
    // is a `struct mount_attr` of the size passed that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret, || format!("mount_setattr({change:?})")).map(drop)
}

/// Sets `attr_set` ([`mount_attr`] bits) on mount `tree` (an `open_tree`
/// fd, attached or not) and on every mount below it.
pub fn mount_setattr_recursive(tree: BorrowedFd<'_>, attr_set: u64) -> Result<(), SysError> {
    mount_setattr(
        tree,
        MountSetattr {
            set: attr_set,
            recursive: true,
            ..MountSetattr::default()
        },
    )
}
