//! Guest RAM: one memfd, mapped shared, laid out around the 32-bit MMIO gap. A memfd (rather
//! than anonymous memory) so vhost-user back ends can map the same pages.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::arch::ram_regions;

/// Failure to create guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero or not page aligned.
    #[error("guest memory size {0:#x} must be a non-zero multiple of 4 KiB")]
    Size(u64),
    /// The memfd could not be created or sized.
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    /// mmap failed.
    #[error("cannot map guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// Maps `size` bytes of guest RAM, backed by a memfd whose offsets follow the RAM layout.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || size % 4096 != 0 {
        return Err(MemoryError::Size(size));
    }
    // SAFETY: the name is a NUL-terminated literal; the returned fd is checked below.
    let fd = unsafe { libc::memfd_create(c"skerry-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let fo = FileOffset::from_arc(file.clone(), offset);
            offset += len as u64;
            (addr, len, Some(fo))
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(MemoryError::Mmap)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn every_region_is_backed_by_one_memfd_at_increasing_offsets() {
        // 3.5 GiB: two regions around the MMIO gap (mapped with NORESERVE; nothing touched).
        let mem = create_guest_memory(7 << 29).unwrap();
        let offsets: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().0, r.file_offset().unwrap().start()))
            .collect();
        assert_eq!(offsets.len(), 2);
        assert_eq!(offsets[0], (0, 0));
        assert_eq!(offsets[1].1, mem.iter().next().unwrap().len());
        mem.write_obj(0x1234_5678u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        assert!(matches!(
            create_guest_memory(4095),
            Err(MemoryError::Size(_))
        ));
    }
}
