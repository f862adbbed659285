//! Boot-time CPU state: GDT, identity page tables, registers for the 64-bit Linux boot
//! protocol and for PVH (32-bit protected mode, paging off).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

/// Failure to write boot-time CPU structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure did not fit into guest memory.
    #[error("cannot write the {what} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT: null, 32-bit code (0x8), 64-bit code (0x10 = Linux's `__BOOT_CS`), data (0x18 =
/// `__BOOT_DS`), TSS (0x20).
const GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE32_SEL: usize = 1;
const CODE64_SEL: usize = 2;
const DATA_SEL: usize = 3;
const TSS_SEL: usize = 4;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let base = ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000);
    let limit_raw = (e & 0xffff) | ((e >> 32) & 0x000f_0000);
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit_raw << 12) | 0xfff) as u32
        } else {
            limit_raw as u32
        },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from((e >> 47) & 1 == 0),
        padding: 0,
    }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(|source| RegsError::Write {
                what: "GDT",
                source,
            })?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| RegsError::Write {
            what: "IDT",
            source,
        })
}

/// Writes page tables identity-mapping the first GiB with 2 MiB pages.
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|source| RegsError::Write {
                what: "page tables",
                source,
            })
    };
    w(PDPTE_START | 0x03, PML4_START)?;
    w(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

fn base_sregs(mut sregs: kvm_sregs, code: usize) -> kvm_sregs {
    let data = segment(DATA_SEL);
    sregs.cs = segment(code);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SEL);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs
}

/// Special registers for the 64-bit Linux boot protocol: long mode, identity paging.
pub fn linux64_sregs(current: kvm_sregs) -> kvm_sregs {
    let mut s = base_sregs(current, CODE64_SEL);
    s.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    s.cr3 = PML4_START;
    s.cr4 |= X86_CR4_PAE;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// Special registers for PVH: 32-bit protected mode, flat segments, paging off.
pub fn pvh_sregs(current: kvm_sregs) -> kvm_sregs {
    let mut s = base_sregs(current, CODE32_SEL);
    s.cr0 = (s.cr0 & !X86_CR0_PG) | X86_CR0_PE | X86_CR0_ET;
    s.cr4 = 0;
    s.efer = 0;
    s
}

/// General registers for the 64-bit Linux boot protocol (RSI = zero page).
pub fn linux64_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// General registers for PVH (EBX = `hvm_start_info`).
pub fn pvh_regs(entry: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: start_info,
        ..Default::default()
    }
}

/// FPU state at reset (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_gdt() {
        let cs = segment(CODE64_SEL);
        assert_eq!((cs.l, cs.db, cs.type_, cs.selector), (1, 0, 0xb, 0x10));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(DATA_SEL);
        assert_eq!((ds.db, ds.type_, ds.present, ds.s), (1, 3, 1, 1));
        let tr = segment(TSS_SEL);
        assert_eq!((tr.s, tr.type_), (0, 0xb));
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_page_tables(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 511)).unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
    }
}
