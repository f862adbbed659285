//! The KVM VM: memory slots, in-kernel irqchip and PIT, irqfds, vCPU creation.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::{Vcpu, VcpuError};
use crate::arch::KVM_TSS_ADDRESS;

/// Failure to create or set up the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version or a needed capability is missing.
    #[error("KVM lacks the capability {0}")]
    Capability(&'static str),
    /// A KVM VM ioctl failed.
    #[error("KVM {what} failed")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A KVM VM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm, checks the capabilities we rely on and creates a VM.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::Pit2, "PIT2"),
            (Cap::ExtCpuid, "EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::Capability(name));
            }
        }
        let fd = kvm.create_vm().map_err(ioctl("CREATE_VM"))?;
        Ok(Vm { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region's mapping is owned by `mem`, which the caller keeps alive for
            // as long as the VM (the VMM holds both until it exits), and slots do not overlap
            // because GuestMemoryMmap regions never overlap.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(ioctl("SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Creates the in-kernel PIC/IOAPIC and PIT (the PC speaker port is a dummy).
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("SET_TSS_ADDR"))?;
        self.fd.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))
    }

    /// Makes a write to `evt` raise interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("IRQFD"))
    }

    /// Makes a guest write of the 32-bit value `datamatch` to MMIO address `addr` signal `evt`
    /// in the kernel, without a vCPU exit to user space.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(ioctl("IOEVENTFD"))
    }

    /// KVM's supported CPUID table.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("GET_SUPPORTED_CPUID"))
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Ioctl {
                what: "CREATE_VCPU",
                source,
            })?;
        Ok(Vcpu::new(index, fd))
    }
}
