//! A container in a VM that owns its guest (all capabilities, standing in
//! for a compromised guest kernel) attacks the host through what the VM was
//! given; the host must be untouched.

mod common;

use std::fs;

use common::{stderr, stdout, World};

/// A read-only volume and a read-only rootfs stay read-only on the host:
/// remounting them read-write inside the guest changes nothing there.
#[test]
fn vm_read_only_volume_and_rootfs_hold_against_guest_root() {
    require_vm!();
    let w = World::new();
    let volume = w.tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    fs::write(volume.join("f"), "host").unwrap();
    let script = "mount -o remount,rw,bind /vol; echo guest > /vol/f; echo vol $?; \
                  mount -o remount,rw /; echo guest > /planted; echo root $?";
    let dir = w.bundle("ro", &["sh", "-c", script]);
    common::edit_spec(&dir, |spec| {
        spec["root"]["readonly"] = true.into();
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"destination": "/vol", "type": "bind",
                                     "source": volume, "options": ["rbind", "ro"]}));
    });
    let out = w.run(&["run", "--bundle", dir.to_str().unwrap(), "ro"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    // The guest's own view may say the remount worked; the host refused the
    // writes (EROFS through virtiofsd).
    assert!(text.contains("vol 1") && text.contains("root 1"), "{text}");
    assert_eq!(fs::read_to_string(volume.join("f")).unwrap(), "host");
    assert!(!dir.join("rootfs/planted").exists());
    w.assert_clean("ro");
}

/// The guest agent confines itself once the guest is set up (its own
/// seccomp allow list and no_new_privs, read from its /proc status, and its
/// resource limits, logged to the console), and containers still run: they
/// are cloned by a thread that is not confined and restore the limits, so
/// they get their spec's, not the agent's.
#[test]
fn vm_the_agent_is_confined_after_boot() {
    require_vm!();
    let w = World::new();
    let dir = w.bundle("conf", &["sleep", "600"]);
    common::edit_spec(&dir, |spec| {
        spec["process"]["noNewPrivileges"] = false.into()
    });
    w.create(&dir, "conf");
    let console = w.root.join("conf/console.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = String::new();
    while !log.contains("agent confined") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        log = String::from_utf8_lossy(&fs::read(&console).unwrap_or_default()).into_owned();
    }
    assert!(
        log.contains(
            "agent confined status=NoNewPrivs: 1, Seccomp: 2 limits=RLIMIT_CORE 0/0, \
             RLIMIT_MEMLOCK 0/0, RLIMIT_NOFILE 4096/4096"
        ),
        "{log}"
    );
    assert!(w.run(&["start", "conf"]).status.success());
    // Not the agent's no_new_privs, nor its limits: the guest kernel's
    // defaults for init (core hard unlimited, 8 MiB memlock, 1024 files).
    let out = w.run(&[
        "exec",
        "conf",
        "sh",
        "-c",
        "grep -E '^NoNewPrivs' /proc/self/status; ulimit -H -c; ulimit -l; ulimit -n",
    ]);
    assert_eq!(
        stdout(&out),
        "NoNewPrivs:\t0\nunlimited\n8192\n1024\n",
        "{}",
        stderr(&out)
    );
    // Create, start, exec and their stdio went through the allow list
    // without a denied call.
    let log = String::from_utf8_lossy(&fs::read(&console).unwrap()).into_owned();
    assert!(!log.contains("seccomp denied"), "{log}");
    assert!(w.run(&["delete", "--force", "conf"]).status.success());
    w.assert_clean("conf");
}
