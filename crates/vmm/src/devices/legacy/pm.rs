//! ACPI PM1a control register: a guest writing SLP_TYP=S5 with SLP_EN powers the VM off.

use std::sync::Arc;

use crate::devices::BusDevice;
use crate::exit::{ExitState, VmExit};

/// HW-reduced ACPI sleep control register (FADT `SLEEP_CONTROL_REG`); status follows it.
pub const SLEEP_CONTROL_PORT: u64 = 0x600;
/// Ports of the sleep control and status registers.
pub const SLEEP_CONTROL_LEN: u64 = 2;
const SLP_EN_HW_REDUCED: u8 = 1 << 5;

/// The HW-reduced sleep control register: SLP_TYP in bits 2..5, SLP_EN in bit 5.
pub struct SleepControl {
    exit: Arc<ExitState>,
}

impl SleepControl {
    /// A register whose S5 request ends the VM with [`VmExit::Poweroff`].
    pub fn new(exit: Arc<ExitState>) -> Self {
        SleepControl { exit }
    }
}

impl BusDevice for SleepControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 1 {
            let v = data[0];
            if v & SLP_EN_HW_REDUCED != 0 && u16::from((v >> 2) & 7) == S5_SLP_TYP {
                self.exit.set(VmExit::Poweroff);
            }
        }
    }
}

/// PM1a_CNT port (classic ACPI; kept for guests that write it directly).
pub const PM1A_CNT_PORT: u64 = 0x604;
/// PM1a_CNT width in bytes.
pub const PM1A_CNT_LEN: u64 = 2;
/// SLP_TYP value meaning S5 (soft off); the DSDT's `\_S5` package will carry it.
pub const S5_SLP_TYP: u16 = 5;
const SLP_EN: u16 = 1 << 13;

/// The PM1a control register.
pub struct PmControl {
    exit: Arc<ExitState>,
    value: u16,
}

impl PmControl {
    /// A register whose S5 request ends the VM with [`VmExit::Poweroff`].
    pub fn new(exit: Arc<ExitState>) -> Self {
        PmControl { exit, value: 0 }
    }
}

impl BusDevice for PmControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = self.value.to_le_bytes();
        for (i, d) in data.iter().enumerate() {
            if let Some(b) = bytes.get_mut(offset as usize + i) {
                *b = *d;
            }
        }
        let v = u16::from_le_bytes(bytes);
        if v & SLP_EN != 0 && (v >> 10) & 7 == S5_SLP_TYP {
            self.exit.set(VmExit::Poweroff);
        }
        self.value = v & !SLP_EN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hw_reduced_sleep_control_s5_powers_off() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut s = SleepControl::new(exit.clone());
        s.write(0, &[(3 << 2) | SLP_EN_HW_REDUCED]);
        s.write(0, &[5 << 2]);
        assert_eq!(exit.get(), None);
        s.write(0, &[(5 << 2) | SLP_EN_HW_REDUCED]);
        assert_eq!(exit.get(), Some(VmExit::Poweroff));
    }

    #[test]
    fn s5_with_slp_en_powers_off_other_states_do_not() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut pm = PmControl::new(exit.clone());
        pm.write(0, &(SLP_EN | (3 << 10)).to_le_bytes());
        assert_eq!(exit.get(), None);
        pm.write(0, &(S5_SLP_TYP << 10).to_le_bytes());
        assert_eq!(exit.get(), None);
        pm.write(1, &[((SLP_EN | (S5_SLP_TYP << 10)) >> 8) as u8]);
        assert_eq!(exit.get(), Some(VmExit::Poweroff));
    }
}
