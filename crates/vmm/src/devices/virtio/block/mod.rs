//! virtio-blk backed by a host file (optionally read-only). Synchronous I/O on the VMM
//! thread; requests are validated completely before any byte moves.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

/// Device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Sector size.
pub const SECTOR: u64 = 512;
/// Largest data transfer per request.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Feature: the device is read-only.
pub const F_RO: u64 = 1 << 5;
/// Feature: the device supports flush.
pub const F_FLUSH: u64 = 1 << 9;
/// Request type: read.
pub const T_IN: u32 = 0;
/// Request type: write.
pub const T_OUT: u32 = 1;
/// Request type: flush.
pub const T_FLUSH: u32 = 4;
/// Request type: device id.
pub const T_GET_ID: u32 = 8;
/// Status: done.
pub const S_OK: u8 = 0;
/// Status: I/O error (also: invalid request).
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;
const ID: &[u8] = b"skerry-virtio-blk";

/// Failure to create the device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("cannot open block backing file {path}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The queue eventfd could not be created.
    #[error("cannot create the block queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Counters an operator can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockMetrics {
    /// Bytes read for the guest.
    pub read_bytes: u64,
    /// Bytes written for the guest.
    pub write_bytes: u64,
    /// Requests that failed or were malformed.
    pub failed_requests: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
    broken: bool,
}

/// One validated request.
struct Request {
    kind: u32,
    sector: u64,
    /// Data buffers (address, length).
    data: Vec<(GuestAddress, u32)>,
    status: GuestAddress,
}

/// The virtio-blk device.
pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    evts: [EventFd; 1],
    acked: u64,
    active: Option<Active>,
    /// Counters.
    pub metrics: BlockMetrics,
}

impl Block {
    /// A device backed by `path`; its size is rounded down to whole sectors.
    pub fn new(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        Ok(Block {
            file,
            read_only,
            sectors: len / SECTOR,
            evts: [EventFd::new(EFD_NONBLOCK).map_err(BlockError::EventFd)?],
            acked: 0,
            active: None,
            metrics: BlockMetrics::default(),
        })
    }

    /// Checks the chain's shape: header (readable, 16 bytes), data, status (writable, ≥1 byte).
    fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Request, Option<GuestAddress>> {
        let descs: Vec<_> = chain.collect();
        let cut = descs.last().is_some_and(|d| d.has_next());
        let (Some(head), Some(tail)) = (descs.first(), descs.last()) else {
            return Err(None);
        };
        // A chain cut at the queue size (a loop) gets no status: its "last" descriptor is
        // arbitrary.
        if cut {
            return Err(None);
        }
        let status =
            (tail.is_write_only() && tail.len() >= 1 && descs.len() >= 2).then(|| tail.addr());
        if head.is_write_only() || head.len() < 16 {
            return Err(status);
        }
        let kind: u32 = mem.read_obj(head.addr()).map_err(|_| status)?;
        let sector: u64 = mem
            .read_obj(head.addr().checked_add(8).ok_or(status)?)
            .map_err(|_| status)?;
        let status = status.ok_or(None)?;
        let data_descs = &descs[1..descs.len() - 1];
        let device_writes = match kind {
            T_IN | T_GET_ID => Some(true),
            T_OUT => Some(false),
            _ => None,
        };
        let mut data = Vec::with_capacity(data_descs.len());
        for d in data_descs {
            if device_writes.is_some_and(|w| w != d.is_write_only()) {
                return Err(Some(status));
            }
            data.push((d.addr(), d.len()));
        }
        Ok(Request {
            kind,
            sector,
            data,
            status,
        })
    }

    /// Runs a validated request; returns (status, bytes written into guest buffers).
    fn execute(&mut self, mem: &GuestMemoryMmap, r: &Request) -> (u8, u32) {
        let total: u64 = r.data.iter().map(|(_, l)| u64::from(*l)).sum();
        match r.kind {
            T_IN | T_OUT => {
                if r.kind == T_OUT && self.read_only {
                    return (S_IOERR, 0);
                }
                let in_range = r
                    .sector
                    .checked_add(total / SECTOR)
                    .is_some_and(|end| end <= self.sectors);
                if total % SECTOR != 0 || total > MAX_REQUEST_BYTES || !in_range {
                    return (S_IOERR, 0);
                }
                let mut off = r.sector * SECTOR;
                let mut buf = Vec::new();
                for (addr, len) in &r.data {
                    buf.resize(*len as usize, 0);
                    let ok = if r.kind == T_IN {
                        self.file.read_exact_at(&mut buf, off).is_ok()
                            && mem.write_slice(&buf, *addr).is_ok()
                    } else {
                        mem.read_slice(&mut buf, *addr).is_ok()
                            && self.file.write_all_at(&buf, off).is_ok()
                    };
                    if !ok {
                        return (S_IOERR, 0);
                    }
                    off += u64::from(*len);
                }
                if r.kind == T_IN {
                    self.metrics.read_bytes += total;
                    (S_OK, total as u32)
                } else {
                    self.metrics.write_bytes += total;
                    (S_OK, 0)
                }
            }
            T_FLUSH => match self.read_only || self.file.sync_data().is_ok() {
                true => (S_OK, 0),
                false => (S_IOERR, 0),
            },
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                id[..ID.len()].copy_from_slice(ID);
                let Some((addr, len)) = r.data.first() else {
                    return (S_IOERR, 0);
                };
                let n = (*len as usize).min(ID_BYTES);
                match mem.write_slice(&id[..n], *addr) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    super::acked_and_active!();

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (sectors, le64) at offset 0.
        let cfg = self.sectors.to_le_bytes();
        super::read_config_bytes(&cfg, offset, data);
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
        let Some(mut a) = self.active.take() else {
            return;
        };
        if index != 0 || a.broken {
            self.active = Some(a);
            return;
        }
        let mut served = false;
        for _ in 0..a.queue.size() {
            let Some(chain) = super::next_chain(&mut a.queue, &a.mem, &mut a.broken) else {
                break;
            };
            let head = chain.head_index();
            let (status_addr, status, written) = match Block::parse(&a.mem, chain) {
                Ok(req) => {
                    let (s, n) = self.execute(&a.mem, &req);
                    (Some(req.status), s, n)
                }
                Err(status_addr) => (status_addr, S_IOERR, 0),
            };
            if status != S_OK {
                self.metrics.failed_requests += 1;
            }
            let used = match status_addr {
                Some(addr) if a.mem.write_obj(status, addr).is_ok() => written + 1,
                _ => 0,
            };
            if a.queue.add_used(&a.mem, head, used).is_err() {
                a.broken = true;
                break;
            }
            served = true;
        }
        if a.broken {
            a.interrupt.signal_needs_reset();
        } else if served && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.trigger(InterruptKind::UsedRing);
        }
        self.active = Some(a);
    }
}

#[cfg(test)]
mod tests;
