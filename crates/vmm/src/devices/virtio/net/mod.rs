//! virtio-net backed by a host tap ([`tap`]). Queues: 0 = RX (tap → guest), 1 = TX (guest →
//! tap); no control queue, no offloads, one queue pair. Every buffer carries the 12-byte
//! `virtio_net_hdr_v1`, which the tap (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ 12`) uses as is.
//!
//! The tap fd is watched edge-triggered: a readable edge (or the driver adding RX buffers)
//! makes the device read frames until the tap is empty or the guest has no buffers left; when
//! it stops for its per-call bound instead, it notifies its own RX queue so the loop comes back.
//!
//! Each direction may have a [`RateLimiter`](super::rate_limiter::RateLimiter): while it is dry the device leaves the guest's
//! TX chains in the ring and the host's frames in the tap, and its timer brings the loop back.

pub mod tap;

use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::rate_limiter::{self, Limiters, RateLimits};
use super::rng::{EntropySource, GetRandom};
use super::{ActivateError, ActiveQueues, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub use self::tap::{Tap, TapError};

/// Device type of a network card.
pub const TYPE_NET: u32 = 1;
/// Feature: the configuration space holds the MAC address.
pub const F_MAC: u64 = 1 << 5;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of `virtio_net_hdr_v1` (always used with VIRTIO_F_VERSION_1).
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame carried (the IP limit); bigger TX chains fail.
pub const MAX_FRAME: usize = 65535;
/// Smallest frame sent to the tap (an Ethernet header).
pub const MIN_FRAME: usize = 14;
const RX: usize = 0;
const TX: usize = 1;

/// Failure to create the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap.
    #[error("tap")]
    Tap(#[from] TapError),
    /// A queue eventfd could not be created.
    #[error("cannot create a net queue eventfd")]
    EventFd(#[source] std::io::Error),
    /// No random MAC address could be drawn.
    #[error("cannot draw a random MAC address")]
    Random(#[source] std::io::Error),
    /// A rate limiter's timer could not be created.
    #[error("cannot create a net rate limiter timer")]
    RateLimiter(#[source] std::io::Error),
}

/// A unicast Ethernet address, written `AA:BB:CC:DD:EE:FF`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that does not parse or is not unicast.
#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?} (want six hex pairs AA:BB:CC:DD:EE:FF, unicast)")]
pub struct MacAddrError(String);

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrError(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddr {
    /// A random locally administered unicast address.
    pub fn random() -> std::io::Result<Self> {
        let mut m = [0u8; 6];
        GetRandom.fill(&mut m)?;
        m[0] = (m[0] & 0xfe) | 0x02;
        Ok(MacAddr(m))
    }
}

/// Counters an operator can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes (frames without header) delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the tap that did not fit the guest's buffer (dropped).
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_frames: u64,
    /// Bytes (frames without header) sent to the tap.
    pub tx_bytes: u64,
    /// Valid guest frames the tap refused (full or down).
    pub tx_dropped: u64,
    /// Malformed chains (direction, range, size, loops, header).
    pub failed_requests: u64,
    /// Times the device had to ask for a reset (broken rings).
    pub resets_requested: u64,
    /// Times the RX rate limit started holding host frames back.
    pub rx_throttled: u64,
    /// Times the TX rate limit started holding guest frames back.
    pub tx_throttled: u64,
}

/// The virtio-net device.
pub struct Net {
    tap: File,
    mac: MacAddr,
    evts: [EventFd; 2],
    acked: u64,
    active: Option<ActiveQueues>,
    buf: Vec<u8>,
    limiters: Limiters,
    /// Counters.
    pub metrics: NetMetrics,
}

/// The buffers of a chain if it is well formed: every descriptor of direction `write`, in
/// guest memory, at most `max` bytes in all, not cut at the queue size (a loop).
fn buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    write: bool,
    max: usize,
) -> Option<(Vec<(GuestAddress, usize)>, usize)> {
    let mut v = Vec::new();
    let mut total = 0usize;
    let mut cut = false;
    for d in chain {
        cut = d.has_next();
        let len = d.len() as usize;
        total = total.checked_add(len)?;
        if d.is_write_only() != write || total > max || !mem.check_range(d.addr(), len) {
            return None;
        }
        v.push((d.addr(), len));
    }
    (!cut).then_some((v, total))
}

impl Net {
    /// A device on `tap` (from [`Tap::open`], or any non-blocking datagram fd with the same
    /// framing: one virtio-net header + Ethernet frame per read/write) with address `mac`.
    pub fn new(tap: File, mac: MacAddr) -> Result<Self, NetError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Net {
            tap,
            mac,
            evts: [evt()?, evt()?],
            acked: 0,
            active: None,
            buf: vec![0; VNET_HDR_LEN + MAX_FRAME],
            limiters: Limiters::default(),
            metrics: NetMetrics::default(),
        })
    }

    /// The device with `limits` on its RX (tap → guest) and TX (guest → tap) bytes and frames
    /// (before it is registered on the event loop, which then watches the limiters' timers).
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Result<Self, NetError> {
        self.limiters = Limiters::new(limits).map_err(NetError::RateLimiter)?;
        Ok(self)
    }

    /// A device on the tap `name` (see [`Tap::open`]) with address `mac` (default: random,
    /// locally administered).
    pub fn with_tap(name: &str, mac: Option<MacAddr>) -> Result<Self, NetError> {
        let tap = Tap::open(name)?;
        let mac = match mac {
            Some(m) => m,
            None => MacAddr::random().map_err(NetError::Random)?,
        };
        Net::new(tap.into_file(), mac)
    }

    /// Sends the guest's TX chains to the tap; returns whether any was used.
    fn process_tx(&mut self, a: &mut ActiveQueues) -> bool {
        let mut used = false;
        for _ in 0..a.queues[TX].size() {
            // Throttled: the chains stay in the ring until the limiter's timer fires.
            if !rate_limiter::admit(&mut self.limiters.tx, &mut self.metrics.tx_throttled) {
                break;
            }
            let Some(chain) = super::next_chain(&mut a.queues[TX], &a.mem, &mut a.broken) else {
                break;
            };
            let head = chain.head_index();
            let mut sent = 0;
            match buffers(&a.mem, chain, false, VNET_HDR_LEN + MAX_FRAME) {
                Some((bufs, total)) if total >= VNET_HDR_LEN + MIN_FRAME => {
                    let pkt = &mut self.buf[..total];
                    let mut off = 0;
                    let mut ok = true;
                    for (addr, len) in bufs {
                        ok &= a.mem.read_slice(&mut pkt[off..off + len], addr).is_ok();
                        off += len;
                    }
                    // No offloads were offered: flags (NEEDS_CSUM, ...) and gso_type must be 0;
                    // the other fields then mean nothing and the tap gets them as zeros.
                    if ok && pkt[0] == 0 && pkt[1] == 0 {
                        pkt[2..VNET_HDR_LEN].fill(0);
                        // One write is one frame: all or nothing.
                        match self.tap.write(pkt) {
                            Ok(n) if n == total => {
                                sent = (total - VNET_HDR_LEN) as u64;
                                self.metrics.tx_frames += 1;
                                self.metrics.tx_bytes += sent;
                            }
                            _ => self.metrics.tx_dropped += 1,
                        }
                    } else {
                        self.metrics.failed_requests += 1;
                    }
                }
                _ => self.metrics.failed_requests += 1,
            }
            rate_limiter::charge(&mut self.limiters.tx, sent);
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                a.broken = true;
                break;
            }
            used = true;
        }
        used
    }

    /// Moves frames from the tap into the guest's RX chains; returns whether any was used.
    fn process_rx(&mut self, a: &mut ActiveQueues) -> bool {
        let mut used = false;
        for _ in 0..a.queues[RX].size() {
            // Throttled: frames wait in the tap until the limiter's timer fires.
            if !rate_limiter::admit(&mut self.limiters.rx, &mut self.metrics.rx_throttled) {
                return used;
            }
            // No buffers (the driver's next RX notification brings us back), or a broken ring.
            let Some(chain) = super::next_chain(&mut a.queues[RX], &a.mem, &mut a.broken) else {
                return used;
            };
            let head = chain.head_index();
            let Some((bufs, room)) =
                buffers(&a.mem, chain, true, usize::MAX).filter(|(_, room)| *room >= VNET_HDR_LEN)
            else {
                // A malformed chain (or one without room for the header) fails without
                // costing a frame.
                self.metrics.failed_requests += 1;
                if a.queues[RX].add_used(&a.mem, head, 0).is_err() {
                    a.broken = true;
                    return used;
                }
                used = true;
                continue;
            };
            let n = match self.tap.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    // Empty (the next readable edge brings us back) or gone: keep the chain.
                    if e.kind() != ErrorKind::WouldBlock {
                        log::warn!("net: tap read failed: {e}");
                    }
                    a.queues[RX].go_to_previous_position();
                    return used;
                }
            };
            if n < VNET_HDR_LEN || n > room {
                // Too big for this buffer (the driver sized it for a 1500-byte MTU): drop the
                // frame, keep the chain for the next one.
                self.metrics.rx_dropped += 1;
                rate_limiter::charge(&mut self.limiters.rx, 0);
                a.queues[RX].go_to_previous_position();
                continue;
            }
            // num_buffers = 1 (no mergeable RX buffers).
            self.buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let mut off = 0;
            let mut ok = true;
            for (addr, len) in bufs {
                let take = len.min(n - off);
                ok &= a.mem.write_slice(&self.buf[off..off + take], addr).is_ok();
                off += take;
                if off == n {
                    break;
                }
            }
            let written = if ok {
                self.metrics.rx_frames += 1;
                self.metrics.rx_bytes += (n - VNET_HDR_LEN) as u64;
                n as u32
            } else {
                self.metrics.failed_requests += 1;
                0
            };
            let delivered = u64::from(written).saturating_sub(VNET_HDR_LEN as u64);
            rate_limiter::charge(&mut self.limiters.rx, delivered);
            if a.queues[RX].add_used(&a.mem, head, written).is_err() {
                a.broken = true;
                return used;
            }
            used = true;
        }
        // Bound reached with buffers and maybe frames left: come back on the next loop turn.
        let _ = self.evts[RX].write(1);
        used
    }

    fn run(&mut self, tx: bool) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        if a.broken {
            self.active = Some(a);
            return;
        }
        let tx_used = tx && self.process_tx(&mut a);
        let rx_used = !a.broken && self.process_rx(&mut a);
        if a.broken {
            self.metrics.resets_requested += 1;
            a.interrupt.signal_needs_reset();
        } else {
            a.notify_used(&[(TX, tx_used), (RX, rx_used)]);
        }
        self.active = Some(a);
    }
}

impl VirtioDevice for Net {
    super::acked_and_active!();

    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `mac` at offset 0 (no STATUS, MQ or MTU features).
        super::read_config_bytes(&self.mac.0, offset, data);
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
        self.active = Some(ActiveQueues::new(self.acked, 2, mem, interrupt, queues)?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        self.run(index == TX);
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn backend_events(&self) -> EventSet {
        EventSet::IN | EventSet::EDGE_TRIGGERED
    }

    fn process_backend(&mut self) {
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
