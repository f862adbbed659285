//! The VMM's command line: arbitrary arguments (NUL-separated, not necessarily UTF-8) through
//! `skerry_vmm::cli::parse`, then what `run_vm` does with a parsed configuration before it
//! touches KVM: validation and the kernel command line with one virtio-mmio fragment per
//! device. Nothing may panic; errors are fine.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use skerry_vmm::cli::{self, Command};
use skerry_vmm_fuzz::exercise_config;

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
    exercise_config(&config);
});
