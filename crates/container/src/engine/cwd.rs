//! The container's working directory, made the way runc makes it: runc's
//! init creates a missing `process.cwd` (`mkdir -p`, mode 0755, as the
//! container's root) before it changes into it, so `docker run -w /new` works;
//! libcontainer 0.7 only changes into it and fails. [`create_cwd`] makes it
//! before libcontainer runs, inside the rootfs and never through a symlink
//! out of it (pathrs resolves every component as if the rootfs were `/`).

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};
use pathrs::flags::OpenFlags;
use pathrs::Root;

use crate::spec::lexical;
use crate::SpecError;

/// The mode runc gives the directories it creates (before the umask).
const CWD_MODE: u32 = 0o755;

/// Creates `spec`'s `process.cwd` inside `rootfs` if it is missing: every
/// missing component, mode 0755, owned by the host ids of the container's
/// root when the spec makes a user namespace with mappings (else by the
/// caller). A cwd at or under a mount destination other than `/` is left
/// alone: it lives on a file system mounted later, and libcontainer reports
/// it if it is missing there.
pub fn create_cwd(spec: &Spec, rootfs: &Path) -> Result<(), SpecError> {
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let prefixes = prefixes(process.cwd());
    let Some(cwd) = prefixes.last() else {
        return Ok(());
    };
    if under_a_mount(spec, cwd) {
        return Ok(());
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| SpecError::Invalid {
        field: "process.cwd".into(),
        reason: format!("{what} {cwd:?} in the rootfs: {e}"),
    };
    let root = Root::open(rootfs).map_err(|e| failed("opening the root for", &e))?;
    // One lookup when it exists (every create with a cwd other than `/`).
    if root.resolve(cwd).is_ok() {
        return Ok(());
    }
    let first_missing = prefixes
        .iter()
        .position(|p| root.resolve(p).is_err())
        .unwrap_or(prefixes.len() - 1);
    root.mkdir_all(cwd, &Permissions::from_mode(CWD_MODE))
        .map_err(|e| failed("creating", &e))?;
    if let Some((uid, gid)) = container_root(spec) {
        for dir in &prefixes[first_missing..] {
            let handle = root.resolve(dir).map_err(|e| failed("opening", &e))?;
            let file = handle
                .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY)
                .map_err(|e| failed("opening", &e))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| failed("giving the container's root", &e))?;
        }
    }
    Ok(())
}

/// `/a`, `/a/b`, ... for `cwd` read lexically ([`lexical`]); empty for `/`
/// and for a relative path.
fn prefixes(cwd: &Path) -> Vec<PathBuf> {
    let Some(clean) = lexical(cwd) else {
        return Vec::new();
    };
    let mut all: Vec<PathBuf> = clean
        .ancestors()
        .filter(|p| p.parent().is_some())
        .map(Path::to_path_buf)
        .collect();
    all.reverse();
    all
}

/// Whether `cwd` is at or under the destination of one of `spec`'s mounts.
fn under_a_mount(spec: &Spec, cwd: &Path) -> bool {
    spec.mounts()
        .iter()
        .flatten()
        .filter_map(|m| lexical(m.destination()))
        .any(|dest| dest != Path::new("/") && cwd.starts_with(dest))
}

/// The host uid and gid of the container's root, when the spec makes a user
/// namespace of its own with mappings for it.
fn container_root(spec: &Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let own_userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    if !own_userns {
        return None;
    }
    let host_of_zero = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find_map(|m| (m.container_id() == 0 && m.size() > 0).then_some(m.host_id()))
    };
    Some((
        host_of_zero(linux.uid_mappings())?,
        host_of_zero(linux.gid_mappings())?,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, MetadataExt};

    use super::*;

    fn spec(cwd: &str, extra: serde_json::Value) -> Spec {
        let mut json = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": cwd, "args": ["true"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        if let (Some(obj), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_missing_cwd_is_made_with_runcs_mode() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("work")).unwrap();
        create_cwd(&spec("/work/a/./b/../c", serde_json::json!({})), t.path()).unwrap();
        let made = t.path().join("work/a/c");
        assert!(made.is_dir());
        assert!(!t.path().join("work/a/b").exists());
        let mode = std::fs::metadata(&made).unwrap().mode() & 0o7777;
        // The umask may take bits away, never add them.
        assert_eq!(mode & !CWD_MODE, 0, "{mode:o}");
        assert_ne!(mode & 0o700, 0, "{mode:o}");
    }

    #[test]
    fn an_existing_cwd_and_one_under_a_mount_are_left_alone() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("srv")).unwrap();
        std::fs::set_permissions(t.path().join("srv"), Permissions::from_mode(0o700)).unwrap();
        create_cwd(&spec("/srv", serde_json::json!({})), t.path()).unwrap();
        let mode = std::fs::metadata(t.path().join("srv")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);

        let mounted = serde_json::json!({"mounts": [
            {"destination": "/data/", "type": "tmpfs", "source": "tmpfs"}
        ]});
        create_cwd(&spec("/data/sub", mounted), t.path()).unwrap();
        assert!(!t.path().join("data").exists());
        create_cwd(&spec("/", serde_json::json!({})), t.path()).unwrap();
    }

    #[test]
    fn a_symlink_in_the_rootfs_cannot_lead_the_cwd_out_of_it() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute and relative links that would leave the rootfs on the host.
        symlink(&outside, rootfs.join("abs")).unwrap();
        symlink("../../outside", rootfs.join("rel")).unwrap();
        // Dangling inside the rootfs: refused, as runc's `mkdir -p` refuses it.
        let e = create_cwd(&spec("/abs/x", serde_json::json!({})), &rootfs).unwrap_err();
        assert!(e.to_string().contains("creating \"/abs/x\""), "{e}");
        // Where the targets exist inside the rootfs, the cwd is made there.
        let inside_abs = rootfs.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside_abs).unwrap();
        std::fs::create_dir_all(rootfs.join("outside")).unwrap();
        create_cwd(&spec("/abs/x", serde_json::json!({})), &rootfs).unwrap();
        create_cwd(&spec("/rel/y", serde_json::json!({})), &rootfs).unwrap();
        assert!(inside_abs.join("x").is_dir());
        assert!(rootfs.join("outside/y").is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn in_a_user_namespace_the_new_dirs_belong_to_the_containers_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a directory's owner needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("home")).unwrap();
        let userns = serde_json::json!({"linux": {
            "namespaces": [{"type": "user"}, {"type": "mount"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}],
        }});
        create_cwd(&spec("/home/u/w", userns), t.path()).unwrap();
        for dir in ["home/u", "home/u/w"] {
            let m = std::fs::metadata(t.path().join(dir)).unwrap();
            assert_eq!((m.uid(), m.gid()), (100000, 200000), "{dir}");
        }
        let existing = std::fs::metadata(t.path().join("home")).unwrap();
        assert_eq!((existing.uid(), existing.gid()), (0, 0));
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "").unwrap();
        let e = create_cwd(&spec("/f/sub", serde_json::json!({})), t.path()).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("process.cwd: creating \"/f/sub\""), "{e}");
    }
}
