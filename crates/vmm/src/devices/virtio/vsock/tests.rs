//! virtio-vsock driven through virtqueues in plain memory against real host Unix sockets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::*;
use super::*;
use crate::devices::virtio::rate_limiter::{RateLimit, RateLimits};
use crate::devices::virtio::testutil::{desc, wait_readable, RecordingInterrupt, F_NEXT, F_WRITE};

const CID: u64 = 42;
const QSIZE: u16 = 256;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x20_0000;
const RX_BUF_LEN: u32 = 4096;

struct H {
    mem: GuestMemoryMmap,
    rx: Rings,
    tx: Rings,
    dev: Vsock,
    _dir: tempfile::TempDir,
    uds: PathBuf,
    rx_given: u16,
    rx_seen: u16,
    tx_sent: u16,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Hdr {
    Hdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Hdr::default()
    }
}

fn encode(h: &Hdr) -> Vec<u8> {
    let mut v = Vec::with_capacity(44);
    v.extend_from_slice(&h.src_cid.to_le_bytes());
    v.extend_from_slice(&h.dst_cid.to_le_bytes());
    v.extend_from_slice(&h.src_port.to_le_bytes());
    v.extend_from_slice(&h.dst_port.to_le_bytes());
    v.extend_from_slice(&h.len.to_le_bytes());
    v.extend_from_slice(&h.type_.to_le_bytes());
    v.extend_from_slice(&h.op.to_le_bytes());
    v.extend_from_slice(&h.flags.to_le_bytes());
    v.extend_from_slice(&h.buf_alloc.to_le_bytes());
    v.extend_from_slice(&h.fwd_cnt.to_le_bytes());
    v
}

fn decode(b: &[u8]) -> Hdr {
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    Hdr {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

fn q(mem: &GuestMemoryMmap, at: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
    // Note: creating a MockSplitQueue zeroes its rings; done once per queue in `harness`.
    MockSplitQueue::create(mem, GuestAddress(at), QSIZE)
}

/// Ring addresses of one queue, to add chains without re-creating the mock (which resets).
#[derive(Clone, Copy)]
struct Rings {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
}

fn add_chain(
    mem: &GuestMemoryMmap,
    r: Rings,
    descs: &[virtio_queue::desc::RawDescriptor],
    first: u16,
) {
    for (i, d) in descs.iter().enumerate() {
        let at = r
            .desc
            .unchecked_add(16 * u64::from((first + i as u16) % QSIZE));
        mem.write_obj(*d, at).unwrap();
    }
    let idx: u16 = mem.read_obj(r.avail.unchecked_add(2)).unwrap();
    let slot = r.avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE));
    mem.write_obj(first % QSIZE, slot).unwrap();
    mem.write_obj(idx.wrapping_add(1), r.avail.unchecked_add(2))
        .unwrap();
}

fn harness() -> H {
    harness_limited(RateLimits::default())
}

fn harness_limited(limits: RateLimits) -> H {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut dev = Vsock::new(CID, &uds)
        .unwrap()
        .with_rate_limits(limits)
        .unwrap();
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    let mut rings = Vec::new();
    let queues: Vec<Queue> = [RXQ, TXQ, EVQ]
        .iter()
        .map(|a| {
            let m = q(&mem, *a);
            // The mock lays its used ring over the second half of the avail ring; move it
            // clear so that all QSIZE slots can be used.
            let used = GuestAddress(*a + 0x2000);
            rings.push(Rings {
                desc: m.desc_table_addr(),
                avail: m.avail_addr(),
                used,
            });
            let mut queue: Queue = m.create_queue().unwrap();
            queue.set_used_ring_address(Some(used.0 as u32), Some(0));
            queue
        })
        .collect();
    let irq = Arc::new(RecordingInterrupt::default());
    dev.activate(mem.clone(), irq, queues).unwrap();
    H {
        rx: rings[0],
        tx: rings[1],
        mem,
        dev,
        _dir: dir,
        uds,
        rx_given: 0,
        rx_seen: 0,
        tx_sent: 0,
    }
}

impl H {
    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.rx_given % QSIZE;
            let addr = RX_BUFS + u64::from(i) * u64::from(RX_BUF_LEN);
            add_chain(&self.mem, self.rx, &[desc(addr, RX_BUF_LEN, F_WRITE, 0)], i);
            self.rx_given = self.rx_given.wrapping_add(1);
        }
        self.dev.process_queue(0);
    }

    fn take_rx(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let used = self.rx.used;
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.rx_seen != idx {
            let e = used.unchecked_add(4 + 8 * u64::from(self.rx_seen % QSIZE));
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
            let addr = RX_BUFS + u64::from(id) * u64::from(RX_BUF_LEN);
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            if len >= 44 {
                let h = decode(&b[..44]);
                out.push((h, b[44..].to_vec()));
            }
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Sends a packet as header + data descriptors (the Linux driver's layout).
    fn send(&mut self, h: Hdr, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        let i = self.tx_sent % QSIZE;
        let addr = TX_BUFS + u64::from(i) * 0x2_0000;
        self.mem
            .write_slice(&encode(&h), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + 0x100))
            .unwrap();
        let descs = if data.is_empty() {
            vec![desc(addr, 44, 0, 0)]
        } else {
            vec![
                desc(addr, 44, F_NEXT, (i + 1) % QSIZE),
                desc(addr + 0x100, data.len() as u32, 0, 0),
            ]
        };
        self.send_raw(&descs);
    }

    fn send_raw(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) {
        add_chain(&self.mem, self.tx, descs, self.tx_sent);
        self.tx_sent = self.tx_sent.wrapping_add(descs.len() as u16);
        self.dev.process_queue(1);
    }

    /// Runs the host side until `cond` holds on what reached the guest.
    fn pump_until(&mut self, cond: impl Fn(&[(Hdr, Vec<u8>)]) -> bool) -> Vec<(Hdr, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..200 {
            self.dev.process_backend();
            self.dev.process_queue(0);
            got.extend(self.take_rx());
            if cond(&got) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("condition not reached; got {got:?}");
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_connect_handshake_then_data_both_ways_then_close() {
    let mut h = harness();
    h.give_rx(16);
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let got = h.pump_until(|g| g.iter().any(|(x, _)| x.op == OP_REQUEST));
    let req = got[0].0;
    assert_eq!(
        (req.dst_cid, req.dst_port, req.src_cid),
        (CID, 1024, HOST_CID)
    );
    let local = req.src_port;

    h.send(hdr(OP_RESPONSE, 1024, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));

    host.write_all(b"hello guest").unwrap();
    let got = h.pump_until(|g| g.iter().any(|(x, _)| x.op == OP_RW));
    let (rw, data) = got.iter().find(|(x, _)| x.op == OP_RW).unwrap();
    assert_eq!((rw.src_port, rw.dst_port, rw.len), (local, 1024, 11));
    assert_eq!(data, b"hello guest");

    h.send(hdr(OP_RW, 1024, local), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    drop(host);
    let got = h.pump_until(|g| g.iter().any(|(x, _)| x.op == OP_SHUTDOWN));
    assert_eq!(got.last().unwrap().0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(hdr(OP_RST, 1024, local), &[]);
    assert_eq!(h.dev.metrics().connections, 1);
}

#[test]
fn guest_connect_reaches_uds_port_listener() {
    let mut h = harness();
    h.give_rx(8);
    let listener = UnixListener::bind(format!("{}_52", h.uds.display())).unwrap();
    h.send(hdr(OP_REQUEST, 9999, 52), &[]);
    let got = h.take_rx();
    assert_eq!(got[0].0.op, OP_RESPONSE);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (52, 9999));
    let (mut s, _) = listener.accept().unwrap();
    h.send(hdr(OP_RW, 9999, 52), b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").unwrap();
    let got = h.pump_until(|g| g.iter().any(|(x, _)| x.op == OP_RW));
    assert_eq!(got.last().unwrap().1, b"pong");
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let mut h = harness();
    h.give_rx(4);
    h.send(hdr(OP_REQUEST, 1, 7777), &[]);
    assert_eq!(h.take_rx()[0].0.op, OP_RST);
}

#[test]
fn guest_connect_to_a_full_listener_is_reset_without_waiting() {
    let mut h = harness();
    h.give_rx(4);
    let path = PathBuf::from(format!("{}_53", h.uds.display()));
    let _listener = UnixListener::bind(&path).unwrap();
    // Fill the listener's backlog: it never accepts.
    let mut queued = Vec::new();
    loop {
        match connect_nonblocking(&path) {
            Ok(stream) => queued.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(queued.len() < 100_000, "the backlog never filled");
    }
    // A blocking connect would hang the device thread here for good.
    let started = std::time::Instant::now();
    h.send(hdr(OP_REQUEST, 3, 53), &[]);
    assert_eq!(h.take_rx()[0].0.op, OP_RST);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn hostile_packets_are_rejected_without_panics() {
    let mut h = harness();
    h.give_rx(32);
    // Data for a connection that does not exist → RST.
    h.send(hdr(OP_RW, 5, 6), b"x");
    assert_eq!(h.take_rx()[0].0.op, OP_RST);
    // Spoofed source CID → ignored.
    let mut spoof = hdr(OP_REQUEST, 5, 6);
    spoof.src_cid = 99;
    h.send(spoof, &[]);
    assert!(h.take_rx().is_empty());
    // Not a stream socket → RST.
    let mut dgram = hdr(OP_REQUEST, 5, 6);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    assert_eq!(h.take_rx()[0].0.op, OP_RST);
    // Malformed chains: write-only header, header too short, len beyond the data buffer,
    // len above the maximum, header outside guest memory.
    let bad = h.dev.bad_packets;
    h.send_raw(&[desc(TX_BUFS, 44, F_WRITE, 0)]);
    h.send_raw(&[desc(TX_BUFS, 10, 0, 0)]);
    let mut big = hdr(OP_RW, 5, 6);
    big.len = 1000;
    h.mem
        .write_slice(&encode(&big), GuestAddress(TX_BUFS))
        .unwrap();
    let n = h.tx_sent;
    h.send_raw(&[
        desc(TX_BUFS, 44, F_NEXT, n + 1),
        desc(TX_BUFS + 0x100, 8, 0, 0),
    ]);
    big.len = MAX_PKT_DATA + 1;
    h.mem
        .write_slice(&encode(&big), GuestAddress(TX_BUFS))
        .unwrap();
    h.send_raw(&[desc(TX_BUFS, 44, 0, 0)]);
    h.send_raw(&[desc(0xffff_ffff_0000, 44, 0, 0)]);
    assert_eq!(h.dev.bad_packets, bad + 5);
    assert!(h.dev.is_active());
}

#[test]
fn host_garbage_instead_of_connect_is_closed() {
    let mut h = harness();
    h.give_rx(4);
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO THERE, THIS IS NOT A CONNECT LINE AT ALL\n")
        .unwrap();
    for _ in 0..20 {
        h.dev.process_backend();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut b = [0u8; 1];
    // Closed with unread input: EOF or a reset, depending on timing.
    match host.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("socket should be closed, got {other:?}"),
    }
    assert!(h.take_rx().is_empty());
}

#[test]
fn guest_ignoring_credit_is_reset() {
    let mut h = harness();
    h.give_rx(8);
    let listener = UnixListener::bind(format!("{}_60", h.uds.display())).unwrap();
    h.send(hdr(OP_REQUEST, 1, 60), &[]);
    let _peer = listener.accept().unwrap(); // never reads
    let chunk = vec![7u8; 60_000];
    for _ in 0..40 {
        h.send(hdr(OP_RW, 1, 60), &chunk);
    }
    let got = h.take_rx();
    assert!(got.iter().any(|(x, _)| x.op == OP_RST), "{got:?}");
}

#[test]
fn a_guest_flooding_host_peers_that_never_read_is_held_to_the_bounds() {
    const CONNS: u32 = 32;
    let mut h = harness();
    h.give_rx(64);
    let listener = UnixListener::bind(format!("{}_61", h.uds.display())).unwrap();
    // Per guest port: where its credit ends (as the host advertised it) and what it sent.
    let mut credit_end: HashMap<u32, u32> = HashMap::new();
    let mut sent: HashMap<u32, u32> = HashMap::new();
    // Takes what reached the guest, gives the RX buffers back and checks the credit.
    fn note(h: &mut H, credit_end: &mut HashMap<u32, u32>) -> Vec<(Hdr, Vec<u8>)> {
        let got = h.take_rx();
        h.give_rx(got.len() as u16);
        for (x, _) in got.iter().filter(|(x, _)| x.op != OP_RST) {
            assert!(x.buf_alloc <= CONN_BUF, "{x:?}");
            let end = x.fwd_cnt.wrapping_add(x.buf_alloc);
            let old = credit_end.insert(x.dst_port, end).unwrap_or(0);
            assert!(
                end.wrapping_sub(old) <= CONN_BUF,
                "credit moved back: {x:?}"
            );
        }
        got
    }
    let mut peers = Vec::new(); // never read
    for p in 1000..1000 + CONNS {
        h.send(hdr(OP_REQUEST, p, 61), &[]);
        peers.push(listener.accept().unwrap().0);
    }
    note(&mut h, &mut credit_end);
    // The attacker sends all the credit it gets on every connection until none is left.
    let chunk = vec![0x1bu8; 60_000];
    for round in 0.. {
        assert!(round < 1000, "the guest kept getting credit");
        let mut any = false;
        for p in 1000..1000 + CONNS {
            let s = sent.entry(p).or_default();
            let room = credit_end[&p].wrapping_sub(*s) as usize;
            if room > 0 {
                let n = room.min(chunk.len());
                *s = s.wrapping_add(n as u32);
                h.send(hdr(OP_RW, p, 61), &chunk[..n]);
                any = true;
            }
            assert!(h.dev.metrics().buffered_bytes <= VM_BUF as u64);
        }
        h.dev.process_backend();
        let got = note(&mut h, &mut credit_end);
        assert!(!got.iter().any(|(x, _)| x.op == OP_RST), "{got:?}");
        if !any && got.is_empty() {
            break;
        }
    }
    let buffered = h.dev.metrics().buffered_bytes;
    assert!(
        buffered > VM_BUF as u64 / 2 && buffered <= VM_BUF as u64,
        "{buffered}"
    );
    assert_eq!(h.dev.metrics().rejected_packets, 0);

    // Another connection is still served, both ways.
    let other = UnixListener::bind(format!("{}_62", h.uds.display())).unwrap();
    h.send(hdr(OP_REQUEST, 5000, 62), &[]);
    let (mut s, _) = other.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let got = note(&mut h, &mut credit_end);
    let (resp, _) = got.iter().find(|(x, _)| x.dst_port == 5000).unwrap();
    assert_eq!(resp.op, OP_RESPONSE);
    assert!(resp.buf_alloc >= CONN_MIN_BUF, "{resp:?}");
    h.send(hdr(OP_RW, 5000, 62), b"still served");
    let mut b = [0u8; 12];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still served");
    s.write_all(b"pong").unwrap();
    let got = h.pump_until(|g| g.iter().any(|(x, _)| x.op == OP_RW && x.dst_port == 5000));
    assert_eq!(got.last().unwrap().1, b"pong");

    // Sending past the credit resets that connection, and what it held goes to the others.
    h.send(hdr(OP_RW, 1000, 61), b"x");
    let got = note(&mut h, &mut credit_end);
    assert!(got
        .iter()
        .any(|(x, _)| x.op == OP_RST && x.dst_port == 1000));
    assert!(
        got.iter()
            .any(|(x, _)| x.op == OP_CREDIT_UPDATE && x.dst_port != 1000),
        "{got:?}"
    );
    assert!(h.dev.metrics().buffered_bytes < buffered);
}

#[test]
fn control_backlog_is_bounded_when_the_guest_gives_no_rx_buffers() {
    let mut h = harness();
    for i in 0..200u32 {
        h.send(hdr(OP_RW, i, 6), &[]);
    }
    // Nothing delivered, nothing grows without bound, the device is still up.
    assert!(h.take_rx().is_empty());
    assert!(h.dev.is_active());
    h.give_rx(8);
    assert_eq!(h.take_rx().len(), 8);
}

#[test]
fn config_space_holds_the_guest_cid() {
    let h = harness();
    let mut b = [0u8; 8];
    h.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    let mut far = [0xffu8; 4];
    h.dev.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    assert!(matches!(
        Vsock::new(2, &h.uds.with_extension("x")),
        Err(VsockError::Cid(2))
    ));
}

const RATE: u64 = 128 << 10;
const BURST: u64 = 16 << 10;

fn limit() -> RateLimit {
    RateLimit {
        bytes_per_sec: RATE,
        burst_bytes: BURST,
        ..RateLimit::default()
    }
}

/// Connects guest port 1 to a host listener on port `port`; returns the host's end and where
/// the guest's credit ends.
fn connect(h: &mut H, port: u32) -> (UnixStream, UnixListener, u32) {
    h.give_rx(32);
    let listener = UnixListener::bind(format!("{}_{port}", h.uds.display())).unwrap();
    h.send(hdr(OP_REQUEST, 1, port), &[]);
    let (peer, _) = listener.accept().unwrap();
    peer.set_nonblocking(true).unwrap();
    let got = h.take_rx();
    let resp = got[0].0;
    assert_eq!(resp.op, OP_RESPONSE);
    h.give_rx(1);
    (peer, listener, resp.fwd_cnt.wrapping_add(resp.buf_alloc))
}

/// The guest sends 4 KiB data packets on its connection as fast as its credit allows (at
/// most 16 in the ring), the host peer reads everything, for `window`. The device runs on
/// the guest's notifications, the host's readiness and, as in the VMM loop, its limiters'
/// timers. Returns the bytes the host read and the time taken.
fn flood_vsock_tx(h: &mut H, window: Duration) -> (u64, Duration) {
    let (mut peer, _listener, mut credit_end) = connect(h, 70);
    let chunk = vec![0x77u8; 4096];
    let (mut sent, mut got) = (0u32, 0u64);
    let mut queued: u16 = h.mem.read_obj(h.tx.used.unchecked_add(2)).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let start = std::time::Instant::now();
    while start.elapsed() < window {
        let used: u16 = h.mem.read_obj(h.tx.used.unchecked_add(2)).unwrap();
        for _ in queued.wrapping_sub(used)..16 {
            if credit_end.wrapping_sub(sent) < chunk.len() as u32 {
                break;
            }
            h.send(hdr(OP_RW, 1, 70), &chunk);
            sent = sent.wrapping_add(chunk.len() as u32);
            queued = queued.wrapping_add(1);
        }
        while let Ok(n) = peer.read(&mut buf) {
            assert!(n > 0, "the host side was closed");
            got += n as u64;
        }
        h.dev.process_backend();
        let rx = h.take_rx();
        for (x, _) in &rx {
            assert_ne!(x.op, OP_RST, "{x:?}");
            credit_end = x.fwd_cnt.wrapping_add(x.buf_alloc);
        }
        h.give_rx(rx.len() as u16);
        if wait_readable(&h.dev.timer_fds(), 1) {
            h.dev.process_timer();
        }
    }
    let took = start.elapsed();
    // What the device wrote before the end, the host reads now.
    while let Ok(n) = peer.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    (got, took)
}

#[test]
fn a_guest_flooding_vsock_tx_is_held_to_the_rate() {
    let mut h = harness_limited(RateLimits {
        tx: limit(),
        ..RateLimits::default()
    });
    assert_eq!(h.dev.timer_fds().len(), 1);
    let (got, took) = flood_vsock_tx(&mut h, Duration::from_millis(500));
    // The burst, the refill, and the packet that went into debt (and one of clock slack).
    let allowed = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + 2 * 4096;
    crate::devices::virtio::testutil::assert_held_to_rate(got, allowed, took);
    assert!(h.dev.tx_throttled > 0);
    // Everything the device took reached the host; nothing was rejected.
    let m = h.dev.metrics();
    assert_eq!(
        (m.tx_bytes, m.buffered_bytes, m.rejected_packets),
        (got, 0, 0)
    );
    assert_eq!(h.dev.bad_packets, 0);
}

#[test]
fn without_a_limit_the_same_vsock_flood_is_not_throttled() {
    let mut h = harness();
    assert!(h.dev.timer_fds().is_empty());
    let (got, took) = flood_vsock_tx(&mut h, Duration::from_millis(200));
    let limited = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + 4096;
    assert!(got > 2 * limited, "{got} bytes in {took:?}");
    assert_eq!(h.dev.tx_throttled, 0);
}

#[test]
fn host_data_is_held_to_the_rx_rate_but_control_packets_still_pass() {
    let mut h = harness_limited(RateLimits {
        rx: limit(),
        ..RateLimits::default()
    });
    let (mut peer, _listener, _) = connect(&mut h, 71);
    let chunk = vec![0x42u8; 16 << 10];
    let (mut got, mut read_by_guest) = (0u64, 0u32);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        // The host writes as much as its socket takes.
        while peer.write(&chunk).is_ok() {}
        h.dev.process_backend();
        h.dev.process_queue(0);
        let rx = h.take_rx();
        h.give_rx(rx.len() as u16);
        for (x, data) in &rx {
            assert_eq!(x.op, OP_RW, "{x:?}");
            got += data.len() as u64;
            read_by_guest = read_by_guest.wrapping_add(data.len() as u32);
        }
        // The guest reads what it got and says so, keeping its credit open.
        if !rx.is_empty() {
            let mut upd = hdr(OP_CREDIT_UPDATE, 1, 71);
            upd.fwd_cnt = read_by_guest;
            h.send(upd, &[]);
        }
        if wait_readable(&h.dev.timer_fds(), 1) {
            h.dev.process_timer();
        }
    }
    let took = start.elapsed();
    let allowed = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + 64 * 1024;
    assert!(
        got <= allowed,
        "{got} bytes in {took:?}, at most {allowed} allowed"
    );
    assert!(got >= (BURST + RATE / 2) / 2, "{got} bytes in {took:?}");
    assert!(h.dev.rx_throttled > 0);
    assert_eq!(h.dev.metrics().rx_bytes, got);
    // Throttled now (the host keeps writing), yet a new connection is answered at once.
    let mut throttled = false;
    for _ in 0..100 {
        while peer.write(&chunk).is_ok() {}
        h.dev.process_backend();
        h.take_rx();
        h.give_rx(4);
        if h.dev.limiters.rx.as_ref().is_some_and(|l| l.is_blocked()) {
            throttled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(throttled);
    let other = UnixListener::bind(format!("{}_72", h.uds.display())).unwrap();
    h.send(hdr(OP_REQUEST, 2, 72), &[]);
    let _conn = other.accept().unwrap();
    let rx = h.take_rx();
    assert!(
        rx.iter()
            .any(|(x, _)| x.op == OP_RESPONSE && x.dst_port == 2),
        "{rx:?}"
    );
}
