//! Hybrid vsock back end (Firecracker's protocol): stream connections between the guest and
//! Unix sockets on the host.
//!
//! - Host-initiated: a host process connects to `<uds>` and sends `CONNECT <port>\n`; the guest
//!   gets a connection request to `<port>`; once it accepts, the host reads `OK <hostport>\n`.
//! - Guest-initiated: a guest connection to (CID 2, port P) is connected to `<uds>_P`.
//!
//! The muxer knows nothing about virtqueues: the device feeds it guest packets and asks it
//! for packets to deliver. It owns an epoll fd of its own that the VMM loop watches.
//!
//! Host memory is bounded in both directions. Host → guest, bytes are read from a host
//! socket only as far as the guest's credit and RX buffer allow, straight into the packet;
//! a host peer that writes more is held up by its own socket buffer. Guest → host, the
//! bytes a host peer has not read yet are held here, and the guest may send only as much
//! as the credit it was given: each connection gets at most [`CONN_BUF`], always at least
//! [`CONN_MIN_BUF`], and all connections of the VM together at most [`VM_BUF`]. A
//! connection's credit limit (its `fwd_cnt + buf_alloc`) never moves backwards, so a guest
//! that respects the last credit it saw is never reset; one that sends past it is.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream socket type.
pub const TYPE_STREAM: u16 = 1;
/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset.
pub const OP_RST: u16 = 3;
/// Half or full shutdown.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Most guest → host bytes one connection may have on the host (its largest credit).
pub const CONN_BUF: u32 = 256 * 1024;
/// Credit every connection can always get, so none starves while others hold the pool.
pub const CONN_MIN_BUF: u32 = 1024;
/// Most guest → host bytes on the host for the whole VM: each connection's
/// [`CONN_MIN_BUF`] plus a pool shared by all.
pub const VM_BUF: usize = 4 << 20;
/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Credit beyond [`CONN_MIN_BUF`] that connections share.
const POOL: usize = VM_BUF - MAX_CONNECTIONS * CONN_MIN_BUF as usize;
const _: () = assert!(POOL >= CONN_BUF as usize);
/// Most host sockets still sending their `CONNECT` line.
pub const MAX_PENDING: usize = 64;
/// Most control packets waiting for guest RX buffers (beyond that they are dropped).
pub const MAX_CONTROL_BACKLOG: usize = 4096;
const CONNECT_LINE_MAX: usize = 32;
const FIRST_HOST_PORT: u32 = 1 << 30;
const LISTENER: u64 = u64::MAX;

/// Failure to set up the back end.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The host socket could not be bound.
    #[error("cannot bind the vsock socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// epoll setup failed.
    #[error("cannot set up the vsock epoll")]
    Epoll(#[source] std::io::Error),
}

/// A packet header as plain fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host connected and asked; waiting for the guest's RESPONSE.
    HostRequested,
    Established,
    /// We told the guest we are done; waiting for its RST.
    Closing,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// Host-side port.
    local: u32,
    /// Guest-side port.
    peer: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes of guest data written to the host socket.
    fwd_cnt: u32,
    /// The guest may send until its byte count reaches this (`fwd_cnt + buf_alloc` as last
    /// advertised); it never decreases.
    credit_end: u32,
    /// The last grant was cut short by the VM's pool.
    starved: bool,
    /// Guest data the host socket has not taken yet.
    tx_buf: Vec<u8>,
    /// The host socket has data we have not read (its EPOLLIN is disarmed meanwhile).
    readable: bool,
}

impl Conn {
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Guest bytes held here or that the guest may still send: what this connection may
    /// cost the host.
    fn granted(&self) -> u32 {
        self.credit_end.wrapping_sub(self.fwd_cnt)
    }

    /// Bytes the guest may still send.
    fn guest_credit(&self) -> u32 {
        self.granted().saturating_sub(self.tx_buf.len() as u32)
    }
}

/// The part of a connection's grant that comes from the shared pool.
fn pooled(granted: u32) -> usize {
    granted.saturating_sub(CONN_MIN_BUF) as usize
}

/// Counters an operator can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxerMetrics {
    /// Connections established.
    pub connections: u64,
    /// Guest packets rejected or answered with RST.
    pub rejected_packets: u64,
    /// Control packets dropped because the guest gave no RX buffers.
    pub dropped_control: u64,
    /// Bytes host → guest.
    pub rx_bytes: u64,
    /// Bytes guest → host.
    pub tx_bytes: u64,
    /// Guest → host bytes held now for host sockets that have not taken them.
    pub buffered_bytes: u64,
}

/// The hybrid vsock back end.
pub struct Muxer {
    cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<(u32, u32), Conn>,
    by_fd: HashMap<RawFd, (u32, u32)>,
    pending: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    control: VecDeque<Hdr>,
    next_port: u32,
    /// Sum of the connections' [`pooled`] grants, at most [`POOL`].
    pool_used: usize,
    /// Counters.
    pub metrics: MuxerMetrics,
}

impl Muxer {
    /// Binds `uds` (which must not exist) for guest CID `cid`.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, MuxerError> {
        let bind = |source| MuxerError::Bind {
            path: uds.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            cid,
            uds: uds.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            pool_used: 0,
            metrics: MuxerMetrics::default(),
        })
    }

    /// The fd the VMM loop watches for host-side activity.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// A header that grants no credit (a reset, or a connection being torn down).
    fn hdr(&self, local: u32, peer: u32, op: u16) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local,
            dst_port: peer,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// The grant connection `c` can have now: up to [`CONN_BUF`], from its floor, what it
    /// holds of the pool and what the pool has left.
    fn grant_for(&self, c: &Conn) -> u32 {
        let reachable = CONN_MIN_BUF as usize + pooled(c.granted()) + (POOL - self.pool_used);
        reachable.min(CONN_BUF as usize) as u32
    }

    /// A header for connection `key` that carries its credit, first grown as far as the
    /// bounds allow.
    fn conn_hdr(&mut self, key: (u32, u32), op: u16) -> Option<Hdr> {
        let grant = self.grant_for(self.conns.get(&key)?);
        let c = self.conns.get_mut(&key)?;
        let old = c.granted();
        c.credit_end = c.credit_end.wrapping_add(grant - old);
        c.starved = grant < CONN_BUF;
        self.pool_used = self.pool_used - pooled(old) + pooled(grant);
        let fwd_cnt = c.fwd_cnt;
        Some(Hdr {
            buf_alloc: grant,
            fwd_cnt,
            ..self.hdr(key.0, key.1, op)
        })
    }

    /// Tells the guest of more credit when it is worth a packet: a big step, or any step
    /// while the guest is low.
    fn offer_credit(&mut self, key: (u32, u32)) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        let more = self.grant_for(c) - c.granted();
        if c.state == State::Established
            && more > 0
            && (more >= CONN_BUF / 2 || c.guest_credit() < CONN_BUF / 2)
        {
            if let Some(h) = self.conn_hdr(key, OP_CREDIT_UPDATE) {
                self.push_control(h);
            }
        }
    }

    /// After pool credit came back: offers it to the connections that were cut short.
    fn offer_pool(&mut self) {
        let starved: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.starved)
            .map(|(k, _)| *k)
            .collect();
        for key in starved {
            self.offer_credit(key);
        }
    }

    fn push_control(&mut self, h: Hdr) {
        if self.control.len() >= MAX_CONTROL_BACKLOG {
            self.metrics.dropped_control += 1;
        } else {
            self.control.push_back(h);
        }
    }

    fn rst(&mut self, local: u32, peer: u32) {
        self.metrics.rejected_packets += 1;
        let h = self.hdr(local, peer, OP_RST);
        self.push_control(h);
    }

    fn watch(&self, fd: RawFd, events: EventSet) {
        let data = fd as u64;
        let ev = EpollEvent::new(events, data);
        if self.epoll.ctl(ControlOperation::Modify, fd, ev).is_err() {
            let _ = self.epoll.ctl(ControlOperation::Add, fd, ev);
        }
    }

    fn rearm(&self, key: (u32, u32)) {
        if let Some(c) = self.conns.get(&key) {
            let mut ev = EventSet::empty();
            if !c.readable && c.state == State::Established {
                ev |= EventSet::IN;
            }
            if !c.tx_buf.is_empty() {
                ev |= EventSet::OUT;
            }
            self.watch(c.stream.as_raw_fd(), ev);
        }
    }

    fn remove(&mut self, key: (u32, u32)) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
            self.metrics.buffered_bytes -= c.tx_buf.len() as u64;
            self.pool_used -= pooled(c.granted());
            if pooled(c.granted()) > 0 {
                self.offer_pool();
            }
        }
    }

    fn insert(&mut self, conn: Conn) {
        let key = (conn.local, conn.peer);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.rearm(key);
    }

    /// A connection with no credit granted yet; `peer` is the guest's header, if it sent one.
    fn new_conn(
        stream: UnixStream,
        state: State,
        local: u32,
        peer_port: u32,
        peer: Option<&Hdr>,
    ) -> Conn {
        Conn {
            stream,
            state,
            local,
            peer: peer_port,
            peer_buf_alloc: peer.map_or(0, |h| h.buf_alloc),
            peer_fwd_cnt: peer.map_or(0, |h| h.fwd_cnt),
            rx_cnt: 0,
            fwd_cnt: 0,
            credit_end: 0,
            starved: false,
            tx_buf: Vec::new(),
            readable: false,
        }
    }

    /// Handles one packet the guest sent (from the TX queue).
    pub fn guest_packet(&mut self, h: &Hdr, data: &[u8]) {
        if h.dst_cid != HOST_CID || h.src_cid != self.cid {
            self.metrics.rejected_packets += 1;
            return;
        }
        let key = (h.dst_port, h.src_port);
        if h.type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.rst(key.0, key.1);
            }
            return;
        }
        if h.op == OP_REQUEST {
            self.guest_connect(h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op != OP_RST {
                self.rst(key.0, key.1);
            }
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match (h.op, &c.state) {
            (OP_RESPONSE, State::HostRequested) => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local);
                // A fresh Unix socket's buffer always takes these few bytes.
                if c.stream.write_all(line.as_bytes()).is_err() {
                    self.remove(key);
                    self.rst(key.0, key.1);
                    return;
                }
                self.metrics.connections += 1;
                self.rearm(key);
            }
            (OP_RW, State::Established) => self.guest_data(key, data),
            (OP_CREDIT_REQUEST, _) => {
                if let Some(h) = self.conn_hdr(key, OP_CREDIT_UPDATE) {
                    self.push_control(h);
                }
            }
            (OP_CREDIT_UPDATE, _) => self.rearm(key),
            (OP_SHUTDOWN, _) => {
                if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    self.remove(key);
                    let h = self.hdr(key.0, key.1, OP_RST);
                    self.push_control(h);
                } else if h.flags & SHUTDOWN_SEND != 0 {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            (OP_RST, _) => self.remove(key),
            _ => {
                self.remove(key);
                self.rst(key.0, key.1);
            }
        }
    }

    /// A guest's connection request: connects to the host listener for the
    /// port, `<uds>_<port>`, or resets.
    fn guest_connect(&mut self, h: &Hdr) {
        let (local, peer) = (h.dst_port, h.src_port);
        if self.conns.contains_key(&(local, peer)) || self.conns.len() >= MAX_CONNECTIONS {
            self.rst(local, peer);
            return;
        }
        let path = format!("{}_{}", self.uds.display(), local);
        let Ok(stream) = connect_nonblocking(Path::new(&path)) else {
            self.rst(local, peer);
            return;
        };
        self.insert(Self::new_conn(
            stream,
            State::Established,
            local,
            peer,
            Some(h),
        ));
        self.metrics.connections += 1;
        if let Some(r) = self.conn_hdr((local, peer), OP_RESPONSE) {
            self.push_control(r);
        }
    }

    fn guest_data(&mut self, key: (u32, u32), data: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if data.len() > c.guest_credit() as usize {
            // The guest ignored our credit.
            self.remove(key);
            self.rst(key.0, key.1);
            return;
        }
        c.tx_buf.extend_from_slice(data);
        self.metrics.buffered_bytes += data.len() as u64;
        self.flush(key);
    }

    /// Writes buffered guest data to the host socket.
    fn flush(&mut self, key: (u32, u32)) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let granted = c.granted();
        let mut failed = false;
        while !c.tx_buf.is_empty() {
            match c.stream.write(&c.tx_buf) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.tx_buf.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    self.metrics.tx_bytes += n as u64;
                    self.metrics.buffered_bytes -= n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.remove(key);
            self.rst(key.0, key.1);
            return;
        }
        let released = pooled(granted) - pooled(c.granted());
        self.pool_used -= released;
        self.offer_credit(key);
        if released > 0 {
            self.offer_pool();
        }
        self.rearm(key);
    }

    /// Handles host-side readiness (call when [`Self::epoll_fd`] is readable).
    pub fn process_host_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let data = ev.data();
            if data == LISTENER {
                self.accept();
                continue;
            }
            let fd = data as RawFd;
            if self.pending.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                let set = ev.event_set();
                if set.contains(EventSet::OUT) {
                    self.flush(key);
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.readable = true;
                    }
                    self.rearm(key);
                }
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the host side sees the socket close
            }
            let fd = stream.as_raw_fd();
            self.watch(fd, EventSet::IN);
            self.pending.insert(fd, (stream, Vec::new()));
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some((stream, line)) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // One byte at a time, so nothing after the line is consumed.
        let done = loop {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break true,
                Ok(1) if line.len() < CONNECT_LINE_MAX => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => break false,
            }
        };
        let Some((stream, line)) = self.pending.remove(&fd) else {
            return;
        };
        let port = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let (Some(port), true) = (port, done) else {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            return; // dropping the stream closes it
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local = self.alloc_port(port);
        self.insert(Self::new_conn(
            stream,
            State::HostRequested,
            local,
            port,
            None,
        ));
        if let Some(h) = self.conn_hdr((local, port), OP_REQUEST) {
            self.push_control(h);
        }
    }

    fn alloc_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    /// Whether a control packet is waiting (data readiness is found by [`Self::next_rx`]).
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// Whether any connection may have host data for the guest.
    pub fn has_readable(&self) -> bool {
        self.conns
            .values()
            .any(|c| c.readable && c.peer_credit() > 0)
    }

    /// The next packet for the guest, with at most `max_data` payload bytes.
    pub fn next_rx(&mut self, max_data: usize) -> Option<(Hdr, Vec<u8>)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, Vec::new()));
        }
        let keys: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.readable && c.state == State::Established)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(pkt) = self.read_host(key, max_data) {
                return Some(pkt);
            }
        }
        None
    }

    fn read_host(&mut self, key: (u32, u32), max_data: usize) -> Option<(Hdr, Vec<u8>)> {
        let c = self.conns.get_mut(&key)?;
        let want = (c.peer_credit() as usize).min(max_data).min(64 * 1024);
        if want == 0 {
            return None; // waits for a credit update or a bigger buffer
        }
        let mut buf = vec![0u8; want];
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.state = State::Closing;
                c.readable = false;
                let mut h = self.conn_hdr(key, OP_SHUTDOWN)?;
                h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                self.rearm(key);
                Some((h, Vec::new()))
            }
            Ok(n) => {
                buf.truncate(n);
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                self.metrics.rx_bytes += n as u64;
                let mut h = self.conn_hdr(key, OP_RW)?;
                h.len = n as u32;
                Some((h, buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                c.readable = false;
                self.rearm(key);
                None
            }
            Err(_) => {
                self.remove(key);
                Some((self.hdr(key.0, key.1, OP_RST), Vec::new()))
            }
        }
    }
}

/// Connects to the Unix socket `path` without ever waiting: a listener whose
/// backlog is full (a host service that stopped accepting, or a guest opening
/// connections faster than it accepts) fails the connect with `EAGAIN` instead
/// of stalling the device thread, and the guest gets a reset.
pub(super) fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}
