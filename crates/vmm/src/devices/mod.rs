//! Device models and the buses that route vCPU port and MMIO accesses to them.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use self::bus::{Bus, BusDevice, BusError};
