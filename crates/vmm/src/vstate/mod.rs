//! KVM state: the VM, its vCPUs and guest memory. The only module that imports kvm-ioctls.

pub mod memory;
pub mod vcpu;
pub mod vm;

pub use self::memory::{create_guest_memory, MemoryError};
pub use self::vcpu::{install_kick_handler, kick_thread, Vcpu, VcpuError, VcpuHandle};
pub use self::vm::{Vm, VmError};

/// `KVM_RUN` ioctl request number (`_IO(KVMIO, 0x80)`).
pub const KVM_RUN: u64 = 0xae80;

#[cfg(test)]
mod tests {
    #[test]
    fn kvm_run_number_matches_kvm_bindings() {
        assert_eq!(super::KVM_RUN, (0xae << 8) | 0x80);
    }
}
