//! Architecture facade: callers use `crate::arch::*` and never write `#[cfg(target_arch)]`.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("skerry-vmm supports only x86_64 hosts for now");
