//! The virtio-fs frontend against a real virtiofsd (no KVM): memfd guest memory and queues
//! built in it, FUSE requests put in the request queue, a kick, the call eventfd, the reply
//! read back from guest memory. Plus back ends that are missing, talk garbage or stay silent.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::testutil::host::{virtiofsd, Virtiofsd};
use crate::devices::virtio::testutil::{desc, RecordingInterrupt, Rings, F_NEXT, F_WRITE};
use crate::vstate::create_guest_memory;

const HIPRIO: u64 = 0x10_0000;
const REQUESTS: u64 = 0x20_0000;
const BUFS: u64 = 0x40_0000;
const REPLY_LEN: u32 = 4096;
const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_INIT: u32 = 26;

/// A virtiofsd serving a temp dir holding `hello.txt`.
fn daemon() -> Option<Virtiofsd> {
    let bin = match virtiofsd() {
        Ok(bin) => bin,
        Err(reason) => {
            crate::skip_rule::skip(&reason);
            return None;
        }
    };
    let d = Virtiofsd::start(&bin);
    std::fs::write(d.shared.join("hello.txt"), b"hello, virtio-fs\n").unwrap();
    Some(d)
}

struct H {
    mem: GuestMemoryMmap,
    req: Rings,
    dev: Fs,
    irq: Arc<RecordingInterrupt>,
    next: u16,
    unique: u64,
}

fn activate(mut dev: Fs) -> Result<H, ActivateError> {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (_, hq) = Rings::at(HIPRIO, QUEUE_SIZE);
    let (req, rq) = Rings::at(REQUESTS, QUEUE_SIZE);
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    let irq = Arc::new(RecordingInterrupt::default());
    dev.activate(mem.clone(), irq.clone(), vec![hq, rq])?;
    // The start itself happens on the VMM thread's wake-up.
    dev.process_backend();
    Ok(H {
        mem,
        req,
        dev,
        irq,
        next: 0,
        unique: 1,
    })
}

impl H {
    /// Sends one FUSE request (header + `body`) and returns the reply (out header + body).
    fn fuse(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen + padding
        req.extend_from_slice(body);
        let slot = u64::from(self.next % QUEUE_SIZE);
        let (inp, out) = (BUFS + slot * 0x4000, BUFS + slot * 0x4000 + 0x2000);
        self.mem.write_slice(&req, GuestAddress(inp)).unwrap();
        let n = self.next;
        self.req.add_chain(
            &self.mem,
            &[
                desc(inp, req.len() as u32, F_NEXT, (n + 1) % QUEUE_SIZE),
                desc(out, REPLY_LEN, F_WRITE, 0),
            ],
            n,
        );
        self.next = n.wrapping_add(2);
        let used_before = self.req.used_idx(&self.mem);
        // The guest's QueueNotify: under KVM an ioeventfd writes this same eventfd.
        self.dev.queue_events()[1].write(1).unwrap();
        let mut pfd = libc::pollfd {
            fd: self.dev.backend_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(r, 1, "no call from virtiofsd within 10 s");
        let irqs = self.irq.used.load(std::sync::atomic::Ordering::SeqCst);
        self.dev.process_backend();
        assert_eq!(
            self.irq.used.load(std::sync::atomic::Ordering::SeqCst),
            irqs + 1
        );
        assert_eq!(self.req.used_idx(&self.mem), used_before.wrapping_add(1));
        let (head, len) = self.req.used_elem(&self.mem, used_before);
        assert_eq!(head, u32::from(n % QUEUE_SIZE));
        let mut reply = vec![0u8; len as usize];
        self.mem.read_slice(&mut reply, GuestAddress(out)).unwrap();
        assert!(reply.len() >= 16, "short reply {reply:?}");
        let u32_at = |o: usize| u32::from_le_bytes(reply[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(0) as usize, reply.len(), "fuse_out_header.len");
        assert_eq!(u32_at(4), 0, "fuse_out_header.error for opcode {opcode}");
        assert_eq!(
            u64::from_le_bytes(reply[8..16].try_into().unwrap()),
            self.unique
        );
        self.unique += 1;
        reply
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[test]
fn fuse_requests_reach_virtiofsd_and_replies_land_in_guest_memory() {
    let Some(d) = daemon() else {
        return;
    };
    let dev = Fs::new(&d.socket, "skerryfs", REPLY_TIMEOUT, false).unwrap();
    assert_eq!(dev.device_type(), TYPE_FS);
    assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..9], b"skerryfs\0");
    assert_eq!(&cfg[36..], &1u32.to_le_bytes());
    let mut h = activate(dev).unwrap();
    assert!(h.dev.is_active());

    // FUSE_INIT 7.31, no flags.
    let mut init = Vec::new();
    for v in [7u32, 31, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    let reply = h.fuse(FUSE_INIT, 0, &init);
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into().unwrap()),
        7,
        "major"
    );

    let reply = h.fuse(FUSE_LOOKUP, 1, b"hello.txt\0");
    // fuse_entry_out: nodeid at 0, attr (fuse_attr) at 40: ino, size.
    let nodeid = u64_at(&reply, 16);
    assert_ne!(nodeid, 0);
    assert_eq!(u64_at(&reply, 16 + 48), 17, "size of hello.txt");

    // fuse_getattr_in: flags, dummy, fh; fuse_attr_out: attr at 16.
    let reply = h.fuse(FUSE_GETATTR, nodeid, &[0u8; 16]);
    assert_eq!(u64_at(&reply, 16 + 24), 17);

    // A reset stops the rings (on the VMM thread); the device can start again and serve.
    h.dev.reset();
    assert!(!h.dev.is_active());
    h.dev.process_backend();
    let mut h = activate(h.dev).unwrap();
    let reply = h.fuse(FUSE_INIT, 0, &init);
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into().unwrap()),
        7,
        "major"
    );
}

#[test]
fn missing_back_end_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Fs::new(&dir.path().join("nobody.sock"), "t", REPLY_TIMEOUT, false)
        .err()
        .unwrap();
    assert!(matches!(e, FsError::Connect { .. }), "{e}");
}

#[test]
fn bad_tags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    for tag in ["", "a\0b", &"x".repeat(TAG_MAX + 1)] {
        assert!(
            matches!(Fs::new(&s, tag, REPLY_TIMEOUT, false), Err(FsError::Tag(_))),
            "{tag:?}"
        );
    }
}

/// A back end that accepts and then does `behave` with the connection.
fn fake_back_end(behave: fn(std::os::unix::net::UnixStream)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            behave(s);
        }
    });
    (dir, path)
}

#[test]
fn garbage_back_end_is_an_error() {
    let (_dir, path) = fake_back_end(|mut s| {
        let mut buf = [0u8; 256];
        // Answer every request with junk.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&[0xa5; 64]).is_err() {
                break;
            }
        }
    });
    let e = Fs::new(&path, "t", REPLY_TIMEOUT, false).err().unwrap();
    assert!(matches!(e, FsError::Vhost { .. }), "{e}");
}

#[test]
fn back_end_that_hangs_up_is_an_error() {
    let (_dir, path) = fake_back_end(drop);
    let e = Fs::new(&path, "t", REPLY_TIMEOUT, false).err().unwrap();
    assert!(matches!(e, FsError::Vhost { .. }), "{e}");
}

#[test]
fn silent_back_end_is_cut_off_by_the_watchdog() {
    let (_dir, path) = fake_back_end(|s| {
        std::thread::sleep(Duration::from_secs(30));
        drop(s);
    });
    let start = Instant::now();
    let e = Fs::new(&path, "t", Duration::from_millis(300), false)
        .err()
        .unwrap();
    assert!(matches!(e, FsError::Vhost { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// A real virtiofsd that stops answering after the start-up negotiation (SIGSTOP): the start
/// on the VMM thread is cut off and the device asks for a reset.
#[test]
fn back_end_that_freezes_makes_the_start_fail_in_bounded_time() {
    let Some(d) = daemon() else {
        return;
    };
    let dev = Fs::new(&d.socket, "t", Duration::from_millis(500), false).unwrap();
    d.freeze();
    let start = Instant::now();
    let h = activate(dev).unwrap();
    assert!(h.irq.needs_reset.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Lets the daemon be killed and reaped on drop.
    d.thaw();
}

#[test]
fn back_end_that_dies_before_activation_makes_the_device_ask_for_reset() {
    let Some(mut d) = daemon() else {
        return;
    };
    let dev = Fs::new(&d.socket, "t", REPLY_TIMEOUT, false).unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let h = activate(dev).unwrap();
    assert!(h.irq.needs_reset.load(std::sync::atomic::Ordering::SeqCst));
}
