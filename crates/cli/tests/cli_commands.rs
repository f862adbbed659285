//! `spec`, `features`, `list` and `ps` through the `skerry` binary. None of
//! them needs a VM: containers are hand-written state files in a temp root.

mod common;

use std::{fs, path::Path};

use common::{stderr, stdout, World};
use serde_json::{json, Value};

/// Start time (field 22 of /proc/<pid>/stat) of `pid`.
fn start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Writes `<root>/<id>/state.json` for a container whose monitor is `pid`
/// (with `start_time`), and a bundle whose rootfs is `rfs`.
fn fake_container(w: &World, id: &str, pid: u32, start_time: u64, status: &str) -> String {
    let bundle = w.tmp.path().join(format!("bundle-{id}"));
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rfs"}}"#,
    )
    .unwrap();
    let dir = w.root.join(id);
    fs::create_dir_all(&dir).unwrap();
    let state = json!({
        "id": id,
        "bundle": bundle,
        "status": status,
        "monitor": {"pid": pid, "start_time": start_time},
        "vm_processes": [],
        "exit_status": null,
        "created": "2026-11-22T06:00:00Z",
        "annotations": {"org.example/a": "b"},
    });
    fs::write(dir.join("state.json"), state.to_string()).unwrap();
    bundle.to_string_lossy().into_owned()
}

fn run_ok(w: &World, args: &[&str]) -> String {
    let out = w.run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn one_line_error(w: &World, args: &[&str]) -> String {
    let out = w.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn spec_writes_the_default_spec_once() {
    let w = World::new();
    let bundle = w.tmp.path().join("b");
    fs::create_dir(&bundle).unwrap();
    let b = bundle.to_str().unwrap();
    assert_eq!(run_ok(&w, &["spec", "--bundle", b]), "");
    let spec: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert_eq!(spec["root"]["path"], "rootfs");
    let mounts: Vec<&str> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
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

    let err = one_line_error(&w, &["spec", "--bundle", b]);
    assert!(
        err.contains(&format!("File {b}/config.json exists. Remove it first")),
        "{err}"
    );

    let rootless = w.tmp.path().join("rl");
    fs::create_dir(&rootless).unwrap();
    run_ok(
        &w,
        &["spec", "--rootless", "-b", rootless.to_str().unwrap()],
    );
    let spec: Value =
        serde_json::from_slice(&fs::read(rootless.join("config.json")).unwrap()).unwrap();
    let uid = nix::unistd::geteuid().as_raw();
    assert_eq!(spec["linux"]["uidMappings"][0]["hostID"], uid);
}

#[test]
fn spec_in_the_current_directory_names_config_json_like_runc() {
    let w = World::new();
    let dir = w.tmp.path().join("cwd");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("config.json"), "{}").unwrap();
    let out = w.skerry().arg("spec").current_dir(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        "skerry: File config.json exists. Remove it first"
    );
    assert_eq!(fs::read_to_string(dir.join("config.json")).unwrap(), "{}");
}

#[test]
fn features_document_parses() {
    let w = World::new();
    let text = run_ok(&w, &["--systemd-cgroup", "features"]);
    let features: oci_spec::runtime::Features = serde_json::from_str(&text).unwrap();
    assert_eq!(features.oci_version_min(), "1.0.0");
    let linux = features.linux().as_ref().unwrap();
    assert!(linux
        .namespaces()
        .as_ref()
        .unwrap()
        .contains(&oci_spec::runtime::LinuxNamespaceType::Pid));
    // The guest agent applies seccomp filters.
    assert_eq!(*linux.seccomp().as_ref().unwrap().enabled(), Some(true));
    assert!(features
        .annotations()
        .as_ref()
        .unwrap()
        .contains_key("io.skerry.runtime.version"));
}

#[test]
fn list_of_an_empty_root() {
    let w = World::new();
    assert_eq!(
        run_ok(&w, &["list"]),
        "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"
    );
    assert_eq!(run_ok(&w, &["list", "--format", "json"]), "[]\n");
    assert_eq!(run_ok(&w, &["list", "-q"]), "");
}

#[test]
fn list_and_ps_of_hand_written_containers() {
    let w = World::new();
    // The test process plays the monitor of c1; c2's monitor is long gone.
    let me = std::process::id();
    let b1 = fake_container(&w, "c1", me, start_time(me), "running");
    let b2 = fake_container(&w, "c2", me, 1, "running");

    let owner = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .map_or_else(|| format!("#{}", nix::unistd::geteuid()), |u| u.name);
    let list: Value = serde_json::from_str(&run_ok(&w, &["list", "-f", "json"])).unwrap();
    assert_eq!(
        list,
        json!([
            {"ociVersion": "1.0.2", "id": "c1", "pid": me, "status": "running",
             "bundle": b1, "rootfs": format!("{b1}/rfs"), "created": "2026-11-22T06:00:00Z",
             "annotations": {"org.example/a": "b"}, "owner": owner},
            {"ociVersion": "1.0.2", "id": "c2", "pid": 0, "status": "stopped",
             "bundle": b2, "rootfs": format!("{b2}/rfs"), "created": "2026-11-22T06:00:00Z",
             "annotations": {"org.example/a": "b"}, "owner": owner},
        ])
    );
    let table = run_ok(&w, &["list"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    assert_eq!(
        rows[1],
        [
            "c1",
            &me.to_string(),
            "running",
            &b1,
            "2026-11-22T06:00:00Z",
            &owner
        ]
    );
    assert_eq!(rows[2][..3], ["c2", "0", "stopped"]);
    assert_eq!(run_ok(&w, &["list", "-q"]), "c1\nc2\n");

    assert_eq!(
        run_ok(&w, &["ps", "--format", "json", "c1"]),
        format!("[{me}]\n")
    );
    assert_eq!(run_ok(&w, &["ps", "--format", "json", "c2"]), "[]\n");
    let ps = run_ok(&w, &["ps", "c1"]);
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(lines.len(), 2, "{ps}");
    assert!(lines[0].contains("PID") && lines[0].contains("CMD"), "{ps}");
    assert_eq!(
        lines[1].split_whitespace().nth(1),
        Some(me.to_string().as_str())
    );
    // ps arguments pass through, hyphens and all.
    let ps = run_ok(&w, &["ps", "c1", "-o", "pid,comm"]);
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["PID", "COMMAND"]
    );
    assert_eq!(lines.len(), 2, "{ps}");
    assert_eq!(
        lines[1].split_whitespace().next(),
        Some(me.to_string().as_str())
    );
    assert_eq!(run_ok(&w, &["ps", "c2"]).lines().count(), 1, "header only");
}

#[test]
fn ps_errors_are_one_line() {
    let w = World::new();
    let err = one_line_error(&w, &["ps", "nope"]);
    assert!(err.contains("container \"nope\" does not exist"), "{err}");
    let me = std::process::id();
    fake_container(&w, "c1", me, start_time(me), "running");
    let err = one_line_error(&w, &["ps", "c1", "-o", "comm"]);
    assert!(
        err.contains("couldn't find PID field in ps output"),
        "{err}"
    );
    assert!(Path::new(&w.root.join("c1/state.json")).exists());
}

#[test]
fn unreadable_container_is_skipped_by_list() {
    let w = World::new();
    let me = std::process::id();
    fake_container(&w, "good", me, start_time(me), "created");
    fs::create_dir_all(w.root.join("bad")).unwrap();
    fs::write(w.root.join("bad/state.json"), "{not json").unwrap();
    let out = w.run(&["list", "-q"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "good\n");
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
}

/// `skerry check` prints its table with the backend the config resolves to and
/// why; a binary the chosen backend needs fails the check, one it does not
/// need only warns.
#[test]
fn check_names_the_backend_and_why() {
    let w = World::new();
    // The test config pins `kind = "qemu"`; each case names its own.
    let with = |extra: &str| {
        let mut text = fs::read_to_string(&w.config)
            .unwrap()
            .replace("kind = \"qemu\"\n", "");
        text.push_str(extra);
        fs::write(&w.config, text).unwrap();
    };
    with("kind = \"skerry-vmm\"\nvmm_path = \"/nonexistent/skerry-vmm\"\nqemu_path = \"/nonexistent/qemu\"\n");
    let out = w.run(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let row = |item: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(item))
            .unwrap_or_else(|| panic!("no {item} row in:\n{text}"));
        let mut cols = line.split_whitespace();
        let status = cols.nth(1).unwrap().to_string();
        vec![status, cols.collect::<Vec<_>>().join(" ")]
    };
    assert!(text.starts_with("ITEM"), "{text}");
    assert_eq!(row("skerry-vmm")[0], "FAIL");
    assert_eq!(row("qemu")[0], "warn");
    assert!(
        row("qemu")[1].ends_with("not found (not needed: the backend is skerry-vmm)"),
        "{text}"
    );
    assert!(
        row("backend")[1].starts_with("skerry-vmm: hypervisor.kind = \"skerry-vmm\"; "),
        "{text}"
    );
}
