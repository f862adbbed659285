//! Container mode as the shim uses it: one long-lived process creates
//! containers with libcontainer, whose set-up processes are its children.

mod common;

use std::path::Path;

use skerry_runtime::{
    bundle::Bundle,
    plain::{self, CreateOptions},
    state::StateStore,
};

/// This process's children whose name is one of libcontainer's set-up
/// processes (`youki:[1:INTER]`, `youki:[2:INIT]`), zombies included.
fn setup_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) && head.contains("(youki:") {
            found.push(stat.trim().to_string());
        }
    }
    found
}

/// A create that fails inside the container's init (an unknown
/// rootfsPropagation is refused there) leaves no set-up process of
/// libcontainer behind, not even a zombie: a shim would never reap it, and
/// a zombie init in a pod's pid namespace keeps the pod from stopping.
#[test]
fn a_failed_create_leaves_no_setup_process_behind() {
    if !nix::unistd::geteuid().is_root() {
        return common::skip("container mode needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("b/rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    let name = tmp
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/",
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}],
                  "cgroupsPath": format!("/skerry-test-{name}"),
                  "rootfsPropagation": "bogus"}
    });
    let dir = tmp.path().join("b");
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    let bundle = Bundle::load(&dir).unwrap();
    let store = StateStore::new(tmp.path().join("root"));
    let opts = CreateOptions {
        detached: true,
        ..Default::default()
    };
    let before = setup_children();
    let err = plain::create(&store, "bad", &bundle, &opts).unwrap_err();
    eprintln!("create failed as it should: {err}");
    assert_eq!(setup_children(), before, "set-up processes left behind");
    assert!(
        !Path::new(&store.dir("bad")).exists(),
        "state dir left behind"
    );
    for hierarchy in ["", "pids/", "memory/", "unified/"] {
        let cgroup = format!("/sys/fs/cgroup/{hierarchy}skerry-test-{name}");
        assert!(!Path::new(&cgroup).exists(), "{cgroup} left behind");
    }
}
