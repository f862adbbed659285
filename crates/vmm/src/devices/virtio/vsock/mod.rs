//! virtio-vsock with the hybrid Unix-socket back end ([`muxer`]). Queues: 0 = RX (device →
//! guest), 1 = TX (guest → device), 2 = events (unused: no transport reset events yet).
//!
//! Each direction may have a [`RateLimiter`](super::rate_limiter::RateLimiter). A dry TX limiter leaves the guest's packets in
//! the ring (its control packets too: they share it); a dry RX limiter leaves host data in the
//! host sockets, but control packets (connection set-up, credit updates, resets) still go out
//! uncharged, so a limit in one direction never stalls the other. The limiter's timer brings
//! the loop back.

pub mod muxer;

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::muxer::{Hdr, Muxer, MuxerError, OP_RW};
use super::rate_limiter::{self, Limiters, RateLimits};
use super::{ActivateError, ActiveQueues, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

/// Device type of a vsock device.
pub const TYPE_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload per packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
const RX: usize = 0;
const TX: usize = 1;

/// Failure to create the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved (use 3 or more)")]
    Cid(u64),
    /// A queue eventfd could not be created.
    #[error("cannot create a vsock queue eventfd")]
    EventFd(#[source] std::io::Error),
    /// The host back end.
    #[error("vsock back end")]
    Muxer(#[from] MuxerError),
    /// A rate limiter's timer could not be created.
    #[error("cannot create a vsock rate limiter timer")]
    RateLimiter(#[source] std::io::Error),
}

/// The virtio-vsock device.
pub struct Vsock {
    cid: u64,
    evts: [EventFd; 3],
    acked: u64,
    muxer: Muxer,
    active: Option<ActiveQueues>,
    limiters: Limiters,
    /// Guest packets that could not be parsed.
    pub bad_packets: u64,
    /// Times the RX rate limit started holding host data back.
    pub rx_throttled: u64,
    /// Times the TX rate limit started holding guest packets back.
    pub tx_throttled: u64,
}

impl Vsock {
    /// A device with guest CID `cid`, serving the host socket `uds`.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, VsockError> {
        if cid < 3 || cid > u64::from(u32::MAX) {
            return Err(VsockError::Cid(cid));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            cid,
            evts: [evt()?, evt()?, evt()?],
            acked: 0,
            muxer: Muxer::new(cid, uds)?,
            active: None,
            limiters: Limiters::default(),
            bad_packets: 0,
            rx_throttled: 0,
            tx_throttled: 0,
        })
    }

    /// The device with `limits` on its RX (host → guest) and TX (guest → host) payload bytes
    /// and packets (before it is registered on the event loop, which then watches the
    /// limiters' timers).
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Result<Self, VsockError> {
        self.limiters = Limiters::new(limits).map_err(VsockError::RateLimiter)?;
        Ok(self)
    }

    /// The back end's counters.
    pub fn metrics(&self) -> muxer::MuxerMetrics {
        self.muxer.metrics
    }

    fn process_tx(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        for _ in 0..a.queues[TX].size() {
            if !rate_limiter::admit(&mut self.limiters.tx, &mut self.tx_throttled) {
                break;
            }
            let Some(mut chain) = super::next_chain(&mut a.queues[TX], &a.mem, &mut a.broken)
            else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let h = Hdr {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        len: pkt.len(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    let mut data = vec![0u8; pkt.data_slice().map_or(0, |s| s.len())];
                    if let Some(s) = pkt.data_slice() {
                        if s.copy_to(&mut data[..]) != data.len() {
                            data.clear();
                        }
                    }
                    self.muxer.guest_packet(&h, &data);
                    rate_limiter::charge(&mut self.limiters.tx, data.len() as u64);
                }
                Err(_) => {
                    self.bad_packets += 1;
                    rate_limiter::charge(&mut self.limiters.tx, 0);
                }
            }
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                a.broken = true;
                break;
            }
            used = true;
        }
        used
    }

    fn process_rx(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while self.muxer.has_control() || self.muxer.has_readable() {
            // Throttled, only control packets go (the muxer hands them out first).
            if !rate_limiter::admit(&mut self.limiters.rx, &mut self.rx_throttled)
                && !self.muxer.has_control()
            {
                break;
            }
            let Some(mut chain) = super::next_chain(&mut a.queues[RX], &a.mem, &mut a.broken)
            else {
                break;
            };
            let head = chain.head_index();
            let mut pkt = match VsockPacket::from_rx_virtq_chain(&a.mem, &mut chain, MAX_PKT_DATA) {
                Ok(p) => p,
                Err(_) => {
                    self.bad_packets += 1;
                    if a.queues[RX].add_used(&a.mem, head, 0).is_err() {
                        a.broken = true;
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let cap = pkt.data_slice().map_or(0, |s| s.len());
            let Some((h, data)) = self.muxer.next_rx(cap) else {
                a.queues[RX].go_to_previous_position();
                break;
            };
            pkt.set_src_cid(h.src_cid)
                .set_dst_cid(h.dst_cid)
                .set_src_port(h.src_port)
                .set_dst_port(h.dst_port)
                .set_type(h.type_)
                .set_op(h.op)
                .set_flags(h.flags)
                .set_buf_alloc(h.buf_alloc)
                .set_fwd_cnt(h.fwd_cnt)
                .set_len(data.len() as u32);
            if let Some(s) = pkt.data_slice() {
                s.copy_from(&data[..]);
            }
            if h.op == OP_RW {
                rate_limiter::charge(&mut self.limiters.rx, data.len() as u64);
            }
            let len = (PKT_HEADER_SIZE + data.len()) as u32;
            if a.queues[RX].add_used(&a.mem, head, len).is_err() {
                a.broken = true;
                break;
            }
            used = true;
        }
        used
    }

    fn run(&mut self, tx_first: bool) {
        let tx = tx_first && self.process_tx();
        let rx = self.process_rx();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.broken {
            a.interrupt.signal_needs_reset();
            self.active = None;
            return;
        }
        a.notify_used(&[(TX, tx), (RX, rx)]);
    }
}

impl VirtioDevice for Vsock {
    super::acked_and_active!();

    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        super::read_config_bytes(&cfg, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(self.acked, 3, mem, interrupt, queues)?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        self.run(index == TX);
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self) {
        self.muxer.process_host_events();
        self.run(false);
    }

    fn timer_fds(&self) -> Vec<RawFd> {
        self.limiters.timer_fds()
    }

    fn process_timer(&mut self) {
        self.limiters.timer_fired();
        self.run(true);
    }
}

#[cfg(test)]
mod tests;
