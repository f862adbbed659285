//! The skerry config of the CLI's and the shim's end-to-end tests (included
//! with `#[path]`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A config whose guest image is `image`: small VMs, and boots that may be
/// retried (a stalled TCG boot is rebooted). The tests pin QEMU: on a native
/// KVM host `auto` would pick skerry-vmm, whose own tests cover it, and these
/// tests would then depend on its binaries being installed.
///
/// A VM's QEMU and vsock back end run as a uid of the VM's own, which must
/// reach the state root and execute the back end: `world_dir` (the test's
/// temporary directory, holding the root) is made searchable by others,
/// and `vhost-device-vsock` is copied there (it is usually installed in
/// root's `~/.cargo/bin`, which no other uid can reach).
pub fn skerry_config(image: &Path, world_dir: &Path) -> String {
    std::fs::set_permissions(world_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut config = format!(
        "[guest]\nimage_dir = \"{}\"\n[hypervisor]\nkind = \"qemu\"\nmemory_mib = 256\n\
         boot_timeout_secs = 20\nboot_attempts = 3\n",
        image.display()
    );
    if let Some(vsock) = installed("vhost-device-vsock") {
        let copy = world_dir.join("vhost-device-vsock");
        std::fs::copy(&vsock, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        config.push_str(&format!("vsock_backend_path = \"{}\"\n", copy.display()));
    }
    config
}

/// `name` in `PATH` or `~/.cargo/bin` (where the runtime looks).
fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
