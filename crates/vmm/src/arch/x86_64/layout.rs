//! Guest physical memory layout (close to Firecracker's, so kernels see a familiar machine).

use vm_memory::GuestAddress;

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (follows the module list).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// PDPTE of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// PDE of the boot identity map (512 x 2 MiB = the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (devices live here); RAM resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ (GSI) handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ (GSI) usable by devices on the in-kernel IOAPIC.
pub const IRQ_MAX: u32 = 23;
/// IRQ of the COM1 serial port.
pub const SERIAL_IRQ: u32 = 4;
/// Identity map TSS address for KVM (three pages below the MMIO gap end region).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The RAM regions for `mem_size` bytes of guest memory: below the MMIO gap, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// One e820 entry: start, length and type (1 = usable RAM, 2 = reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type.
    pub kind: u32,
}

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map for `mem_size` bytes of RAM: usable RAM everywhere except the legacy hole
/// (EBDA, VGA, BIOS: 0x9fc00..0x100000) and the 32-bit MMIO gap.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_configured_memory_minus_legacy_hole() {
        for mib in [16u64, 128, 3072, 4096, 8192] {
            let mem = mib << 20;
            let usable: u64 = e820_map(mem).iter().map(|e| e.size).sum();
            assert_eq!(usable, mem - (HIMEM_START - EBDA_START), "{mib} MiB");
            let regions: u64 = ram_regions(mem).iter().map(|r| r.1 as u64).sum();
            assert_eq!(regions, mem);
        }
    }
}
