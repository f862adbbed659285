//! The host's OCI spec → the spec libcontainer creates the container from in
//! the guest. The host wrote its spec for its own paths and namespaces:
//! - the rootfs and the bind sources are under the share (`<shared>/<id>/rootfs`,
//!   relative bind sources under `<shared>/<id>`, as `mounts/<n>`);
//! - a namespace joined by a host path means: the pod's. The network namespace
//!   (CNI's, on the host) is the guest's own, which holds the pod's NIC, joined
//!   by the agent's path, whose `net.*` sysctls the agent writes itself
//!   ([`GuestSpec::net_sysctls`]: libcontainer refuses them there, taking
//!   its own network namespace for the host's); the
//!   IPC, UTS and pid namespaces of a pod's container are its sandbox
//!   container's (`/proc/<sandbox init>/ns/...`); any other path is ignored
//!   with a warning and the container gets a namespace of its own. A container
//!   always has its own mount namespace, and its own pid, IPC and UTS
//!   namespaces unless it joins the pod's (a VM gives no host namespace, see
//!   the runtime's `vm_namespaces`);
//! - the cgroup is the agent's per-container cgroup, whose limits the agent
//!   applies itself (`cgroup`), so libcontainer gets no `resources`;
//! - a container whose spec mounts no `/dev`, `/dev/pts` or `/dev/shm` gets
//!   runc's usual ones ([`DEV_MOUNTS`]), first, so its devices have a place;
//! - a container with a user namespace of its own in the guest's network
//!   namespace cannot mount a sysfs (the kernel wants the network namespace
//!   to be its); it gets a read-only recursive bind of the guest's `/sys`
//!   instead, as runc does in that case;
//! - hooks run on the host, never in the guest;
//! - what libcontainer cannot take as written ([`engine::libcontainer_spec`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Spec,
};
use skerry_container::engine;

/// The guest's spec of one container.
#[derive(Debug)]
pub struct GuestSpec {
    /// What libcontainer gets.
    pub spec: Spec,
    /// The container has a pid namespace of its own (not the pod's).
    pub own_pid_ns: bool,
    /// Namespaces that were ignored, and why.
    pub warnings: Vec<String>,
    /// `net.*` sysctls for the guest's network namespace, which the container
    /// shares (taken out of `spec`).
    pub net_sysctls: BTreeMap<String, String>,
}

/// The `/dev` mounts made where the spec has none: destination, type,
/// source, options (runc's defaults).
const DEV_MOUNTS: [(&str, &str, &str, &[&str]); 3] = [
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "nodev", "noexec", "mode=1777", "size=65536k"],
    ),
];

/// `mounts` with the [`DEV_MOUNTS`] it lacks first.
fn with_dev_mounts(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut out: Vec<Mount> = DEV_MOUNTS
        .iter()
        .filter(|(dest, ..)| !mounts.iter().any(|m| m.destination() == Path::new(dest)))
        .map(|(dest, typ, source, options)| {
            MountBuilder::default()
                .destination(*dest)
                .typ(*typ)
                .source(*source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .expect("a complete mount")
        })
        .collect();
    out.extend(mounts);
    out
}

/// A `sysfs` mount as a read-only recursive bind of the guest's `/sys`;
/// any other mount as it is.
fn sysfs_as_bind(m: Mount) -> Mount {
    if m.typ().as_deref() != Some("sysfs") {
        return m;
    }
    let options = ["rbind", "rro", "rnosuid", "rnodev", "rnoexec"];
    MountBuilder::default()
        .destination(m.destination().clone())
        .typ("bind")
        .source("/sys")
        .options(options.map(String::from).to_vec())
        .build()
        .expect("a complete mount")
}

/// Namespace types every container has, of its own unless it joins the pod's.
const ALWAYS: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
];

/// The namespaces of a new container, and whether its pid namespace is its
/// own. `pod_init` is the pod's sandbox container's init, when the container
/// joins a pod running in this guest.
fn namespaces(spec: &Spec, pod_init: Option<i32>) -> (Vec<LinuxNamespace>, bool, Vec<String>) {
    let mut out: Vec<LinuxNamespace> = Vec::new();
    let mut warnings = Vec::new();
    let own = |typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .expect("a namespace type is all it needs")
    };
    let asked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in asked {
        let typ = ns.typ();
        if out.iter().any(|o| o.typ() == typ) {
            continue;
        }
        let Some(path) = ns.path() else {
            if typ == LinuxNamespaceType::Time {
                warnings.push("linux.namespaces: time namespace not supported, ignored".into());
            } else {
                out.push(own(typ));
            }
            continue;
        };
        let pod_name = match typ {
            LinuxNamespaceType::Ipc => Some("ipc"),
            LinuxNamespaceType::Uts => Some("uts"),
            LinuxNamespaceType::Pid => Some("pid"),
            _ => None,
        };
        match (typ, pod_name, pod_init) {
            (LinuxNamespaceType::Network, ..) => {
                let mut guest = own(typ);
                guest.set_path(Some(PathBuf::from(format!(
                    "/proc/{}/ns/net",
                    std::process::id()
                ))));
                out.push(guest);
            }
            (_, Some(name), Some(init)) => {
                let mut joined = own(typ);
                joined.set_path(Some(PathBuf::from(format!("/proc/{init}/ns/{name}"))));
                out.push(joined);
            }
            _ => warnings.push(format!(
                "linux.namespaces: joining {typ} namespace {path:?} is not supported, ignored"
            )),
        }
    }
    for typ in ALWAYS {
        if !out.iter().any(|o| o.typ() == typ) {
            out.push(own(typ));
        }
    }
    let own_pid_ns = out
        .iter()
        .any(|o| o.typ() == LinuxNamespaceType::Pid && o.path().is_none());
    (out, own_pid_ns, warnings)
}

/// The guest's spec of a container from the host's `spec`: rootfs `rootfs`,
/// relative bind sources under `shared` (the container's directory of the
/// share), cgroup `cgroup_path`.
pub fn for_guest(
    spec: &Spec,
    rootfs: &Path,
    shared: &Path,
    pod_init: Option<i32>,
    cgroup_path: PathBuf,
) -> GuestSpec {
    let mut spec = engine::libcontainer_spec(spec, false).unwrap_or_else(|| spec.clone());
    if let Some(mut root) = spec.root().clone() {
        root.set_path(rootfs.to_path_buf());
        spec.set_root(Some(root));
    }
    {
        let mut mounts = with_dev_mounts(spec.mounts().clone().unwrap_or_default());
        for m in &mut mounts {
            let bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            if let (true, Some(src)) = (bind, m.source().clone()) {
                m.set_source(Some(shared.join(src)));
            }
        }
        spec.set_mounts(Some(mounts));
    }
    spec.set_hooks(None);
    let (list, own_pid_ns, warnings) = namespaces(&spec, pod_init);
    let own_user_ns = list
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let own_net_ns = list
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none());
    if own_user_ns && !own_net_ns {
        let mounts = spec.mounts().clone().unwrap_or_default();
        spec.set_mounts(Some(mounts.into_iter().map(sysfs_as_bind).collect()));
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut net_sysctls = BTreeMap::new();
    if !own_net_ns {
        if let Some(sysctl) = linux.sysctl().clone() {
            let (net, rest) = sysctl.into_iter().partition(|(k, _)| k.starts_with("net."));
            net_sysctls = net;
            linux.set_sysctl(Some(rest.into_iter().collect()));
        }
    }
    linux.set_namespaces(Some(list));
    linux.set_cgroups_path(Some(cgroup_path));
    linux.set_resources(None);
    spec.set_linux(Some(linux));
    GuestSpec {
        spec,
        own_pid_ns,
        warnings,
        net_sysctls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn names(s: &GuestSpec) -> Vec<(String, Option<PathBuf>)> {
        s.spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .iter()
            .map(|n| (n.typ().to_string(), n.path().clone()))
            .collect()
    }

    #[test]
    fn paths_and_resources_are_the_guests() {
        let host = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/data", "type": "bind", "source": "mounts/0", "options": ["rbind"]},
                {"destination": "/abs", "type": "none", "source": "/etc/hosts", "options": ["bind"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            ],
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {"resources": {"pids": {"limit": 5}}, "rootfsPropagation": "rshared"},
        }));
        let g = for_guest(
            &host,
            Path::new("/run/skerry/shared/c1/rootfs"),
            Path::new("/run/skerry/shared/c1"),
            None,
            PathBuf::from("/c1"),
        );
        let root = g.spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/skerry/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let sources: Vec<_> = g
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                PathBuf::from("tmpfs"),
                PathBuf::from("devpts"),
                PathBuf::from("shm"),
                PathBuf::from("/run/skerry/shared/c1/mounts/0"),
                PathBuf::from("/etc/hosts"),
                PathBuf::from("tmpfs"),
            ]
        );
        assert!(g.spec.hooks().is_none());
        let linux = g.spec.linux().as_ref().unwrap();
        assert!(linux.resources().is_none());
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/c1")));
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("shared"));
        assert!(g.own_pid_ns);
        let got = names(&g);
        for t in ["mnt", "pid", "uts", "ipc"] {
            assert!(got.contains(&(t.to_string(), None)), "{t}: {got:?}");
        }
    }

    #[test]
    fn a_user_namespace_in_the_guests_network_binds_sys() {
        let host = |net: serde_json::Value| {
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs",
                            "options": ["ro"]}],
                "linux": {"namespaces": [{"type": "user"}, net]},
            }))
        };
        let s = Path::new("/s");
        let sys = |g: GuestSpec| {
            let m = g.spec.mounts().clone().unwrap();
            let m = m
                .iter()
                .find(|m| m.destination() == Path::new("/sys"))
                .unwrap();
            (m.typ().clone().unwrap(), m.source().clone().unwrap())
        };
        let shared = host(serde_json::json!({"type": "network", "path": "/run/netns/x"}));
        let got = sys(for_guest(&shared, s, s, None, PathBuf::from("/c")));
        assert_eq!(got, ("bind".to_string(), PathBuf::from("/sys")));
        let own = host(serde_json::json!({"type": "network"}));
        let got = sys(for_guest(&own, s, s, None, PathBuf::from("/c")));
        assert_eq!(got, ("sysfs".to_string(), PathBuf::from("sysfs")));
    }

    #[test]
    fn net_sysctls_of_the_guests_network_are_the_agents_to_write() {
        let host = |net: serde_json::Value| {
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {"namespaces": [net],
                          "sysctl": {"net.ipv4.ping_group_range": "0 0", "kernel.msgmax": "9"}},
            }))
        };
        let s = Path::new("/s");
        let shared = for_guest(
            &host(serde_json::json!({"type": "network", "path": "/run/netns/x"})),
            s,
            s,
            None,
            PathBuf::from("/c"),
        );
        assert_eq!(
            shared.net_sysctls,
            BTreeMap::from([("net.ipv4.ping_group_range".into(), "0 0".into())])
        );
        let left = shared
            .spec
            .linux()
            .as_ref()
            .unwrap()
            .sysctl()
            .clone()
            .unwrap();
        assert_eq!(
            left,
            std::collections::HashMap::from([("kernel.msgmax".into(), "9".into())])
        );
        let own = for_guest(
            &host(serde_json::json!({"type": "network"})),
            s,
            s,
            None,
            PathBuf::from("/c"),
        );
        assert!(own.net_sysctls.is_empty());
        assert_eq!(
            own.spec
                .linux()
                .as_ref()
                .unwrap()
                .sysctl()
                .as_ref()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_pod_container_joins_the_sandbox_and_the_guest_network() {
        let host = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/7/ns/pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "mount"},
                {"type": "user"},
                {"type": "cgroup", "path": "/proc/7/ns/cgroup"},
                {"type": "time"},
            ]},
        }));
        let shared = Path::new("/s");
        let g = for_guest(&host, shared, shared, Some(42), PathBuf::from("/c"));
        let got = names(&g);
        for t in ["pid", "ipc", "uts"] {
            let path = PathBuf::from(format!("/proc/42/ns/{t}"));
            assert!(got.contains(&(t.to_string(), Some(path))), "{t}: {got:?}");
        }
        assert!(!g.own_pid_ns);
        assert!(got.iter().all(|(t, _)| t != "cgroup" && t != "time"));
        let guest_net = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        assert!(
            got.contains(&("net".to_string(), Some(guest_net))),
            "{got:?}"
        );
        assert!(got.contains(&("user".to_string(), None)));
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
        // Outside a pod the same paths are ignored: namespaces of its own.
        let alone = for_guest(&host, shared, shared, None, PathBuf::from("/c"));
        assert!(alone.own_pid_ns);
        assert!(names(&alone).iter().all(|(t, p)| p.is_none() || t == "net"));
        assert_eq!(alone.warnings.len(), 5, "{:?}", alone.warnings);
    }
}
