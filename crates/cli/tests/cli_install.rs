//! `deploy/install.sh`: puts the binaries, a guest image and the config in
//! place under a staging root, says what it changed, and is idempotent.

#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const BINARIES: &[&str] = &[
    "skerry",
    "containerd-shim-skerry-v2",
    "skerry-vmm",
    "jailer",
];
const IMAGE: &[&str] = &["vmlinuz", "initramfs.img", "manifest.json"];

/// Runs the installer; returns its stdout, asserting success.
fn install(bin_dir: &Path, image_dir: &Path, destdir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--image-dir")
        .arg(image_dir)
        .arg("--destdir")
        .arg(destdir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "install.sh failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The directory holding the workspace's built binaries, if all of them are built.
fn built_binaries() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_BIN_EXE_skerry")).parent().unwrap();
    match BINARIES.iter().find(|b| !dir.join(b).is_file()) {
        Some(missing) => Err(format!(
            "{missing} is not built in {} (build the workspace: cargo build --workspace)",
            dir.display()
        )),
        None => Ok(dir.to_path_buf()),
    }
}

#[test]
fn install_puts_everything_in_place_once() {
    let bin_dir = match built_binaries() {
        Ok(dir) => dir,
        Err(reason) => {
            skip_rule::skip(&reason);
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("image");
    fs::create_dir(&image).unwrap();
    for f in IMAGE {
        fs::write(image.join(f), format!("{f} contents")).unwrap();
    }
    let dest = tmp.path().join("dest");

    let first = install(&bin_dir, &image, &dest);
    for b in BINARIES {
        let path = format!("/usr/local/bin/{b}");
        assert!(first.contains(&format!("installed  {path}\n")), "{first}");
        assert_eq!(
            fs::read(dest.join(&path[1..])).unwrap(),
            fs::read(bin_dir.join(b)).unwrap(),
            "{path}"
        );
    }
    for f in IMAGE {
        let path = format!("/var/lib/skerry/guest/{f}");
        assert!(first.contains(&format!("installed  {path}\n")), "{first}");
        assert_eq!(
            fs::read_to_string(dest.join(&path[1..])).unwrap(),
            format!("{f} contents")
        );
    }
    assert!(
        first.contains("wrote      /etc/skerry/config.toml\n"),
        "{first}"
    );
    let config = dest.join("etc/skerry/config.toml");
    // The written config is one skerry accepts; its guest image is the installed one.
    let out = Command::new(env!("CARGO_BIN_EXE_skerry"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(
        check.contains("/var/lib/skerry/guest"),
        "skerry check with the installed config: {check} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run changes nothing and keeps an operator's edits to the config; an
    // image whose kernel is now skerry's vmlinux replaces the installed vmlinuz.
    fs::write(&config, "[guest]\nimage_dir = \"/srv/guest\"\n").unwrap();
    fs::remove_file(image.join("vmlinuz")).unwrap();
    fs::write(image.join("vmlinux"), "a new kernel").unwrap();
    let second = install(&bin_dir, &image, &dest);
    assert!(
        second.contains("kept       /etc/skerry/config.toml"),
        "{second}"
    );
    assert!(
        second.contains("installed  /var/lib/skerry/guest/vmlinux\n"),
        "{second}"
    );
    assert!(
        second.contains("removed    /var/lib/skerry/guest/vmlinuz\n"),
        "{second}"
    );
    assert_eq!(
        fs::read_to_string(dest.join("var/lib/skerry/guest/vmlinux")).unwrap(),
        "a new kernel"
    );
    assert!(!dest.join("var/lib/skerry/guest/vmlinuz").exists());
    for b in BINARIES {
        assert!(
            second.contains(&format!("unchanged  /usr/local/bin/{b}\n")),
            "{second}"
        );
    }
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        "[guest]\nimage_dir = \"/srv/guest\"\n"
    );
}

#[test]
fn install_refuses_a_missing_binary_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("--bin-dir")
        .arg(tmp.path())
        .arg("--image-dir")
        .arg(tmp.path())
        .arg("--destdir")
        .arg(tmp.path().join("dest"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "install: {}/skerry: no such executable",
            tmp.path().display()
        )
    );
    assert!(!tmp.path().join("dest").exists(), "nothing is installed");
}
