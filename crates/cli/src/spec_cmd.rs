//! `skerry spec`: writes the example `config.json` that `runc spec` writes.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write as _},
    path::Path,
};

use anyhow::Context;
use oci_spec::runtime::{LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder, Spec};
use serde::Serialize;

/// Name of the file written into the bundle.
const CONFIG_FILE: &str = "config.json";

/// Masked path runc adds to oci-spec's default list.
const EXTRA_MASKED_PATH: &str = "/sys/devices/virtual/tpm";

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

/// The spec as runc writes it: tab-indented JSON.
pub fn render(spec: &Spec) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    spec.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        .context("serialising the spec")?;
    Ok(out)
}

/// `skerry spec [--bundle DIR] [--rootless]`: writes `DIR/config.json`,
/// never over an existing one.
pub fn run(bundle: &Path, rootless: bool) -> anyhow::Result<i32> {
    let ids = rootless.then(|| {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    let json = render(&example(ids)?)?;
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
    use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType};

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
        run(tmp.path(), false).unwrap();
        let first = std::fs::read(tmp.path().join(CONFIG_FILE)).unwrap();
        let err = run(tmp.path(), true).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "File {} exists. Remove it first",
                tmp.path().join(CONFIG_FILE).display()
            )
        );
        assert_eq!(std::fs::read(tmp.path().join(CONFIG_FILE)).unwrap(), first);
        let missing = tmp.path().join("nope");
        let err = run(&missing, false).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
