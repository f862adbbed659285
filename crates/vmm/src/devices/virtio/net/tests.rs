//! virtio-net driven through virtqueues in plain memory: against a datagram socket pair (the
//! tap's framing without privileges) for queue handling and hostile chains, and against a real
//! tap in a private network namespace for the host side.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::rate_limiter::{RateLimit, RateLimits};
use crate::devices::virtio::testutil::host::{bind_packet, ifreq, packet_socket, set_up};
use crate::devices::virtio::testutil::{
    desc, wait_readable, RecordingInterrupt, Rings, F_NEXT, F_WRITE,
};

const QSIZE: u16 = 16;
const MEM: usize = 4 << 20;
const RXQ: u64 = 0;
const TXQ: u64 = 0x4000;
const BUFS: u64 = 0x1_0000;
const BUF_LEN: u32 = 2048;
const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
const ETHERTYPE: [u8; 2] = [0x88, 0xb5]; // IEEE local experimental

struct H {
    mem: GuestMemoryMmap,
    rx: Rings,
    tx: Rings,
    dev: Net,
    irq: Arc<RecordingInterrupt>,
    rx_next: u16,
    tx_next: u16,
}

fn harness(tap: File) -> H {
    harness_limited(tap, RateLimits::default())
}

fn harness_limited(tap: File, limits: RateLimits) -> H {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut dev = Net::new(tap, MAC)
        .unwrap()
        .with_rate_limits(limits)
        .unwrap();
    dev.set_acked_features(VIRTIO_F_VERSION_1 | F_MAC);
    let (rx, rxq) = Rings::at(RXQ, QSIZE);
    let (tx, txq) = Rings::at(TXQ, QSIZE);
    let queues: Vec<Queue> = vec![rxq, txq];
    let irq = Arc::new(RecordingInterrupt::default());
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    H {
        mem,
        rx,
        tx,
        dev,
        irq,
        rx_next: 0,
        tx_next: 0,
    }
}

/// The device on one end of a datagram socket pair; the test holds the other ("the tap").
fn socket_harness() -> (H, UnixDatagram) {
    socket_harness_limited(RateLimits::default())
}

fn socket_harness_limited(limits: RateLimits) -> (H, UnixDatagram) {
    let (dev_end, host) = UnixDatagram::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (
        harness_limited(File::from(OwnedFd::from(dev_end)), limits),
        host,
    )
}

/// A 12-byte zero header (no offloads) followed by an Ethernet frame carrying `payload`.
fn packet(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend_from_slice(&[0xff; 6]); // broadcast destination
    p.extend_from_slice(&MAC.0);
    p.extend_from_slice(&ETHERTYPE);
    p.extend_from_slice(payload);
    p
}

impl H {
    /// Queues a TX chain built from `descs` (table slots from `tx_next`) and notifies.
    fn tx_chain(&mut self, descs: &[virtio_queue::desc::RawDescriptor]) {
        self.tx.add_chain(&self.mem, descs, self.tx_next);
        self.tx_next = self.tx_next.wrapping_add(descs.len() as u16);
        self.dev.process_queue(1);
    }

    /// Sends `pkt` as header + frame descriptors (the Linux driver's layout).
    fn send(&mut self, pkt: &[u8]) {
        let addr = BUFS + 0x10_0000 + u64::from(self.tx_next % QSIZE) * 0x1_0000;
        self.mem.write_slice(pkt, GuestAddress(addr)).unwrap();
        let n = self.tx_next;
        self.tx_chain(&[
            desc(addr, VNET_HDR_LEN as u32, F_NEXT, (n + 1) % QSIZE),
            desc(
                addr + VNET_HDR_LEN as u64,
                (pkt.len() - VNET_HDR_LEN) as u32,
                0,
                0,
            ),
        ]);
    }

    /// Posts `n` write-only RX buffers of `BUF_LEN` bytes and notifies.
    fn give_rx(&mut self, n: u16) {
        for _ in 0..n {
            let i = self.rx_next;
            let addr = BUFS + u64::from(i % QSIZE) * u64::from(BUF_LEN);
            self.rx
                .add_chain(&self.mem, &[desc(addr, BUF_LEN, F_WRITE, 0)], i);
            self.rx_next = self.rx_next.wrapping_add(1);
        }
        self.dev.process_queue(0);
    }

    /// Contents of RX used element `i`.
    fn rx_used(&self, i: u16) -> Vec<u8> {
        let (id, len) = self.rx.used_elem(&self.mem, i);
        let mut b = vec![0u8; len as usize];
        let addr = BUFS + u64::from(id) * u64::from(BUF_LEN);
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
}

#[test]
fn tx_frame_reaches_the_backend_with_its_header() {
    let (mut h, host) = socket_harness();
    let pkt = packet(b"hello tap");
    // Meaningless header fields (hdr_len, gso_size, csum_*) reach the tap as zeros.
    let mut sent = pkt.clone();
    sent[2..VNET_HDR_LEN].fill(0xee);
    h.send(&sent);
    let mut got = vec![0u8; 4096];
    let n = host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &pkt[..]);
    assert_eq!(h.tx.used_idx(&h.mem), 1);
    assert_eq!(h.irq.used.load(Ordering::SeqCst), 1);
    assert_eq!(h.dev.metrics.tx_frames, 1);
    assert_eq!(h.dev.metrics.tx_bytes, (pkt.len() - VNET_HDR_LEN) as u64);
}

#[test]
fn rx_frame_lands_in_a_guest_buffer_with_num_buffers_1() {
    let (mut h, host) = socket_harness();
    let pkt = packet(b"from the host");
    host.send(&pkt).unwrap();
    // No buffers yet: nothing is read, the frame waits in the backend.
    h.dev.process_backend();
    assert_eq!(h.rx.used_idx(&h.mem), 0);
    h.give_rx(2);
    assert_eq!(h.rx.used_idx(&h.mem), 1);
    let got = h.rx_used(0);
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
    assert_eq!(&got[..10], &pkt[..10]);
    assert_eq!(&got[12..], &pkt[12..]);
    assert_eq!(h.dev.metrics.rx_frames, 1);
    // The second buffer is still there for the next frame, delivered on the backend's wake-up.
    host.send(&packet(b"second")).unwrap();
    h.dev.process_backend();
    assert_eq!(h.rx.used_idx(&h.mem), 2);
    assert!(h.rx_used(1).ends_with(b"second"));
}

#[test]
fn config_space_holds_the_mac() {
    let (h, _host) = socket_harness();
    let mut m = [0u8; 8];
    h.dev.read_config(0, &mut m);
    assert_eq!(&m[..6], &MAC.0);
    assert_eq!(&m[6..], &[0, 0]);
    let mut far = [0xaau8; 4];
    h.dev.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn hostile_tx_chains_fail_without_reaching_the_backend() {
    let (mut h, host) = socket_harness();
    let ok = packet(b"fine");
    let at = BUFS + 0x20_0000;
    h.mem.write_slice(&ok, GuestAddress(at)).unwrap();
    let len = ok.len() as u32;
    let cases: Vec<(&str, Vec<virtio_queue::desc::RawDescriptor>)> = vec![
        ("out of memory", vec![desc(MEM as u64 - 8, len, 0, 0)]),
        ("address overflow", vec![desc(u64::MAX - 4, len, 0, 0)]),
        ("zero length", vec![desc(at, 0, 0, 0)]),
        ("header only", vec![desc(at, VNET_HDR_LEN as u32, 0, 0)]),
        ("wrong direction", vec![desc(at, len, F_WRITE, 0)]),
        (
            "oversized",
            vec![desc(at, (VNET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0)],
        ),
        ("huge length", vec![desc(at, u32::MAX, 0, 0)]),
    ];
    for (what, descs) in &cases {
        let before = h.dev.metrics.failed_requests;
        h.tx_chain(descs);
        assert_eq!(h.dev.metrics.failed_requests, before + 1, "{what}");
    }
    // A loop: two descriptors pointing at each other.
    let n = h.tx_next;
    h.tx_chain(&[
        desc(at, len, F_NEXT, (n + 1) % QSIZE),
        desc(at, len, F_NEXT, n % QSIZE),
    ]);
    // An offload header although no offload was negotiated (NEEDS_CSUM).
    let mut csum = ok.clone();
    csum[0] = 1;
    h.send(&csum);
    assert_eq!(h.dev.metrics.failed_requests, cases.len() as u64 + 2);
    assert_eq!(h.dev.metrics.tx_frames, 0);
    assert!(
        host.recv(&mut [0u8; 64]).is_err(),
        "nothing reached the backend"
    );
    // Every chain was returned and the device still works.
    assert_eq!(h.tx.used_idx(&h.mem), cases.len() as u16 + 2);
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
    h.send(&ok);
    assert_eq!(h.dev.metrics.tx_frames, 1);
}

#[test]
fn hostile_rx_chains_fail_without_losing_the_frame() {
    let (mut h, host) = socket_harness();
    let pkt = packet(b"keep me");
    host.send(&pkt).unwrap();
    let cases = [
        desc(MEM as u64 - 8, BUF_LEN, F_WRITE, 0),
        desc(u64::MAX - 4, BUF_LEN, F_WRITE, 0),
        desc(BUFS, BUF_LEN, 0, 0), // device-readable
    ];
    for (i, d) in cases.iter().enumerate() {
        h.rx.add_chain(&h.mem, &[*d], i as u16);
    }
    let n = cases.len() as u16;
    // A loop of write-only descriptors.
    h.rx.add_chain(
        &h.mem,
        &[
            desc(BUFS, 64, F_WRITE | F_NEXT, n + 1),
            desc(BUFS, 64, F_WRITE | F_NEXT, n),
        ],
        n,
    );
    h.rx_next = n + 2;
    h.dev.process_queue(0);
    assert_eq!(h.dev.metrics.failed_requests, 4);
    assert_eq!(h.rx.used_idx(&h.mem), 4);
    for i in 0..4 {
        assert_eq!(h.rx.used_elem(&h.mem, i).1, 0);
    }
    // The frame is still waiting and goes into the next good buffer.
    h.give_rx(1);
    assert_eq!(h.rx.used_idx(&h.mem), 5);
    assert!(h.rx_used(4).ends_with(b"keep me"));
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let (mut h, host) = socket_harness();
    host.send(&packet(&[7u8; 3000])).unwrap();
    host.send(&packet(b"small")).unwrap();
    h.give_rx(1);
    assert_eq!(h.dev.metrics.rx_dropped, 1);
    assert_eq!(h.rx.used_idx(&h.mem), 1);
    assert!(h.rx_used(0).ends_with(b"small"));
}

#[test]
fn rx_buffer_without_room_for_the_header_fails() {
    let (mut h, host) = socket_harness();
    host.send(&packet(b"x")).unwrap();
    h.rx.add_chain(&h.mem, &[desc(BUFS, 0, F_WRITE, 0)], 0);
    h.rx.add_chain(
        &h.mem,
        &[desc(BUFS, VNET_HDR_LEN as u32 - 1, F_WRITE, 0)],
        1,
    );
    h.rx_next = 2;
    h.dev.process_queue(0);
    assert_eq!(h.dev.metrics.failed_requests, 2);
    assert_eq!(h.rx.used_idx(&h.mem), 2);
    assert_eq!(h.dev.metrics.rx_frames, 0);
    h.give_rx(1);
    assert!(h.rx_used(2).ends_with(b"x"));
}

#[test]
fn avail_index_far_ahead_makes_the_device_ask_for_reset() {
    let (mut h, host) = socket_harness();
    h.mem
        .write_obj(1000u16, h.tx.avail.unchecked_add(2))
        .unwrap();
    h.dev.process_queue(1);
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
    assert_eq!(h.dev.metrics.resets_requested, 1);
    // Broken devices stay quiet until reset, whatever arrives.
    host.send(&packet(b"ignored")).unwrap();
    h.give_rx(1);
    h.dev.process_backend();
    assert_eq!(h.dev.metrics.resets_requested, 1);
    assert_eq!(h.rx.used_idx(&h.mem), 0);
}

#[test]
fn rx_stops_when_the_guest_has_no_buffers_and_resumes_when_it_adds_some() {
    let (mut h, host) = socket_harness();
    // A Unix datagram queue holds about 10 datagrams by default.
    for i in 0..8u8 {
        host.send(&packet(&[i; 10])).unwrap();
    }
    h.give_rx(3);
    assert_eq!(h.rx.used_idx(&h.mem), 3);
    h.dev.process_backend();
    assert_eq!(h.rx.used_idx(&h.mem), 3);
    h.give_rx(QSIZE - 3);
    assert_eq!(h.rx.used_idx(&h.mem), 8);
    assert_eq!(h.dev.metrics.rx_frames, 8);
    for i in 0..8u16 {
        assert!(h.rx_used(i).ends_with(&[i as u8; 10]), "frame {i} in order");
    }
}

#[test]
fn mac_addresses_parse_and_print() {
    let m: MacAddr = "AA:bb:0C:dd:EE:ff".parse().unwrap();
    assert_eq!(m.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0xff]);
    assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:ff");
    for bad in [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "a:bb:cc:dd:ee:ff",
        "gg:bb:cc:dd:ee:ff",
        "01:00:5e:00:00:01",
        "aa-bb-cc-dd-ee-ff",
        "+a:bb:cc:dd:ee:ff",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
    let r = MacAddr::random().unwrap();
    assert_eq!(r.0[0] & 3, 2, "locally administered unicast: {r}");
}

#[test]
fn bad_tap_names_are_refused_before_any_syscall() {
    for bad in ["", "0123456789abcdef", "a/b", "a\0b"] {
        assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad:?}");
    }
}

/// A tap in a private network namespace (this test thread's own), up, with a packet socket
/// bound to it that plays the host network.
struct HostSide {
    tap: Tap,
    sock: OwnedFd,
}

fn host_side(name: &str) -> Result<HostSide, String> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is absent".into());
    }
    // SAFETY: unshare changes only this thread's network namespace; nextest runs each test in
    // its own process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot create a network namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let tap = Tap::open(name).map_err(|e| format!("cannot create a tap: {e:#}"))?;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let sock = packet_socket(0);
    set_up(&sock, name);
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFINDEX reads and writes one ifreq; the union field read is the one it set.
    let index = unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr),
            0
        );
        ifr.ifr_ifru.ifru_ifindex
    };
    bind_packet(&sock, index);
    Ok(HostSide { tap, sock })
}

fn tap_test_setup(name: &str) -> Option<HostSide> {
    match host_side(name) {
        Ok(s) => Some(s),
        Err(reason) => {
            crate::skip_rule::skip(&reason);
            None
        }
    }
}

#[test]
fn tx_through_a_real_tap_reaches_the_host_interface() {
    let Some(side) = tap_test_setup("sktx0") else {
        return;
    };
    assert_eq!(side.tap.name(), "sktx0");
    let mut h = harness(side.tap.into_file());
    let pkt = packet(b"guest to host over a tap");
    h.send(&pkt);
    assert_eq!(h.dev.metrics.tx_frames, 1, "{:?}", h.dev.metrics);
    let mut sock = File::from(side.sock);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "frame never reached the interface"
        );
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let n = sock.read(&mut buf).unwrap();
        // The host stack may send its own frames; look for ours (without the vnet header).
        if buf[..n] == pkt[VNET_HDR_LEN..] {
            break;
        }
    }
}

#[test]
fn rx_from_a_real_tap_lands_in_a_guest_buffer() {
    let Some(side) = tap_test_setup("skrx0") else {
        return;
    };
    let tap_fd = side.tap.into_file();
    let raw_tap = tap_fd.as_raw_fd();
    let mut h = harness(tap_fd);
    let pkt = packet(b"host to guest over a tap");
    let mut sock = File::from(side.sock);
    sock.write_all(&pkt[VNET_HDR_LEN..]).unwrap();
    h.give_rx(QSIZE);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    loop {
        assert!(Instant::now() < deadline, "frame never reached the guest");
        let used = h.rx.used_idx(&h.mem);
        // The host stack may send its own frames; look for ours.
        if let Some(got) = (seen..used)
            .map(|i| h.rx_used(i))
            .find(|b| b.ends_with(b"host to guest over a tap"))
        {
            assert_eq!(&got[12..], &pkt[12..]);
            assert_eq!(&got[10..12], &1u16.to_le_bytes());
            break;
        }
        seen = used;
        let mut pfd = libc::pollfd {
            fd: raw_tap,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        h.dev.process_backend();
    }
}

/// Rate of the limited tests' buckets (bytes/s) and their burst.
const RATE: u64 = 256 << 10;
const BURST: u64 = 32 << 10;

fn limit(bytes_per_sec: u64, burst_bytes: u64) -> RateLimit {
    RateLimit {
        bytes_per_sec,
        burst_bytes,
        ..RateLimit::default()
    }
}

/// The guest keeps its TX ring full of `pkt` (notifying for each chain it adds) and the host
/// drains the tap, until `done(bytes the host got, time)`. The device runs only on those
/// notifications and, as in the VMM loop, when a limiter's timer is readable. Returns the
/// bytes and the time taken.
fn flood_tx(
    h: &mut H,
    host: &UnixDatagram,
    pkt: &[u8],
    done: impl Fn(u64, Duration) -> bool,
) -> (u64, Duration) {
    host.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut got = 0u64;
    let mut queued = 0u16;
    let mut buf = vec![0u8; 4096];
    while !done(got, start.elapsed()) {
        assert!(start.elapsed() < Duration::from_secs(5), "stalled at {got}");
        // Two descriptors a chain: at most QSIZE / 2 chains in flight (and no more per turn
        // than the host's datagram queue holds).
        let in_flight = queued.wrapping_sub(h.tx.used_idx(&h.mem));
        for _ in in_flight..QSIZE / 2 {
            h.send(pkt);
            queued = queued.wrapping_add(1);
        }
        got += drain_frames(host, &mut buf);
        if wait_readable(&h.dev.timer_fds(), 1) {
            h.dev.process_timer();
        }
    }
    let took = start.elapsed();
    // The last turn's timer may have sent frames after the drain above: count them too.
    got += drain_frames(host, &mut buf);
    (got, took)
}

/// Reads every datagram the host has waiting; returns their frame bytes (headers left out).
fn drain_frames(host: &UnixDatagram, buf: &mut [u8]) -> u64 {
    let mut got = 0;
    while let Ok(n) = host.recv(buf) {
        got += (n - VNET_HDR_LEN) as u64;
    }
    got
}

#[test]
fn a_guest_flooding_tx_is_held_to_the_rate_and_loses_nothing() {
    let (mut h, host) = socket_harness_limited(RateLimits {
        tx: limit(RATE, BURST),
        ..RateLimits::default()
    });
    assert_eq!(h.dev.timer_fds().len(), 1);
    let pkt = packet(&[0x5a; 1000]);
    let frame = (pkt.len() - VNET_HDR_LEN) as u64;
    let (got, took) = flood_tx(&mut h, &host, &pkt, |_, t| t >= Duration::from_millis(500));
    let allowed = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + frame;
    crate::devices::virtio::testutil::assert_held_to_rate(got, allowed, took);
    // Held back, not dropped: every chain the device took reached the host; the rest wait.
    let m = h.dev.metrics;
    assert!(m.tx_throttled > 0);
    assert_eq!((m.tx_dropped, m.failed_requests), (0, 0));
    assert_eq!(m.tx_bytes, got);
    assert_eq!(u64::from(h.tx.used_idx(&h.mem)), m.tx_frames);
    assert!(
        h.tx_next / 2 > h.tx.used_idx(&h.mem),
        "no chains left waiting"
    );
    assert!(!h.irq.needs_reset.load(Ordering::SeqCst));
}

#[test]
fn sending_1_mib_takes_the_time_the_bucket_allows() {
    // 2 MiB/s with a 256 KiB burst: the last 768 KiB take 375 ms.
    let (mut h, host) = socket_harness_limited(RateLimits {
        tx: limit(2 << 20, 256 << 10),
        ..RateLimits::default()
    });
    let pkt = packet(&[0xa5; 1400]);
    let (got, took) = flood_tx(&mut h, &host, &pkt, |got, _| got >= 1 << 20);
    let allowed = (256 << 10) + ((2 << 20) as f64 * took.as_secs_f64()) as u64 + 1400;
    assert!(
        got <= allowed,
        "{got} bytes in {took:?}, at most {allowed} allowed"
    );
    assert!(
        took >= Duration::from_millis(360) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn without_a_limit_the_same_flood_is_not_throttled() {
    let (mut h, host) = socket_harness();
    assert!(h.dev.timer_fds().is_empty());
    let pkt = packet(&[0x5a; 1000]);
    let (got, took) = flood_tx(&mut h, &host, &pkt, |_, t| t >= Duration::from_millis(200));
    let limited = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + 1014;
    assert!(got > 2 * limited, "{got} bytes in {took:?}");
    assert_eq!(h.dev.metrics.tx_throttled, 0);
    assert_eq!(h.dev.metrics.tx_bytes, got);
}

#[test]
fn rx_from_a_flooding_host_is_held_to_the_rate() {
    let (mut h, host) = socket_harness_limited(RateLimits {
        rx: limit(RATE, BURST),
        ..RateLimits::default()
    });
    host.set_nonblocking(true).unwrap();
    let pkt = packet(&[0x3c; 1000]);
    h.give_rx(QSIZE);
    let start = Instant::now();
    let mut returned = 0u16;
    while start.elapsed() < Duration::from_millis(500) {
        // The host sends until its queue is full; each send is a readable edge of the tap.
        while host.send(&pkt).is_ok() {}
        h.dev.process_backend();
        // The guest hands back the buffers it got.
        let used = h.rx.used_idx(&h.mem);
        h.give_rx(used.wrapping_sub(returned));
        returned = used;
        if wait_readable(&h.dev.timer_fds(), 1) {
            h.dev.process_timer();
        }
    }
    let took = start.elapsed();
    let m = h.dev.metrics;
    let allowed = BURST + (RATE as f64 * took.as_secs_f64()) as u64 + 1014;
    assert!(m.rx_bytes <= allowed, "{} bytes in {took:?}", m.rx_bytes);
    assert!(
        m.rx_bytes >= allowed / 2,
        "{} bytes in {took:?}",
        m.rx_bytes
    );
    assert!(m.rx_throttled > 0);
    assert_eq!((m.rx_dropped, m.failed_requests), (0, 0));
}
