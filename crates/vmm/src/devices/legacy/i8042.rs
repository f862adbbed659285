//! i8042 controller, only as far as a guest needs it to reset the machine (command 0xfe).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::exit::{ExitState, VmExit};

/// First i8042 port (data port 0x60; command/status port 0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports covered (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

/// Records a guest reset request in the VM's exit state.
#[derive(Debug)]
pub struct ResetTrigger(Arc<ExitState>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(VmExit::Reset);
        Ok(())
    }
}

/// The i8042 device.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// An i8042 whose reset command ends the VM with [`VmExit::Reset`].
    pub fn new(exit: Arc<ExitState>) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            data[0] = self.0.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            // Infallible trigger; unknown commands are ignored by the model.
            let _ = self.0.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_0xfe_on_port_0x64_requests_reset() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]);
        assert_eq!(exit.get(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.get(), Some(VmExit::Reset));
    }
}
