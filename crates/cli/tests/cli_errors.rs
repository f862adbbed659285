//! Bad input gets a one-line error naming the problem, a non-zero exit and no
//! leftovers. None of these reach a VM, so they need no root and no KVM.

mod common;

use std::path::Path;

use common::{stderr, World};

/// Runs `skerry ARGS`, expects failure with one stderr line containing
/// `needle`, and no state left for `id`; returns the line.
fn expect_error(w: &World, args: &[&str], needle: &str, id: &str) -> String {
    let out = w.run(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("skerry: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!w.root.join(id).exists(), "state left behind for {id}");
    assert_eq!(w.processes(), Vec::<String>::new());
    err
}

fn empty_image_world() -> World {
    let w = World::with_image(Path::new("/nonexistent-image"));
    std::fs::create_dir_all(w.tmp.path()).unwrap();
    w
}

#[test]
fn missing_config_json_is_named() {
    let w = World::new();
    let bundle = w.tmp.path().join("empty");
    std::fs::create_dir(&bundle).unwrap();
    expect_error(
        &w,
        &["run", "--bundle", bundle.to_str().unwrap(), "c1"],
        "config.json not found",
        "c1",
    );
}

#[test]
fn invalid_json_is_named_with_its_position() {
    let w = World::new();
    let bundle = w.bundle("b", &["true"]);
    std::fs::write(
        bundle.join("config.json"),
        "{\"ociVersion\": \"1.0.2\",\n  \"process\": [",
    )
    .unwrap();
    expect_error(
        &w,
        &["create", "--bundle", bundle.to_str().unwrap(), "c1"],
        "config.json: invalid JSON",
        "c1",
    );
}

#[test]
fn missing_program_is_named() {
    let w = World::new();
    let bundle = w.bundle("b", &["/bin/no-such-program", "x"]);
    let err = expect_error(
        &w,
        &["run", "--bundle", bundle.to_str().unwrap(), "c1"],
        "process.args[0] \"/bin/no-such-program\" not found in rootfs",
        "c1",
    );
    assert_eq!(err.matches("not found").count(), 1, "cause repeated: {err}");
}

#[test]
fn unknown_container_id_is_named() {
    let w = World::new();
    for cmd in ["state", "start", "kill", "delete"] {
        expect_error(
            &w,
            &[cmd, "ghost"],
            "container \"ghost\" does not exist",
            "ghost",
        );
    }
}

#[test]
fn invalid_container_id_is_refused() {
    let w = World::new();
    let bundle = w.bundle("b", &["true"]);
    expect_error(
        &w,
        &["create", "--bundle", bundle.to_str().unwrap(), "../escape"],
        "invalid container id",
        "../escape",
    );
}

#[test]
fn missing_guest_kernel_is_named() {
    let w = empty_image_world();
    let bundle = w.bundle("b", &["true"]);
    expect_error(
        &w,
        &["run", "--bundle", bundle.to_str().unwrap(), "c1"],
        "guest kernel /nonexistent-image/vmlinuz not found (run `skerry image build`)",
        "c1",
    );
}

#[test]
fn bad_config_file_key_is_named() {
    let w = World::new();
    std::fs::write(&w.config, "[hypervisor]\nmemory = 5\n").unwrap();
    let bundle = w.bundle("b", &["true"]);
    expect_error(
        &w,
        &["run", "--bundle", bundle.to_str().unwrap(), "c1"],
        "memory",
        "c1",
    );
}

#[test]
fn bad_signal_is_named() {
    let w = World::new();
    expect_error(
        &w,
        &["kill", "c1", "SIGNOPE"],
        "invalid signal \"SIGNOPE\"",
        "c1",
    );
}

/// With `require_hardware_virtualization`, a VM that would run under TCG
/// (software emulation, not a hardware boundary) is refused before anything
/// starts.
#[test]
fn software_emulation_is_refused_when_hardware_is_required() {
    let w = World::new();
    let config = std::fs::read_to_string(&w.config).unwrap().replace(
        "[hypervisor]\n",
        "[hypervisor]\naccel = \"tcg\"\nrequire_hardware_virtualization = true\n",
    );
    std::fs::write(&w.config, config).unwrap();
    let bundle = w.bundle("b", &["true"]);
    expect_error(
        &w,
        &["run", "--bundle", bundle.to_str().unwrap(), "c1"],
        "hypervisor.require_hardware_virtualization = true, but this VM would run under \
         software emulation (qemu with TCG",
        "c1",
    );
}
