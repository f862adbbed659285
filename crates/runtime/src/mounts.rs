//! Host mount operations, behind a trait so that sandbox logic can be tested
//! without root. Mount points under a sandbox's share are [`MountPoint`]s,
//! resolved by `crate::share` without following symlinks; the calls here act
//! on their file descriptors, never on a path the guest could have changed.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
use skerry_container::sys::{self, mount_attr};

/// A mount point (or a mount) in a sandbox's share: an `O_PATH` handle to
/// it, and its path, for logs.
#[derive(Debug)]
pub struct MountPoint {
    path: PathBuf,
    handle: pathrs::Handle,
}

impl MountPoint {
    /// The mount point `handle` refers to, found at `path`.
    pub fn new(path: PathBuf, handle: pathrs::Handle) -> Self {
        Self { path, handle }
    }

    /// Where it was found.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle's magic link: what the kernel resolves it to is the
    /// handle's inode, wherever the guest has moved things since.
    fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.handle.as_fd().as_raw_fd()))
    }

    /// The handle.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.handle.as_fd()
    }
}

/// The tmpfs options of a share's skeleton: its directories and mount
/// points need little; a guest cannot fill host memory through it (it is
/// read-only to the guest anyway).
pub const SHARE_SKELETON: &str = "size=1m,nr_inodes=4096,mode=0755";

/// The privileged host mount calls the runtime makes.
pub trait HostMounts: Send + Sync {
    /// Mounts a recursive copy of `src` onto `dst`, `nosuid` and `nodev`
    /// throughout and, with `read_only`, read-only throughout: set before the
    /// copy is attached, so the guest never sees it writable.
    fn bind(&self, src: &Path, dst: &MountPoint, read_only: bool) -> std::io::Result<()>;
    /// Detaches the mount `dst` refers to; succeeds if it is not a mount.
    fn unmount(&self, dst: &MountPoint) -> std::io::Result<()>;
    /// Makes a sandbox's share: a small tmpfs (the skeleton: at most
    /// [`SHARE_SKELETON`] of space and inodes) mounted writable at `rw`,
    /// which only the host uses, and read-only, nosuid, nodev and noexec at
    /// `view`, the directory the guest gets. `view` is a shared mount, so
    /// that mounts made below it later also reach mount namespaces copied
    /// from it (virtiofsd's sandbox).
    fn mount_share(&self, rw: &Path, view: &Path) -> std::io::Result<()>;
    /// Detaches the mount at `dir`, a path no guest can change (a sandbox's
    /// share and its skeleton, or anything once its VM is gone); succeeds
    /// if nothing is mounted there. The last component is not followed.
    fn unmount_path(&self, dir: &Path) -> std::io::Result<()>;
}

/// The real thing: open_tree(2), mount_setattr(2), move_mount(2), umount2(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct SysMounts;

impl HostMounts for SysMounts {
    fn bind(&self, src: &Path, dst: &MountPoint, read_only: bool) -> std::io::Result<()> {
        let tree = open_tree(
            rustix::fs::CWD,
            src,
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        )?;
        let mut attr = mount_attr::NOSUID | mount_attr::NODEV;
        if read_only {
            attr |= mount_attr::RDONLY;
        }
        sys::mount_setattr_recursive(tree.as_fd(), attr)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))?;
        move_mount(
            tree.as_fd(),
            "",
            dst.fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )?;
        Ok(())
    }

    fn mount_share(&self, rw: &Path, view: &Path) -> std::io::Result<()> {
        mount(
            Some("skerry-share"),
            rw,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(SHARE_SKELETON),
        )?;
        let ro = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        let made =
            mount(Some(rw), view, None::<&str>, MsFlags::MS_BIND, None::<&str>).and_then(|()| {
                mount(None::<&str>, view, None::<&str>, ro, None::<&str>)
                    .and_then(|()| {
                        mount(
                            None::<&str>,
                            view,
                            None::<&str>,
                            MsFlags::MS_SHARED,
                            None::<&str>,
                        )
                    })
                    .inspect_err(|_| {
                        let _ = umount2(view, MntFlags::MNT_DETACH);
                    })
            });
        if let Err(e) = made {
            let _ = umount2(rw, MntFlags::MNT_DETACH);
            return Err(e.into());
        }
        Ok(())
    }

    fn unmount(&self, dst: &MountPoint) -> std::io::Result<()> {
        detach(&dst.fd_path(), MntFlags::MNT_DETACH)
    }

    fn unmount_path(&self, dir: &Path) -> std::io::Result<()> {
        detach(dir, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
    }
}

fn detach(path: &Path, flags: MntFlags) -> std::io::Result<()> {
    match umount2(path, flags) {
        // EINVAL: not a mount point; ENOENT: already gone.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounted_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b/c\\011d"), "/a b/c\td");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn proc_is_mounted_under_root() {
        assert!(mounted_under(Path::new("/")).contains(&PathBuf::from("/proc")));
        assert!(mounted_under(Path::new("/nonexistent-dir")).is_empty());
    }
}
