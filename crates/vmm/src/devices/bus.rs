//! Address-range buses (port I/O and MMIO) that route guest accesses to devices.

use std::sync::{Arc, Mutex};

/// A device reachable from a bus.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` inside the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` inside the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Failure to add a device to a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps an existing one or is empty.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
}

/// One shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping ranges, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base + len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push((base, len, dev));
        self.ranges.sort_by_key(|r| r.0);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let i = self
            .ranges
            .partition_point(|r| r.0 <= addr)
            .checked_sub(1)?;
        let (base, len, dev) = &self.ranges[i];
        let off = addr - base;
        (off.checked_add(size as u64)? <= *len).then_some((dev, off))
    }

    /// Routes a read; returns false (and fills all-ones) when no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, off)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Routes a write; returns false when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, off)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(1))), 0x10, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(5))), 0x20, 8).unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x14, 8).is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x30, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(!bus.read(0x18, &mut b));
        assert_eq!(b[0], 0xff);
        // An access straddling the end of a range is not claimed.
        let mut w = [0u8; 4];
        assert!(!bus.read(0x26, &mut w));
        assert!(bus.write(0x20, &[9]));
        assert!(bus.read(0x20, &mut b));
        assert_eq!(b[0], 9);
    }
}
