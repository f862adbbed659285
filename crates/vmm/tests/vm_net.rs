//! KVM test of virtio-net on a real tap: the VMM runs (seccomp on) in a private network
//! namespace of this test; a tiny 32-bit guest drives the device by hand, receives a frame the
//! host side sends through an `AF_PACKET` socket on the tap, and sends one back.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::host::{bind_packet, ifreq, packet_socket, set_up};
use common::{assert_run, binutils, build_guest, kvm_usable, pvh_guest, require, run_tiny_guest};
use skerry_vmm::exit::EXIT_RESET;

const TAP: &str = "skvmnet0";
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

const BODY: &str = r#"
    .set Q0, 0x40000
    .set Q1, 0x44000
    .set RXBUF, 0x30000
    .set TXBUF, 0x32000
_start:
    cmpl $0x74726976, BASE
    jne fail
    cmpl $1, BASE+0x08
    jne fail
    /* The MAC from the config space. */
    cmpb $2, BASE+0x100
    jne fail
    cmpb $1, BASE+0x105
    jne fail
    movl $1, BASE+0x70
    movl $3, BASE+0x70
    movl $1, BASE+0x24
    movl $1, BASE+0x20
    movl $0, BASE+0x24
    movl $0x20, BASE+0x20
    movl $0xb, BASE+0x70
    testl $8, BASE+0x70
    jz fail
    setup_queues 2, Q0
    /* One 2 KiB RX buffer. */
    movl $RXBUF, Q0
    movl $2048, Q0+8
    movl $2, Q0+12
    movl $0x00010000, Q0+0x1000
    movl $0xf, BASE+0x70
    testl $0x40, BASE+0x70
    jnz fail
    movl $0, BASE+0x50
    wait_used Q0+0x2002, 1, 50000000
    /* Header (12) + our frame: ethertype 0x88b5 at 12+12, "ping" after it. */
    cmpw $0xb588, RXBUF+24
    jne fail
    cmpl $0x676e6970, RXBUF+26
    jne fail
    /* TX: zero header, broadcast, our MAC, 0x88b5, "pong". */
    movl $0xffffffff, TXBUF+12
    movl $0x0002ffff, TXBUF+16
    movl $0x01000000, TXBUF+20
    movw $0xb588, TXBUF+24
    movl $0x676e6f70, TXBUF+26
    movl $TXBUF, Q1
    movl $30, Q1+8
    movl $0x00010000, Q1+0x1000
    movl $1, BASE+0x50
    wait_used Q1+0x2002, 1, 50000000
"#;

/// Plays the host network: waits for the VMM's tap, brings it up, sends "ping" frames until
/// the guest's "pong" frame shows up (returned) or `done` is set.
fn host_side(done: &AtomicBool) -> Option<Vec<u8>> {
    let sock = packet_socket(libc::SOCK_NONBLOCK);
    let mut ifr = ifreq(TAP);
    // SAFETY: SIOCGIFINDEX reads and writes one ifreq.
    while unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) } != 0 {
        if done.load(Ordering::SeqCst) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: a union field set by SIOCGIFINDEX just above.
    let index = unsafe { ifr.ifr_ifru.ifru_ifindex };
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6"), "1");
    set_up(&sock, TAP);
    bind_packet(&sock, index);
    let mut sock = File::from(sock);
    let mut ping = GUEST_MAC.to_vec();
    ping.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
    ping.extend_from_slice(&ETHERTYPE);
    ping.extend_from_slice(b"ping");
    let mut buf = [0u8; 2048];
    let mut last_ping = Instant::now() - Duration::from_secs(1);
    loop {
        // Read whatever arrived before looking at `done`, so a last frame is not missed.
        let finished = done.load(Ordering::SeqCst);
        while let Ok(n) = sock.read(&mut buf) {
            if buf[..n].ends_with(b"pong") && buf[6..12] == GUEST_MAC {
                return Some(buf[..n].to_vec());
            }
        }
        if finished {
            return None;
        }
        if last_ping.elapsed() > Duration::from_millis(100) {
            let _ = sock.write(&ping);
            last_ping = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn vm_virtio_net_frames_cross_a_real_tap() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        require(Err("/dev/net/tun is absent".into()));
        return;
    }
    // SAFETY: unshare changes only this thread's network namespace (nextest runs each test in
    // its own process); the VMM and the host-side thread started below inherit it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        require(Err(format!("cannot create a network namespace: {e}")));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(
        dir.path(),
        "net",
        &pvh_guest(
            BODY,
            "virtio-net ok: ping received, pong sent",
            "virtio-net FAILED",
        ),
    );
    let done = Arc::new(AtomicBool::new(false));
    let host = {
        let done = done.clone();
        std::thread::spawn(move || host_side(&done))
    };
    let run = run_tiny_guest(
        &elf,
        &["--net-tap", TAP, "--net-mac", "02:00:00:00:00:01"],
        Duration::from_secs(60),
    );
    done.store(true, Ordering::SeqCst);
    let pong = host.join().unwrap();
    println!("{run:?}");
    assert_run(&run, "virtio-net ok: ping received, pong sent", EXIT_RESET);
    let pong = pong.expect("the guest's frame never reached the host side");
    assert_eq!(&pong[..6], &[0xff; 6]);
    assert_eq!(&pong[12..14], &ETHERTYPE);
}
