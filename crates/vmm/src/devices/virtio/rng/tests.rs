//! virtio-rng driven through virtqueues built in plain memory, including hostile chains.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::testutil::{desc, RecordingInterrupt, F_INDIRECT, F_NEXT, F_WRITE};

const QSIZE: u16 = 16;
const MEM: usize = 1 << 20;
const BUF: u64 = 0x1_0000;

struct Harness {
    mem: GuestMemoryMmap,
    rng: Rng,
    irq: Arc<RecordingInterrupt>,
    used_addr: GuestAddress,
    avail_addr: GuestAddress,
}

fn harness(descs: &[RawDescriptor]) -> Harness {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let vq = MockSplitQueue::new(&mem, QSIZE);
    vq.add_desc_chains(descs, 0).unwrap();
    let q: Queue = vq.create_queue().unwrap();
    let (used_addr, avail_addr) = (vq.used_addr(), vq.avail_addr());
    let mut rng = Rng::new(Box::new(GetRandom)).unwrap();
    rng.set_acked_features(VIRTIO_F_VERSION_1);
    let irq = Arc::new(RecordingInterrupt::default());
    rng.activate(mem.clone(), irq.clone(), vec![q]).unwrap();
    Harness {
        mem,
        rng,
        irq,
        used_addr,
        avail_addr,
    }
}

impl Harness {
    fn process(&mut self) {
        self.rng.process_queue(0);
    }
    fn used_idx(&self) -> u16 {
        self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap()
    }
    fn used_len(&self, i: u64) -> u32 {
        self.mem
            .read_obj(self.used_addr.unchecked_add(4 + 8 * i + 4))
            .unwrap()
    }
    fn bytes_at(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn fills_a_write_only_buffer_and_interrupts() {
    let mut h = harness(&[desc(BUF, 64, F_WRITE, 0)]);
    h.process();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 64);
    assert_ne!(h.bytes_at(BUF, 64), vec![0u8; 64]);
    assert_eq!(h.irq.used.load(Ordering::SeqCst), 1);
    assert_eq!(h.rng.metrics.bytes, 64);
}

#[test]
fn read_only_descriptor_fails_the_request_without_writing() {
    let mut h = harness(&[desc(BUF, 64, 0, 0)]);
    h.process();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 0);
    assert_eq!(h.bytes_at(BUF, 64), vec![0u8; 64]);
    assert_eq!(h.rng.metrics.failed_requests, 1);
}

#[test]
fn buffer_outside_guest_memory_fails_the_request() {
    for addr in [MEM as u64 - 8, 0xffff_ffff_ffff_f000, u64::MAX] {
        let mut h = harness(&[desc(addr, 64, F_WRITE, 0)]);
        h.process();
        assert_eq!(h.used_idx(), 1, "{addr:#x}");
        assert_eq!(h.used_len(0), 0, "{addr:#x}");
        assert_eq!(h.rng.metrics.failed_requests, 1);
    }
}

#[test]
fn zero_length_descriptor_completes_with_zero_bytes() {
    let mut h = harness(&[desc(BUF, 0, F_WRITE, 0)]);
    h.process();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 0);
}

#[test]
fn oversized_request_fails() {
    let half = (MAX_REQUEST_BYTES / 2 + 1) as u32;
    let mut h = harness(&[
        desc(BUF, half, F_WRITE | F_NEXT, 1),
        desc(BUF + u64::from(half), half, F_WRITE, 0),
    ]);
    h.process();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 0);
    assert_eq!(h.rng.metrics.failed_requests, 1);
}

#[test]
fn descriptor_loop_terminates() {
    let mut h = harness(&[
        desc(BUF, 16, F_WRITE | F_NEXT, 1),
        desc(BUF + 16, 16, F_WRITE | F_NEXT, 0),
    ]);
    h.process();
    // virtio-queue cuts the chain at the queue size; the device sees the cut and fails it.
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 0);
    assert_eq!(h.rng.metrics.failed_requests, 1);
}

#[test]
fn bogus_indirect_table_yields_nothing() {
    let mut h = harness(&[desc(0xffff_0000_0000, 17, F_INDIRECT, 0)]);
    h.process();
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_len(0), 0);
}

#[test]
fn avail_index_far_ahead_makes_the_device_ask_for_reset() {
    let mut h = harness(&[desc(BUF, 64, F_WRITE, 0)]);
    h.mem
        .write_obj(1000u16, h.avail_addr.unchecked_add(2))
        .unwrap();
    h.process();
    assert!(h.irq.needs_reset.load(Ordering::SeqCst));
    assert_eq!(h.rng.metrics.resets_requested, 1);
    assert_eq!(h.used_idx(), 0);
    // Broken devices stay quiet until reset.
    h.process();
    assert_eq!(h.rng.metrics.resets_requested, 1);
}

#[test]
fn many_notifications_with_nothing_available_are_cheap_and_silent() {
    let mut h = harness(&[desc(BUF, 8, F_WRITE, 0)]);
    for _ in 0..1000 {
        h.process();
    }
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.irq.used.load(Ordering::SeqCst), 1);
}

#[test]
fn activation_requires_version_1_and_one_queue() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let irq = Arc::new(RecordingInterrupt::default());
    let mut rng = Rng::new(Box::new(GetRandom)).unwrap();
    let q = Queue::new(QSIZE).unwrap();
    assert!(matches!(
        rng.activate(mem.clone(), irq.clone(), vec![Queue::new(QSIZE).unwrap()]),
        Err(ActivateError::NoVersion1)
    ));
    rng.set_acked_features(VIRTIO_F_VERSION_1);
    assert!(matches!(
        rng.activate(mem.clone(), irq.clone(), vec![]),
        Err(ActivateError::QueueCount { .. })
    ));
    rng.activate(mem, irq, vec![q]).unwrap();
    assert!(rng.is_active());
    rng.reset();
    assert!(!rng.is_active());
}
