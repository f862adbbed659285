//! What a container needs from the host filesystem reaches the guest through
//! the sandbox's virtio-fs share: the rootfs, and the sources of bind mounts
//! (Podman's /etc/hosts and resolv.conf, volumes). Each is bind-mounted into
//! `shared/<id>/`, and the spec the guest gets names them relative to that
//! directory (the agent resolves relative sources there).

use std::{
    fs,
    path::{Path, PathBuf},
};

use oci_spec::runtime::Mount;
use tracing::warn;

use crate::{bundle::Bundle, mounts::HostMounts, sandbox::SandboxPaths};

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
}

/// The host paths shared for one container and the spec the guest runs.
#[derive(Debug)]
pub struct Shared {
    /// The spec for the guest, bind sources rewritten (JSON).
    pub spec_json: Vec<u8>,
    /// The bind mounts made, in order.
    pub mounts: Vec<PathBuf>,
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Shares the rootfs and every bind-mount source of `bundle`; on failure
/// undoes what it did.
pub fn share(
    bundle: &Bundle,
    id: &str,
    paths: &SandboxPaths,
    host: &dyn HostMounts,
) -> Result<Shared, ShareError> {
    let mut made = Vec::new();
    match share_all(bundle, id, paths, host, &mut made) {
        Ok(spec_json) => Ok(Shared {
            spec_json,
            mounts: made,
        }),
        Err(e) => {
            unshare(host, &made);
            Err(e)
        }
    }
}

/// Undoes `share`, last mount first.
pub fn unshare(host: &dyn HostMounts, mounts: &[PathBuf]) {
    for path in mounts.iter().rev() {
        if let Err(e) = host.unmount(path) {
            warn!(path = %path.display(), error = %e, "unmounting a shared path");
        }
    }
}

fn share_all(
    bundle: &Bundle,
    id: &str,
    paths: &SandboxPaths,
    host: &dyn HostMounts,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<u8>, ShareError> {
    let mount_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShareError::Mount { path, source }
    };
    let rootfs = paths.rootfs_mount(id);
    fs::create_dir_all(&rootfs).map_err(mount_err(&rootfs))?;
    host.bind(&bundle.rootfs, &rootfs)
        .map_err(mount_err(&bundle.rootfs))?;
    made.push(rootfs);

    let mut spec = bundle.spec.clone();
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(bundle.spec_json.clone());
    };
    let container_dir = paths.shared_dir.join(id);
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
        let target = container_dir.join(&relative);
        if meta.is_dir() {
            fs::create_dir_all(&target).map_err(mount_err(&target))?;
        } else if meta.is_file() {
            fs::create_dir_all(container_dir.join("mounts")).map_err(mount_err(&target))?;
            fs::write(&target, b"").map_err(mount_err(&target))?;
        } else {
            // Device nodes and sockets of the host mean nothing inside a VM.
            warn!(
                index,
                source = %source.display(),
                destination = %m.destination().display(),
                "not sharing a bind mount of a special file with the guest"
            );
            continue;
        }
        host.bind(&source, &target).map_err(mount_err(&source))?;
        made.push(target);
        m.set_source(Some(relative));
        kept.push(m);
    }
    spec.set_mounts(Some(kept));
    Ok(serde_json::to_vec(&spec).expect("OCI spec serialises"))
}
