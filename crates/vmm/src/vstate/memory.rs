//! Guest RAM: anonymous mappings laid out around the 32-bit MMIO gap.

use vm_memory::GuestMemoryMmap;

use crate::arch::ram_regions;

/// Failure to create guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not page aligned.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB")]
    Size(u64),
    /// mmap failed.
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// Maps `size` bytes of guest RAM.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || size % 4096 != 0 {
        return Err(MemoryError::Size(size));
    }
    GuestMemoryMmap::from_ranges(&ram_regions(size)).map_err(MemoryError::Mmap)
}
