//! Race-free paths and mounts inside a container's root.
//!
//! A container sharing a volume with the one being set up can swap a symlink into a
//! path between the moment it is resolved and the moment it is used (runc
//! CVE-2021-30465). So no path is resolved in user space and then used again by name:
//! the kernel resolves every path under an fd of the root (`openat2` with
//! `RESOLVE_IN_ROOT`: `..` and absolute symlinks stop at the root, magic links are
//! refused), missing components are created under the fd of their parent, and mounts
//! are made detached (`fsopen`/`fsmount`, `open_tree`) and attached to the opened fd
//! (`move_mount`), never to a path.

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use crate::mounts::MountOptions;

/// Symlinks followed while creating one path before giving up (as the kernel's ELOOP).
const MAX_SYMLINKS: usize = 40;

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// What to create at the end of a path that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// An empty regular file (a mount point for a file).
    File,
}

/// Opens `path` inside `root` as an `O_PATH` fd, following symlinks as if `root` were `/`.
pub fn open(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(errno)
}

/// Opens `path` inside `root` as [`open`] does, first creating what is missing: parent
/// directories, and the last component as `kind`. A dangling symlink on the way is
/// followed inside the root.
pub fn open_or_create(root: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<OwnedFd, Errno> {
    create(root, path, kind, &mut 0)
}

fn create(
    root: BorrowedFd<'_>,
    path: &Path,
    kind: Kind,
    links: &mut usize,
) -> Result<OwnedFd, Errno> {
    match open(root, path) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Errno::ENOENT);
    };
    let parent = create(root, parent_path, Kind::Dir, links)?;
    let made = match kind {
        Kind::Dir => rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)),
        Kind::File => rustix::fs::openat(
            &parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop),
    };
    match made {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(errno(e)),
    }
    if let Ok(target) = rustix::fs::readlinkat(&parent, name, Vec::new()) {
        // A dangling symlink (or one swapped in since): go where it points, in the root.
        *links += 1;
        if *links > MAX_SYMLINKS {
            return Err(Errno::ELOOP);
        }
        let target = Path::new(OsStr::from_bytes(target.as_bytes()));
        return create(root, &parent_path.join(target), kind, links);
    }
    // Exactly the entry made or found above: a symlink swapped in since is refused.
    rustix::fs::openat2(
        &parent,
        name,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(errno)
}

/// A new instance of filesystem `fstype` from `source`, configured by `opts` (its
/// superblock flags and data), as a detached mount.
pub fn new_fs(fstype: &str, source: &str, opts: &MountOptions) -> Result<OwnedFd, Errno> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(errno)?;
    fsconfig_set_string(&fs, "source", source).map_err(errno)?;
    for key in opts.superblock_flags() {
        fsconfig_set_flag(&fs, key).map_err(errno)?;
    }
    for option in opts.data.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some((key, value)) => fsconfig_set_string(&fs, key, value),
            None => fsconfig_set_flag(&fs, option),
        }
        .map_err(errno)?;
    }
    fsconfig_create(&fs).map_err(errno)?;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(errno)
}

/// A detached copy of the mount at `path` under `dir` (a bind mount; the fd `dir` itself
/// if `path` is empty), with the mounts below it if `recursive`.
pub fn clone_tree(dir: BorrowedFd<'_>, path: &Path, recursive: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    if path.as_os_str().is_empty() {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    open_tree(dir, path, flags).map_err(errno)
}

/// Attaches the detached mount `tree` on the file or directory `dest` (an fd from
/// [`open`] or [`open_or_create`]).
pub fn attach(tree: BorrowedFd<'_>, dest: BorrowedFd<'_>) -> Result<(), Errno> {
    move_mount(
        tree,
        "",
        dest,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(errno)
}
