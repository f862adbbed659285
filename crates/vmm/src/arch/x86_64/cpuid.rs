//! CPUID: KVM's supported CPUID passed through, with per-vCPU topology fixups.

use kvm_bindings::CpuId;

/// Failure to adapt the CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU index does not fit into an 8-bit APIC ID.
    #[error("vCPU index {0} does not fit an xAPIC ID")]
    ApicId(u8),
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adapts KVM's supported CPUID for vCPU `index` of `count`: APIC IDs, logical count,
/// the hypervisor bit, and one core per vCPU (no SMT) in the topology leaves.
pub fn filter_cpuid(cpuid: &mut CpuId, index: u8, count: u8) -> Result<(), CpuidError> {
    if index == u8::MAX {
        return Err(CpuidError::ApicId(index));
    }
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cores = u32::from(count.max(1)) - 1;
                e.eax = (e.eax & 0x3fff) | (cores << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = u32::from(index);
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 0x100;
                    }
                    1 => {
                        // Core level: `count` cores.
                        e.eax = 8;
                        e.ebx = u32::from(count);
                        e.ecx = 0x201;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_hypervisor_bit_are_set() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xffff_ffff,
            ..Default::default()
        }])
        .unwrap();
        filter_cpuid(&mut c, 3, 4).unwrap();
        let e = c.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
    }
}
