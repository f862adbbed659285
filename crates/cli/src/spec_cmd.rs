//! `skerry spec`: writes a hardened default `config.json`, or with `--runc`
//! the example `runc spec` writes.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write as _},
    path::Path,
};

use anyhow::Context;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Spec,
};
use serde::Serialize;

/// Name of the file written into the bundle.
const CONFIG_FILE: &str = "config.json";

/// Masked path runc adds to oci-spec's default list.
const EXTRA_MASKED_PATH: &str = "/sys/devices/virtual/tpm";

/// Masked path Docker adds (RAPL energy counters, CVE-2020-8694).
const POWERCAP_MASKED_PATH: &str = "/sys/devices/virtual/powercap";

/// The hardened spec's capabilities: Docker's default 14 without CAP_NET_RAW.
pub const HARDENED_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// First host uid/gid the hardened spec maps container root to.
const HARDENED_ID_BASE: u32 = 100_000;

/// How many ids the hardened spec maps (container ids 0..65535).
const HARDENED_ID_COUNT: u32 = 65_536;

/// The example spec: runc's, with skerry as hostname. `rootless` takes the
/// host uid and gid mapped to root in a user namespace.
///
/// It keeps oci-spec's cgroup namespace (runc adds it on cgroup v2 hosts;
/// the guest is always cgroup v2).
pub fn example(rootless: Option<(u32, u32)>) -> anyhow::Result<Spec> {
    let mut spec = match rootless {
        Some((uid, gid)) => Spec::rootless(uid, gid),
        None => Spec::default(),
    };
    spec.set_version(skerry_runtime::lifecycle::OCI_VERSION.to_string());
    spec.set_hostname(Some("skerry".to_string()));
    spec.set_annotations(None);

    let process = spec
        .process_mut()
        .as_mut()
        .context("default spec process")?;
    process.set_terminal(Some(true));
    // oci-spec's default capabilities are runc's (AUDIT_WRITE, KILL,
    // NET_BIND_SERVICE), but runc sets no inheritable or ambient ones
    // (CVE-2022-29162).
    let mut caps = LinuxCapabilities::default();
    caps.set_inheritable(None);
    caps.set_ambient(None);
    process.set_capabilities(Some(caps));

    let linux = spec.linux_mut().as_mut().context("default spec linux")?;
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    masked.push(EXTRA_MASKED_PATH.to_string());
    linux.set_masked_paths(Some(masked));
    if rootless.is_none() {
        // Deny all devices, as runc's example does.
        linux.set_resources(Some(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()?])
                .build()?,
        ));
    }
    Ok(spec)
}

/// The hardened default: runc's example plus a user namespace (container
/// root is host `100000`, 65536 ids; with `rootless`, the caller's uid and
/// gid only), Docker's default seccomp profile, Docker's capabilities without
/// CAP_NET_RAW, runc's and Docker's masked and read-only paths, and every
/// namespace of its own (network and cgroup included, also when rootless).
pub fn hardened(rootless: Option<(u32, u32)>) -> anyhow::Result<Spec> {
    // runc's non-rootless example: sysfs is mounted, not bind-mounted from
    // the host, as the container always gets its own network namespace.
    let mut spec = example(None)?;

    let process = spec
        .process_mut()
        .as_mut()
        .context("default spec process")?;
    let caps: oci_spec::runtime::Capabilities = HARDENED_CAPABILITIES.into_iter().collect();
    // Not the builder: its unset fields take oci-spec's defaults, which hold
    // inheritable and ambient capabilities. None here, as runc.
    let mut hardened_caps = LinuxCapabilities::default();
    hardened_caps.set_bounding(Some(caps.clone()));
    hardened_caps.set_effective(Some(caps.clone()));
    hardened_caps.set_permitted(Some(caps));
    hardened_caps.set_inheritable(None);
    hardened_caps.set_ambient(None);
    process.set_capabilities(Some(hardened_caps));
    process.set_no_new_privileges(Some(true));

    let (uid, gid, count) = match rootless {
        Some((uid, gid)) => (uid, gid, 1),
        None => (HARDENED_ID_BASE, HARDENED_ID_BASE, HARDENED_ID_COUNT),
    };
    let mapping = |host_id| {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host_id)
            .size(count)
            .build()
    };
    let linux = spec.linux_mut().as_mut().context("default spec linux")?;
    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::User,
    ] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(vec![mapping(uid)?]));
    linux.set_gid_mappings(Some(vec![mapping(gid)?]));
    linux.set_seccomp(Some(crate::seccomp_default::profile()?));
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    masked.push(POWERCAP_MASKED_PATH.to_string());
    linux.set_masked_paths(Some(masked));

    if rootless.is_some() {
        // gid 5 (tty) is not mapped when only the caller's gid is.
        for m in spec.mounts_mut().iter_mut().flatten() {
            if let Some(options) = m.options_mut() {
                options.retain(|o| o != "gid=5");
            }
        }
    }
    Ok(spec)
}

/// The spec as runc writes it: tab-indented JSON.
pub fn render(spec: &Spec) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    spec.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        .context("serialising the spec")?;
    Ok(out)
}

/// `skerry spec [--bundle DIR] [--rootless] [--runc]`: writes
/// `DIR/config.json` (hardened, or runc's example with `runc`), never over an
/// existing one.
pub fn run(bundle: &Path, rootless: bool, runc: bool) -> anyhow::Result<i32> {
    let ids = rootless.then(|| {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    let spec = if runc { example(ids)? } else { hardened(ids)? };
    let json = render(&spec)?;
    let path = bundle.join(CONFIG_FILE);
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // runc's words; the bundle is named unless it is the current directory.
            let shown = if bundle == Path::new(".") {
                Path::new(CONFIG_FILE)
            } else {
                path.as_path()
            };
            anyhow::bail!("File {} exists. Remove it first", shown.display())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            anyhow::bail!("bundle directory {} does not exist", bundle.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(&json)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::PosixRlimitType;
    use skerry_runtime::{
        config::{HostNamespace, Isolation, PolicyConfig},
        policy,
    };

    use super::*;

    fn names(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    fn destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    #[test]
    fn example_has_runcs_shape() {
        let spec = example(None).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&render(&spec).unwrap()).unwrap();
        assert_eq!(json["ociVersion"], skerry_runtime::lifecycle::OCI_VERSION);
        assert_eq!(json["hostname"], "skerry");
        assert!(json.get("annotations").is_none());
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["root"]["readonly"], true);
        let p = &json["process"];
        assert_eq!(p["terminal"], true);
        assert_eq!(p["args"], serde_json::json!(["sh"]));
        assert_eq!(p["cwd"], "/");
        assert_eq!(p["user"]["uid"], 0);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            p["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let mut got = p["capabilities"]["bounding"].as_array().unwrap().clone();
        got.sort_by_key(|v| v.to_string());
        assert_eq!(serde_json::Value::Array(got), caps);
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!(p["capabilities"].get("ambient").is_none());

        assert_eq!(
            destinations(&spec),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        let ns = names(&spec);
        for want in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ] {
            assert!(ns.contains(&want), "{want:?} missing from {ns:?}");
        }
        assert!(!ns.contains(&LinuxNamespaceType::User));
        let linux = &json["linux"];
        let masked = linux["maskedPaths"].as_array().unwrap();
        assert!(masked.contains(&"/proc/kcore".into()));
        assert!(masked.contains(&EXTRA_MASKED_PATH.into()));
        assert!(linux["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/sys".into()));
        assert_eq!(
            linux["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
        let rl = &spec.process().as_ref().unwrap().rlimits().as_ref().unwrap()[0];
        assert_eq!(rl.typ(), PosixRlimitType::RlimitNofile);
    }

    #[test]
    fn rootless_maps_the_user_and_drops_network_and_cgroups() {
        let spec = example(Some((1000, 1001))).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&render(&spec).unwrap()).unwrap();
        let ns = names(&spec);
        assert!(ns.contains(&LinuxNamespaceType::User));
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert_eq!(
            json["linux"]["uidMappings"],
            serde_json::json!([{"hostID": 1000, "containerID": 0, "size": 1}])
        );
        assert_eq!(json["linux"]["gidMappings"][0]["hostID"], 1001);
        assert!(json["linux"].get("resources").is_none());
        let sys = &json["mounts"][5];
        assert_eq!(sys["destination"], "/sys");
        assert_eq!(sys["type"], "none");
        assert!(sys["options"].as_array().unwrap().contains(&"rbind".into()));
        let devpts = json["mounts"][2]["options"].as_array().unwrap();
        assert!(!devpts.contains(&"gid=5".into()));
    }

    #[test]
    fn output_is_a_spec_skerry_accepts() {
        let bytes = render(&example(None).unwrap()).unwrap();
        assert!(bytes.starts_with(b"{\n\t\"ociVersion\""));
        let back: Spec = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, example(None).unwrap());
    }

    #[test]
    fn writes_once_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        run(tmp.path(), false, false).unwrap();
        let first = std::fs::read(tmp.path().join(CONFIG_FILE)).unwrap();
        let err = run(tmp.path(), true, true).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "File {} exists. Remove it first",
                tmp.path().join(CONFIG_FILE).display()
            )
        );
        assert_eq!(std::fs::read(tmp.path().join(CONFIG_FILE)).unwrap(), first);
        let missing = tmp.path().join("nope");
        let err = run(&missing, false, false).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn run_writes_hardened_by_default_and_runcs_example_with_runc() {
        let tmp = tempfile::tempdir().unwrap();
        let (hard, plain) = (tmp.path().join("h"), tmp.path().join("r"));
        std::fs::create_dir(&hard).unwrap();
        std::fs::create_dir(&plain).unwrap();
        run(&hard, false, false).unwrap();
        run(&plain, false, true).unwrap();
        let read = |dir: &Path| -> Spec {
            serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap()
        };
        assert_eq!(read(&hard), hardened(None).unwrap());
        assert_eq!(read(&plain), example(None).unwrap());
    }

    /// The policy floor with every rule on, as tight as the hardened spec allows.
    fn strict_policy() -> PolicyConfig {
        PolicyConfig {
            deny_privileged: true,
            require_seccomp: true,
            require_user_namespace: true,
            allowed_capabilities: Some(
                HARDENED_CAPABILITIES
                    .iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect(),
            ),
            deny_host_namespaces: vec![
                HostNamespace::Network,
                HostNamespace::Pid,
                HostNamespace::Ipc,
                HostNamespace::Uts,
                HostNamespace::Mount,
                HostNamespace::Cgroup,
            ],
            allowed_host_paths: Some(vec![]),
        }
    }

    #[test]
    fn hardened_spec_meets_the_strictest_policy() {
        for ids in [None, Some((1000, 1001))] {
            let spec = hardened(ids).unwrap();
            for isolation in [Isolation::Vm, Isolation::Container] {
                policy::check(&strict_policy(), &spec, isolation).unwrap();
            }
            let back: Spec = serde_json::from_slice(&render(&spec).unwrap()).unwrap();
            assert_eq!(back, spec);
            policy::check(&strict_policy(), &back, Isolation::Vm).unwrap();
        }
        // runc's example is what the floor exists to refuse.
        let err =
            policy::check(&strict_policy(), &example(None).unwrap(), Isolation::Vm).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy: linux.seccomp: missing (policy.require_seccomp)"
        );
    }

    #[test]
    fn hardened_spec_has_the_issues_shape() {
        let spec = hardened(None).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&render(&spec).unwrap()).unwrap();
        let p = &json["process"];
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["args"], serde_json::json!(["sh"]));
        let mut bounding: Vec<String> = p["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        bounding.sort();
        assert_eq!(
            bounding,
            [
                "CAP_AUDIT_WRITE",
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_FSETID",
                "CAP_KILL",
                "CAP_MKNOD",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETFCAP",
                "CAP_SETGID",
                "CAP_SETPCAP",
                "CAP_SETUID",
                "CAP_SYS_CHROOT"
            ]
        );
        assert_eq!(
            p["capabilities"]["effective"],
            p["capabilities"]["bounding"]
        );
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!(p["capabilities"].get("ambient").is_none());

        let linux = &json["linux"];
        let mapping = serde_json::json!([{"hostID": 100000, "containerID": 0, "size": 65536}]);
        assert_eq!(linux["uidMappings"], mapping);
        assert_eq!(linux["gidMappings"], mapping);
        let ns: Vec<&str> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert!(n.get("path").is_none(), "{n}");
                n["type"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            ns,
            ["pid", "network", "ipc", "uts", "mount", "cgroup", "user"]
        );
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(linux["seccomp"]["defaultErrnoRet"], 1);
        let masked = linux["maskedPaths"].as_array().unwrap();
        for path in [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            EXTRA_MASKED_PATH,
            POWERCAP_MASKED_PATH,
        ] {
            assert!(masked.contains(&path.into()), "{path} not masked");
        }
        assert_eq!(
            linux["readonlyPaths"],
            serde_json::json!([
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ])
        );
        // The mounts are runc's: sysfs read-only, nothing from the host.
        assert_eq!(destinations(&spec), destinations(&example(None).unwrap()));
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["type"] != "bind"));
    }

    #[test]
    fn hardened_rootless_maps_only_the_caller() {
        let spec = hardened(Some((1000, 1001))).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&render(&spec).unwrap()).unwrap();
        assert_eq!(
            json["linux"]["uidMappings"],
            serde_json::json!([{"hostID": 1000, "containerID": 0, "size": 1}])
        );
        assert_eq!(json["linux"]["gidMappings"][0]["hostID"], 1001);
        assert!(names(&spec).contains(&LinuxNamespaceType::Network));
        let devpts = json["mounts"][2]["options"].as_array().unwrap();
        assert!(!devpts.contains(&"gid=5".into()));
        assert_eq!(json["mounts"][5]["type"], "sysfs");
    }
}
