//! virtio-rng: fills the driver's write-only buffers with bytes from the host's getrandom.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, TYPE_RNG, VIRTIO_F_VERSION_1,
};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest request served; larger chains fail (0 bytes used).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Failure to create the device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The queue eventfd could not be created.
    #[error("cannot create the rng queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Where random bytes come from.
pub trait EntropySource: Send {
    /// Fills `buf` completely.
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host kernel's CSPRNG through getrandom(2).
#[derive(Debug, Default)]
pub struct GetRandom;

impl EntropySource for GetRandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else {
                done += n as usize;
            }
        }
        Ok(())
    }
}

/// Counters an operator can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngMetrics {
    /// Bytes handed to the guest.
    pub bytes: u64,
    /// Requests completed.
    pub requests: u64,
    /// Requests refused (bad descriptors, oversized, out of memory range).
    pub failed_requests: u64,
    /// Times the device had to ask for a reset (broken rings).
    pub resets_requested: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
    broken: bool,
}

/// The virtio-rng device.
pub struct Rng {
    evts: [EventFd; 1],
    acked: u64,
    entropy: Box<dyn EntropySource>,
    active: Option<Active>,
    /// Counters.
    pub metrics: RngMetrics,
}

impl Rng {
    /// A device drawing from `entropy`.
    pub fn new(entropy: Box<dyn EntropySource>) -> Result<Self, RngError> {
        Ok(Rng {
            evts: [EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?],
            acked: 0,
            entropy,
            active: None,
            metrics: RngMetrics::default(),
        })
    }

    /// Serves one chain; returns bytes written, or None when the request must fail.
    fn serve(
        entropy: &mut dyn EntropySource,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<u32> {
        let mut total: u64 = 0;
        let mut buf = [0u8; 4096];
        let mut last_has_next = false;
        for desc in chain {
            last_has_next = desc.has_next();
            if !desc.is_write_only() {
                return None;
            }
            let len = u64::from(desc.len());
            total += len;
            if total > MAX_REQUEST_BYTES {
                return None;
            }
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                entropy.fill(&mut buf[..n]).ok()?;
                let addr = desc.addr().0.checked_add(off)?;
                mem.write_slice(&buf[..n], GuestAddress(addr)).ok()?;
                off += n as u64;
            }
        }
        // virtio-queue cuts chains at the queue size; a cut chain is a loop or a lie.
        if last_has_next {
            return None;
        }
        Some(total as u32)
    }
}

impl VirtioDevice for Rng {
    super::acked_and_active!();

    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        ActivateError::check(self.acked, queues.len(), 1)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queue: queues.remove(0),
            broken: false,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if index != 0 || a.broken {
            return;
        }
        let mut served = false;
        let mut broken = false;
        // At most one queue's worth of chains per notification (the avail index is validated
        // against the queue size by virtio-queue, so a lying driver cannot make us spin).
        for _ in 0..a.queue.size() {
            let Some(chain) = super::next_chain(&mut a.queue, &a.mem, &mut broken) else {
                break;
            };
            let head = chain.head_index();
            let used = match Rng::serve(self.entropy.as_mut(), &a.mem, chain) {
                Some(n) => {
                    self.metrics.bytes += u64::from(n);
                    self.metrics.requests += 1;
                    n
                }
                None => {
                    self.metrics.failed_requests += 1;
                    0
                }
            };
            if a.queue.add_used(&a.mem, head, used).is_err() {
                broken = true;
                break;
            }
            served = true;
        }
        if broken {
            a.broken = true;
            self.metrics.resets_requested += 1;
            a.interrupt.signal_needs_reset();
            return;
        }
        if served && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.trigger(InterruptKind::UsedRing);
        }
    }
}

#[cfg(test)]
mod tests;
