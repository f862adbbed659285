//! Linux boot: load an ELF vmlinux (PVH or 64-bit entry) or a bzImage, the initrd and the
//! command line, and write the boot parameters (zero page or PVH start info, with e820).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::{
    e820_map, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// Failure to load the kernel, initrd or command line into the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file could not be opened or read.
    #[error("cannot read {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image was rejected by the loader.
    #[error("cannot load kernel {path}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written into guest memory.
    #[error("cannot write the kernel command line")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd {path} ({size} bytes) does not fit into guest memory")]
    InitrdTooBig {
        /// The initrd file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The boot parameters could not be written.
    #[error("cannot write the boot parameters")]
    Params(#[source] linux_loader::configurator::Error),
    /// PVH was requested but the kernel has no PVH entry note.
    #[error("kernel {0} has no PVH entry point")]
    NoPvh(PathBuf),
    /// Guest memory too small for a kernel.
    #[error("guest memory of {0} bytes is too small")]
    MemoryTooSmall(u64),
}

/// Which boot protocol to use for an ELF kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocolChoice {
    /// PVH when the kernel has a PVH note, else the 64-bit Linux boot protocol.
    #[default]
    Auto,
    /// Always the 64-bit Linux boot protocol (zero page in RSI).
    Linux,
    /// Always PVH (fails if the kernel has no PVH note).
    Pvh,
}

/// How the boot vCPU must start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit long mode at `entry`, RSI = zero page.
    Linux64 {
        /// Entry point.
        entry: u64,
    },
    /// 32-bit protected mode at `entry`, EBX = `hvm_start_info`.
    Pvh {
        /// Entry point.
        entry: u64,
        /// Guest address of `hvm_start_info`.
        start_info: u64,
    },
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSource {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd/initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (devices may append to it).
    pub cmdline: String,
    /// ELF boot protocol choice.
    pub protocol: BootProtocolChoice,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Offset of `startup_64` from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Builds the kernel command line from the user's string plus device fragments.
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::try_from(base, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    for e in extra {
        cmdline.insert_str(e).map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Loads kernel, initrd and command line into `mem` and writes the boot parameters.
pub fn load(
    mem: &GuestMemoryMmap,
    src: &BootSource,
    cmdline: &Cmdline,
    rsdp: Option<u64>,
) -> Result<BootEntry, BootError> {
    let mem_end = mem.last_addr().raw_value() + 1;
    if mem_end < HIMEM_START + (2 << 20) {
        return Err(BootError::MemoryTooSmall(mem_end));
    }
    let mut kernel = open(&src.kernel)?;
    let mut magic = [0u8; 4];
    kernel
        .read_exact(&mut magic)
        .map_err(|source| BootError::Open {
            path: src.kernel.clone(),
            source,
        })?;
    let kernel_err = |source| BootError::Kernel {
        path: src.kernel.clone(),
        source,
    };
    let result = if &magic == b"\x7fELF" {
        Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))).map_err(kernel_err)?
    } else {
        BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_err)?
    };

    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::CmdlineLoad)?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes_with_nul()
        .len() as u32;

    let initrd = match &src.initrd {
        Some(path) => Some(load_initrd(mem, path, result.kernel_end)?),
        None => None,
    };

    let mem_size = mem_size(mem);
    let pvh = match (result.pvh_boot_cap, src.protocol) {
        (_, BootProtocolChoice::Linux) => None,
        (PvhBootCapability::PvhEntryPresent(e), _) => Some(e.raw_value()),
        (_, BootProtocolChoice::Pvh) => return Err(BootError::NoPvh(src.kernel.clone())),
        _ => None,
    };
    if let (Some(entry), None) = (pvh, result.setup_header) {
        write_pvh_start_info(mem, mem_size, initrd, rsdp)?;
        return Ok(BootEntry::Pvh {
            entry,
            start_info: PVH_INFO_START,
        });
    }

    let mut params = boot_params::default();
    let entry = match result.setup_header {
        Some(hdr) => {
            params.hdr = hdr;
            result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET
        }
        None => result.kernel_load.raw_value(),
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_size;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(r) = rsdp {
        params.acpi_rsdp_addr = r;
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::Params)?;
    Ok(BootEntry::Linux64 { entry })
}

/// Total bytes of RAM in `mem`.
fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}

/// Loads the initrd page-aligned at the top of low memory; returns (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = open(path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            path: path.to_owned(),
            source,
        })?
        .len();
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|_| too_big())?;
    Ok((addr, size))
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::Params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn cmdline_gets_device_fragments() {
        let c = build_cmdline(
            "console=ttyS0",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn garbage_kernel_is_rejected_not_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, vec![0x55u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let src = BootSource {
            kernel: k,
            initrd: None,
            cmdline: "x".into(),
            protocol: BootProtocolChoice::Auto,
        };
        let c = build_cmdline("x", &[]).unwrap();
        assert!(matches!(
            load(&mem, &src, &c, None),
            Err(BootError::Kernel { .. })
        ));
        let _: u8 = mem.read_obj(GuestAddress(0)).unwrap();
    }
}
