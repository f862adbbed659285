//! virtio-blk driven through a virtqueue in plain memory, including hostile requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::testutil::{desc, RecordingInterrupt, Rings, F_NEXT, F_WRITE};

const QSIZE: u16 = 64;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const DISK_SECTORS: u64 = 64;

struct H {
    mem: GuestMemoryMmap,
    dev: Block,
    rings: Rings,
    irq: Arc<RecordingInterrupt>,
    file: tempfile::NamedTempFile,
    next: u16,
}

fn harness(read_only: bool) -> H {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let disk: Vec<u8> = (0..DISK_SECTORS * SECTOR)
        .map(|i| (i / SECTOR) as u8)
        .collect();
    std::fs::write(file.path(), disk).unwrap();
    let mut dev = Block::new(file.path(), read_only).unwrap();
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    let mock = MockSplitQueue::new(&mem, QSIZE);
    let rings = Rings::of(&mock, QSIZE);
    let q: Queue = mock.create_queue().unwrap();
    let irq = Arc::new(RecordingInterrupt::default());
    dev.activate(mem.clone(), irq.clone(), vec![q]).unwrap();
    H {
        mem,
        dev,
        rings,
        irq,
        file,
        next: 0,
    }
}

impl H {
    /// Submits `descs` (with `next` fields relative to the first) and returns (status, used len).
    fn submit(&mut self, descs: &[RawDescriptor]) -> (u8, u32) {
        let first = self.next;
        let fixed: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = virtio_queue::desc::split::Descriptor::from(*d);
                let next = if i + 1 < descs.len() {
                    first + i as u16 + 1
                } else {
                    0
                };
                desc(
                    d.addr().0,
                    d.len(),
                    d.flags(),
                    if d.flags() & F_NEXT != 0 {
                        next
                    } else {
                        d.next()
                    },
                )
            })
            .collect();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.rings.add_chain(&self.mem, &fixed, first);
        self.next += descs.len() as u16;
        let before = self.rings.used_idx(&self.mem);
        self.dev.process_queue(0);
        assert_eq!(
            self.rings.used_idx(&self.mem),
            before.wrapping_add(1),
            "one used entry per request"
        );
        let (_, len) = self.rings.used_elem(&self.mem, before);
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn request(&mut self, kind: u32, sector: u64, data_len: u32, data_flags: u16) -> (u8, u32) {
        self.header(kind, sector);
        self.submit(&[
            desc(HDR, 16, F_NEXT, 0),
            desc(DATA, data_len, data_flags | F_NEXT, 0),
            desc(STATUS, 1, F_WRITE, 0),
        ])
    }
}

#[test]
fn read_write_flush_and_get_id() {
    let mut h = harness(false);
    assert_eq!(h.request(T_IN, 3, 1024, F_WRITE), (S_OK, 1025));
    let mut b = vec![0u8; 1024];
    h.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b[..512].iter().all(|x| *x == 3) && b[512..].iter().all(|x| *x == 4));

    h.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(h.request(T_OUT, 10, 512, 0), (S_OK, 1));
    let disk = std::fs::read(h.file.path()).unwrap();
    assert!(disk[10 * 512..11 * 512].iter().all(|x| *x == 0xab));

    h.header(T_FLUSH, 0);
    assert_eq!(
        h.submit(&[desc(HDR, 16, F_NEXT, 0), desc(STATUS, 1, F_WRITE, 0)]),
        (S_OK, 1)
    );
    assert_eq!(h.request(T_GET_ID, 0, 20, F_WRITE), (S_OK, 21));
    assert_eq!(h.irq.used.load(Ordering::SeqCst), 4);
    let mut cap = [0u8; 8];
    h.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
}

#[test]
fn read_only_device_refuses_writes() {
    let mut h = harness(true);
    assert_ne!(h.dev.avail_features() & F_RO, 0);
    assert_eq!(h.request(T_OUT, 0, 512, 0).0, S_IOERR);
    assert_eq!(h.request(T_IN, 0, 512, F_WRITE).0, S_OK);
}

#[test]
fn out_of_range_unaligned_and_oversized_requests_fail() {
    let mut h = harness(false);
    assert_eq!(h.request(T_IN, DISK_SECTORS, 512, F_WRITE).0, S_IOERR);
    assert_eq!(h.request(T_IN, DISK_SECTORS - 1, 1024, F_WRITE).0, S_IOERR);
    assert_eq!(h.request(T_IN, u64::MAX, 512, F_WRITE).0, S_IOERR);
    assert_eq!(h.request(T_IN, 0, 100, F_WRITE).0, S_IOERR);
    assert_eq!(
        h.request(T_IN, 0, (MAX_REQUEST_BYTES + 512) as u32, F_WRITE)
            .0,
        S_IOERR
    );
    assert_eq!(h.request(99, 0, 512, F_WRITE).0, S_UNSUPP);
    assert_eq!(h.dev.metrics.failed_requests, 6);
}

#[test]
fn wrong_direction_and_bad_addresses_fail() {
    let mut h = harness(false);
    // Read into a device-readable buffer, write from a device-writable one.
    assert_eq!(h.request(T_IN, 0, 512, 0).0, S_IOERR);
    assert_eq!(h.request(T_OUT, 0, 512, F_WRITE).0, S_IOERR);
    // Data buffer outside guest memory.
    h.header(T_IN, 0);
    let r = h.submit(&[
        desc(HDR, 16, F_NEXT, 0),
        desc(0xffff_0000_0000, 512, F_WRITE | F_NEXT, 0),
        desc(STATUS, 1, F_WRITE, 0),
    ]);
    assert_eq!(r.0, S_IOERR);
    // Header too short, header write-only.
    let r = h.submit(&[desc(HDR, 8, F_NEXT, 0), desc(STATUS, 1, F_WRITE, 0)]);
    assert_eq!(r.0, S_IOERR);
    let r = h.submit(&[
        desc(HDR, 16, F_WRITE | F_NEXT, 0),
        desc(STATUS, 1, F_WRITE, 0),
    ]);
    assert_eq!(r.0, S_IOERR);
}

#[test]
fn missing_or_readonly_status_gives_zero_length_and_no_panic() {
    let mut h = harness(false);
    h.header(T_IN, 0);
    // Status descriptor read-only: nothing can be reported.
    let r = h.submit(&[desc(HDR, 16, F_NEXT, 0), desc(STATUS, 1, 0, 0)]);
    assert_eq!(r, (0xff, 0));
    // Single descriptor chain.
    let r = h.submit(&[desc(HDR, 16, 0, 0)]);
    assert_eq!(r, (0xff, 0));
    // Zero-length status.
    let r = h.submit(&[desc(HDR, 16, F_NEXT, 0), desc(STATUS, 0, F_WRITE, 0)]);
    assert_eq!(r, (0xff, 0));
}

#[test]
fn descriptor_loop_fails_and_avail_overrun_resets() {
    let mut h = harness(false);
    h.header(T_IN, 0);
    let first = h.next;
    // Two descriptors pointing at each other.
    h.rings.add_chain(
        &h.mem,
        &[
            desc(HDR, 16, F_NEXT, first + 1),
            desc(DATA, 512, F_WRITE | F_NEXT, first),
        ],
        first,
    );
    h.next += 2;
    h.dev.process_queue(0);
    assert_eq!(h.rings.used_idx(&h.mem), 1);
    assert_eq!(h.rings.used_elem(&h.mem, 0).1, 0);
    // The driver claims far more available entries than the queue holds.
    use vm_memory::Address;
    h.mem
        .write_obj(500u16, h.rings.avail.unchecked_add(2))
        .unwrap();
    h.dev.process_queue(0);
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
}
