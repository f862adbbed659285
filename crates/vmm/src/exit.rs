//! How a VM ended, shared between vCPUs, devices and the VMM loop, and the process exit
//! status that encodes it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped. [`VmExit::status`] maps each to the VMM's process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5 via PM1a_CNT, or a KVM system-event shutdown).
    Poweroff,
    /// The VMM failed (KVM error, device error).
    VmmError,
    /// The guest asked for a reset (i8042 command 0xfe, or a KVM system-event reset).
    Reset,
    /// The guest crashed: triple fault, failed VM entry, KVM internal/emulation error.
    GuestCrash,
    /// The host stopped the VM (signal or stop request).
    Stopped,
}

/// Exit status: the guest powered off.
pub const EXIT_POWEROFF: i32 = 0;
/// Exit status: the VMM failed (also bad configuration at start-up).
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: command-line usage error (clap's convention).
pub const EXIT_USAGE: i32 = 2;
/// Exit status: the guest requested a reset (i8042).
pub const EXIT_RESET: i32 = 3;
/// Exit status: the guest crashed (triple fault, emulation failure).
pub const EXIT_GUEST_CRASH: i32 = 4;
/// Exit status: the host stopped the VM.
pub const EXIT_STOPPED: i32 = 5;

impl VmExit {
    /// The VMM process exit status for this outcome.
    pub fn status(self) -> i32 {
        match self {
            VmExit::Poweroff => EXIT_POWEROFF,
            VmExit::VmmError => EXIT_VMM_ERROR,
            VmExit::Reset => EXIT_RESET,
            VmExit::GuestCrash => EXIT_GUEST_CRASH,
            VmExit::Stopped => EXIT_STOPPED,
        }
    }
}

/// Failure to create the exit notification.
#[derive(Debug, thiserror::Error)]
pub enum ExitStateError {
    /// eventfd creation failed.
    #[error("cannot create the exit eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The first recorded [`VmExit`] plus an eventfd that wakes the VMM loop.
#[derive(Debug)]
pub struct ExitState {
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitState {
    /// Creates an empty exit state.
    pub fn new() -> Result<Self, ExitStateError> {
        Ok(ExitState {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK).map_err(ExitStateError::EventFd)?,
        })
    }

    /// Records `exit` unless an earlier exit was recorded, and wakes the VMM loop.
    pub fn set(&self, exit: VmExit) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(exit);
            // A full eventfd counter still wakes the loop; nothing to do on error.
            let _ = self.evt.write(1);
        }
    }

    /// The recorded exit, if any.
    pub fn get(&self) -> Option<VmExit> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd signalled on the first exit.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}
