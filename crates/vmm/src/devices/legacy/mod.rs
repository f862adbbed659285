//! Legacy PC devices: 8250 serial console, i8042 (reset only), ACPI PM1a control (poweroff).

pub mod i8042;
pub mod pm;
pub mod serial;

pub use self::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use self::pm::{
    PmControl, SleepControl, PM1A_CNT_LEN, PM1A_CNT_PORT, S5_SLP_TYP, SLEEP_CONTROL_LEN,
    SLEEP_CONTROL_PORT,
};
pub use self::serial::{EventFdTrigger, SerialConsole, SerialError, COM1_PORT, COM_PORT_LEN};
