//! Host mount operations, behind a trait so that sandbox logic can be tested
//! without root.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The privileged host mount calls the runtime makes.
pub trait HostMounts: Send + Sync {
    /// Bind-mounts `src` onto the existing directory `dst`.
    fn bind(&self, src: &Path, dst: &Path) -> std::io::Result<()>;
    /// Detaches the mount at `dst`; succeeds if nothing is mounted there.
    fn unmount(&self, dst: &Path) -> std::io::Result<()>;
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

    fn unmount(&self, dst: &Path) -> std::io::Result<()> {
        match umount2(dst, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point; ENOENT: already gone.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
