//! Child side: `<agent> init` sets up the container (or joins one) and execs the program.
//!
//! Runs single-threaded in a freshly exec'd binary, so ordinary Rust code is fine here.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, AtFlags, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{fstat, makedev, mknodat, Mode, SFlag};
use nix::unistd::{
    chdir, dup2, fchdir, fchown, fchownat, setgroups, setsid, symlinkat, unlinkat, Gid, Uid,
    UnlinkatFlags,
};
use oci_spec::runtime::{LinuxDeviceType, LinuxSeccomp, Mount, Process, Spec};
use rustix::fs::OFlags;

use crate::channel::{self, InitConfig, SyncMsg, INIT_FD_ENV};
use crate::inroot::{self, Kind};
use crate::launch;
use crate::mounts::{parse_mount_options, propagation_flags, MountOptions};
use crate::security::{self, ChannelGuard, SecurityError};
use crate::spec::{self, SpecError};
use crate::sys::{self, Forked, MountSetattr, SysError};
use crate::userns;

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

/// The arguments after argv[0] of a binary that embeds the engine: when they
/// are `init ...` (the engine's child re-executes the binary so), runs
/// [`main`], which never returns; otherwise returns them.
pub fn main_if_init() -> Vec<String> {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    if rest.first().map(String::as_str) == Some("init") {
        main();
    }
    rest
}

/// Entry point of `<agent> init`; never returns.
fn main() -> ! {
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
    // Still in the agent's mount namespace, where securityfs is.
    let guard = ChannelGuard::of_this_kernel();
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
                .and_then(|()| run_container(&mut chan, &spec, &rootfs, guard));
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
                guard,
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

fn run_container(
    chan: &mut UnixStream,
    spec: &Spec,
    rootfs: &Path,
    guard: ChannelGuard,
) -> Result<Never, InitError> {
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    security::check_seccomp(seccomp)?;
    // The parent moved this process into its cgroup before sending the spec.
    if launch::own_cgroup_namespace(spec) {
        step(nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP), || {
            "linux.namespaces: unshare(CLONE_NEWCGROUP)".into()
        })?;
    }
    setup_rootfs(spec, rootfs)?;
    if let Some(h) = spec.hostname() {
        step(nix::unistd::sethostname(h), || {
            format!("hostname: sethostname({h:?})")
        })?;
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing { field: "process" })?;
    if userns::wanted(spec) {
        enter_user_namespace(chan)?;
    }
    if process.terminal().unwrap_or(false) {
        setup_console(chan, process.user().uid())?;
    }
    let prepared = setup_process(process, seccomp, guard)?;
    wait_and_exec(chan, prepared)
}

/// Unshares the container's user namespace, waits for the parent to map it
/// and becomes its root (see [`userns`]).
fn enter_user_namespace(chan: &mut UnixStream) -> Result<(), InitError> {
    step(nix::sched::unshare(CloneFlags::CLONE_NEWUSER), || {
        "linux.namespaces: unshare(CLONE_NEWUSER)".into()
    })?;
    channel::send(chan, &SyncMsg::UserNamespace)
        .map_err(|e| InitError::Channel(error_chain(&e)))?;
    let mut byte = [0u8; 1];
    match chan.read(&mut byte) {
        Ok(1) if byte[0] == channel::USERNS_MAPPED => {}
        // The parent reports its own failure; nothing to add.
        _ => std::process::exit(1),
    }
    step(userns::become_root(), || {
        "linux.uidMappings: becoming root of the user namespace".into()
    })
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
    guard: ChannelGuard,
) -> Result<Never, InitError> {
    security::check_seccomp(seccomp)?;
    join_namespaces(target_pid, namespaces)?;
    if namespaces.iter().any(|n| n == "user") {
        step(userns::become_root(), || {
            "exec: becoming root of the container's user namespace".into()
        })?;
    }
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
            let prepared = setup_process(process, seccomp, guard)?;
            wait_and_exec(chan, prepared)
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

fn setup_process(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    guard: ChannelGuard,
) -> Result<Prepared, InitError> {
    // First, while the process is still root with every capability (no
    // noNewPrivileges needed), and whatever the spec's own filter.
    if guard == ChannelGuard::Seccomp {
        security::load_seccomp(&security::guest_channel_filter())?;
    }
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
    // While the process may still lower it (CAP_SYS_RESOURCE), as runc does.
    if let Some(score) = process.oom_score_adj() {
        io(
            std::fs::write("/proc/self/oom_score_adj", score.to_string()),
            || format!("process.oomScoreAdj: writing {score} to /proc/self/oom_score_adj"),
        )?;
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

fn wait_and_exec(chan: &mut UnixStream, p: Prepared) -> Result<Never, InitError> {
    channel::send(chan, &SyncMsg::Ready).map_err(|e| InitError::Channel(error_chain(&e)))?;
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

fn setup_rootfs(spec: &Spec, rootfs: &Path) -> Result<(), InitError> {
    let linux = spec.linux().as_ref();
    let requested = rootfs_propagation(spec)?;
    let prop = requested.unwrap_or(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    step(
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>),
        || format!("linux.rootfsPropagation: setting {prop:?} on /"),
    )?;
    // As runc does: the mount holding the rootfs must not be shared, or the bind below
    // would be shared too and pivot_root refuses a shared mount (EINVAL).
    make_mount_private(rootfs)?;
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
    let root = open_dir(rootfs)?;
    let shared = rootfs.parent().unwrap_or(Path::new("/"));
    let mut seen = Vec::new();
    for (i, m) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        seen.push(m.destination().clone());
        mount_entry(
            root.as_fd(),
            shared,
            m,
            &format!("mounts[{i}] ({:?})", m.destination()),
        )?;
    }
    let has = |p: &str| seen.iter().any(|s| s == Path::new(p));
    setup_dev(spec, root.as_fd(), &has)?;
    enter_root(root.as_fd())?;
    // Applied to the new `/` only now, as runc does: before pivot_root it would reach the
    // agent's mounts. Private needs nothing more (the rootfs's mount was made private).
    if let Some(p) = requested.filter(|p| !p.contains(MsFlags::MS_PRIVATE)) {
        step(
            mount(None::<&str>, "/", None::<&str>, p, None::<&str>),
            || format!("linux.rootfsPropagation: setting {p:?} on the new /"),
        )?;
    }
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
        // `root` now names `/`: the masks are resolved and mounted under it as well.
        for p in l.masked_paths().as_deref().unwrap_or_default() {
            mask_path(root.as_fd(), p)?;
        }
        for p in l.readonly_paths().as_deref().unwrap_or_default() {
            readonly_path(root.as_fd(), p)?;
        }
    }
    Ok(())
}

/// The propagation `linux.rootfsPropagation` asks for, if it is set.
fn rootfs_propagation(spec: &Spec) -> Result<Option<MsFlags>, InitError> {
    let Some(name) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    else {
        return Ok(None);
    };
    match propagation_flags(name) {
        Some(flags) => Ok(Some(flags)),
        None => Err(SpecError::Invalid {
            field: "linux.rootfsPropagation".into(),
            reason: format!("{name:?} is not a propagation type"),
        }
        .into()),
    }
}

/// Makes the mount that holds `path` (its nearest ancestor that is a mount's root) private.
fn make_mount_private(path: &Path) -> Result<(), InitError> {
    let mount_point = path
        .ancestors()
        .find(|p| is_mount_root(p))
        .unwrap_or(Path::new("/"));
    step(
        mount(
            None::<&str>,
            mount_point,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || format!("making {mount_point:?}, the mount holding the rootfs, private"),
    )
}

/// Whether `path` is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT).
fn is_mount_root(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags as StatxAt, StatxAttributes, StatxFlags, CWD};
    let root = StatxAttributes::MOUNT_ROOT;
    statx(
        CWD,
        path,
        StatxAt::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|st| st.stx_attributes_mask.contains(root) && st.stx_attributes.contains(root))
}

/// An `O_PATH` fd of a directory the agent chose (the rootfs, or `/` after pivot_root).
fn open_dir(path: &Path) -> Result<OwnedFd, InitError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, rustix::fs::Mode::empty()).map_err(|e| InitError::Step {
        step: format!("opening {path:?}"),
        source: Errno::from_raw(e.raw_os_error()),
    })
}

/// Mounts one `mounts[]` entry on its destination, resolved inside the root `root`.
fn mount_entry(
    root: BorrowedFd<'_>,
    shared: &Path,
    m: &Mount,
    field: &str,
) -> Result<(), InitError> {
    let typ = m.typ().as_deref().unwrap_or("none");
    let opts = parse_mount_options(m.options().as_deref().unwrap_or_default());
    if opts.bind || typ == "bind" {
        let src = m.source().as_ref().ok_or(SpecError::Missing {
            field: "mounts[].source",
        })?;
        // Relative sources are under the shared directory; absolute ones stay as given.
        let src = shared.join(src);
        let tree = step(
            inroot::clone_tree(rustix::fs::CWD, &src, opts.recursive),
            || format!("{field}: bind {src:?}"),
        )?;
        let kind = if is_dir(tree.as_fd()) {
            Kind::Dir
        } else {
            Kind::File
        };
        place(root, tree.as_fd(), m.destination(), kind, &opts, field)
    } else {
        // A cgroup v1 request gets the guest's only hierarchy, cgroup2, without v1 data.
        let (fstype, opts) = match typ {
            "cgroup" | "cgroup2" => (
                "cgroup2",
                MountOptions {
                    data: String::new(),
                    ..opts
                },
            ),
            _ => (typ, opts),
        };
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| typ.to_string());
        let tree = step(inroot::new_fs(fstype, &source, &opts), || {
            format!("{field}: mounting {typ}")
        })?;
        place(root, tree.as_fd(), m.destination(), Kind::Dir, &opts, field)
    }
}

/// Sets the attributes of `opts` on the detached mount `tree`, attaches it on `dest`
/// inside `root` (created as `kind` if missing), then sets its propagation.
fn place(
    root: BorrowedFd<'_>,
    tree: BorrowedFd<'_>,
    dest: &Path,
    kind: Kind,
    opts: &MountOptions,
    field: &str,
) -> Result<(), InitError> {
    let attrs = opts.attributes();
    if attrs != MountSetattr::default() {
        step(sys::mount_setattr(tree, attrs).map_err(|e| e.errno), || {
            format!("{field}: setting {:?}", opts.flags)
        })?;
    }
    let dest_fd = step(inroot::open_or_create(root, dest, kind), || {
        format!("{field}: opening {dest:?} in the rootfs")
    })?;
    step(inroot::attach(tree, dest_fd.as_fd()), || {
        format!("{field}: attaching the mount on {dest:?}")
    })?;
    if let Some(change) = opts.propagation_change() {
        step(
            sys::mount_setattr(tree, change).map_err(|e| e.errno),
            || format!("{field}: propagation {:?}", opts.propagation),
        )?;
    }
    Ok(())
}

/// The file type (`S_IFDIR`, `S_IFCHR`, …) and device number of an open file.
fn file_type(fd: BorrowedFd<'_>) -> nix::Result<(SFlag, libc::dev_t)> {
    let s = fstat(fd.as_raw_fd())?;
    Ok((
        SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT,
        s.st_rdev,
    ))
}

fn is_dir(fd: BorrowedFd<'_>) -> bool {
    file_type(fd).is_ok_and(|(t, _)| t == SFlag::S_IFDIR)
}

/// The `/dev` mounts made where the spec has none: destination, type, source, options.
const DEV_MOUNTS: [(&str, &str, &str, &[&str]); 3] = [
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"],
    ),
];

fn setup_dev(
    spec: &Spec,
    root: BorrowedFd<'_>,
    has: &dyn Fn(&str) -> bool,
) -> Result<(), InitError> {
    for (dest, typ, source, options) in DEV_MOUNTS {
        if has(dest) {
            continue;
        }
        let opts = parse_mount_options(&options.iter().map(|o| o.to_string()).collect::<Vec<_>>());
        let tree = step(inroot::new_fs(typ, source, &opts), || {
            format!("mounting {typ} on {dest}")
        })?;
        place(root, tree.as_fd(), Path::new(dest), Kind::Dir, &opts, dest)?;
    }
    let dev = step(inroot::open(root, Path::new("/dev")), || {
        "opening /dev in the rootfs".into()
    })?;
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
        make_node(dev.as_fd(), name, SFlag::S_IFCHR, 0o666, major, minor)?;
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
        let path = d.path();
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(SpecError::Invalid {
                field: format!("linux.devices[{i}].path"),
                reason: format!("{path:?} names no file"),
            }
            .into());
        };
        let dir = step(inroot::open_or_create(root, parent, Kind::Dir), || {
            format!("linux.devices[{i}]: opening {parent:?} in the rootfs")
        })?;
        let (major, minor) = (d.major() as u64, d.minor() as u64);
        let mode = d.file_mode().unwrap_or(0o666);
        make_node(dir.as_fd(), name, kind, mode, major, minor)?;
        let uid = d.uid().map(Uid::from_raw);
        let gid = d.gid().map(Gid::from_raw);
        step(
            fchownat(
                Some(dir.as_raw_fd()),
                name,
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ),
            || format!("linux.devices[{i}]: chown {path:?}"),
        )?;
    }
    nix::sys::stat::umask(old);
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let _ = unlinkat(Some(dev.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
        step(symlinkat(target, Some(dev.as_raw_fd()), name), || {
            format!("/dev/{name} -> {target}")
        })?;
    }
    Ok(())
}

/// Makes device node `name` in the directory `dir`, replacing what was there.
fn make_node(
    dir: BorrowedFd<'_>,
    name: &(impl AsRef<OsStr> + ?Sized),
    kind: SFlag,
    mode: u32,
    major: u64,
    minor: u64,
) -> Result<(), InitError> {
    let name = Path::new(name.as_ref());
    let _ = unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    step(
        mknodat(
            Some(dir.as_raw_fd()),
            name,
            kind,
            perm,
            makedev(major, minor),
        ),
        || format!("mknod {name:?} ({major}:{minor})"),
    )
}

/// Makes `root` the root of the mount namespace (pivot_root; no chroot fallback, which
/// would leave the old root reachable) and detaches the old one.
fn enter_root(root: BorrowedFd<'_>) -> Result<(), InitError> {
    step(fchdir(root.as_raw_fd()), || "chdir to the rootfs".into())?;
    sys::pivot_root(c".", c".").map_err(|e| InitError::Step {
        step: format!("entering the rootfs: {}", e.call),
        source: e.errno,
    })?;
    // As runc does: the old root's unmount must not propagate to its peers.
    step(
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        ),
        || "making the old root a slave".into(),
    )?;
    step(umount2(".", MntFlags::MNT_DETACH), || {
        "detaching the old root".into()
    })?;
    step(chdir("/"), || "chdir(/)".into())
}

/// Masks `p` as runc does: a directory with a read-only tmpfs, anything else with a bind
/// of `/dev/null`. A path that does not exist is skipped; any other failure is an error.
fn mask_path(root: BorrowedFd<'_>, p: &str) -> Result<(), InitError> {
    let what = || format!("linux.maskedPaths: {p}");
    let target = match inroot::open(root, Path::new(p)) {
        Err(Errno::ENOENT) => return Ok(()),
        other => step(other, what)?,
    };
    let tree = if is_dir(target.as_fd()) {
        let ro = parse_mount_options(&["ro".to_string()]);
        let tree = step(inroot::new_fs("tmpfs", "tmpfs", &ro), what)?;
        step(
            sys::mount_setattr(tree.as_fd(), ro.attributes()).map_err(|e| e.errno),
            what,
        )?;
        tree
    } else {
        let null = step(inroot::open(root, Path::new("/dev/null")), what)?;
        // Only the node made by setup_dev: never a file the container put there.
        match file_type(null.as_fd()) {
            Ok((SFlag::S_IFCHR, rdev)) if rdev == makedev(1, 3) => {}
            _ => {
                return Err(InitError::Step {
                    step: format!("{}: /dev/null is not the null device", what()),
                    source: Errno::EINVAL,
                })
            }
        }
        step(inroot::clone_tree(null.as_fd(), Path::new(""), false), what)?
    };
    step(inroot::attach(tree.as_fd(), target.as_fd()), what)
}

/// Makes `p` (and every mount below it) read-only with a bind of itself. A path that
/// does not exist is skipped; any other failure is an error.
fn readonly_path(root: BorrowedFd<'_>, p: &str) -> Result<(), InitError> {
    let what = || format!("linux.readonlyPaths: {p}");
    let target = match inroot::open(root, Path::new(p)) {
        Err(Errno::ENOENT) => return Ok(()),
        other => step(other, what)?,
    };
    let tree = step(
        inroot::clone_tree(target.as_fd(), Path::new(""), true),
        what,
    )?;
    step(
        sys::mount_setattr_recursive(tree.as_fd(), sys::mount_attr::RDONLY).map_err(|e| e.errno),
        what,
    )?;
    step(inroot::attach(tree.as_fd(), target.as_fd()), what)
}

#[cfg(test)]
#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, FileTypeExt};

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{chroot, fork, ForkResult};

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
            skip_rule::skip("needs root (mount namespaces, mknod, pivot_root)");
            return;
        }
        let rootfs = std::env::temp_dir().join(format!("skerry-init-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/marker"), b"inside").unwrap();
        let volume = tempfile::tempdir().unwrap();
        std::fs::write(volume.path().join("file"), b"vol").unwrap();
        let spec: Spec = serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs","readonly":true}},
            "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
                      {{"destination":"/tmp","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=1777"]}},
                      {{"destination":"/data","type":"bind","source":"{vol}","options":["rbind","ro"]}},
                      {{"destination":"/etc/hosts","type":"bind","source":"{vol}/file","options":["bind"]}}],
            "linux":{{"maskedPaths":["/proc/timer_list","/proc/acpi","/nonexistent"],
                      "readonlyPaths":["/proc/sys","/nonexistent"]}}}}"#,
            vol = volume.path().display()
        ))
        .unwrap();
        let (parent_end, child_end) = UnixStream::pair().unwrap();
        let code = in_child_mount_ns(|| {
            if let Err(e) = setup_rootfs(&spec, &rootfs) {
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
                // Bind mounts of a directory (read-only) and of a file.
                std::fs::read("/data/file").is_ok_and(|f| f == b"vol"),
                std::fs::write("/data/new", b"x").is_err(),
                std::fs::read("/etc/hosts").is_ok_and(|f| f == b"vol"),
                // Masks: a file shows as empty, a directory as an empty read-only tmpfs.
                std::fs::read("/proc/timer_list").is_ok_and(|f| f.is_empty()),
                nix::sys::statfs::statfs("/proc/acpi")
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC),
                std::fs::write("/proc/sys/kernel/hostname", b"x").is_err(),
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

    fn setup_in_child(spec: &Spec, rootfs: &Path, checks: impl FnOnce() -> Vec<bool>) -> i32 {
        in_child_mount_ns(|| {
            if let Err(e) = setup_rootfs(spec, rootfs) {
                eprintln!("setup failed: {}", error_chain(&e));
                return 1;
            }
            match checks().iter().position(|ok| !ok) {
                None => 0,
                Some(i) => 10 + i as i32,
            }
        })
    }

    fn is_root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            skip_rule::skip("needs root (mount namespaces, mknod, pivot_root)");
        }
        root
    }

    /// Entries of a directory, as names.
    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mount_destinations_that_are_symlinks_out_of_the_rootfs_stay_inside() {
        if !is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        // Absolute links to a host directory, and a dangling chain of `..` out of the root.
        symlink(outside.path(), rootfs.join("dev")).unwrap();
        symlink(outside.path(), rootfs.join("vol")).unwrap();
        let up = format!("../../../../../../../..{}/new", outside.path().display());
        symlink(&up, rootfs.join("up")).unwrap();
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "mounts":[{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]},
                      {"destination":"/vol","type":"tmpfs","source":"tmpfs"},
                      {"destination":"/up/x","type":"tmpfs","source":"tmpfs"}]}"#,
        )
        .unwrap();
        let code = setup_in_child(&spec, &rootfs, || {
            vec![
                std::fs::metadata("/dev/null").is_ok_and(|m| m.file_type().is_char_device()),
                std::fs::write("/vol/f", b"x").is_ok(),
                std::fs::write("/up/x/f", b"x").is_ok(),
                // Both links were followed as if the rootfs were `/`: to the same place.
                std::fs::read("/vol/new/x/f").is_ok_and(|f| f == b"x"),
            ]
        });
        assert_eq!(
            code,
            0,
            "setup (1) or check {} failed (see stderr)",
            code - 10
        );
        assert_eq!(
            entries(outside.path()),
            Vec::<String>::new(),
            "host dir touched"
        );
    }

    #[test]
    fn mount_destinations_survive_a_racing_symlink_swap() {
        if !is_root() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        // A volume another container shares: it swaps a directory with a link out of the root.
        std::fs::create_dir_all(rootfs.join("shared/vol")).unwrap();
        symlink(outside.path(), rootfs.join("shared/link")).unwrap();
        let mounts: Vec<String> = (0..64)
            .map(|i| {
                format!(r#"{{"destination":"/shared/vol/m{i}","type":"tmpfs","source":"tmpfs"}}"#)
            })
            .collect();
        let spec: Spec = serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"mounts":[{}]}}"#,
            mounts.join(",")
        ))
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, shared) = (stop.clone(), rootfs.join("shared"));
            std::thread::spawn(move || {
                let (a, b) = (shared.join("vol"), shared.join("link"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = nix::fcntl::renameat2(
                        None,
                        &a,
                        None,
                        &b,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                }
            })
        };
        // Setup may fail (the volume changed under it); it must not reach out of the root.
        for _ in 0..32 {
            let _ = setup_in_child(&spec, &rootfs, Vec::new);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            entries(outside.path()),
            Vec::<String>::new(),
            "host dir touched"
        );
    }

    #[test]
    fn failed_masking_fails_the_create() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        // ELOOP is a real failure (runc fails the create); only a missing path is skipped.
        symlink("loop", rootfs.join("etc/loop")).unwrap();
        for field in ["maskedPaths", "readonlyPaths"] {
            let spec: Spec = serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "linux":{{"{field}":["/nonexistent","/etc/loop"]}}}}"#
            ))
            .unwrap();
            let code = in_child_mount_ns(|| match setup_rootfs(&spec, &rootfs) {
                Ok(()) => 1,
                Err(e) => {
                    let e = error_chain(&e);
                    if e.contains(&format!("linux.{field}")) && e.contains("/etc/loop") {
                        0
                    } else {
                        eprintln!("unexpected error: {e}");
                        2
                    }
                }
            });
            assert_eq!(code, 0, "{field}: setup succeeded (1) or wrong error (2)");
        }
    }

    /// A rootfs inside a shared mount, with `rootfsPropagation` shared, sets up (pivot_root
    /// refused it with EINVAL) and ends with a shared `/`; an unknown value is refused.
    #[test]
    fn shared_rootfs_propagation_pivots_and_applies_to_the_new_root() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let spec = |propagation: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}}],
                "linux":{{"rootfsPropagation":"{propagation}"}}}}"#
            ))
            .unwrap()
        };
        let code = in_child_mount_ns(|| {
            let shared = MsFlags::MS_SHARED;
            let set_up = mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .and_then(|()| mount(None::<&str>, dir.path(), None::<&str>, shared, None::<&str>));
            if set_up.is_err() || std::fs::create_dir(&rootfs).is_err() {
                return 2;
            }
            if let Err(e) = setup_rootfs(&spec("shared"), &rootfs) {
                eprintln!("setup failed: {}", error_chain(&e));
                return 1;
            }
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let root = info.lines().find(|l| l.split(' ').nth(4) == Some("/"));
            match root {
                Some(l) if l.contains(" shared:") => 0,
                other => {
                    eprintln!("/ is not shared: {other:?}");
                    3
                }
            }
        });
        assert_eq!(
            code, 0,
            "tmpfs set-up (2), setup_rootfs (1) or propagation (3) failed"
        );
        let code = in_child_mount_ns(|| match setup_rootfs(&spec("sideways"), &rootfs) {
            Err(e) if error_chain(&e).contains("linux.rootfsPropagation") => 0,
            _ => 1,
        });
        assert_eq!(code, 0, "an unknown rootfsPropagation was not refused");
    }

    #[test]
    fn pivot_root_failure_is_an_error_not_a_chroot() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        std::fs::create_dir_all(base.join("rootfs")).unwrap();
        let code = in_child_mount_ns(|| {
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            let rootfs = base.join("rootfs");
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            if mount(None::<&str>, "/", None::<&str>, private, None::<&str>).is_err()
                || mount(Some(&rootfs), &rootfs, None::<&str>, bind, None::<&str>).is_err()
                // A root that is not a mount point: pivot_root fails with EINVAL.
                || chroot(&base).is_err()
            {
                return 3;
            }
            let Ok(root) = open_dir(Path::new("/rootfs")) else {
                return 3;
            };
            match enter_root(root.as_fd()) {
                Ok(()) => 1,
                Err(e) if error_chain(&e).contains("pivot_root") => 0,
                Err(e) => {
                    eprintln!("unexpected error: {}", error_chain(&e));
                    2
                }
            }
        });
        assert_eq!(
            code, 0,
            "entered the root (1), wrong error (2) or test setup failed (3)"
        );
    }
}
