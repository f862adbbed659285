//! What proves that a container ran in the guest (included with `#[path]`):
//! its kernel is the guest image's, by the release its manifest records, and
//! not the host's, whatever release the host runs.

use std::path::Path;

/// The kernel release of the guest image in `image_dir` (`manifest.json`).
pub fn image_kernel_release(image_dir: &Path) -> String {
    let path = image_dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["kernel_version"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no kernel_version", path.display()))
        .to_string()
}

/// Asserts that `text` starts with the `/proc/version` line of the guest
/// image's kernel, which is not the host's.
pub fn assert_guest_kernel(image_dir: &Path, text: &str) {
    let release = image_kernel_release(image_dir);
    let line = text.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("Linux version {release} ")),
        "not the guest image's kernel {release}: {text}"
    );
    let host = std::fs::read_to_string("/proc/version").unwrap();
    assert_ne!(line, host.trim(), "the container saw the host's kernel");
}
