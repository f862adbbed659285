//! A container's own user namespace in the guest (`linux.namespaces` type
//! `user` without a path, with `linux.uidMappings` and `linux.gidMappings`).
//!
//! The init sets the container up (mounts, devices, pivot_root, masks) as the
//! guest's root, then unshares its user namespace just before it applies the
//! process's security settings, and asks its parent (the agent, root in the
//! guest) to write the maps, which only a process privileged in the parent
//! namespace may do for more than one id ([`write_maps`]). It then becomes
//! the namespace's root ([`become_root`]) and continues as before: the
//! process's user, capabilities and seccomp are relative to the new
//! namespace. Its other namespaces stay owned by the guest's root namespace,
//! so the container's root cannot mount, set the hostname or configure the
//! network (runc's, created together with the user namespace, could): stricter
//! than runc, never looser. An exec joins the namespace last, after the others.

use std::path::Path;

use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};

/// The kernel's limit of lines in a uid_map or gid_map.
const MAX_MAPPINGS: usize = 340;

/// What a spec asks of a user namespace that the guest cannot do.
#[derive(Debug, thiserror::Error)]
pub enum UserNsError {
    /// A mapping list is missing, empty, too long or has an empty range.
    #[error("{field}: {reason}")]
    Mappings {
        /// `linux.uidMappings` or `linux.gidMappings`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Writing a map for the child failed.
    #[error("writing {path}")]
    Write {
        /// The map file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `spec` asks for a user namespace of the container's own.
pub fn wanted(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        })
}

/// The `uid_map` and `gid_map` texts of `spec`, checked.
pub fn maps(spec: &Spec) -> Result<(String, String), UserNsError> {
    let linux = spec.linux().as_ref();
    let uid = map_text(
        "linux.uidMappings",
        linux.and_then(|l| l.uid_mappings().as_deref()),
    )?;
    let gid = map_text(
        "linux.gidMappings",
        linux.and_then(|l| l.gid_mappings().as_deref()),
    )?;
    Ok((uid, gid))
}

fn map_text(
    field: &'static str,
    mappings: Option<&[LinuxIdMapping]>,
) -> Result<String, UserNsError> {
    let bad = |reason: String| UserNsError::Mappings { field, reason };
    let mappings = mappings.unwrap_or_default();
    if mappings.is_empty() {
        return Err(bad("a user namespace needs at least one mapping".into()));
    }
    if mappings.len() > MAX_MAPPINGS {
        return Err(bad(format!(
            "{} mappings; the kernel takes at most {MAX_MAPPINGS}",
            mappings.len()
        )));
    }
    let mut text = String::new();
    for (i, m) in mappings.iter().enumerate() {
        if m.size() == 0 {
            return Err(bad(format!("[{i}].size is 0")));
        }
        text.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    Ok(text)
}

/// Writes the maps of `spec` for process `pid`, which has just unshared its
/// user namespace (parent side; the caller is root in the guest).
pub fn write_maps(pid: i32, spec: &Spec) -> Result<(), UserNsError> {
    let (uid, gid) = maps(spec)?;
    for (file, text) in [("uid_map", uid), ("gid_map", gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(Path::new(&path), text)
            .map_err(|source| UserNsError::Write { path, source })?;
    }
    Ok(())
}

/// Makes the calling process root of the user namespace it is in (child
/// side, once the maps are written).
pub fn become_root() -> nix::Result<()> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        LinuxBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder, SpecBuilder,
    };

    use super::*;

    fn mapping(container: u32, host: u32, size: u32) -> LinuxIdMapping {
        LinuxIdMappingBuilder::default()
            .container_id(container)
            .host_id(host)
            .size(size)
            .build()
            .unwrap()
    }

    fn spec(uid: Vec<LinuxIdMapping>, gid: Vec<LinuxIdMapping>, path: Option<&str>) -> Spec {
        let mut ns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User);
        if let Some(p) = path {
            ns = ns.path(p);
        }
        let linux = LinuxBuilder::default()
            .namespaces(vec![ns.build().unwrap()])
            .uid_mappings(uid)
            .gid_mappings(gid)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    #[test]
    fn maps_are_one_line_per_mapping() {
        let s = spec(
            vec![mapping(0, 100000, 65536)],
            vec![mapping(0, 200000, 1000), mapping(1000, 300000, 1)],
            None,
        );
        assert!(wanted(&s));
        assert_eq!(
            maps(&s).unwrap(),
            (
                "0 100000 65536\n".into(),
                "0 200000 1000\n1000 300000 1\n".into()
            )
        );
    }

    #[test]
    fn bad_mappings_are_named() {
        let err = |s: Spec| maps(&s).unwrap_err().to_string();
        assert_eq!(
            err(spec(vec![], vec![mapping(0, 1, 1)], None)),
            "linux.uidMappings: a user namespace needs at least one mapping"
        );
        assert_eq!(
            err(spec(vec![mapping(0, 1, 1)], vec![mapping(0, 1, 0)], None)),
            "linux.gidMappings: [0].size is 0"
        );
        let many = (0..341).map(|i| mapping(i, 1000 + i, 1)).collect();
        assert!(err(spec(many, vec![mapping(0, 1, 1)], None)).contains("341 mappings"));
    }

    #[test]
    fn a_path_or_no_entry_asks_for_no_own_namespace() {
        assert!(!wanted(&spec(vec![], vec![], Some("/proc/1/ns/user"))));
        assert!(!wanted(&Spec::default()));
    }
}
