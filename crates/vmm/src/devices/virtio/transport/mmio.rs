//! virtio-mmio transport (version 2, "modern" only), per the virtio 1.2 spec §4.2.2.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Failure to build a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioTransportError {
    /// A queue could not be created.
    #[error("cannot create virtqueue {0}")]
    Queue(usize, #[source] virtio_queue::Error),
    /// A queue eventfd could not be cloned.
    #[error("cannot clone a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5952_4b53; // "SKRY"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Offset of the device configuration space.
pub const CONFIG_SPACE: u64 = 0x100;
/// Offset of the QueueNotify register (for ioeventfd registration).
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;

/// Device status bits.
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation finished.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and must be reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bit: used buffer notification.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: configuration change.
pub const INT_CONFIG: u32 = 2;

/// The interrupt line of one virtio-mmio device: status bits plus an irqfd.
pub struct MmioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl MmioInterrupt {
    /// An interrupt raised by writing `evt` (registered as a KVM irqfd).
    pub fn new(evt: EventFd) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt,
        }
    }

    /// The pending interrupt status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        let bit = match kind {
            InterruptKind::UsedRing => INT_VRING,
            InterruptKind::Config => INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full counter still leaves the line raised.
        let _ = self.evt.write(1);
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(InterruptKind::Config);
    }
}

/// A virtio device behind the MMIO register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// Wraps `device`; its queues live in `mem` and it interrupts through `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
    ) -> Result<Self, MmioTransportError> {
        let (queues, notify) = {
            let dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let queues = dev
                .queue_max_sizes()
                .iter()
                .enumerate()
                .map(|(i, max)| Queue::new(*max).map_err(|e| MmioTransportError::Queue(i, e)))
                .collect::<Result<Vec<_>, _>>()?;
            let notify = dev
                .queue_events()
                .iter()
                .map(|e| e.try_clone().map_err(MmioTransportError::EventFd))
                .collect::<Result<Vec<_>, _>>()?;
            (queues, notify)
        };
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            notify,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The device status as the driver sees it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queue setup is frozen once the driver is running.
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.dev().reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.interrupt.needs_reset.store(false, Ordering::SeqCst);
    }

    fn set_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        if v & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        // Bits may only be added, in the order the spec gives.
        let new = v & !self.status;
        if v & self.status != self.status {
            return;
        }
        let allowed = match self.status {
            0 => ACKNOWLEDGE,
            ACKNOWLEDGE => DRIVER,
            s if s == ACKNOWLEDGE | DRIVER => FEATURES_OK,
            s if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => DRIVER_OK,
            _ => 0,
        };
        if new == 0 || new & !allowed != 0 {
            return;
        }
        if new == FEATURES_OK {
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                return; // the driver reads FEATURES_OK back as unset and gives up
            }
            let f = self.driver_features;
            self.dev().set_acked_features(f);
        }
        if new == DRIVER_OK {
            self.activate();
            return;
        }
        self.status |= new;
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if !valid {
            self.interrupt.signal_needs_reset();
            self.status |= status::DRIVER_OK;
            return;
        }
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(_) => {
                self.interrupt.signal_needs_reset();
                self.status |= status::DRIVER_OK;
                return;
            }
        };
        let mem = self.mem.clone();
        let irq: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let result = self.dev().activate(mem, irq, queues);
        self.status |= status::DRIVER_OK;
        if result.is_err() {
            self.interrupt.signal_needs_reset();
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.dev().device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.dev().avail_features() as u32,
                1 => (self.dev().avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_stage = self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if driver_stage => {
                let avail = self.dev().avail_features();
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(v) & avail
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32) & avail
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Invalid sizes are refused; is_valid() then fails at DRIVER_OK.
                    let _ = q.try_set_size(v as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            // Misaligned addresses are refused (try_set_*), without guest-triggered logging.
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => self.with_queue(|q| {
                let a = half(q.desc_table(), offset == REG_QUEUE_DESC_HIGH, v);
                let _ = q.try_set_desc_table_address(GuestAddress(a));
            }),
            REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH => self.with_queue(|q| {
                let a = half(q.avail_ring(), offset == REG_QUEUE_AVAIL_HIGH, v);
                let _ = q.try_set_avail_ring_address(GuestAddress(a));
            }),
            REG_QUEUE_USED_LOW | REG_QUEUE_USED_HIGH => self.with_queue(|q| {
                let a = half(q.used_ring(), offset == REG_QUEUE_USED_HIGH, v);
                let _ = q.try_set_used_ring_address(GuestAddress(a));
            }),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            if !q.ready() {
                f(q);
            }
        }
    }
}

/// Replaces the low or high 32 bits of `cur` with `v`.
fn half(cur: u64, high: bool, v: u32) -> u64 {
    if high {
        (cur & 0xffff_ffff) | (u64::from(v) << 32)
    } else {
        (cur & !0xffff_ffff) | u64::from(v)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.dev().read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.dev().write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if data.len() == 4 && offset % 4 == 0 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
    }
}

#[cfg(test)]
mod tests;
