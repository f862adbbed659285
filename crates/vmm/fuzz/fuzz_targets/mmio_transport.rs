//! The virtio-mmio transport: a sequence of register reads and writes (any offset in the
//! 4 KiB window, any width) against an rng or block device behind it, mixed with guest memory
//! steps, a well-behaved handshake macro (so the fuzzer also spends time after DRIVER_OK) and
//! the event loop's side of queue notifications. Nothing may panic or hang.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skerry_vmm::devices::virtio::block::Block;
use skerry_vmm::devices::virtio::rng::Rng;
use skerry_vmm::devices::virtio::transport::mmio::{status, CONFIG_SPACE, QUEUE_NOTIFY_OFFSET};
use skerry_vmm::devices::virtio::transport::{MmioInterrupt, MmioTransport};
use skerry_vmm::devices::virtio::VirtioDevice;
use skerry_vmm::devices::BusDevice;
use skerry_vmm_fuzz::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const WINDOW: u64 = 0x1000;
/// The registers of virtio-mmio v2 (so the fuzzer finds them without guessing offsets).
const REGS: [u64; 25] = [
    0x000,
    0x004,
    0x008,
    0x00c,
    0x010,
    0x014,
    0x020,
    0x024,
    0x030,
    0x034,
    0x038,
    0x044,
    0x050,
    0x060,
    0x064,
    0x070,
    0x080,
    0x084,
    0x090,
    0x094,
    0x0a0,
    0x0a4,
    0x0fc,
    CONFIG_SPACE,
    0x104,
];

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `1 + width % 8` bytes at `offset % 4 KiB`.
    Read {
        offset: u16,
        width: u8,
    },
    /// A write of `1 + width % 8` bytes of `value` at `offset % 4 KiB`.
    Write {
        offset: u16,
        width: u8,
        value: u64,
    },
    /// A 32-bit write to a named register.
    Reg {
        reg: u8,
        value: u32,
    },
    /// ACKNOWLEDGE, DRIVER, all device features, FEATURES_OK, every queue set up from `queue`
    /// (size and placement), DRIVER_OK.
    Handshake {
        queue: QueueSpec,
    },
    Guest(GuestStep),
    /// The VMM loop: drain the queue eventfds and let the device process notified queues.
    Loop,
}

#[derive(Arbitrary, Debug)]
struct Input {
    block: bool,
    ops: Vec<Op>,
}

static N: AtomicU64 = AtomicU64::new(0);

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn handshake(
    t: &mut MmioTransport,
    mem: &vm_memory::GuestMemoryMmap,
    queues: usize,
    spec: &QueueSpec,
    rings: &mut Vec<Rings>,
) {
    w32(t, 0x070, 0);
    w32(t, 0x070, status::ACKNOWLEDGE);
    w32(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        w32(t, 0x014, sel);
        let f = r32(t, 0x010);
        w32(t, 0x024, sel);
        w32(t, 0x020, f);
    }
    w32(
        t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    rings.clear();
    for i in 0..queues {
        w32(t, 0x030, i as u32);
        let max = r32(t, 0x034) as u16;
        let Some(q) = build_queue(mem, i, max, spec) else {
            return;
        };
        let r = Rings::of(&q);
        w32(t, 0x038, u32::from(r.size));
        for (reg, a) in [(0x080, r.desc), (0x090, r.avail), (0x0a0, r.used)] {
            w32(t, reg, a as u32);
            w32(t, reg + 4, (a >> 32) as u32);
        }
        w32(t, 0x044, 1);
        rings.push(r);
    }
    w32(
        t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    let mut path = None;
    let dev: Arc<Mutex<dyn VirtioDevice>> = if input.block {
        let p = scratch_dir().join(format!("mmio-blk-{}", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&p, vec![0u8; 8 * 512]).expect("backing file");
        let b = Block::new(&p, false).expect("block");
        path = Some(p);
        Arc::new(Mutex::new(b))
    } else {
        Arc::new(Mutex::new(
            Rng::new(Box::<CounterEntropy>::default()).expect("rng"),
        ))
    };
    let irq = Arc::new(MmioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let mut t = MmioTransport::new(dev.clone(), mem.clone(), irq).expect("transport");
    let queues = dev.lock().unwrap().queue_max_sizes().len();
    // Until a handshake places rings, guest steps use the default layout.
    let mut rings: Vec<Rings> = (0..queues)
        .map(|i| {
            let base = i as u64 * 0x2000;
            Rings {
                desc: base,
                avail: base + 0x1000,
                used: base + 0x1400,
                size: 256,
            }
        })
        .collect();

    for op in input.ops.iter().take(MAX_STEPS) {
        match op {
            Op::Read { offset, width } => {
                let mut b = [0u8; 8];
                t.read(
                    u64::from(*offset) % WINDOW,
                    &mut b[..1 + usize::from(width % 8)],
                );
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let b = value.to_le_bytes();
                t.write(
                    u64::from(*offset) % WINDOW,
                    &b[..1 + usize::from(width % 8)],
                );
            }
            Op::Reg { reg, value } => {
                w32(&mut t, REGS[usize::from(*reg) % REGS.len()], *value);
            }
            Op::Handshake { queue } => handshake(&mut t, &mem, queues, queue, &mut rings),
            Op::Guest(g) => apply_guest_step(&mem, &rings, g),
            Op::Loop => {
                let mut d = dev.lock().unwrap();
                for i in 0..queues {
                    if d.queue_events()[i].read().is_ok() {
                        d.process_queue(i);
                    }
                }
            }
        }
    }
    // A final notification of every queue, as a driver kicking at the end would.
    for i in 0..queues {
        w32(&mut t, QUEUE_NOTIFY_OFFSET, i as u32);
    }
    {
        let mut d = dev.lock().unwrap();
        for i in 0..queues {
            if d.queue_events()[i].read().is_ok() {
                d.process_queue(i);
            }
        }
    }
    drop(t);
    drop(dev);
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
});
