//! A container's `linux.resources` in a VM: what the guest's cgroup files hold
//! after create and after `update` is what the spec asked, field by field, and
//! a limit the guest cannot apply fails the create instead of being dropped.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{stderr, stdout, World};

/// The guest cgroup files the test reads back.
const FILES: [&str; 11] = [
    "cpu.weight",
    "cpu.max",
    "cpuset.cpus",
    "cpuset.mems",
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "pids.max",
    "hugetlb.2MB.max",
    "io.weight",
    "memory.high",
];

/// A busybox bundle named `name` running `args` whose spec has `resources`.
fn bundle_with(
    w: &World,
    name: &str,
    args: &[&str],
    resources: serde_json::Value,
) -> std::path::PathBuf {
    let dir = w.bundle(name, args);
    common::edit_spec(&dir, |spec| spec["linux"]["resources"] = resources);
    dir
}

/// `FILES` of the cgroup the container's processes are in, as its exec'd
/// process reads them inside the guest (the first one mounts cgroup2 at
/// /sys/fs/cgroup in the container's mount namespace).
fn guest_cgroup(w: &World, id: &str) -> BTreeMap<String, String> {
    let script = format!(
        "[ -e /sys/fs/cgroup/cgroup.controllers ] || mount -t cgroup2 none /sys/fs/cgroup || exit 1; \
         while read l; do case $l in 0::*) p=${{l#0::}};; esac; done < /proc/self/cgroup; \
         cd /sys/fs/cgroup$p || exit 1; \
         for f in {}; do echo \"$f=$(cat $f)\"; done",
        FILES.join(" ")
    );
    let out = w.run(&["exec", id, "sh", "-c", &script]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn vm_guest_cgroups_hold_every_resource_of_the_spec_and_of_update() {
    require_vm!();
    let w = World::new();
    let resources = serde_json::json!({
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "memory": {"limit": 134217728, "swap": 201326592, "reservation": 33554432},
        "pids": {"limit": 64},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "blockIO": {"weight": 500},
        "unified": {"memory.high": "117440512"}
    });
    // CAP_SYS_ADMIN lets the exec'd reader mount cgroup2 in its own mount namespace.
    let bundle = bundle_with(
        &w,
        "rs",
        &["sh", "-c", "touch /tmp/ready; exec sleep 1000"],
        resources,
    );
    common::edit_spec(&bundle, |spec| {
        for set in ["bounding", "effective", "permitted"] {
            spec["process"]["capabilities"][set] = serde_json::json!(["CAP_SYS_ADMIN"]);
        }
    });
    w.create(&bundle, "rs");
    assert!(w.run(&["start", "rs"]).status.success());
    w.wait_ready(&bundle);

    // 1024 shares (cgroup v1's default) are cgroup v2's default weight; OCI's
    // swap is memory + swap, cgroup v2's swap alone; blockIO weight 500 of
    // 10-1000 is io.weight 4950 of 1-10000.
    let asked = expect(&[
        ("cpu.weight", "100"),
        ("cpu.max", "50000 100000"),
        ("cpuset.cpus", "0"),
        ("cpuset.mems", "0"),
        ("memory.max", "134217728"),
        ("memory.swap.max", "67108864"),
        ("memory.low", "33554432"),
        ("pids.max", "64"),
        ("hugetlb.2MB.max", "4194304"),
        ("io.weight", "default 4950"),
        ("memory.high", "117440512"),
    ]);
    assert_eq!(guest_cgroup(&w, "rs"), asked);

    // update changes what it names and keeps the rest; 262144 shares (cgroup
    // v1's maximum) are the maximum weight.
    let update = w.tmp.path().join("update.json");
    fs::write(
        &update,
        r#"{"cpu":{"shares":262144},"memory":{"limit":100663296,"swap":100663296},"pids":{"limit":32}}"#,
    )
    .unwrap();
    let out = w.run(&["update", "--resources", update.to_str().unwrap(), "rs"]);
    assert!(out.status.success(), "update: {}", stderr(&out));
    let mut updated = asked.clone();
    for (k, v) in [
        ("cpu.weight", "10000"),
        ("memory.max", "100663296"),
        ("memory.swap.max", "0"),
        ("pids.max", "32"),
    ] {
        updated.insert(k.into(), v.into());
    }
    assert_eq!(guest_cgroup(&w, "rs"), updated);

    // A value the guest refuses fails the update and names the field.
    fs::write(&update, r#"{"blockIO":{"weight":5000}}"#).unwrap();
    let out = w.run(&["update", "--resources", update.to_str().unwrap(), "rs"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("blockIO.weight"), "{}", stderr(&out));

    w.kill_delete_and_assert_clean("rs");
}

/// A `unified` file the guest's cgroups do not have fails the create (it was
/// dropped silently before) and leaves nothing behind.
#[test]
fn vm_a_resource_the_guest_cannot_apply_fails_the_create() {
    require_vm!();
    let w = World::new();
    let resources = serde_json::json!({"unified": {"memory.no_such_file": "1"}});
    let dir = bundle_with(&w, "nf", &["true"], resources);
    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), "nf"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("memory.no_such_file"),
        "{}",
        stderr(&out)
    );
    w.assert_clean("nf");
}
