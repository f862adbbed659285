//! The host-share module: what a container needs from the host filesystem
//! reaches the guest through the sandbox's virtio-fs share, and every host
//! operation under that share passes through here.
//!
//! The rootfs and the sources of bind mounts (Podman's /etc/hosts and
//! resolv.conf, volumes) are each mounted into `shared/<id>/`, and the spec
//! the guest gets names them relative to that directory (the agent resolves
//! relative sources there).
//!
//! The share's skeleton (`shared/`, `shared/<id>/`, the mount points) is a
//! 1 MiB tmpfs the guest sees read-only (`HostMounts::mount_share`): it can
//! neither fill host memory through it nor rearrange it. Even so nothing
//! here follows a path through the share: directories and files are made
//! (on the skeleton's writable mount, which only the host sees), and mount
//! points found (on the guest's view), with `pathrs` inside the share with
//! symlinks refused (openat2 `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`), and
//! mounts are made and detached on the resulting file descriptors
//! ([`MountPoint`]). Shares are `nosuid,nodev`, and read-only (on the host,
//! so also for virtiofsd) where the spec says `ro` or `root.readonly`; the
//! guest writes only to the rootfs and volumes it was given read-write.

use std::{
    fs::{self, Permissions},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use oci_spec::runtime::Mount;
use pathrs::{flags::ResolverFlags, InodeType, Root};
use tracing::warn;

use crate::{
    bundle::Bundle,
    mounts::{HostMounts, MountPoint},
    sandbox::SandboxPaths,
};

/// Failure to share a host path with the guest.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A bind mount's source is unusable.
    #[error("mounts[{index}].source {source_path}: {message}")]
    Source {
        /// Index in the spec's mounts.
        index: usize,
        /// The host path.
        source_path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Creating a mount point or mounting failed.
    #[error("cannot share {path} with the guest")]
    Mount {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A path in the share could not be made or found without leaving it
    /// or following a symlink.
    #[error("share {share}: {path}")]
    Resolve {
        /// The share directory.
        share: PathBuf,
        /// The path inside it.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pathrs::error::Error,
    },
}

/// The host paths shared for one container and the spec the guest runs.
#[derive(Debug)]
pub struct Shared {
    /// The spec for the guest, bind sources rewritten (JSON).
    pub spec_json: Vec<u8>,
    /// The mounts made, in order, relative to the share directory.
    pub mounts: Vec<PathBuf>,
}

/// A sandbox's share, opened once: its skeleton's writable mount (where the
/// host makes directories and files) and the guest's read-only view of it
/// (where mounts go, and are found). Paths below either resolve inside it,
/// and a symlink anywhere on the way is an error.
struct ShareDir {
    rw: Root,
    view: Root,
    path: PathBuf,
}

impl ShareDir {
    fn open(paths: &SandboxPaths) -> Result<Self, ShareError> {
        // The two directories themselves are the host's (their parent is the
        // container's state directory): only what is below them is resolved
        // with care.
        let open = |dir: &Path| {
            Root::open(fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
                .map(|r| r.with_resolver_flags(ResolverFlags::NO_SYMLINKS))
                .map_err(|source| ShareError::Resolve {
                    share: dir.to_path_buf(),
                    path: ".".into(),
                    source,
                })
        };
        Ok(Self {
            rw: open(&paths.share_rw)?,
            view: open(&paths.shared_dir)?,
            path: paths.shared_dir.clone(),
        })
    }

    fn error(&self, rel: &Path) -> impl FnOnce(pathrs::error::Error) -> ShareError + '_ {
        let rel = rel.to_path_buf();
        move |source| ShareError::Resolve {
            share: self.path.clone(),
            path: rel,
            source,
        }
    }

    /// The directory `rel` (made with its parents if missing).
    fn dir(&self, rel: &Path) -> Result<MountPoint, ShareError> {
        self.rw
            .mkdir_all(rel, &Permissions::from_mode(0o755))
            .map_err(self.error(rel))?;
        self.find(rel)
    }

    /// The regular file `rel` (made empty, with its parent, if missing).
    /// Nothing is opened but an `O_PATH` handle: a FIFO or device node put
    /// there is refused, never opened.
    fn file(&self, rel: &Path) -> Result<MountPoint, ShareError> {
        if let Some(parent) = rel.parent() {
            self.dir(parent)?;
        }
        // Fails if something is there already; what is there is checked next.
        let created = self
            .rw
            .create(rel, &InodeType::File(Permissions::from_mode(0o644)));
        let found = self.find(rel)?;
        let regular = rustix::fs::fstat(found.fd())
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
        match (regular, created) {
            (true, _) => Ok(found),
            (false, Err(e)) => Err(self.error(rel)(e)),
            (false, Ok(())) => Err(ShareError::Mount {
                path: found.path().to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            }),
        }
    }

    /// What is at `rel` now (for a mount, its root).
    fn find(&self, rel: &Path) -> Result<MountPoint, ShareError> {
        let handle = self.view.resolve_nofollow(rel).map_err(self.error(rel))?;
        Ok(MountPoint::new(self.path.join(rel), handle))
    }
}

/// A bind mount: what is shared from the host.
pub(crate) fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Whether mount `m` is read-only: the last of `ro` / `rw` wins.
pub(crate) fn read_only(m: &Mount) -> bool {
    m.options()
        .iter()
        .flatten()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// Shares the rootfs and every bind-mount source of `bundle`; on failure
/// undoes what it did.
pub fn share(
    bundle: &Bundle,
    id: &str,
    paths: &SandboxPaths,
    host: &dyn HostMounts,
) -> Result<Shared, ShareError> {
    let dir = ShareDir::open(paths)?;
    let mut made = Vec::new();
    match share_all(bundle, id, &dir, host, &mut made) {
        Ok(spec_json) => Ok(Shared {
            spec_json,
            mounts: made,
        }),
        Err(e) => {
            unshare_in(&dir, host, &made);
            Err(e)
        }
    }
}

/// Undoes `share`, last mount first. A mount the guest has made unreachable
/// (a symlink on the way) is left for the sandbox's teardown
/// ([`HostMounts::unmount_path`] of the whole share once the VM is gone).
pub fn unshare(paths: &SandboxPaths, host: &dyn HostMounts, mounts: &[PathBuf]) {
    match ShareDir::open(paths) {
        Ok(dir) => unshare_in(&dir, host, mounts),
        Err(e) => warn!(error = %crate::monitor::error_chain(&e), "opening the share to unmount"),
    }
}

fn unshare_in(dir: &ShareDir, host: &dyn HostMounts, mounts: &[PathBuf]) {
    for rel in mounts.iter().rev() {
        let done = dir
            .find(rel)
            .and_then(|mp| host.unmount(&mp).map_err(mount_err(mp.path())));
        if let Err(e) = done {
            warn!(path = %rel.display(), error = %crate::monitor::error_chain(&e), "unmounting a shared path");
        }
    }
    // The containers' directories go too: the skeleton's inodes are few.
    let mut containers: Vec<&Path> = mounts
        .iter()
        .filter_map(|rel| rel.components().next())
        .map(|c| Path::new(c.as_os_str()))
        .collect();
    containers.dedup();
    for container in containers {
        if let Err(e) = dir.rw.remove_all(container) {
            warn!(path = %container.display(), error = %e, "removing a container's share directory");
        }
    }
}

fn mount_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Mount { path, source }
}

/// Creates in the bundle's rootfs, as runc does, the destinations of the
/// spec's mounts that are missing (a file for a bind of a file, else a
/// directory): a rootfs shared read-only leaves the guest no way to make
/// them. The rootfs is the tenant's image, so paths resolve inside it
/// (its symlinks cannot lead out).
fn make_mount_points(bundle: &Bundle) -> Result<(), ShareError> {
    let root = Root::open(&bundle.rootfs).map_err(|source| ShareError::Resolve {
        share: bundle.rootfs.clone(),
        path: ".".into(),
        source,
    })?;
    let perm = Permissions::from_mode(0o755);
    for m in bundle.spec.mounts().iter().flatten() {
        let dest = m.destination().strip_prefix("/").unwrap_or(m.destination());
        if dest.as_os_str().is_empty() || root.resolve(dest).is_ok() {
            continue;
        }
        let source_is_file = is_bind(m)
            && m.source()
                .as_deref()
                .map(|s| bundle.dir.join(s))
                .and_then(|s| fs::metadata(s).ok())
                .is_some_and(|meta| meta.is_file());
        let made = match dest.parent() {
            Some(parent) if source_is_file => root
                .mkdir_all(parent, &perm)
                .and_then(|_| root.create(dest, &InodeType::File(Permissions::from_mode(0o644)))),
            _ => root.mkdir_all(dest, &perm).map(drop),
        };
        made.map_err(|source| ShareError::Resolve {
            share: bundle.rootfs.clone(),
            path: dest.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

fn share_all(
    bundle: &Bundle,
    id: &str,
    dir: &ShareDir,
    host: &dyn HostMounts,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<u8>, ShareError> {
    let container = PathBuf::from(id);
    let rootfs = container.join("rootfs");
    let target = dir.dir(&rootfs)?;
    let root_ro = bundle.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
    if root_ro {
        make_mount_points(bundle)?;
    }
    host.bind(&bundle.rootfs, &target, root_ro)
        .map_err(mount_err(&bundle.rootfs))?;
    made.push(rootfs);

    let mut spec = bundle.spec.clone();
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(bundle.spec_json.clone());
    };
    let mut kept = Vec::with_capacity(mounts.len());
    for (index, mut m) in mounts.drain(..).enumerate() {
        if !is_bind(&m) {
            kept.push(m);
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let source = if source.is_absolute() {
            source
        } else {
            bundle.dir.join(source)
        };
        let err = |message: String| ShareError::Source {
            index,
            source_path: source.clone(),
            message,
        };
        let meta = fs::metadata(&source).map_err(|e| err(e.to_string()))?;
        let relative = PathBuf::from("mounts").join(index.to_string());
        let rel = container.join(&relative);
        let target = if meta.is_dir() {
            dir.dir(&rel)?
        } else if meta.is_file() {
            dir.file(&rel)?
        } else {
            // Device nodes and sockets of the host mean nothing inside a VM.
            warn!(
                index,
                source = %source.display(),
                destination = %m.destination().display(),
                "not sharing a bind mount of a special file with the guest"
            );
            continue;
        };
        host.bind(&source, &target, read_only(&m))
            .map_err(mount_err(&source))?;
        made.push(rel);
        m.set_source(Some(relative));
        kept.push(m);
    }
    spec.set_mounts(Some(kept));
    Ok(serde_json::to_vec(&spec).expect("OCI spec serialises"))
}
