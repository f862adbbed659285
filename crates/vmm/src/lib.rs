//! skerry-vmm: a minimal KVM virtual machine monitor on the rust-vmm crates.
//!
//! Module map: [`arch`] (x86_64 layout, CPU state, CPUID/MSRs behind a facade), [`vstate`]
//! (KVM VM, vCPUs, guest memory; the only user of kvm-ioctls), [`boot`] (kernel, initrd,
//! command line, boot parameters), [`cli`] (flags → [`VmConfig`]), [`devices`] (buses, legacy serial/i8042/PM, virtio),
//! [`seccomp`] (per-thread filters), [`vmm`] (VM assembly and the event loop), [`api`]
//! (control API thread; filter only so far), [`exit`] (how a VM ended → exit status), [`control`] (pause/resume hand-shake).

#[cfg(test)]
#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

pub mod acpi;
pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod control;
pub mod devices;
pub mod exit;
pub mod seccomp;
pub mod vmm;
pub mod vstate;

pub use exit::VmExit;
pub use vmm::{run_vm, VmConfig, VmmError};
