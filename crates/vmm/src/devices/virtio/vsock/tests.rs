//! virtio-vsock driven through virtqueues in plain memory against real host Unix sockets.

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
use crate::devices::virtio::testutil::{desc, RecordingInterrupt, F_NEXT, F_WRITE};

const CID: u64 = 42;
const QSIZE: u16 = 256;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
const EVQ: u64 = 0x8000;
const RX_BUFS: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x8_0000;
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
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut dev = Vsock::new(CID, &uds).unwrap();
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    let mut rings = Vec::new();
    let queues: Vec<Queue> = [RXQ, TXQ, EVQ]
        .iter()
        .map(|a| {
            let m = q(&mem, *a);
            rings.push(Rings {
                desc: m.desc_table_addr(),
                avail: m.avail_addr(),
                used: m.used_addr(),
            });
            m.create_queue().unwrap()
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
            let i = self.rx_given;
            let addr = RX_BUFS + u64::from(i) * u64::from(RX_BUF_LEN);
            add_chain(&self.mem, self.rx, &[desc(addr, RX_BUF_LEN, F_WRITE, 0)], i);
            self.rx_given += 1;
        }
        self.dev.process_queue(0);
    }

    fn take_rx(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let used = self.rx.used;
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.rx_seen < idx {
            let e = used.unchecked_add(4 + 8 * u64::from(self.rx_seen));
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
            let addr = RX_BUFS + u64::from(id) * u64::from(RX_BUF_LEN);
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            if len >= 44 {
                let h = decode(&b[..44]);
                out.push((h, b[44..].to_vec()));
            }
            self.rx_seen += 1;
        }
        out
    }

    /// Sends a packet as header + data descriptors (the Linux driver's layout).
    fn send(&mut self, h: Hdr, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        let i = self.tx_sent;
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
                desc(addr, 44, F_NEXT, i + 1),
                desc(addr + 0x100, data.len() as u32, 0, 0),
            ]
        };
        self.send_raw(&descs);
    }

    fn send_raw(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) {
        add_chain(&self.mem, self.tx, descs, self.tx_sent);
        self.tx_sent += descs.len() as u16;
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
