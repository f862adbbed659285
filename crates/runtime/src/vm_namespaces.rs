//! What a spec asks of `linux.namespaces` that a VM cannot give: checked at
//! `create` (VM isolation), before a VM boots; each refusal is one line
//! naming the field.
//!
//! A namespace `path` names a namespace of the host, which a VM cannot join:
//! the guest agent takes a network path as the pod's network (where the
//! runtime puts the VM's tap) and the ipc, uts and pid paths of a pod's container
//! as its sandbox container's, and ignores the others. Each path must still
//! be a namespace of its entry's type, as the runtime spec requires.
//!
//! A spec without a `pid` or `ipc` entry asks to share the host's, which a
//! VM cannot. A missing `network` entry means the host's network only in a
//! Kubernetes pod (CRI's `hostNetwork`, told by its container-type
//! annotation); elsewhere (the CLI's test bundles, hand-written specs) the
//! container keeps the guest's network namespace, which has no NIC unless
//! the spec joins a pod network.

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::statfs::{fstatfs, NSFS_MAGIC},
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::policy::{joined_path, namespaces};

/// containerd CRI's annotation: "sandbox" or "container".
pub const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O's annotation: "sandbox" or "container".
pub const CRIO_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

/// Host namespaces a VM cannot share, whatever the spec's annotations.
const NEVER_SHARED: [LinuxNamespaceType; 2] = [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc];

/// A spec whose namespaces a VM cannot give it.
#[derive(Debug, thiserror::Error)]
pub enum VmNamespaceError {
    /// A namespace path that cannot be opened.
    #[error("linux.namespaces[{index}].path {}", path.display())]
    Open {
        /// The entry's index.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// Why it cannot be opened.
        #[source]
        source: std::io::Error,
    },
    /// A namespace path that is no namespace file.
    #[error("linux.namespaces[{index}].path {}: not a namespace file", path.display())]
    NotNamespace {
        /// The entry's index.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// Why it is none.
        #[source]
        source: Errno,
    },
    /// A namespace path of another type than its entry's.
    #[error(
        "linux.namespaces[{index}].path {}: the namespace is of type {found:?}, not {expected:?}",
        path.display()
    )]
    WrongType {
        /// The entry's index.
        index: usize,
        /// Its path.
        path: PathBuf,
        /// The entry's type.
        expected: &'static str,
        /// The path's type.
        found: String,
    },
    /// No entry of a type whose absence means the host's namespace.
    #[error(
        "linux.namespaces: no {kind:?} namespace{context}: the host's {kind} namespace \
         cannot be shared with a VM"
    )]
    HostNamespace {
        /// The namespace type.
        kind: &'static str,
        /// Why the absence means the host's (empty, or the CRI annotation).
        context: String,
    },
}

/// The name of namespace type `t` in `linux.namespaces[].type`.
fn type_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// The type whose `CLONE_NEW*` flag is `flag`.
fn type_of_flag(flag: libc::c_int) -> Option<LinuxNamespaceType> {
    use LinuxNamespaceType::*;
    [Mount, Cgroup, Uts, Ipc, User, Pid, Network, Time]
        .into_iter()
        .find(|t| *t as libc::c_int == flag)
}

/// Checks `spec`'s namespaces for VM isolation; reads each namespace path.
pub fn check(spec: &Spec) -> Result<(), VmNamespaceError> {
    let entries = namespaces(spec);
    for (index, ns) in entries.iter().enumerate() {
        if let Some(path) = joined_path(ns) {
            check_path(index, path, ns.typ())?;
        }
    }
    let has = |t: LinuxNamespaceType| entries.iter().any(|ns| ns.typ() == t);
    if let Some(t) = NEVER_SHARED.into_iter().find(|t| !has(*t)) {
        return Err(VmNamespaceError::HostNamespace {
            kind: type_name(t),
            context: String::new(),
        });
    }
    if let Some(key) = cri_annotation(spec).filter(|_| !has(LinuxNamespaceType::Network)) {
        return Err(VmNamespaceError::HostNamespace {
            kind: "network",
            context: format!(" in a Kubernetes pod (annotation {key})"),
        });
    }
    Ok(())
}

/// The CRI container-type annotation `spec` carries, if any.
fn cri_annotation(spec: &Spec) -> Option<&'static str> {
    let annotations = spec.annotations().as_ref()?;
    [CRI_TYPE, CRIO_TYPE]
        .into_iter()
        .find(|k| annotations.contains_key(*k))
}

/// Refuses `path` unless it is a namespace of type `expected`. The path is the
/// tenant's: it is opened `O_PATH` (no device opened, no FIFO waited on) and only a
/// file on nsfs is opened for reading, through the fd.
fn check_path(
    index: usize,
    path: &Path,
    expected: LinuxNamespaceType,
) -> Result<(), VmNamespaceError> {
    let open_error = |source| VmNamespaceError::Open {
        index,
        path: path.to_path_buf(),
        source,
    };
    let not_namespace = |source| VmNamespaceError::NotNamespace {
        index,
        path: path.to_path_buf(),
        source,
    };
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(open_error)?;
    match fstatfs(&handle) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => {}
        Ok(_) => return Err(not_namespace(Errno::ENOTTY)),
        Err(errno) => return Err(not_namespace(errno)),
    }
    let file = File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(open_error)?;
    let flag =
        skerry_container::sys::namespace_type(file.as_fd()).map_err(|e| not_namespace(e.errno))?;
    match type_of_flag(flag) {
        Some(t) if t == expected => Ok(()),
        found => Err(VmNamespaceError::WrongType {
            index,
            path: path.to_path_buf(),
            expected: type_name(expected),
            found: found.map_or_else(|| format!("{flag:#x}"), |t| type_name(t).into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str, annotations: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{{annotations}}},
                "linux":{{"namespaces":{namespaces}}}}}"#
        ))
        .unwrap()
    }

    const OWN: &str = r#"[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}]"#;

    #[test]
    fn own_namespaces_pass_without_network_outside_a_pod() {
        check(&spec(OWN, "")).unwrap();
    }

    #[test]
    fn a_missing_pid_or_ipc_namespace_is_the_hosts() {
        for (kind, ns) in [
            ("pid", r#"[{"type":"ipc"},{"type":"mount"}]"#),
            ("ipc", r#"[{"type":"pid"},{"type":"mount"}]"#),
        ] {
            let err = check(&spec(ns, "")).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "linux.namespaces: no \"{kind}\" namespace: the host's {kind} namespace \
                     cannot be shared with a VM"
                )
            );
        }
    }

    #[test]
    fn a_pod_without_a_network_namespace_asks_for_the_hosts() {
        for key in [CRI_TYPE, CRIO_TYPE] {
            let err = check(&spec(OWN, &format!(r#""{key}":"sandbox""#)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "no \"network\" namespace in a Kubernetes pod (annotation {key})"
                )),
                "{err}"
            );
        }
        let with_net = r#"[{"type":"pid"},{"type":"ipc"},{"type":"network"}]"#;
        check(&spec(with_net, &format!(r#""{CRI_TYPE}":"sandbox""#))).unwrap();
    }

    #[test]
    fn a_namespace_path_must_be_of_its_entrys_type() {
        let ns = |t: &str, path: &str| {
            format!(r#"[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"{t}","path":"{path}"}}]"#)
        };
        check(&spec(&ns("ipc", "/proc/self/ns/ipc"), "")).unwrap();
        check(&spec(&ns("network", "/proc/self/ns/net"), "")).unwrap();
        let err = |t, path| check(&spec(&ns(t, path), "")).unwrap_err().to_string();
        assert_eq!(
            err("cgroup", "/proc/self/ns/ipc"),
            "linux.namespaces[2].path /proc/self/ns/ipc: the namespace is of type \"ipc\", \
             not \"cgroup\""
        );
        assert!(err("uts", "/proc/self/ns/ipc").ends_with("type \"ipc\", not \"uts\""));
        assert!(
            err("uts", "/proc/self/status").ends_with("/proc/self/status: not a namespace file")
        );
        assert!(err("uts", "/nonexistent").starts_with("linux.namespaces[2].path /nonexistent"));
        // Neither opened for reading nor waited on.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(err("uts", fifo.to_str().unwrap()).ends_with("fifo: not a namespace file"));
    }
}
