//! The jail: validate, clean the process, build the per-VM root, enter it, drop privileges,
//! exec. Each step fails with a one-line error naming what failed.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chown, execve, fork, pivot_root, setgroups, setresgid, setresuid};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::cgroup;

/// Failure to build or enter the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The id is empty, too long or has characters other than `[A-Za-z0-9-]`.
    #[error("invalid --id {0:?}: use 1 to 64 characters from [A-Za-z0-9-]")]
    Id(String),
    /// The executable is not a regular file.
    #[error("--exec-file {0} is not a regular file")]
    ExecFile(PathBuf),
    /// A device to expose is not a character device.
    #[error("--device {0} is not a character device")]
    Device(PathBuf),
    /// A file to bind in is not a regular file.
    #[error("--file {0} is not a regular file")]
    File(PathBuf),
    /// A directory to bind-mount is not a directory.
    #[error("--bind-dir {0} is not a directory")]
    BindDir(PathBuf),
    /// The jail root already exists (another VM with this id, or a leftover).
    #[error("jail root {0} already exists")]
    RootExists(PathBuf),
    /// A file system operation failed.
    #[error("cannot {what} {path}")]
    Fs {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding a `--file` or `--bind-dir` into the root failed.
    #[error("cannot {what} {path}")]
    Mount {
        /// What was attempted, e.g. "bind-mount --file".
        what: String,
        /// The host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// A system call failed.
    #[error("{0} failed")]
    Sys(&'static str, #[source] nix::Error),
    /// Cgroup placement failed.
    #[error("cgroup placement")]
    Cgroup(#[from] cgroup::CgroupError),
    /// `ldd` could not list the executable's libraries.
    #[error("cannot list the shared libraries of {0}")]
    Libs(PathBuf),
}

fn fs_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JailError + 'a {
    move |source| JailError::Fs {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Everything the jail needs.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// VM id (names the jail directory and the cgroup).
    pub id: String,
    /// The program to run inside (copied into the root).
    pub exec_file: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Target uid.
    pub uid: u32,
    /// Target gid.
    pub gid: u32,
    /// Jails live in `<base>/<exec name>/<id>/root`.
    pub base_dir: PathBuf,
    /// Character devices to recreate inside (e.g. /dev/kvm).
    pub devices: Vec<PathBuf>,
    /// Regular files to place at the root (by base name), e.g. kernel and initrd:
    /// read-only bind mounts of the host files, never copies.
    pub files: Vec<PathBuf>,
    /// Host directories to bind-mount at the root (by base name; nosuid, nodev, noexec),
    /// e.g. the directory of the VM's sockets.
    pub bind_dirs: Vec<PathBuf>,
    /// Copy the executable's shared libraries (for non-static builds).
    pub copy_libs: bool,
    /// Network namespace to join.
    pub netns: Option<PathBuf>,
    /// Run in a new pid namespace (the jailer waits and passes the exit status on).
    pub new_pid_ns: bool,
    /// Cgroup API, parent group and settings (`controller.file=value`).
    pub cgroup: Option<(cgroup::Version, String, Vec<String>)>,
    /// Cgroup file system root (normally /sys/fs/cgroup).
    pub cgroup_root: PathBuf,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE, if any.
    pub fsize: Option<u64>,
}

/// Checks the id: 1..=64 characters from `[A-Za-z0-9-]`.
pub fn validate_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    ok.then_some(()).ok_or_else(|| JailError::Id(id.to_owned()))
}

/// Closes every fd above stderr.
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; nothing in this single-threaded process
    // holds fds above 2 at this point.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        for fd in 3..1024 {
            // SAFETY: closing an fd we may or may not have; errors are ignored.
            unsafe { libc::close(fd) };
        }
    }
}

fn exec_name(cfg: &JailConfig) -> Result<String, JailError> {
    cfg.exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| JailError::ExecFile(cfg.exec_file.clone()))
}

/// The jail root for `cfg`.
pub fn root_dir(cfg: &JailConfig) -> Result<PathBuf, JailError> {
    Ok(cfg
        .base_dir
        .join(exec_name(cfg)?)
        .join(&cfg.id)
        .join("root"))
}

fn copy_into(root: &Path, src: &Path, dst_rel: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let dst = root.join(dst_rel.strip_prefix("/").unwrap_or(dst_rel));
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir).map_err(fs_err("create", dir))?;
    }
    // Always a copy: a hard link would share (and chown) the host's inode.
    fs::copy(src, &dst).map_err(fs_err("copy into the jail", src))?;
    chown(&dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| JailError::Sys("chown", e))
}

fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>, JailError> {
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|_| JailError::Libs(exe.to_owned()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let libs = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    Ok(libs)
}

/// Creates the root with only the executable, the libraries and device nodes (the
/// `files` are bound by [`bind_files`]).
pub fn populate(cfg: &JailConfig, root: &Path) -> Result<(), JailError> {
    let name = exec_name(cfg)?;
    copy_into(root, &cfg.exec_file, Path::new(&name), cfg.uid, cfg.gid)?;
    let exe = root.join(&name);
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o750)).map_err(fs_err("chmod", &exe))?;
    if cfg.copy_libs {
        for lib in shared_libs(&cfg.exec_file)? {
            let real = fs::canonicalize(&lib).map_err(fs_err("resolve", &lib))?;
            copy_into(root, &real, &lib, 0, 0)?;
        }
    }
    for dev in &cfg.devices {
        let meta = fs::metadata(dev).map_err(fs_err("stat", dev))?;
        if !meta.file_type().is_char_device() {
            return Err(JailError::Device(dev.clone()));
        }
        let dst = root.join(dev.strip_prefix("/").unwrap_or(dev));
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).map_err(fs_err("create", dir))?;
        }
        mknod(
            &dst,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            meta.rdev(),
        )
        .map_err(|e| JailError::Sys("mknod", e))?;
        chown(
            &dst,
            Some(Uid::from_raw(cfg.uid)),
            Some(Gid::from_raw(cfg.gid)),
        )
        .map_err(|e| JailError::Sys("chown", e))?;
    }
    Ok(())
}

/// Runs the jail; returns only on failure, or (with a new pid namespace) with the child's
/// exit status.
pub fn run(cfg: &JailConfig) -> Result<i32, JailError> {
    validate_id(&cfg.id)?;
    if !cfg.exec_file.is_file() {
        return Err(JailError::ExecFile(cfg.exec_file.clone()));
    }
    for f in &cfg.files {
        if !f.is_file() {
            return Err(JailError::File(f.clone()));
        }
    }
    for d in &cfg.bind_dirs {
        if !d.is_dir() || d.file_name().is_none() {
            return Err(JailError::BindDir(d.clone()));
        }
    }
    close_inherited_fds();
    let root = root_dir(cfg)?;
    if root.exists() {
        return Err(JailError::RootExists(root));
    }
    fs::create_dir_all(&root).map_err(fs_err("create", &root))?;
    let result = enter(cfg, &root);
    // Only reached on failure (or after the child exits): remove what we created.
    if let Some(vm_dir) = root.parent() {
        let _ = fs::remove_dir_all(vm_dir);
    }
    result
}

fn enter(cfg: &JailConfig, root: &Path) -> Result<i32, JailError> {
    if let Some((version, parent, settings)) = &cfg.cgroup {
        cgroup::place(
            &cfg.cgroup_root,
            *version,
            parent,
            &cfg.id,
            settings,
            std::process::id(),
        )?;
    }
    if let Some(ns) = &cfg.netns {
        let f = fs::File::open(ns).map_err(fs_err("open netns", ns))?;
        setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| JailError::Sys("setns(net)", e))?;
    }
    if !cfg.new_pid_ns {
        return Err(build_and_exec(cfg, root));
    }
    // The child becomes PID 1 of the new namespace and builds the jail; this process stays
    // outside (host mount namespace), waits, passes the status on and cleans up.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| JailError::Sys("unshare(pid)", e))?;
    // SAFETY: the jailer is single-threaded; the child only builds the jail and execs (or
    // exits).
    match unsafe { fork() }.map_err(|e| JailError::Sys("fork", e))? {
        ForkResult::Child => {
            let e = build_and_exec(cfg, root);
            eprintln!("jailer: {:#}", anyhow::Error::from(e));
            std::process::exit(1);
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(JailError::Sys("waitpid", e)),
            }
        },
    }
}

/// New mount namespace, private propagation, the populated root bind-mounted and pivoted
/// into, the old root detached; then [`drop_and_exec`]. Returns only on failure.
fn build_and_exec(cfg: &JailConfig, root: &Path) -> JailError {
    let step = || -> Result<(), JailError> {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| JailError::Sys("unshare(mnt)", e))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| JailError::Sys("mount --make-rprivate /", e))?;
        mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| JailError::Sys("bind-mount the jail root", e))?;
        populate(cfg, root)?;
        bind_files(cfg, root)?;
        bind_dirs(cfg, root)?;
        let old = root.join("old_root");
        fs::create_dir(&old).map_err(fs_err("create", &old))?;
        chdir(root).map_err(|e| JailError::Sys("chdir", e))?;
        pivot_root(".", "old_root").map_err(|e| JailError::Sys("pivot_root", e))?;
        chdir("/").map_err(|e| JailError::Sys("chdir /", e))?;
        umount2("/old_root", MntFlags::MNT_DETACH)
            .map_err(|e| JailError::Sys("umount old root", e))?;
        fs::remove_dir("/old_root").map_err(fs_err("remove", Path::new("/old_root")))
    };
    match step() {
        Ok(()) => drop_and_exec(cfg),
        Err(e) => {
            // In exec mode the caller removes the jail directory next: detach the root (and
            // the host directories bound below it) first, so that removal never reaches
            // into a host directory.
            let _ = umount2(root, MntFlags::MNT_DETACH);
            e
        }
    }
}

/// Bind-mounts each `--file` at `/<base name>` of the root, read-only, nosuid, nodev and
/// noexec: the VMM reads the host's file (a kernel is tens of MiB) and can change
/// neither it nor its owner; no copy per VM.
fn bind_files(cfg: &JailConfig, root: &Path) -> Result<(), JailError> {
    for src in &cfg.files {
        let base = src
            .file_name()
            .ok_or_else(|| JailError::File(src.clone()))?;
        let dst = root.join(base);
        fs::File::create_new(&dst).map_err(fs_err("create", &dst))?;
        bind(src, &dst, MsFlags::MS_RDONLY, "--file")?;
    }
    Ok(())
}

/// Bind-mounts each `--bind-dir` at `/<base name>` of the root, nosuid, nodev and noexec.
fn bind_dirs(cfg: &JailConfig, root: &Path) -> Result<(), JailError> {
    for src in &cfg.bind_dirs {
        let base = src
            .file_name()
            .ok_or_else(|| JailError::BindDir(src.clone()))?;
        let dst = root.join(base);
        fs::create_dir(&dst).map_err(fs_err("create", &dst))?;
        bind(src, &dst, MsFlags::empty(), "--bind-dir")?;
    }
    Ok(())
}

/// Bind-mounts `src` (a `flag` operand) on `dst`, then remounts it nosuid, nodev, noexec
/// and `extra`.
fn bind(src: &Path, dst: &Path, extra: MsFlags, flag: &str) -> Result<(), JailError> {
    let err = |what: String| {
        move |source| JailError::Mount {
            what,
            path: src.to_owned(),
            source,
        }
    };
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(err(format!("bind-mount {flag}")))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | extra;
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(err(format!("restrict ({flags:?}) {flag}")))
}

/// Sets rlimits, drops to the target uid/gid with no supplementary groups, and execs.
fn drop_and_exec(cfg: &JailConfig) -> JailError {
    let step = || -> Result<std::convert::Infallible, JailError> {
        setrlimit(Resource::RLIMIT_NOFILE, cfg.nofile, cfg.nofile)
            .map_err(|e| JailError::Sys("setrlimit(NOFILE)", e))?;
        if let Some(f) = cfg.fsize {
            setrlimit(Resource::RLIMIT_FSIZE, f, f)
                .map_err(|e| JailError::Sys("setrlimit(FSIZE)", e))?;
        }
        setgroups(&[]).map_err(|e| JailError::Sys("setgroups", e))?;
        let (g, u) = (Gid::from_raw(cfg.gid), Uid::from_raw(cfg.uid));
        setresgid(g, g, g).map_err(|e| JailError::Sys("setresgid", e))?;
        setresuid(u, u, u).map_err(|e| JailError::Sys("setresuid", e))?;
        let name = exec_name(cfg)?;
        let path = CString::new(format!("/{name}"))
            .map_err(|_| JailError::ExecFile(cfg.exec_file.clone()))?;
        let mut argv =
            vec![CString::new(name).map_err(|_| JailError::ExecFile(cfg.exec_file.clone()))?];
        for a in &cfg.args {
            argv.push(
                CString::new(a.as_str()).map_err(|_| JailError::ExecFile(cfg.exec_file.clone()))?,
            );
        }
        let env: [CString; 0] = [];
        execve(&path, &argv, &env).map_err(|e| JailError::Sys("execve", e))
    };
    match step() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        for ok in ["vm1", "a-b-C-9", &"x".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "../etc", "a/b", "a b", "ü", &"x".repeat(65), "a.b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
