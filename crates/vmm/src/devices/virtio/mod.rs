//! virtio devices and their transports. Devices are transport-agnostic: they see only their
//! queues (virtio-queue), guest memory and a [`VirtioInterrupt`].

pub mod block;
pub mod fs;
pub mod net;
pub mod rate_limiter;
pub mod rng;
#[cfg(test)]
pub mod testutil;
pub mod transport;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device complies with virtio 1.x (required; no legacy devices).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device type of an entropy source.
pub const TYPE_RNG: u32 = 4;

/// Which interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were added to a used ring.
    UsedRing,
    /// The configuration (or device status) changed.
    Config,
}

/// How a device interrupts the driver, whatever the transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises `kind`.
    fn trigger(&self, kind: InterruptKind);
    /// Marks the device broken (DEVICE_NEEDS_RESET) and tells the driver.
    fn signal_needs_reset(&self);
}

/// Failure to activate a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues offered.
        got: usize,
    },
    /// The driver did not accept VIRTIO_F_VERSION_1.
    #[error("driver did not accept VIRTIO_F_VERSION_1")]
    NoVersion1,
}

impl ActivateError {
    /// Checks what every device requires of the driver at activation: the
    /// modern interface (VIRTIO_F_VERSION_1 acked) and exactly `expected` queues.
    pub fn check(acked: u64, queues: usize, expected: usize) -> Result<(), Self> {
        if acked & VIRTIO_F_VERSION_1 == 0 {
            return Err(Self::NoVersion1);
        }
        if queues != expected {
            return Err(Self::QueueCount {
                expected,
                got: queues,
            });
        }
        Ok(())
    }
}

/// What a multi-queue device got at activation: guest memory, its interrupt and its queues,
/// and whether it found a queue broken (then it waits for the driver's reset).
pub(crate) struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub broken: bool,
}

impl ActiveQueues {
    /// Checks the activation ([`ActivateError::check`] against `expected` queues) and takes
    /// its parts.
    pub fn new(
        acked: u64,
        expected: usize,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<Self, ActivateError> {
        ActivateError::check(acked, queues.len(), expected)?;
        Ok(Self {
            mem,
            interrupt,
            queues,
            broken: false,
        })
    }

    /// Raises the used-ring interrupt if any queue `q` with `(q, true)` in `used` got buffers
    /// the driver wants to hear about.
    pub fn notify_used(&mut self, used: &[(usize, bool)]) {
        let notify = used
            .iter()
            .any(|&(q, did)| did && self.queues[q].needs_notification(&self.mem).unwrap_or(true));
        if notify {
            self.interrupt.trigger(InterruptKind::UsedRing);
        }
    }
}

/// The next chain the driver made available on `queue`, if any. An avail ring that cannot be
/// read, or whose index is too far ahead, sets `broken` (the device then asks for a reset)
/// and yields no chain.
pub(crate) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    broken: &mut bool,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(_) => {
            *broken = true;
            None
        }
    }
}

/// The [`VirtioDevice`] methods that are the same for every device keeping `acked: u64` and
/// `active: Option<_>` and nothing else to undo on reset: feature acknowledgement (masked to
/// what the device offers), reset and `is_active`.
macro_rules! acked_and_active {
    () => {
        fn set_acked_features(&mut self, features: u64) {
            self.acked = features & self.avail_features();
        }

        fn reset(&mut self) {
            self.active = None;
            self.acked = 0;
        }

        fn is_active(&self) -> bool {
            self.active.is_some()
        }
    };
}
use acked_and_active;

/// Copies the part of a device's configuration space `cfg` at `offset` into `data`; bytes
/// past its end (or an offset that overflows) read as zero.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| cfg.get(o).copied())
            .unwrap_or(0);
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// virtio device type (4 = rng, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; ignored unless a device has writable fields
    /// (none of ours does).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Starts the device with validated queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// Handles a notification on queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Returns to the pre-activation state (drops queues and memory).
    fn reset(&mut self);
    /// Whether the device is active.
    fn is_active(&self) -> bool;
    /// Whether the VMM loop serves [`VirtioDevice::queue_events`] (false when an external
    /// back end reads them as its kick fds).
    fn loop_handles_queues(&self) -> bool {
        true
    }
    /// An fd (e.g. the back end's epoll) the VMM loop must watch for this device.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// How the loop watches [`VirtioDevice::backend_fd`] (level-triggered input by default).
    fn backend_events(&self) -> EventSet {
        EventSet::IN
    }
    /// Handles readiness of [`VirtioDevice::backend_fd`].
    fn process_backend(&mut self) {}
    /// Timer fds (of its [`rate_limiter::RateLimiter`]s) the VMM loop must watch.
    fn timer_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Handles readiness of any of [`VirtioDevice::timer_fds`].
    fn process_timer(&mut self) {}
}

const BACKEND_EVENT: u32 = u32::MAX;
const TIMER_EVENT: u32 = u32::MAX - 1;

/// Runs a device's queue handling on the VMM thread's event loop.
pub struct VirtioEventHandler(pub Arc<Mutex<dyn VirtioDevice>>);

impl MutEventSubscriber for VirtioEventHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut dev = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match events.data() {
            BACKEND_EVENT => dev.process_backend(),
            TIMER_EVENT => dev.process_timer(),
            index => {
                let index = index as usize;
                if let Some(evt) = dev.queue_events().get(index) {
                    // Draining a non-blocking eventfd; EAGAIN just means a spurious wake-up.
                    let _ = evt.read();
                    dev.process_queue(index);
                }
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let dev = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let queues = if dev.loop_handles_queues() {
            dev.queue_events()
        } else {
            &[]
        };
        for (i, evt) in queues.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("cannot watch virtio queue {i}: {e}");
            }
        }
        if let Some(fd) = dev.backend_fd() {
            if let Err(e) = ops.add(Events::with_data_raw(
                fd,
                BACKEND_EVENT,
                dev.backend_events(),
            )) {
                log::error!("cannot watch the device back end: {e}");
            }
        }
        for fd in dev.timer_fds() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, TIMER_EVENT, EventSet::IN)) {
                log::error!("cannot watch a rate limiter timer: {e}");
            }
        }
    }
}
