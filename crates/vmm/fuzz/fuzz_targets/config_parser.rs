//! The VMM's command line: arbitrary arguments (NUL-separated, not necessarily UTF-8) through
//! `skerry_vmm::cli::parse`, then what `run_vm` does with a parsed configuration before it
//! touches KVM: validation and the kernel command line with one virtio-mmio fragment per
//! device. Nothing may panic; errors are fine.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use skerry_vmm::arch::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use skerry_vmm::cli::{self, Command};
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsString::from("skerry-vmm")).chain(
        data.split(|b| *b == 0)
            .map(|a| OsString::from_vec(a.to_vec())),
    );
    let config = match cli::parse(args) {
        Ok(Command::Run(c)) => c,
        Ok(Command::SeccompSummary) => return,
        Err(e) => {
            // Rendering the error (what `exit` prints) must not panic either.
            let _ = e.render().to_string();
            return;
        }
    };
    let _ = config.validate();
    let Ok(mut cmdline) = skerry_vmm::boot::build_cmdline(&config.boot.cmdline, &[]) else {
        return;
    };
    let devices = usize::from(config.rng)
        + usize::from(config.block.is_some())
        + usize::from(config.vsock.is_some())
        + usize::from(config.net.is_some())
        + usize::from(config.fs.is_some());
    for slot in 0..devices as u32 {
        let base = VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SIZE;
        if cmdline
            .add_virtio_mmio_device(
                VIRTIO_MMIO_SIZE,
                GuestAddress(base),
                VIRTIO_IRQ_BASE + slot,
                None,
            )
            .is_err()
        {
            return;
        }
    }
    let _ = cmdline.as_cstring();
});
