//! Host mount operations, behind a trait so that sandbox logic can be tested
//! without root.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The privileged host mount calls the runtime makes.
pub trait HostMounts: Send + Sync {
    /// Bind-mounts `src` onto the existing directory `dst`.
    fn bind(&self, src: &Path, dst: &Path) -> std::io::Result<()>;
    /// Detaches the mount at `dst`; succeeds if nothing is mounted there.
    fn unmount(&self, dst: &Path) -> std::io::Result<()>;
    /// Bind-mounts the directory `dir` onto itself as a shared mount, so that
    /// mounts made below it later also reach mount namespaces copied from it
    /// (virtiofsd's sandbox).
    fn bind_shared(&self, dir: &Path) -> std::io::Result<()>;
}

/// The real thing: mount(2) and umount2(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct SysMounts;

impl HostMounts for SysMounts {
    fn bind(&self, src: &Path, dst: &Path) -> std::io::Result<()> {
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
        Ok(())
    }

    fn bind_shared(&self, dir: &Path) -> std::io::Result<()> {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .inspect_err(|_| {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        })?;
        Ok(())
    }

    fn unmount(&self, dst: &Path) -> std::io::Result<()> {
        match umount2(dst, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point; ENOENT: already gone.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
