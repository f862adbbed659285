//! `skerry features`: the OCI runtime features document (runtime-spec
//! `features.md`), describing what skerry really does with a `config.json`.
//!
//! The container runs inside the guest, so everything here is what the guest
//! agent applies there (capabilities and seccomp through libcontainer, as
//! container mode does on the host). Where the agent accepts a field but does
//! not apply it (linux.resources as cgroup settings of the spec's kind, LSM
//! labels) the feature is reported as absent rather than "unknown", so
//! callers do not rely on it.

use std::collections::HashMap;

use anyhow::Context;
use oci_spec::runtime::{
    ApparmorBuilder, CgroupBuilder, Features, FeaturesBuilder, IntelRdtBuilder,
    LinuxFeatureBuilder, LinuxNamespaceType, SeccompBuilder, SelinuxBuilder,
};
use serde::Serialize;
use skerry_container::security;
use skerry_runtime::hooks::HookKind;

/// Lowest `ociVersion` of a bundle skerry accepts.
pub const OCI_VERSION_MIN: &str = "1.0.0";

/// Annotation carrying the skerry version.
pub const VERSION_ANNOTATION: &str = "io.skerry.runtime.version";

/// How the guest agent confines itself once the guest is set up (VM
/// isolation): its threads run with no_new_privs and a seccomp allow list,
/// and the process with lowered resource limits.
pub const AGENT_CONFINEMENT_ANNOTATION: (&str, &str) = (
    "io.skerry.vm.agent.confinement",
    "seccomp-allow-list,no_new_privs,rlimits",
);

/// What every container in a VM is denied whatever its spec, by the guest
/// kernel's skerry LSM: the guest's vsock (the agent's channel) and mounts of
/// virtio-fs (the pod's share).
pub const GUEST_FILTER_ANNOTATION: (&str, &str) =
    ("io.skerry.vm.container.denied", "AF_VSOCK,virtiofs-mount");

/// The host namespaces a container in a VM cannot share, refused at create
/// (crates/runtime/src/vm_namespaces.rs): pid and ipc when the spec has no
/// entry for them, network when a Kubernetes pod's spec has none.
pub const HOST_NAMESPACES_ANNOTATION: (&str, &str) = (
    "io.skerry.vm.host-namespaces.refused",
    "pid,ipc,network(kubernetes-pod)",
);

/// Mount options libcontainer, the guest's engine, maps to mount(2) flags
/// or propagation; anything else is passed to the filesystem as data.
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// Namespaces a container in the guest can have (crates/agent/src/guest_spec.rs);
/// time is ignored there.
const NAMESPACES: &[LinuxNamespaceType] = &[
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Uts,
];

/// The features document.
pub fn features() -> anyhow::Result<Features> {
    // The cgroup drivers, AppArmor, SELinux and RDT are not applied in the
    // guest: `enabled: false` says "not compiled in" (None would mean
    // "unknown").
    let cgroup = CgroupBuilder::default()
        .v1(false)
        .v2(false)
        .systemd(false)
        .systemd_user(false)
        .rdma(false)
        .build()?;
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let seccomp = SeccompBuilder::default()
        .enabled(true)
        .actions(security::SECCOMP_ACTIONS.to_vec())
        .operators(strings(security::SECCOMP_OPERATORS))
        .archs(security::SECCOMP_ARCHS.to_vec())
        .known_flags(strings(security::SECCOMP_FLAGS))
        .supported_flags(strings(security::SECCOMP_FLAGS))
        .build()?;
    let linux = LinuxFeatureBuilder::default()
        .namespaces(NAMESPACES.to_vec())
        .capabilities(security::known_capabilities())
        .cgroup(cgroup)
        .seccomp(seccomp)
        .apparmor(ApparmorBuilder::default().enabled(false).build()?)
        .selinux(SelinuxBuilder::default().enabled(false).build()?)
        .intel_rdt(IntelRdtBuilder::default().enabled(false).build()?)
        .build()?;
    let features = FeaturesBuilder::default()
        .oci_version_min(OCI_VERSION_MIN)
        .oci_version_max(skerry_runtime::lifecycle::OCI_VERSION)
        .hooks(
            HookKind::ALL
                .iter()
                .map(|k| k.name().to_string())
                .collect::<Vec<_>>(),
        )
        .mount_options(
            MOUNT_OPTIONS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .linux(linux)
        .annotations(HashMap::from([
            (
                VERSION_ANNOTATION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (
                AGENT_CONFINEMENT_ANNOTATION.0.to_string(),
                AGENT_CONFINEMENT_ANNOTATION.1.to_string(),
            ),
            (
                GUEST_FILTER_ANNOTATION.0.to_string(),
                GUEST_FILTER_ANNOTATION.1.to_string(),
            ),
            (
                HOST_NAMESPACES_ANNOTATION.0.to_string(),
                HOST_NAMESPACES_ANNOTATION.1.to_string(),
            ),
        ]))
        .build()?;
    Ok(features)
}

/// The document as runc prints it: 4-space indented JSON, absent fields
/// left out (oci-spec would write them as `null`), and a final newline.
pub fn render(features: &Features) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(features).context("serialising the features")?;
    strip_nulls(&mut value);
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    value
        .serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        .context("serialising the features")?;
    out.push(b'\n');
    Ok(String::from_utf8(out).expect("JSON is UTF-8"))
}

fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// `skerry features`.
pub fn run() -> anyhow::Result<i32> {
    print!("{}", render(&features()?)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::LinuxSeccompAction;

    use super::*;

    #[test]
    fn output_parses_back_as_the_features_document() {
        let text = render(&features().unwrap()).unwrap();
        assert!(!text.contains("null"), "{text}");
        let parsed: Features = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, features().unwrap());
        assert_eq!(parsed.oci_version_min(), "1.0.0");
        assert_eq!(
            parsed.oci_version_max(),
            skerry_runtime::lifecycle::OCI_VERSION
        );
        let hooks = parsed.hooks().as_ref().unwrap();
        assert!(hooks.contains(&"createRuntime".to_string()), "{hooks:?}");
        assert!(hooks.contains(&"poststop".to_string()), "{hooks:?}");
        let opts = parsed.mount_options().as_ref().unwrap();
        assert!(opts.contains(&"rbind".to_string()));
        // Recursive read-only is not implemented: containerd must not use it.
        assert!(!opts.contains(&"rro".to_string()));

        let linux = parsed.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        for want in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::User,
        ] {
            assert!(ns.contains(&want), "{want:?} missing");
        }
        assert!(!ns.contains(&LinuxNamespaceType::Time));
        let caps = linux.capabilities().as_ref().unwrap();
        for want in ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"] {
            assert!(caps.contains(&want.to_string()), "{want} missing: {caps:?}");
        }
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(*seccomp.enabled(), Some(true));
        let actions = seccomp.actions().as_ref().unwrap();
        assert!(actions.contains(&LinuxSeccompAction::ScmpActErrno));
        assert!(!actions.contains(&LinuxSeccompAction::ScmpActNotify));
        assert_eq!(*linux.apparmor().as_ref().unwrap().enabled(), Some(false));
        assert_eq!(*linux.selinux().as_ref().unwrap().enabled(), Some(false));
        let cgroup = linux.cgroup().as_ref().unwrap();
        assert_eq!(*cgroup.v2(), Some(false));
        assert_eq!(*cgroup.systemd(), Some(false));
        let annotations = parsed.annotations().as_ref().unwrap();
        assert_eq!(
            annotations.get(VERSION_ANNOTATION).map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        for (key, value) in [
            AGENT_CONFINEMENT_ANNOTATION,
            GUEST_FILTER_ANNOTATION,
            HOST_NAMESPACES_ANNOTATION,
        ] {
            assert_eq!(annotations.get(key).map(String::as_str), Some(value));
        }
    }

    #[test]
    fn json_uses_the_spec_field_names() {
        let value: serde_json::Value =
            serde_json::from_str(&render(&features().unwrap()).unwrap()).unwrap();
        for key in [
            "ociVersionMin",
            "ociVersionMax",
            "hooks",
            "mountOptions",
            "linux",
            "annotations",
        ] {
            assert!(value.get(key).is_some(), "{key} missing");
        }
        let linux = &value["linux"];
        assert_eq!(linux["namespaces"][0], "cgroup");
        assert_eq!(linux["cgroup"]["systemdUser"], false);
        assert_eq!(linux["seccomp"]["enabled"], true);
        assert_eq!(linux["intelRdt"]["enabled"], false);
    }
}
