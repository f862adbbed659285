//! x86_64: guest physical layout, boot-time CPU state, CPUID and MSR setup.

pub mod cpuid;
pub mod layout;
pub mod msr;
pub mod regs;

pub use self::cpuid::{filter_cpuid, CpuidError};
pub use self::layout::*;
pub use self::msr::{boot_msr_entries, MsrError};
pub use self::regs::{
    boot_fpu, linux64_regs, linux64_sregs, pvh_regs, pvh_sregs, setup_page_tables, write_gdt,
    RegsError,
};
