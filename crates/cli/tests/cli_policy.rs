//! The tenant policy floor (`[policy]` in config.toml) through the `skerry`
//! binary: a refused spec gets the one-line policy error, exit 1 and nothing
//! in the state root. The config points at a guest image that does not
//! exist, so nothing here can boot a VM: a spec the policy lets through
//! fails at the image check instead. In container mode (`plain_*`) such a
//! spec runs.

mod common;

use std::{fs, path::Path};

use common::{stderr, World};
use serde_json::{json, Value};

/// A floor with the three rules these tests break.
const POLICY: &str = r#"
[policy]
deny_privileged = true
allowed_capabilities = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID",
  "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]
allowed_host_paths = ["/srv/skerry-volumes"]
"#;

/// Every floor rule on, as tight as the hardened `skerry spec` allows.
const STRICT_POLICY: &str = r#"
[policy]
deny_privileged = true
require_seccomp = true
require_user_namespace = true
allowed_capabilities = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID",
  "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]
deny_host_namespaces = ["network", "pid", "ipc", "uts", "mount", "cgroup"]
allowed_host_paths = []
"#;

/// A world whose guest image is missing, with `policy` appended to its config.
fn world(policy: &str) -> World {
    with_policy(World::with_image(Path::new("/nonexistent-image")), policy)
}

/// A container-mode world with `policy` appended to its config.
fn plain_world(policy: &str) -> World {
    with_policy(World::plain(), policy)
}

fn with_policy(w: World, policy: &str) -> World {
    let mut config = fs::read_to_string(&w.config).unwrap();
    config.push_str(policy);
    fs::write(&w.config, config).unwrap();
    w
}

fn caps(names: &[&str]) -> Value {
    json!({"bounding": names, "effective": names, "permitted": names})
}

/// A busybox bundle named `name` whose spec is `common::spec` changed by `change`.
fn bundle(w: &World, name: &str, change: impl FnOnce(&mut Value)) -> String {
    let dir = w.bundle(name, &["true"]);
    let mut spec = common::spec(&["true"]);
    if w.plain {
        spec["linux"]["cgroupsPath"] = w.cgroup_path(name).into();
    }
    change(&mut spec);
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_string_lossy().into_owned()
}

/// The four specs, each breaking one rule of [`POLICY`], with the error
/// it gets.
fn breaking_specs(w: &World) -> Vec<(String, &'static str)> {
    vec![
        (
            bundle(w, "privileged", |s| {
                s["process"]["capabilities"] = json!({
                    "bounding": json!(common::ALL_CAPS),
                    "effective": json!(common::ALL_CAPS),
                    "permitted": json!(common::ALL_CAPS),
                })
            }),
            "skerry: policy: process.capabilities.bounding: holds every capability \
             (policy.deny_privileged)",
        ),
        (
            bundle(w, "rwsysfs", |s| {
                s["process"]["capabilities"] = caps(&["CAP_CHOWN"]);
                s["mounts"][4]["options"] = json!(["nosuid", "noexec", "nodev"]);
            }),
            "skerry: policy: mounts[4]: mounts sysfs read-write (policy.deny_privileged)",
        ),
        (
            bundle(w, "sysadmin", |s| {
                s["process"]["capabilities"] = caps(&["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_KILL"])
            }),
            "skerry: policy: process.capabilities.bounding: CAP_SYS_ADMIN is not in \
             policy.allowed_capabilities",
        ),
        (
            bundle(w, "hostpath", |s| {
                s["process"]["capabilities"] = caps(&["CAP_CHOWN"]);
                s["mounts"].as_array_mut().unwrap().push(json!({
                    "destination": "/host-etc", "type": "bind", "source": "/etc",
                    "options": ["rbind", "ro"]
                }));
            }),
            "skerry: policy: mounts[5].source /etc: not under policy.allowed_host_paths",
        ),
    ]
}

/// Nothing in the state root, and no process of this world.
fn assert_nothing_created(w: &World) {
    let left: Vec<_> = fs::read_dir(&w.root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the state root: {left:?}");
    assert_eq!(w.processes(), Vec::<String>::new());
    assert_eq!(w.cgroups(), Vec::<String>::new());
}

#[test]
fn the_floor_refuses_each_breaking_spec_with_one_line() {
    refuses_each_breaking_spec(&world(POLICY));
}

#[test]
fn plain_the_floor_refuses_each_breaking_spec_with_one_line() {
    require_plain!();
    refuses_each_breaking_spec(&plain_world(POLICY));
}

fn refuses_each_breaking_spec(w: &World) {
    for (i, (bundle, want)) in breaking_specs(w).into_iter().enumerate() {
        for cmd in ["create", "run"] {
            let id = format!("p{i}");
            let out = w.run(&[cmd, "--bundle", &bundle, &id]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{cmd} {bundle}: {err}");
            assert_eq!(err.trim_end(), want, "{cmd} {bundle}");
            assert_nothing_created(w);
        }
    }
}

#[test]
fn without_the_floor_the_same_specs_pass_the_policy() {
    let w = world("");
    for (i, (bundle, _)) in breaking_specs(&w).into_iter().enumerate() {
        let out = w.run(&["create", "--bundle", &bundle, &format!("p{i}")]);
        let err = stderr(&out);
        // They fail later (the guest image is missing), not at the policy.
        assert!(!out.status.success(), "{bundle}: {err}");
        assert!(!err.contains("policy"), "{bundle}: {err}");
        assert_nothing_created(&w);
    }
}

#[test]
fn plain_without_the_floor_the_same_specs_run() {
    require_plain!();
    let w = plain_world("");
    // Root here may lack capabilities (this host's lacks CAP_SYS_RESOURCE):
    // then no runtime can grant every capability.
    let bounding = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    let host_has_all = u64::from_str_radix(&bounding, 16).unwrap() == (1 << 41) - 1;
    for (i, (bundle, _)) in breaking_specs(&w).into_iter().enumerate() {
        let out = w.run(&["run", "--bundle", &bundle, &format!("p{i}")]);
        let err = stderr(&out);
        if bundle.ends_with("/privileged") && !host_has_all {
            eprintln!(
                "note: host root's bounding set is {bounding}: every capability cannot be granted"
            );
            assert!(!out.status.success(), "{bundle}: {err}");
            assert!(!err.contains("policy"), "{bundle}: {err}");
        } else {
            assert!(out.status.success(), "{bundle}: {err}\n{}", w.log());
        }
        assert_nothing_created(&w);
    }
}

#[test]
fn the_hardened_spec_passes_the_strictest_floor() {
    let w = world(STRICT_POLICY);
    let dir = w.bundle("hardened", &["true"]);
    fs::remove_file(dir.join("config.json")).unwrap();
    let b = dir.to_str().unwrap();
    let out = w.run(&["spec", "--bundle", b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.run(&["create", "--bundle", b, "h"]);
    let err = stderr(&out);
    assert!(!err.contains("policy"), "{err}");
    assert!(err.contains("guest kernel"), "{err}");
    assert_nothing_created(&w);

    // runc's example is refused by the same floor.
    fs::remove_file(dir.join("config.json")).unwrap();
    let out = w.run(&["spec", "--runc", "--bundle", b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.run(&["create", "--bundle", b, "r"]);
    assert_eq!(
        stderr(&out).trim_end(),
        "skerry: policy: linux.seccomp: missing (policy.require_seccomp)"
    );
    assert_nothing_created(&w);
}

#[test]
fn plain_the_hardened_spec_runs_under_the_strictest_floor() {
    require_plain!();
    let w = plain_world(STRICT_POLICY);
    let dir = w.bundle("hardened", &["true"]);
    fs::remove_file(dir.join("config.json")).unwrap();
    let b = dir.to_str().unwrap();
    let out = w.run(&["spec", "--bundle", b]);
    assert!(out.status.success(), "{}", stderr(&out));
    common::edit_spec(&dir, |spec| {
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = json!(["sh", "-c", "exit 7"]);
        spec["linux"]["cgroupsPath"] = w.cgroup_path("hardened").into();
    });
    let out = w.run(&["run", "--bundle", b, "h"]);
    assert_eq!(out.status.code(), Some(7), "{}\n{}", stderr(&out), w.log());
    assert_nothing_created(&w);
}
