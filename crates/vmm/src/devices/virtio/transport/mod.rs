//! virtio transports.

pub mod mmio;

pub use self::mmio::{MmioInterrupt, MmioTransport, MmioTransportError};
