//! The skerry config of the CLI's and the shim's end-to-end tests (included
//! with `#[path]`).

use std::path::Path;

/// A config whose guest image is `image`: small VMs, and boots that may be
/// retried (a stalled TCG boot is rebooted). The tests pin QEMU: on a native
/// KVM host `auto` would pick skerry-vmm, whose own tests cover it, and these
/// tests would then depend on its binaries being installed.
pub fn skerry_config(image: &Path) -> String {
    format!(
        "[guest]\nimage_dir = \"{}\"\n[hypervisor]\nkind = \"qemu\"\nmemory_mib = 256\n\
         boot_timeout_secs = 20\nboot_attempts = 3\n",
        image.display()
    )
}
