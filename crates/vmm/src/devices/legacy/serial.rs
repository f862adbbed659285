//! 8250 UART (vm-superio) on COM1; output goes to a writer (the VMM's stdout), input comes
//! from the VMM loop.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports per UART.
pub const COM_PORT_LEN: u64 = 8;

/// Failure in the serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The interrupt eventfd could not be created or cloned.
    #[error("cannot create the serial interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    /// Guest input could not be queued.
    #[error("cannot queue serial input")]
    Input,
}

/// An interrupt line backed by an eventfd (registered as a KVM irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial console device.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// Guest writes that failed (output lost); for metrics.
    pub write_errors: u64,
}

impl SerialConsole {
    /// A console writing to `out` and raising its interrupt through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(EventFdTrigger(irq), out),
            write_errors: 0,
        }
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        self.uart
            .enqueue_raw_bytes(bytes)
            .map_err(|_| SerialError::Input)
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM_PORT_LEN {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1
            && offset < COM_PORT_LEN
            && self.uart.write(offset as u8, data[0]).is_err()
        {
            self.write_errors += 1;
        }
    }
}

/// A writer that forwards each write to stdout at once (no line buffering), so a guest's
/// partial lines and prompts show up immediately.
#[derive(Debug, Default)]
pub struct UnbufferedStdout;

impl Write for UnbufferedStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_the_writer_and_odd_accesses_are_ignored() {
        let cap = Capture::default();
        let mut s = SerialConsole::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(cap.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        s.write(0, &[1, 2]); // wrong width: ignored
        s.write(99, &[1]); // out of range: ignored
        let mut d = [0u8; 2];
        s.read(0, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        assert_eq!(&*cap.0.lock().unwrap(), b"hi\n");
    }
}
