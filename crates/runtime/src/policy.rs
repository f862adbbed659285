//! The tenant policy floor (`[policy]` in the config file): rules a bundle's
//! `config.json` must meet before `create` starts anything.
//!
//! Pure logic over the parsed spec: host paths are compared lexically and
//! nothing on the host is read. Each refusal is one line naming the spec field
//! and the rule (`policy.<key>`).

use std::{
    path::{Component, Path, PathBuf},
    str::FromStr,
};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxDeviceType, LinuxNamespace,
    LinuxNamespaceType, LinuxSeccompAction, Mount, Spec,
};

use crate::{
    config::{HostNamespace, Isolation, PolicyConfig},
    share::{is_bind, read_only},
};

/// The 38 capabilities of Linux 3.16 to 5.8 (CAP_CHOWN … CAP_AUDIT_READ,
/// numbers 0–37). A bounding set holding all of them is a privileged
/// container even when it lacks the three later ones (CAP_PERFMON, CAP_BPF,
/// CAP_CHECKPOINT_RESTORE), as Docker's `--privileged` on an older kernel.
const CLASSIC_CAPABILITIES: [Capability; 38] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
];

/// A spec that breaks the policy floor; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `deny_privileged`: the spec describes a privileged container.
    #[error("policy: {field}: {detail} (policy.deny_privileged)")]
    Privileged {
        /// The spec field.
        field: String,
        /// What makes it privileged.
        detail: String,
    },
    /// `require_seccomp`: no seccomp profile, or one that allows by default.
    #[error("policy: {field}: {detail} (policy.require_seccomp)")]
    Seccomp {
        /// The spec field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// `require_user_namespace`: no own user namespace with mappings.
    #[error("policy: {field}: {detail} (policy.require_user_namespace)")]
    UserNamespace {
        /// The spec field.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// `allowed_capabilities`: a capability outside the allow-list.
    #[error("policy: {field}: {capability} is not in policy.allowed_capabilities")]
    Capability {
        /// The capability set, e.g. `process.capabilities.bounding`.
        field: String,
        /// The capability, in CAP_ form.
        capability: String,
    },
    /// `allowed_capabilities`: no `process.capabilities`, so every capability is kept.
    #[error(
        "policy: process.capabilities: missing, so the process keeps every capability \
         (policy.allowed_capabilities)"
    )]
    AllCapabilities,
    /// `deny_host_namespaces`: a namespace the spec does not create.
    #[error(
        "policy: linux.namespaces: {kind} namespace is shared with the host \
         (policy.deny_host_namespaces)"
    )]
    HostNamespace {
        /// The namespace kind.
        kind: &'static str,
    },
    /// `deny_host_namespaces`: a namespace joined by path instead of created.
    #[error(
        "policy: linux.namespaces: {kind} namespace is joined from {path}, not created by \
         the container (policy.deny_host_namespaces)"
    )]
    JoinedNamespace {
        /// The namespace kind.
        kind: &'static str,
        /// The path joined.
        path: String,
    },
    /// `allowed_host_paths`: a bind-mount source outside the allowed prefixes.
    #[error("policy: mounts[{index}].source {path}: {reason}")]
    HostPath {
        /// Index in `mounts`.
        index: usize,
        /// The source as written in the spec.
        path: String,
        /// Why it is refused, naming the rule.
        reason: &'static str,
    },
}

/// Parses a capability name as `CAP_NAME` or `NAME`, in any case.
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let mut bare = upper.as_str();
    while let Some(rest) = bare.strip_prefix("CAP_") {
        bare = rest;
    }
    Capability::from_str(bare).ok()
}

/// A capability in the CAP_ form config.json uses.
fn cap_name(cap: Capability) -> String {
    format!("CAP_{cap}")
}

/// Checks `spec` against the policy floor; the first rule broken is the error.
///
/// The rules, each applied only when its key is set:
///
/// - `deny_privileged`: refuses a spec that is privileged in the Docker/CRI
///   sense, i.e. any of
///   - no `process.capabilities` (an OCI runtime then drops no capability);
///   - `process.capabilities.bounding` holding every capability of Linux
///     3.16–5.8 (CAP_CHOWN … CAP_AUDIT_READ; the newer CAP_PERFMON, CAP_BPF
///     and CAP_CHECKPOINT_RESTORE are not required);
///   - a bind mount (type `bind`, or a `bind`/`rbind` option) of the host's
///     `/proc` or `/sys` or a path below them, or an `rbind` of `/`, that is
///     not read-only (the last of `ro`/`rw` in its options is not `ro`); in
///     VM isolation any bind of `/`, `/proc`, `/sys` or below the last two,
///     whatever its options (a guest kernel is not trusted to keep them
///     read-only, and even read-only they hand the host's kernel state and
///     files to a VM built to keep them apart);
///   - a `sysfs` mount that is not read-only;
///   - a `linux.resources.devices` entry with `allow: true`, no type (or
///     `a`), no major and minor (or negative ones) and an access that is
///     absent, empty or holds all of `r`, `w` and `m`.
/// - `require_seccomp`: `linux.seccomp` present, with a `defaultAction` other
///   than SCMP_ACT_ALLOW and SCMP_ACT_LOG (which also lets everything through).
/// - `require_user_namespace`: a `user` entry in `linux.namespaces` without a
///   `path`, non-empty `linux.uidMappings` and `linux.gidMappings`, and no
///   mapping of host ID 0.
/// - `allowed_capabilities`: every capability in the bounding, effective,
///   permitted, inheritable and ambient sets is in the list; a spec without
///   `process.capabilities` is refused.
/// - `deny_host_namespaces`: for each kind listed, `linux.namespaces` has an
///   entry of that type without a `path`.
/// - `allowed_host_paths`: every bind-mount source is absolute, has no `..`
///   component, and is under one of the prefixes (whole components compared).
///
/// Paths are compared as written: symlinks on the host are not resolved.
pub fn check(policy: &PolicyConfig, spec: &Spec, isolation: Isolation) -> Result<(), PolicyError> {
    if policy.deny_privileged {
        check_privileged(spec, isolation)?;
    }
    if policy.require_seccomp {
        check_seccomp(spec)?;
    }
    if policy.require_user_namespace {
        check_user_namespace(spec)?;
    }
    if let Some(allowed) = &policy.allowed_capabilities {
        check_capabilities(allowed, spec)?;
    }
    for kind in &policy.deny_host_namespaces {
        check_own_namespace(*kind, spec)?;
    }
    if let Some(prefixes) = &policy.allowed_host_paths {
        check_host_paths(prefixes, spec)?;
    }
    Ok(())
}

fn capabilities(spec: &Spec) -> Option<&LinuxCapabilities> {
    spec.process().as_ref()?.capabilities().as_ref()
}

/// The five capability sets with their JSON names, each sorted by name so
/// that the first offender reported does not depend on hash order.
fn capability_sets(caps: &LinuxCapabilities) -> [(&'static str, Vec<Capability>); 5] {
    let sorted = |set: &Option<Capabilities>| {
        let mut v: Vec<Capability> = set.iter().flatten().copied().collect();
        v.sort_by_key(|c| c.to_string());
        v
    };
    [
        ("bounding", sorted(caps.bounding())),
        ("effective", sorted(caps.effective())),
        ("permitted", sorted(caps.permitted())),
        ("inheritable", sorted(caps.inheritable())),
        ("ambient", sorted(caps.ambient())),
    ]
}

/// The spec's `linux.namespaces` entries.
pub(crate) fn namespaces(spec: &Spec) -> &[LinuxNamespace] {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default()
}

/// The path a namespace entry joins, if any (an empty path means "create").
pub(crate) fn joined_path(ns: &LinuxNamespace) -> Option<&Path> {
    ns.path().as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn has_option(m: &Mount, names: &[&str]) -> bool {
    m.options()
        .iter()
        .flatten()
        .any(|o| names.contains(&o.as_str()))
}

fn check_privileged(spec: &Spec, isolation: Isolation) -> Result<(), PolicyError> {
    let privileged = |field: String, detail: String| PolicyError::Privileged { field, detail };
    let Some(caps) = capabilities(spec) else {
        return Err(privileged(
            "process.capabilities".into(),
            "missing, so the process keeps every capability".into(),
        ));
    };
    let bounding = caps.bounding().clone().unwrap_or_default();
    if CLASSIC_CAPABILITIES.iter().all(|c| bounding.contains(c)) {
        return Err(privileged(
            "process.capabilities.bounding".into(),
            "holds every capability".into(),
        ));
    }
    let vm = isolation == Isolation::Vm;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let ro = read_only(m);
        if ro && !vm {
            continue;
        }
        if is_bind(m) {
            let Some(source) = m.source().as_deref() else {
                continue;
            };
            let Some(host) = skerry_container::spec::lexical(source) else {
                continue;
            };
            let kernel_fs = host.starts_with("/proc") || host.starts_with("/sys");
            let root = host == Path::new("/");
            if kernel_fs || (root && (vm || has_option(m, &["rbind"]))) {
                let how = if ro {
                    "into a VM (even read-only)"
                } else {
                    "read-write"
                };
                return Err(privileged(
                    format!("mounts[{i}]"),
                    format!("bind-mounts {} from the host {how}", source.display()),
                ));
            }
        } else if ro {
            continue;
        } else if m.typ().as_deref() == Some("sysfs") {
            return Err(privileged(
                format!("mounts[{i}]"),
                "mounts sysfs read-write".into(),
            ));
        }
    }
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_deref())
        .unwrap_or_default();
    for (i, d) in devices.iter().enumerate() {
        let any_type = matches!(d.typ(), None | Some(LinuxDeviceType::A));
        let any_number = d.major().is_none_or(|n| n < 0) && d.minor().is_none_or(|n| n < 0);
        let all_access = d
            .access()
            .as_deref()
            .is_none_or(|a| a.is_empty() || ['r', 'w', 'm'].iter().all(|c| a.contains(*c)));
        if d.allow() && any_type && any_number && all_access {
            return Err(privileged(
                format!("linux.resources.devices[{i}]"),
                "allows every device".into(),
            ));
        }
    }
    Ok(())
}

fn check_seccomp(spec: &Spec) -> Result<(), PolicyError> {
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Err(PolicyError::Seccomp {
            field: "linux.seccomp",
            detail: "missing".into(),
        });
    };
    let action = seccomp.default_action();
    if matches!(
        action,
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    ) {
        return Err(PolicyError::Seccomp {
            field: "linux.seccomp.defaultAction",
            detail: format!("{action} lets through every syscall the profile does not list"),
        });
    }
    Ok(())
}

fn check_user_namespace(spec: &Spec) -> Result<(), PolicyError> {
    let refuse = |field: &str, detail: String| PolicyError::UserNamespace {
        field: field.to_string(),
        detail,
    };
    let Some(user) = namespaces(spec)
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::User)
    else {
        return Err(refuse("linux.namespaces", "no user namespace".into()));
    };
    if let Some(path) = joined_path(user) {
        return Err(refuse(
            "linux.namespaces",
            format!(
                "user namespace is joined from {}, not created by the container",
                path.display()
            ),
        ));
    }
    let linux = spec.linux().as_ref();
    for (field, mappings) in [
        (
            "linux.uidMappings",
            linux.and_then(|l| l.uid_mappings().as_deref()),
        ),
        (
            "linux.gidMappings",
            linux.and_then(|l| l.gid_mappings().as_deref()),
        ),
    ] {
        let mappings = mappings.unwrap_or_default();
        if mappings.is_empty() {
            return Err(refuse(field, "missing or empty".into()));
        }
        if let Some(i) = mappings
            .iter()
            .position(|m| m.host_id() == 0 && m.size() > 0)
        {
            return Err(refuse(
                &format!("{field}[{i}]"),
                "maps host ID 0 into the container".into(),
            ));
        }
    }
    Ok(())
}

fn check_capabilities(allowed: &[String], spec: &Spec) -> Result<(), PolicyError> {
    let allowed: Vec<Capability> = allowed.iter().filter_map(|n| parse_capability(n)).collect();
    let Some(caps) = capabilities(spec) else {
        return Err(PolicyError::AllCapabilities);
    };
    for (set, held) in capability_sets(caps) {
        if let Some(cap) = held.into_iter().find(|c| !allowed.contains(c)) {
            return Err(PolicyError::Capability {
                field: format!("process.capabilities.{set}"),
                capability: cap_name(cap),
            });
        }
    }
    Ok(())
}

fn check_own_namespace(kind: HostNamespace, spec: &Spec) -> Result<(), PolicyError> {
    let typ = match kind {
        HostNamespace::Network => LinuxNamespaceType::Network,
        HostNamespace::Pid => LinuxNamespaceType::Pid,
        HostNamespace::Ipc => LinuxNamespaceType::Ipc,
        HostNamespace::Uts => LinuxNamespaceType::Uts,
        HostNamespace::Mount => LinuxNamespaceType::Mount,
        HostNamespace::Cgroup => LinuxNamespaceType::Cgroup,
    };
    let mut entries = namespaces(spec)
        .iter()
        .filter(|n| n.typ() == typ)
        .peekable();
    if entries.peek().is_none() {
        return Err(PolicyError::HostNamespace { kind: kind.name() });
    }
    if let Some(path) = entries.find_map(joined_path) {
        return Err(PolicyError::JoinedNamespace {
            kind: kind.name(),
            path: path.display().to_string(),
        });
    }
    Ok(())
}

fn check_host_paths(prefixes: &[PathBuf], spec: &Spec) -> Result<(), PolicyError> {
    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let refuse = |reason| PolicyError::HostPath {
            index,
            path: source.display().to_string(),
            reason,
        };
        if !source.is_absolute() {
            return Err(refuse(
                "a path relative to the bundle is not allowed by policy.allowed_host_paths",
            ));
        }
        if source.components().any(|c| c == Component::ParentDir) {
            return Err(refuse("\"..\" is not allowed by policy.allowed_host_paths"));
        }
        if !prefixes.iter().any(|p| source.starts_with(p)) {
            return Err(refuse("not under policy.allowed_host_paths"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// A spec that meets every rule of [`all_on`].
    fn compliant() -> Value {
        json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs", "readonly": true},
            "process": {
                "cwd": "/",
                "args": ["sh"],
                "user": {"uid": 0, "gid": 0},
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_KILL"],
                    "effective": ["CAP_CHOWN", "CAP_KILL"],
                    "permitted": ["CAP_CHOWN", "CAP_KILL"]
                }
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/data", "type": "bind", "source": "/srv/data/t1",
                 "options": ["rbind", "rw"]}
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, {"type": "cgroup"}, {"type": "user"}
                ],
                "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                "resources": {"devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
                ]},
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
                ]}
            }
        })
    }

    /// Every rule on.
    fn all_on() -> PolicyConfig {
        PolicyConfig {
            deny_privileged: true,
            require_seccomp: true,
            require_user_namespace: true,
            allowed_capabilities: Some(vec!["chown".into(), "CAP_KILL".into()]),
            deny_host_namespaces: vec![
                HostNamespace::Network,
                HostNamespace::Pid,
                HostNamespace::Ipc,
                HostNamespace::Uts,
                HostNamespace::Mount,
                HostNamespace::Cgroup,
            ],
            allowed_host_paths: Some(vec![PathBuf::from("/srv/data/")]),
        }
    }

    fn spec(value: Value) -> Spec {
        serde_json::from_value(value).unwrap()
    }

    fn with(change: impl FnOnce(&mut Value)) -> Spec {
        let mut v = compliant();
        change(&mut v);
        spec(v)
    }

    /// `s` is refused by `policy` with exactly `message`, and accepted with
    /// the floor off.
    fn refused(policy: &PolicyConfig, s: &Spec, message: &str) {
        let err = check(policy, s, Isolation::Container).expect_err(message);
        assert_eq!(err.to_string(), message);
        assert_eq!(err.to_string().lines().count(), 1);
        check(&PolicyConfig::default(), s, Isolation::Container).unwrap();
    }

    fn all_capabilities() -> Value {
        json!(CLASSIC_CAPABILITIES
            .iter()
            .map(|c| cap_name(*c))
            .collect::<Vec<_>>())
    }

    #[test]
    fn compliant_spec_passes_every_rule() {
        check(&all_on(), &spec(compliant()), Isolation::Container).unwrap();
        check(
            &PolicyConfig::default(),
            &spec(compliant()),
            Isolation::Container,
        )
        .unwrap();
    }

    #[test]
    fn floor_off_accepts_anything() {
        let s = spec(json!({"ociVersion": "1.0.2"}));
        check(&PolicyConfig::default(), &s, Isolation::Container).unwrap();
    }

    #[test]
    fn capability_names_are_normalised() {
        for name in ["CAP_SYS_ADMIN", "sys_admin", "Cap_Sys_Admin", " SYS_ADMIN "] {
            assert_eq!(parse_capability(name), Some(Capability::SysAdmin), "{name}");
        }
        assert_eq!(parse_capability("CAP_SYSLOG"), Some(Capability::Syslog));
        assert_eq!(parse_capability("CAP_NOPE"), None);
        assert_eq!(cap_name(Capability::NetBindService), "CAP_NET_BIND_SERVICE");
    }

    #[test]
    fn every_capability_is_privileged() {
        let msg = "policy: process.capabilities.bounding: holds every capability \
                   (policy.deny_privileged)";
        refused(
            &all_on(),
            &with(|v| v["process"]["capabilities"]["bounding"] = all_capabilities()),
            msg,
        );
        // Docker's --privileged on a new kernel: the classic 38 plus the newer three.
        let mut every = all_capabilities();
        for c in ["CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"] {
            every.as_array_mut().unwrap().push(c.into());
        }
        refused(
            &all_on(),
            &with(|v| v["process"]["capabilities"]["bounding"] = every),
            msg,
        );
        // One short of all is not privileged (allowed_capabilities is the rule then).
        let mut short = all_capabilities();
        short
            .as_array_mut()
            .unwrap()
            .retain(|c| c != "CAP_SYS_ADMIN");
        let only = PolicyConfig {
            deny_privileged: true,
            ..PolicyConfig::default()
        };
        check(
            &only,
            &with(|v| v["process"]["capabilities"]["bounding"] = short),
            Isolation::Container,
        )
        .unwrap();
    }

    #[test]
    fn missing_capabilities_are_privileged() {
        let s = with(|v| {
            v["process"].as_object_mut().unwrap().remove("capabilities");
        });
        refused(
            &all_on(),
            &s,
            "policy: process.capabilities: missing, so the process keeps every capability \
             (policy.deny_privileged)",
        );
        let caps_only = PolicyConfig {
            allowed_capabilities: Some(vec!["CAP_KILL".into()]),
            ..PolicyConfig::default()
        };
        refused(
            &caps_only,
            &s,
            "policy: process.capabilities: missing, so the process keeps every capability \
             (policy.allowed_capabilities)",
        );
    }

    /// In VM isolation `ro` is no excuse: a bind of `/`, `/proc` or `/sys`
    /// (or below the last two) is privileged whatever its options.
    #[test]
    fn host_root_proc_and_sys_are_privileged_in_a_vm_even_read_only() {
        let only = PolicyConfig {
            deny_privileged: true,
            ..PolicyConfig::default()
        };
        for (mount, shown) in [
            (
                json!({"destination": "/s", "type": "bind", "source": "/sys", "options": ["rbind", "ro"]}),
                "/sys",
            ),
            (
                json!({"destination": "/p", "source": "/proc/1", "options": ["bind", "ro"]}),
                "/proc/1",
            ),
            (
                json!({"destination": "/h", "type": "bind", "source": "/", "options": ["bind", "ro"]}),
                "/",
            ),
        ] {
            let s = with(|v| v["mounts"].as_array_mut().unwrap().push(mount.clone()));
            check(&only, &s, Isolation::Container).unwrap_or_else(|e| panic!("{mount}: {e}"));
            let err = check(&only, &s, Isolation::Vm).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "policy: mounts[3]: bind-mounts {shown} from the host into a VM (even \
                     read-only) (policy.deny_privileged)"
                )
            );
        }
        // Other host paths, read-only, are not.
        let s = with(|v| {
            v["mounts"].as_array_mut().unwrap().push(
                json!({"destination": "/d", "type": "bind", "source": "/srv/d", "options": ["rbind", "ro"]}),
            )
        });
        check(&only, &s, Isolation::Vm).unwrap();
    }

    #[test]
    fn host_proc_and_sys_read_write_are_privileged() {
        let only = PolicyConfig {
            deny_privileged: true,
            ..PolicyConfig::default()
        };
        for (mount, shown) in [
            (
                json!({"destination": "/host-sys", "type": "bind", "source": "/sys", "options": ["rbind", "rw"]}),
                "/sys",
            ),
            (
                json!({"destination": "/p", "type": "none", "source": "/proc/sys", "options": ["bind"]}),
                "/proc/sys",
            ),
            (
                json!({"destination": "/s", "source": "/srv/../sys/kernel", "options": ["ro", "rw", "rbind"]}),
                "/srv/../sys/kernel",
            ),
            (
                json!({"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]}),
                "/",
            ),
        ] {
            let s = with(|v| v["mounts"].as_array_mut().unwrap().push(mount.clone()));
            refused(
                &only,
                &s,
                &format!(
                    "policy: mounts[3]: bind-mounts {shown} from the host read-write \
                     (policy.deny_privileged)"
                ),
            );
        }
        // Read-only, a plain bind of / (no submounts) and proc/sysfs of the
        // container's own are not privileged.
        for mount in [
            json!({"destination": "/s", "type": "bind", "source": "/sys", "options": ["rbind", "rw", "ro"]}),
            json!({"destination": "/h", "type": "bind", "source": "/", "options": ["bind"]}),
            json!({"destination": "/p2", "type": "proc", "source": "proc"}),
            json!({"destination": "/procfoo", "type": "bind", "source": "/procfoo"}),
        ] {
            let s = with(|v| v["mounts"].as_array_mut().unwrap().push(mount.clone()));
            check(&only, &s, Isolation::Container).unwrap_or_else(|e| panic!("{mount}: {e}"));
        }
        refused(
            &all_on(),
            &with(|v| v["mounts"][1]["options"] = json!(["nosuid", "rw"])),
            "policy: mounts[1]: mounts sysfs read-write (policy.deny_privileged)",
        );
    }

    #[test]
    fn every_device_allowed_is_privileged() {
        for rule in [
            json!({"allow": true, "access": "rwm"}),
            json!({"allow": true}),
            json!({"allow": true, "type": "a", "access": "mrw"}),
            json!({"allow": true, "type": "a", "major": -1, "minor": -1, "access": "rwm"}),
        ] {
            let s = with(|v| {
                v["linux"]["resources"]["devices"]
                    .as_array_mut()
                    .unwrap()
                    .push(rule.clone())
            });
            refused(
                &all_on(),
                &s,
                "policy: linux.resources.devices[2]: allows every device (policy.deny_privileged)",
            );
        }
        for rule in [
            json!({"allow": false}),
            json!({"allow": true, "access": "r"}),
            json!({"allow": true, "type": "c", "access": "rwm"}),
            json!({"allow": true, "major": 1, "access": "rwm"}),
        ] {
            let s = with(|v| v["linux"]["resources"]["devices"] = json!([rule.clone()]));
            check(&all_on(), &s, Isolation::Container).unwrap_or_else(|e| panic!("{rule}: {e}"));
        }
    }

    #[test]
    fn seccomp_must_deny_by_default() {
        refused(
            &all_on(),
            &with(|v| {
                v["linux"].as_object_mut().unwrap().remove("seccomp");
            }),
            "policy: linux.seccomp: missing (policy.require_seccomp)",
        );
        for action in ["SCMP_ACT_ALLOW", "SCMP_ACT_LOG"] {
            refused(
                &all_on(),
                &with(|v| v["linux"]["seccomp"]["defaultAction"] = action.into()),
                &format!(
                    "policy: linux.seccomp.defaultAction: {action} lets through every syscall \
                     the profile does not list (policy.require_seccomp)"
                ),
            );
        }
        for action in ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP"] {
            let s = with(|v| v["linux"]["seccomp"]["defaultAction"] = action.into());
            check(&all_on(), &s, Isolation::Container).unwrap();
        }
    }

    #[test]
    fn user_namespace_must_be_own_and_mapped() {
        let p = all_on();
        refused(
            &p,
            &with(|v| {
                v["linux"]["namespaces"].as_array_mut().unwrap().pop();
            }),
            "policy: linux.namespaces: no user namespace (policy.require_user_namespace)",
        );
        refused(
            &p,
            &with(|v| v["linux"]["namespaces"][6]["path"] = "/proc/1/ns/user".into()),
            "policy: linux.namespaces: user namespace is joined from /proc/1/ns/user, not \
             created by the container (policy.require_user_namespace)",
        );
        refused(
            &p,
            &with(|v| {
                v["linux"].as_object_mut().unwrap().remove("uidMappings");
            }),
            "policy: linux.uidMappings: missing or empty (policy.require_user_namespace)",
        );
        refused(
            &p,
            &with(|v| v["linux"]["gidMappings"] = json!([])),
            "policy: linux.gidMappings: missing or empty (policy.require_user_namespace)",
        );
        refused(
            &p,
            &with(|v| {
                v["linux"]["uidMappings"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"containerID": 65536, "hostID": 0, "size": 1}))
            }),
            "policy: linux.uidMappings[1]: maps host ID 0 into the container \
             (policy.require_user_namespace)",
        );
        // An empty path means "create".
        check(
            &p,
            &with(|v| v["linux"]["namespaces"][6]["path"] = "".into()),
            Isolation::Container,
        )
        .unwrap();
    }

    #[test]
    fn capabilities_must_be_allowed() {
        let p = all_on();
        refused(
            &p,
            &with(|v| {
                v["process"]["capabilities"]["bounding"] =
                    json!(["CAP_KILL", "CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_NET_RAW"])
            }),
            "policy: process.capabilities.bounding: CAP_NET_RAW is not in \
             policy.allowed_capabilities",
        );
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            refused(
                &p,
                &with(|v| v["process"]["capabilities"][set] = json!(["sys_admin"])),
                &format!(
                    "policy: process.capabilities.{set}: CAP_SYS_ADMIN is not in \
                     policy.allowed_capabilities"
                ),
            );
        }
        let none = PolicyConfig {
            allowed_capabilities: Some(vec![]),
            ..PolicyConfig::default()
        };
        refused(
            &none,
            &spec(compliant()),
            "policy: process.capabilities.bounding: CAP_CHOWN is not in \
             policy.allowed_capabilities",
        );
        check(
            &none,
            &with(|v| v["process"]["capabilities"] = json!({})),
            Isolation::Container,
        )
        .unwrap();
    }

    #[test]
    fn denied_namespaces_must_be_created() {
        let p = all_on();
        refused(
            &p,
            &with(|v| {
                v["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|n| n["type"] != "network")
            }),
            "policy: linux.namespaces: network namespace is shared with the host \
             (policy.deny_host_namespaces)",
        );
        refused(
            &p,
            &with(|v| v["linux"]["namespaces"][0]["path"] = "/proc/42/ns/pid".into()),
            "policy: linux.namespaces: pid namespace is joined from /proc/42/ns/pid, not \
             created by the container (policy.deny_host_namespaces)",
        );
        let cgroup_only = PolicyConfig {
            deny_host_namespaces: vec![HostNamespace::Cgroup],
            ..PolicyConfig::default()
        };
        refused(
            &cgroup_only,
            &spec(json!({"ociVersion": "1.0.2"})),
            "policy: linux.namespaces: cgroup namespace is shared with the host \
             (policy.deny_host_namespaces)",
        );
        // Only the kinds listed are required.
        let net_only = PolicyConfig {
            deny_host_namespaces: vec![HostNamespace::Network],
            ..PolicyConfig::default()
        };
        check(
            &net_only,
            &with(|v| v["linux"]["namespaces"] = json!([{"type": "network"}])),
            Isolation::Container,
        )
        .unwrap();
    }

    #[test]
    fn bind_sources_must_be_under_allowed_paths() {
        let p = all_on();
        let source = |src: &str| {
            let src = src.to_string();
            with(move |v| v["mounts"][2]["source"] = src.into())
        };
        refused(
            &p,
            &source("/etc"),
            "policy: mounts[2].source /etc: not under policy.allowed_host_paths",
        );
        // Whole components: /srv/database is not under /srv/data.
        refused(
            &p,
            &source("/srv/database"),
            "policy: mounts[2].source /srv/database: not under policy.allowed_host_paths",
        );
        refused(
            &p,
            &source("/srv/data/../../etc"),
            "policy: mounts[2].source /srv/data/../../etc: \"..\" is not allowed by \
             policy.allowed_host_paths",
        );
        refused(
            &p,
            &source("data"),
            "policy: mounts[2].source data: a path relative to the bundle is not allowed by \
             policy.allowed_host_paths",
        );
        // A bind by option, without the type.
        refused(
            &p,
            &with(|v| {
                v["mounts"][2] =
                    json!({"destination": "/x", "source": "/etc", "options": ["rbind"]})
            }),
            "policy: mounts[2].source /etc: not under policy.allowed_host_paths",
        );
        check(&p, &source("/srv/data"), Isolation::Container).unwrap();
        check(&p, &source("/srv//data/./t1/sub"), Isolation::Container).unwrap();
        // Non-bind mounts are not host paths.
        check(
            &p,
            &with(|v| {
                v["mounts"][2] = json!({"destination": "/t", "type": "tmpfs", "source": "/etc"})
            }),
            Isolation::Container,
        )
        .unwrap();
        // An empty list allows no bind mount; unset allows any.
        let none = PolicyConfig {
            allowed_host_paths: Some(vec![]),
            ..PolicyConfig::default()
        };
        refused(
            &none,
            &spec(compliant()),
            "policy: mounts[2].source /srv/data/t1: not under policy.allowed_host_paths",
        );
        let unset = PolicyConfig {
            allowed_host_paths: None,
            ..all_on()
        };
        check(&unset, &source("/etc"), Isolation::Container).unwrap();
    }
}
