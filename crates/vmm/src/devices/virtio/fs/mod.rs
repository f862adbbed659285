//! virtio-fs through a vhost-user back end (virtiofsd): the VMM is only the frontend. It owns
//! the configuration space (tag, one request queue) and the transport; the back end maps guest
//! memory (a memfd, see `vstate::memory`) and serves the queues itself. Queues: 0 = hiprio,
//! 1 = requests.
//!
//! Kicks: the queue eventfds, which the VMM registers as KVM ioeventfds on QueueNotify, are
//! handed to the back end as its kick fds, so a guest notification reaches virtiofsd without
//! the VMM; the VMM loop does not watch them ([`VirtioDevice::loop_handles_queues`]). Calls:
//! one eventfd for both queues, watched by the loop, which raises the used-ring interrupt
//! (the MMIO interrupt status must be set, so it cannot be the irqfd itself).
//!
//! Activation and reset arrive on a vCPU thread (a register write); the vhost-user exchange
//! they need is deferred to the VMM thread through the same eventfd, so only the VMM thread's
//! seccomp filter allows `sendmsg`/`recvmsg`. A failed start asks the driver for a reset.
//!
//! Every exchange is bounded in time by a [`watchdog`] thread, so a back end that stops
//! answering fails the exchange instead of blocking the VMM thread.

pub mod watchdog;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::watchdog::Watchdog;
use super::{ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::seccomp::SeccompError;

/// Device type of a file-system device.
pub const TYPE_FS: u32 = 26;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Longest tag (bytes, the size of the config field).
pub const TAG_MAX: usize = 36;
/// How long one vhost-user exchange (start-up negotiation, start, stop) may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const NUM_QUEUES: usize = 2;
/// Ring features passed through from the back end (it, not the VMM, walks the rings).
const RING_F_INDIRECT_DESC: u64 = 1 << 28;
const RING_F_EVENT_IDX: u64 = 1 << 29;
const GUEST_FEATURES: u64 = VIRTIO_F_VERSION_1 | RING_F_INDIRECT_DESC | RING_F_EVENT_IDX;

/// Failure to set up the device or talk to its back end.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or contains a NUL.
    #[error("invalid virtio-fs tag {0:?} (1..={TAG_MAX} bytes, no NUL)")]
    Tag(String),
    /// The back end's socket could not be reached.
    #[error("cannot connect to the vhost-user socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A vhost-user request failed (refused, garbage, closed, or cut by the watchdog).
    #[error("vhost-user {what} failed")]
    Vhost {
        /// Which request.
        what: &'static str,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// The back end does not offer VIRTIO_F_VERSION_1.
    #[error("the vhost-user back end does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// A ring lies outside guest memory.
    #[error("virtqueue {0} is outside guest memory")]
    Ring(usize),
    /// An eventfd could not be created.
    #[error("cannot create a virtio-fs eventfd")]
    EventFd(#[source] std::io::Error),
    /// The watchdog thread could not be started.
    #[error("cannot start the vhost-user watchdog thread")]
    Watchdog(#[source] std::io::Error),
    /// The watchdog thread's seccomp filter.
    #[error("vhost-user watchdog filter")]
    Seccomp(#[source] SeccompError),
}

fn vhost(what: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::Vhost { what, source }
}

/// The virtio-fs device (vhost-user frontend).
pub struct Fs {
    /// Declared (so dropped) before `frontend`, which owns the socket it watches.
    watchdog: Watchdog,
    frontend: Frontend,
    socket_fd: RawFd,
    config: [u8; TAG_MAX + 4],
    backend_features: u64,
    protocol: bool,
    kicks: [EventFd; NUM_QUEUES],
    call: EventFd,
    acked: u64,
    active: Option<Arc<dyn VirtioInterrupt>>,
    /// Rings stop on the next VMM-thread wake-up (a reset happened).
    pending_stop: bool,
    /// Memory and rings to hand to the back end on the next VMM-thread wake-up.
    pending_start: Option<(GuestMemoryMmap, Vec<Queue>)>,
    /// Rings the back end is running.
    started: bool,
}

impl Fs {
    /// Connects to the back end at `socket` and negotiates features; `tag` is what the guest
    /// mounts (`mount -t virtiofs TAG /mnt`). A back end that closes the connection, answers
    /// garbage or takes longer than `timeout` for one exchange is an error. With `seccomp`,
    /// the watchdog thread runs under its own filter.
    pub fn new(
        socket: &Path,
        tag: &str,
        timeout: Duration,
        seccomp: bool,
    ) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX || tag.contains('\0') {
            return Err(FsError::Tag(tag.to_owned()));
        }
        let mut config = [0u8; TAG_MAX + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let connect_err = |source| FsError::Connect {
            path: socket.to_owned(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(connect_err)?;
        let socket_fd = stream.as_raw_fd();
        let filter = if seccomp {
            let f = watchdog::seccomp_filter(Some(socket_fd)).map_err(FsError::Seccomp)?;
            Some(f.compile().map_err(FsError::Seccomp)?)
        } else {
            None
        };
        let watchdog = Watchdog::spawn(socket_fd, timeout, filter).map_err(FsError::Watchdog)?;
        let mut frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        let guard = watchdog.guard();
        frontend.set_owner().map_err(vhost("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vhost("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NoVersion1);
        }
        let protocol = backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
            // REPLY_ACK makes every request answer, so failures show up where they happen.
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(wanted)
                .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
            if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        drop(guard);
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Fs {
            watchdog,
            frontend,
            socket_fd,
            config,
            backend_features,
            protocol,
            kicks: [evt()?, evt()?],
            call: evt()?,
            acked: 0,
            active: None,
            pending_stop: false,
            pending_start: None,
            started: false,
        })
    }

    /// The back end's socket (the one fd the VMM thread may `sendmsg`/`recvmsg` on).
    pub fn socket_fd(&self) -> RawFd {
        self.socket_fd
    }

    /// Hands memory and rings to the back end and starts it.
    fn start(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), FsError> {
        let _guard = self.watchdog.guard();
        let mut features = self.acked;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(vhost("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(vhost("SET_MEM_TABLE"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(vhost("SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            let host = |a: u64| {
                mem.get_host_address(GuestAddress(a))
                    .map(|p| p as u64)
                    .map_err(|_| FsError::Ring(i))
            };
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(vhost("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(vhost("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .map_err(vhost("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &self.call)
                .map_err(vhost("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &self.kicks[i])
                .map_err(vhost("SET_VRING_KICK"))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(vhost("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.backend_features & GUEST_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn loop_handles_queues(&self) -> bool {
        false
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        ActivateError::check(self.acked, queues.len(), NUM_QUEUES)?;
        self.active = Some(interrupt);
        self.pending_start = Some((mem, queues));
        // Wakes the VMM thread (process_backend); a full counter is still a wake-up.
        let _ = self.call.write(1);
        Ok(())
    }

    fn process_queue(&mut self, _index: usize) {}

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.call.as_raw_fd())
    }

    fn process_backend(&mut self) {
        // Draining a non-blocking eventfd; EAGAIN just means a spurious wake-up.
        let _ = self.call.read();
        if std::mem::take(&mut self.pending_stop) && std::mem::take(&mut self.started) {
            // GET_VRING_BASE stops a ring; a dead back end has nothing left to stop.
            let _guard = self.watchdog.guard();
            for i in 0..NUM_QUEUES {
                let _ = self.frontend.get_vring_base(i);
            }
        }
        let Some(irq) = self.active.clone() else {
            return;
        };
        if let Some((mem, queues)) = self.pending_start.take() {
            match self.start(&mem, &queues) {
                Ok(()) => self.started = true,
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    log::error!("virtio-fs: {e}{cause}");
                    irq.signal_needs_reset();
                }
            }
        }
        irq.trigger(InterruptKind::UsedRing);
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending_start = None;
        self.pending_stop = true;
        self.acked = 0;
        let _ = self.call.write(1);
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests;
