//! virtio-blk queue handling: a queue built from the input over a small backing file
//! (read-write or read-only), then guest steps interleaved with notifications and resets.
//! The device must never panic or hang, never change the file's size, and never write a
//! read-only file.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skerry_vmm::devices::virtio::block::{Block, QUEUE_SIZE, SECTOR};
use skerry_vmm::devices::virtio::VirtioDevice;
use skerry_vmm_fuzz::*;

#[derive(Arbitrary, Debug)]
enum Step {
    Guest(GuestStep),
    Notify,
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue: QueueSpec,
    /// The file has `sectors % 65` whole sectors plus `tail % SECTOR` stray bytes.
    sectors: u8,
    tail: u16,
    read_only: bool,
    steps: Vec<Step>,
}

static N: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    let Some(q) = build_queue(&mem, 0, QUEUE_SIZE, &input.queue) else {
        return;
    };
    let rings = [Rings::of(&q)];
    let path = scratch_dir().join(format!("blk-{}", N.fetch_add(1, Ordering::Relaxed)));
    let len = u64::from(input.sectors % 65) * SECTOR + u64::from(input.tail) % SECTOR;
    std::fs::write(&path, vec![0u8; len as usize]).expect("backing file");
    let mut blk = Block::new(&path, input.read_only).expect("block device");
    activate(&mut blk, &mem, vec![q]);
    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Guest(g) => apply_guest_step(&mem, &rings, g),
            Step::Notify => blk.process_queue(0),
            Step::Reset => {
                reactivate(
                    &mut blk,
                    &mem,
                    QUEUE_SIZE,
                    std::slice::from_ref(&input.queue),
                );
            }
        }
    }
    blk.process_queue(0);
    drop(blk);
    let data = std::fs::read(&path).expect("read back");
    let _ = std::fs::remove_file(&path);
    assert_eq!(data.len() as u64, len, "the device changed the file's size");
    if input.read_only {
        assert!(data.iter().all(|b| *b == 0), "a read-only file was written");
    }
});
