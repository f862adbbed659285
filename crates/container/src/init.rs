//! Child side: `<agent> init` sets up the container (or joins one) and execs the program.
//!
//! Runs single-threaded in a freshly exec'd binary, so ordinary Rust code is fine here.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{fstat, makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, dup2, fchown, setgroups, setsid, Gid, Uid};
use oci_spec::runtime::{LinuxDeviceType, LinuxSeccomp, Process, Spec};

use crate::channel::{self, InitConfig, SyncMsg, INIT_FD_ENV};
use crate::mounts::{parse_mount_options, propagation_flags};
use crate::security::{self, SecurityError};
use crate::spec::{self, ResolveError, SpecError};
use crate::sys::{self, Forked, SysError};

/// Container setup inside the child failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system call failed during a named step.
    #[error("{step}")]
    Step {
        /// What was being done, with paths.
        step: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// File I/O failed during a named step.
    #[error("{step}")]
    Io {
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The spec or process is unusable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A path could not be resolved inside the rootfs.
    #[error("resolving {path:?} in the rootfs")]
    Resolve {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ResolveError,
    },
    /// A raw system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A capability or seccomp limit could not be applied.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The bootstrap channel is missing or broken.
    #[error("init channel: {0}")]
    Channel(String),
}

fn step<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> Result<T, InitError> {
    r.map_err(|source| InitError::Step {
        step: what(),
        source,
    })
}

fn io<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T, InitError> {
    r.map_err(|source| InitError::Io {
        step: what(),
        source,
    })
}

/// Formats an error with its whole source chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Entry point of `<agent> init`; never returns.
pub fn main() -> ! {
    let chan = match open_channel() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skerry init: {}", error_chain(&e));
            std::process::exit(1);
        }
    };
    let mut report = match chan.try_clone() {
        Ok(c) => c,
        Err(_) => std::process::exit(1),
    };
    let mut chan = chan;
    let config = match channel::recv::<InitConfig>(&mut chan) {
        Ok(Some(c)) => c,
        Ok(None) => std::process::exit(1),
        Err(e) => fail(&mut report, "", &e),
    };
    let (id, result) = match config {
        InitConfig::Container {
            id,
            spec,
            rootfs,
            join,
        } => {
            let r = join
                .map_or(Ok(()), |(pid, names)| join_namespaces(pid, &names))
                .and_then(|()| run_container(&mut chan, &spec, &rootfs));
            (id, r)
        }
        InitConfig::Exec {
            id,
            process,
            target_pid,
            namespaces,
            seccomp,
        } => {
            let r = run_exec(
                &mut chan,
                &process,
                (target_pid, &namespaces),
                seccomp.as_deref(),
            );
            (id, r)
        }
    };
    match result {
        Ok(never) => match never {},
        Err(e) => fail(&mut report, &id, &e),
    }
}

fn fail(report: &mut UnixStream, id: &str, e: &dyn std::error::Error) -> ! {
    let msg = if id.is_empty() {
        error_chain(e)
    } else {
        format!("container {id}: {}", error_chain(e))
    };
    let _ = channel::send(report, &SyncMsg::Error(msg));
    std::process::exit(1)
}

fn open_channel() -> Result<UnixStream, InitError> {
    let fd: i32 = std::env::var(INIT_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| InitError::Channel(format!("{INIT_FD_ENV} is not set")))?;
    step(fcntl(fd, FcntlArg::F_GETFD), || {
        format!("init channel fd {fd}")
    })?;
    step(fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)), || {
        "init channel cloexec".into()
    })?;
    // SAFETY: the fd was checked to be open above and was handed to us by the parent.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

enum Never {}

fn run_container(chan: &mut UnixStream, spec: &Spec, rootfs: &Path) -> Result<Never, InitError> {
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    security::check_seccomp(seccomp)?;
    let mut warnings = Vec::new();
    setup_rootfs(spec, rootfs, &mut warnings)?;
    if let Some(h) = spec.hostname() {
        step(nix::unistd::sethostname(h), || {
            format!("hostname: sethostname({h:?})")
        })?;
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing { field: "process" })?;
    if process.terminal().unwrap_or(false) {
        setup_console(chan, process.user().uid())?;
    }
    let prepared = setup_process(process, seccomp)?;
    wait_and_exec(chan, prepared, warnings)
}

/// Joins the namespaces `namespaces` (names under /proc/<pid>/ns) of process `target_pid`.
fn join_namespaces(target_pid: i32, namespaces: &[String]) -> Result<(), InitError> {
    let mut fds = Vec::new();
    for ns in namespaces {
        let path = format!("/proc/{target_pid}/ns/{ns}");
        let fd = step(
            open(
                path.as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
            || format!("opening {path}"),
        )?;
        // SAFETY: `open` just returned this fd and nothing else owns it.
        fds.push((path, unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    for (path, fd) in &fds {
        step(setns(fd, CloneFlags::empty()), || format!("setns({path})"))?;
    }
    Ok(())
}

fn run_exec(
    chan: &mut UnixStream,
    process: &Process,
    (target_pid, namespaces): (i32, &[String]),
    seccomp: Option<&LinuxSeccomp>,
) -> Result<Never, InitError> {
    security::check_seccomp(seccomp)?;
    join_namespaces(target_pid, namespaces)?;
    // Closed (by our exit) only after `Pid` is sent, so the child's messages come after it.
    let (gate_r, gate_w) = step(nix::unistd::pipe2(OFlag::O_CLOEXEC), || {
        "exec: ordering pipe".into()
    })?;
    // The pid namespace applies to children only: fork once more, with the agent as parent.
    // SAFETY: this process is single-threaded, so the child may run arbitrary code.
    match unsafe { sys::clone_process(libc::CLONE_PARENT) }? {
        Forked::Parent(pid) => {
            let _ = channel::send(chan, &SyncMsg::Pid(pid));
            std::process::exit(0)
        }
        Forked::Child => {
            drop(gate_w);
            let mut byte = [0u8; 1];
            while nix::unistd::read(gate_r.as_raw_fd(), &mut byte) == Err(Errno::EINTR) {}
            drop(gate_r);
            if process.terminal().unwrap_or(false) {
                setup_console(chan, process.user().uid())?;
            }
            let prepared = setup_process(process, seccomp)?;
            wait_and_exec(chan, prepared, Vec::new())
        }
    }
}

fn console_step(e: SysError) -> InitError {
    InitError::Step {
        step: format!("process.terminal: {}", e.call),
        source: e.errno,
    }
}

/// Opens a pty in the devpts instance `/dev/ptmx` leads to (the container's own, after
/// pivot_root or setns), sends the master to the parent and makes the slave fds 0-2.
/// The slave is chowned to the process's user, as runc does.
pub fn setup_console(chan: &UnixStream, uid: u32) -> Result<(), InitError> {
    let open_tty = |path: &str| {
        io(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(path)
                .map(OwnedFd::from),
            || format!("process.terminal: opening {path}"),
        )
    };
    let master = open_tty("/dev/ptmx")?;
    sys::pty_unlock(master.as_fd()).map_err(console_step)?;
    let n = sys::pty_number(master.as_fd()).map_err(console_step)?;
    let path = format!("/dev/pts/{n}");
    let slave = open_tty(&path)?;
    // /dev/pts/N must be this master's peer: both live on the same devpts instance.
    let (m, s) = (fstat(master.as_raw_fd()), fstat(slave.as_raw_fd()));
    match (m, s) {
        (Ok(m), Ok(s)) if m.st_dev == s.st_dev => {}
        _ => {
            return Err(InitError::Step {
                step: format!("process.terminal: {path} is not in the devpts of /dev/ptmx"),
                source: Errno::ENXIO,
            })
        }
    }
    step(
        fchown(slave.as_raw_fd(), Some(Uid::from_raw(uid)), None),
        || format!("process.terminal: chown {path} to uid {uid}"),
    )?;
    channel::send_with_fd(chan, &SyncMsg::Console, master.as_fd())
        .map_err(|e| InitError::Channel(error_chain(&e)))?;
    drop(master);
    for target in 0..3 {
        step(dup2(slave.as_raw_fd(), target), || {
            format!("process.terminal: dup2({path}, {target})")
        })?;
    }
    Ok(())
}

struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// The seccomp filter still to load, the last step before exec.
    seccomp: Option<LinuxSeccomp>,
}

fn cstring(field: String, s: &str) -> Result<CString, InitError> {
    CString::new(s).map_err(|_| {
        SpecError::Invalid {
            field,
            reason: "contains a NUL byte".into(),
        }
        .into()
    })
}

fn setup_process(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<Prepared, InitError> {
    // First, while the process is still root with every capability (no
    // noNewPrivileges needed), and whatever the spec's own filter.
    security::load_seccomp(&security::guest_channel_filter())?;
    step(setsid().map(drop), || "setsid".into())?;
    if process.terminal().unwrap_or(false) {
        sys::set_controlling_tty()?;
    }
    if let Some(rlimits) = process.rlimits() {
        for r in rlimits {
            let name = spec::rlimit_name(r.typ());
            sys::set_rlimit(spec::rlimit_resource(r.typ()), r.soft(), r.hard()).map_err(|e| {
                InitError::Step {
                    step: format!(
                        "process.rlimits: {name} soft={} hard={}",
                        r.soft(),
                        r.hard()
                    ),
                    source: e.errno,
                }
            })?;
        }
    }
    let user = process.user();
    if let Some(mask) = user.umask() {
        sys::set_umask(mask);
    }
    let gids: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    step(setgroups(&gids), || {
        "process.user.additionalGids: setgroups".into()
    })?;
    let no_new_privileges = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privileges, loading a filter needs CAP_SYS_ADMIN: load it
    // while the process still has it (as runc and libcontainer do); else as
    // late as possible.
    let late_seccomp = match seccomp {
        Some(filter) if !no_new_privileges => {
            security::load_seccomp(filter)?;
            None
        }
        other => other.cloned(),
    };
    security::set_user_and_capabilities(user.uid(), user.gid(), process.capabilities().as_ref())?;
    if no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        step(Errno::result(r), || "process.noNewPrivileges: prctl".into())?;
    }
    let cwd = process.cwd();
    step(chdir(cwd), || format!("process.cwd: chdir({cwd:?})"))?;
    let args = spec::process_args(process)?;
    let path = spec::find_executable(Path::new("/"), &args[0], spec::path_env(process), cwd)?;
    let path = cstring("process.args[0]".into(), &path.to_string_lossy())?;
    let args = args
        .iter()
        .enumerate()
        .map(|(i, a)| cstring(format!("process.args[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = process
        .env()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, e)| cstring(format!("process.env[{i}]"), e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        path,
        args,
        env,
        seccomp: late_seccomp,
    })
}

fn wait_and_exec(
    chan: &mut UnixStream,
    p: Prepared,
    warnings: Vec<String>,
) -> Result<Never, InitError> {
    channel::send(chan, &SyncMsg::Ready { warnings })
        .map_err(|e| InitError::Channel(error_chain(&e)))?;
    let mut byte = [0u8; 1];
    match chan.read(&mut byte) {
        Ok(1) => {}
        // The parent gave up on us (container removed before start).
        _ => std::process::exit(1),
    }
    // Rust ignores SIGPIPE at startup and ignored signals survive exec: restore defaults.
    // SAFETY: installing SIG_DFL runs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Some(filter) = &p.seccomp {
        security::load_seccomp(filter)?;
    }
    let errno = sys::execve(&p.path, &p.args, &p.env);
    Err(InitError::Step {
        step: format!("process.args[0]: execve({:?})", p.path),
        source: errno,
    })
}

fn setup_rootfs(spec: &Spec, rootfs: &Path, warnings: &mut Vec<String>) -> Result<(), InitError> {
    let linux = spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flags)
        .unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    step(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | prop,
            None::<&str>,
        ),
        || "making / private".into(),
    )?;
    step(
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind-mounting rootfs {rootfs:?} onto itself"),
    )?;
    let shared = rootfs.parent().unwrap_or(Path::new("/"));
    let mut seen = Vec::new();
    for (i, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let dest = resolve(rootfs, m.destination())?;
        seen.push(m.destination().clone());
        let typ = m.typ().as_deref().unwrap_or("none");
        let opts = parse_mount_options(m.options().as_deref().unwrap_or_default());
        let field = format!("mounts[{i}] ({:?})", m.destination());
        if opts.bind || typ == "bind" {
            let src = m.source().as_ref().ok_or(SpecError::Missing {
                field: "mounts[].source",
            })?;
            let src = if src.is_absolute() {
                src.clone()
            } else {
                shared.join(src)
            };
            let meta = io(std::fs::metadata(&src), || {
                format!("{field}: source {src:?}")
            })?;
            make_mountpoint(&dest, meta.is_dir(), &field)?;
            let mut flags = MsFlags::MS_BIND;
            if opts.recursive {
                flags |= MsFlags::MS_REC;
            }
            step(
                mount(Some(&src), &dest, None::<&str>, flags, None::<&str>),
                || format!("{field}: bind {src:?}"),
            )?;
            if !opts.flags.is_empty() {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | opts.flags;
                step(
                    mount(None::<&str>, &dest, None::<&str>, flags, None::<&str>),
                    || format!("{field}: remounting bind with {:?}", opts.flags),
                )?;
            }
        } else if typ == "cgroup" || typ == "cgroup2" {
            make_mountpoint(&dest, true, &field)?;
            if let Err(e) = mount(
                Some("cgroup2"),
                &dest,
                Some("cgroup2"),
                opts.flags,
                None::<&str>,
            ) {
                warnings.push(format!("{field}: cgroup2 mount failed ({e}), skipped"));
            }
        } else {
            make_mountpoint(&dest, true, &field)?;
            let source = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| typ.to_string());
            let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
            step(
                mount(Some(source.as_str()), &dest, Some(typ), opts.flags, data),
                || format!("{field}: mounting {typ}"),
            )?;
        }
        if !opts.propagation.is_empty() {
            step(
                mount(
                    None::<&str>,
                    &dest,
                    None::<&str>,
                    opts.propagation,
                    None::<&str>,
                ),
                || format!("{field}: propagation"),
            )?;
        }
    }
    let has = |p: &str| seen.iter().any(|s| s == Path::new(p));
    setup_dev(spec, rootfs, &has)?;
    enter_root(rootfs, warnings)?;
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        step(
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
            || "root.readonly: remounting / read-only".into(),
        )?;
    }
    if let Some(l) = linux {
        for (k, v) in l.sysctl().clone().unwrap_or_default() {
            if k.contains("..") || k.contains('/') {
                return Err(SpecError::Invalid {
                    field: format!("linux.sysctl[{k}]"),
                    reason: "not a sysctl name".into(),
                }
                .into());
            }
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            io(std::fs::write(&path, v.as_bytes()), || {
                format!("linux.sysctl[{k}]: writing {path}")
            })?;
        }
        for p in l.masked_paths().as_deref().unwrap_or_default() {
            mask_path(p, warnings);
        }
        for p in l.readonly_paths().as_deref().unwrap_or_default() {
            readonly_path(p, warnings);
        }
    }
    Ok(())
}

fn resolve(rootfs: &Path, inner: &Path) -> Result<PathBuf, InitError> {
    spec::resolve_in_root(rootfs, inner).map_err(|source| InitError::Resolve {
        path: inner.to_path_buf(),
        source,
    })
}

fn make_mountpoint(dest: &Path, dir: bool, field: &str) -> Result<(), InitError> {
    if dir {
        io(std::fs::create_dir_all(dest), || {
            format!("{field}: creating mountpoint {dest:?}")
        })
    } else {
        if let Some(parent) = dest.parent() {
            io(std::fs::create_dir_all(parent), || {
                format!("{field}: creating {parent:?}")
            })?;
        }
        if !dest.exists() {
            io(std::fs::File::create(dest).map(drop), || {
                format!("{field}: creating mountpoint {dest:?}")
            })?;
        }
        Ok(())
    }
}

fn setup_dev(spec: &Spec, rootfs: &Path, has: &dyn Fn(&str) -> bool) -> Result<(), InitError> {
    let dev = rootfs.join("dev");
    if !has("/dev") {
        make_mountpoint(&dev, true, "/dev")?;
        step(
            mount(
                Some("tmpfs"),
                &dev,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                Some("mode=755,size=65536k"),
            ),
            || "mounting tmpfs on /dev".into(),
        )?;
    }
    let defaults: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    let old = nix::sys::stat::umask(Mode::empty());
    for (name, major, minor) in defaults {
        make_node(&dev.join(name), SFlag::S_IFCHR, 0o666, major, minor)?;
    }
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for (i, d) in devices.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(SpecError::Invalid {
                    field: format!("linux.devices[{i}].type"),
                    reason: "\"a\" is not a node type".into(),
                }
                .into())
            }
        };
        let path = resolve(rootfs, d.path())?;
        if let Some(parent) = path.parent() {
            io(std::fs::create_dir_all(parent), || {
                format!("linux.devices[{i}]: {parent:?}")
            })?;
        }
        let (major, minor) = (d.major() as u64, d.minor() as u64);
        make_node(&path, kind, d.file_mode().unwrap_or(0o666), major, minor)?;
        let uid = d.uid().map(Uid::from_raw);
        let gid = d.gid().map(Gid::from_raw);
        step(nix::unistd::chown(&path, uid, gid), || {
            format!("linux.devices[{i}]: chown {path:?}")
        })?;
    }
    nix::sys::stat::umask(old);
    if !has("/dev/pts") {
        let pts = dev.join("pts");
        make_mountpoint(&pts, true, "/dev/pts")?;
        step(
            mount(
                Some("devpts"),
                &pts,
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
            || "mounting devpts on /dev/pts".into(),
        )?;
    }
    if !has("/dev/shm") {
        let shm = dev.join("shm");
        make_mountpoint(&shm, true, "/dev/shm")?;
        step(
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
            ),
            || "mounting tmpfs on /dev/shm".into(),
        )?;
    }
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let p = dev.join(name);
        let _ = std::fs::remove_file(&p);
        io(symlink(target, &p), || format!("/dev/{name} -> {target}"))?;
    }
    Ok(())
}

fn make_node(path: &Path, kind: SFlag, mode: u32, major: u64, minor: u64) -> Result<(), InitError> {
    let _ = std::fs::remove_file(path);
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    step(mknod(path, kind, perm, makedev(major, minor)), || {
        format!("mknod {path:?} ({major}:{minor})")
    })
}

fn enter_root(rootfs: &Path, warnings: &mut Vec<String>) -> Result<(), InitError> {
    step(chdir(rootfs), || format!("chdir({rootfs:?})"))?;
    match sys::pivot_root(c".", c".") {
        Ok(()) => {
            step(umount2(".", MntFlags::MNT_DETACH), || {
                "detaching the old root".into()
            })?;
        }
        Err(e) if e.errno == Errno::EINVAL => {
            // The current root is the initramfs (rootfs), which cannot be pivoted away.
            warnings.push("pivot_root refused (initramfs root); used MS_MOVE + chroot".into());
            step(
                mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
                || "moving rootfs to /".into(),
            )?;
            step(chroot("."), || "chroot(.)".into())?;
        }
        Err(e) => return Err(e.into()),
    }
    step(chdir("/"), || "chdir(/)".into())
}

fn mask_path(p: &str, warnings: &mut Vec<String>) {
    let path = Path::new(p);
    let r = match std::fs::metadata(path) {
        Err(_) => return,
        Ok(m) if m.is_dir() => mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        ),
        Ok(_) => mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    };
    if let Err(e) = r {
        warnings.push(format!("linux.maskedPaths: {p}: {e}"));
    }
}

fn readonly_path(p: &str, warnings: &mut Vec<String>) {
    let path = Path::new(p);
    if !path.exists() {
        return;
    }
    let r = mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|()| {
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    });
    if let Err(e) = r {
        warnings.push(format!("linux.readonlyPaths: {p}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::*;

    /// Runs `f` in a forked child inside a new mount namespace; returns its exit code.
    fn in_child_mount_ns(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: glibc's fork keeps malloc usable in the child; the child only runs `f`
        // and exits without returning into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = match nix::sched::unshare(CloneFlags::CLONE_NEWNS) {
                    Ok(()) => f(),
                    Err(_) => 100,
                };
                // SAFETY: _exit skips the harness's atexit handlers, as a forked child must.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    #[test]
    fn rootfs_setup_pivots_and_populates_dev() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (mount namespaces, mknod, pivot_root)");
            return;
        }
        let rootfs = std::env::temp_dir().join(format!("skerry-init-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/marker"), b"inside").unwrap();
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                      {"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=1777"]}],
            "linux":{"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"]}}"#,
        )
        .unwrap();
        let (parent_end, child_end) = UnixStream::pair().unwrap();
        let code = in_child_mount_ns(|| {
            let mut warnings = Vec::new();
            if let Err(e) = setup_rootfs(&spec, &rootfs, &mut warnings) {
                eprintln!("setup failed: {}", error_chain(&e));
                return 1;
            }
            // process.terminal: the pty comes from the container's devpts, is fds 0-2,
            // and its master goes to the parent.
            if let Err(e) = setup_console(&child_end, 1234) {
                eprintln!("console setup failed: {}", error_chain(&e));
                return 2;
            }
            let checks = [
                std::fs::read("/etc/marker").ok().as_deref() == Some(b"inside".as_slice()),
                std::fs::metadata("/dev/null").is_ok_and(|m| m.file_type().is_char_device()),
                std::fs::read_link("/dev/ptmx").is_ok_and(|l| l == Path::new("pts/ptmx")),
                Path::new("/dev/pts/ptmx").exists(),
                Path::new("/proc/self/status").exists(),
                // root.readonly: the rootfs refuses writes, the tmpfs on /tmp accepts them.
                std::fs::write("/etc/new", b"x").is_err(),
                std::fs::write("/tmp/new", b"x").is_ok(),
                nix::unistd::ttyname(std::io::stdin()).is_ok_and(|p| p == Path::new("/dev/pts/0")),
                nix::unistd::ttyname(std::io::stderr()).is_ok_and(|p| p == Path::new("/dev/pts/0")),
                std::fs::metadata("/dev/pts/0")
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 1234),
            ];
            match checks.iter().position(|ok| !ok) {
                None => 0,
                Some(i) => 10 + i as i32,
            }
        });
        let _ = std::fs::remove_dir_all(&rootfs);
        assert_eq!(
            code,
            0,
            "setup (1, 2) or check {} failed (see stderr)",
            code - 10
        );
        drop(child_end);
        let (msg, fds) = channel::recv_with_fds::<SyncMsg>(&parent_end)
            .unwrap()
            .expect("no console message");
        assert_eq!(msg, SyncMsg::Console);
        let master = crate::launch::validate_console(fds).unwrap();
        assert_eq!(sys::pty_number(master.as_fd()).unwrap(), 0);
    }
}
