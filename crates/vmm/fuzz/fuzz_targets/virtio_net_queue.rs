//! virtio-net queue handling against a datagram socket pair standing in for the tap (same
//! framing: one virtio-net header + frame per datagram): RX/TX queues built from the input,
//! guest steps (raw chains, or TX frames with a header whose bytes come from the input), host
//! frames of any size, notifications, back-end wake-ups and resets. The device must never
//! panic or hang, and nothing but well-formed frames may reach the host.
#![no_main]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skerry_vmm::devices::virtio::net::{MacAddr, Net, MIN_FRAME, QUEUE_SIZE, VNET_HDR_LEN};
use skerry_vmm::devices::virtio::VirtioDevice;
use skerry_vmm_fuzz::*;
use vm_memory::{Bytes, GuestAddress};

#[derive(Arbitrary, Debug)]
enum Step {
    Guest(GuestStep),
    /// A TX chain: header + frame, split into two descriptors or not.
    TxFrame {
        head: u16,
        at: u16,
        hdr: [u8; 12],
        frame: Vec<u8>,
        split: bool,
    },
    /// Posts a write-only RX buffer of `len` bytes at `at`.
    RxBuffer {
        head: u16,
        at: u16,
        len: u16,
    },
    /// The host sends a datagram (dropped when the socket's queue is full).
    HostFrame(Vec<u8>),
    Notify(u8),
    /// The tap became readable.
    Backend,
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queues: [QueueSpec; 2],
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    let Some((queues, rings)) = build_queues(&mem, QUEUE_SIZE, &input.queues) else {
        return;
    };
    let (dev_end, host) = UnixDatagram::pair().expect("socket pair");
    dev_end.set_nonblocking(true).expect("nonblocking");
    host.set_nonblocking(true).expect("nonblocking");
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    let mut dev = Net::new(std::fs::File::from(OwnedFd::from(dev_end)), mac).expect("net");
    activate(&mut dev, &mem, queues);

    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Guest(g) => apply_guest_step(&mem, &rings, g),
            Step::TxFrame {
                head,
                at,
                hdr,
                frame,
                split,
            } => {
                let at = u64::from(*at);
                let _ = mem.write_slice(hdr, GuestAddress(at));
                let _ = mem.write_slice(frame, GuestAddress(at + 12));
                let descs = if *split {
                    vec![
                        desc(at, 12, 1, head.wrapping_add(1) % rings[1].size),
                        desc(at + 12, frame.len() as u32, 0, 0),
                    ]
                } else {
                    vec![desc(at, 12 + frame.len() as u32, 0, 0)]
                };
                post_chain(&mem, &rings, 1, *head, descs);
            }
            Step::RxBuffer { head, at, len } => {
                post_chain(
                    &mem,
                    &rings,
                    0,
                    *head,
                    vec![desc(u64::from(*at), u32::from(*len), 2, 0)],
                );
            }
            Step::HostFrame(f) => {
                let _ = host.send(f);
            }
            Step::Notify(q) => dev.process_queue(usize::from(*q % 2)),
            Step::Backend => dev.process_backend(),
            Step::Reset => {
                reactivate(&mut dev, &mem, QUEUE_SIZE, &input.queues);
            }
        }
        // What reached the host: whole frames with a zero flags/gso header, nothing else.
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = host.recv(&mut buf) {
            assert!(n >= VNET_HDR_LEN + MIN_FRAME, "runt frame of {n} bytes");
            assert_eq!(&buf[..2], &[0, 0], "offload header reached the host");
        }
    }
    let m = dev.metrics;
    assert!(m.rx_bytes <= m.rx_frames * 65535, "{m:?}");
});
