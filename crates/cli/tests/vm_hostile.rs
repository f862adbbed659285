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
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    spec["root"]["readonly"] = true.into();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/vol", "type": "bind",
                                 "source": volume, "options": ["rbind", "ro"]}));
    fs::write(&path, spec.to_string()).unwrap();
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
