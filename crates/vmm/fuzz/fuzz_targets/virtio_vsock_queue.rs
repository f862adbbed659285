//! virtio-vsock queue handling against real host Unix sockets: RX/TX/event queues built from
//! the input, guest steps (raw chains, or TX packets with a well-formed header whose fields
//! come from the input), host steps (connect + `CONNECT` line, send, shut down, drain) and
//! back-end wake-ups. The device must never panic or hang.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skerry_vmm::devices::virtio::vsock::muxer::HOST_CID;
use skerry_vmm::devices::virtio::vsock::{Vsock, QUEUE_SIZE};
use skerry_vmm::devices::virtio::VirtioDevice;
use skerry_vmm_fuzz::*;
use vm_memory::{Bytes, GuestAddress};

const CID: u64 = 3;
/// Guest connections to this host port reach a listener the harness accepts on.
const LISTEN_PORT: u32 = 1024;
const FIRST_HOST_PORT: u32 = 1 << 30;
const MAX_HOST_STREAMS: usize = 16;

#[derive(Arbitrary, Debug)]
enum Port {
    /// The port with a host listener.
    Listener,
    /// The n-th port the muxer allocates for host-initiated connections.
    HostAllocated(u8),
    Raw(u32),
}

impl Port {
    fn get(&self) -> u32 {
        match self {
            Port::Listener => LISTEN_PORT,
            Port::HostAllocated(n) => FIRST_HOST_PORT + u32::from(*n % 16),
            Port::Raw(p) => *p,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Packet {
    head: u16,
    /// Where the header goes; the payload follows it.
    at: u16,
    /// `None`: the guest's own CID (the only one accepted).
    src_cid: Option<u64>,
    /// `None`: the host CID.
    dst_cid: Option<u64>,
    src_port: u16,
    dst_port: Port,
    /// `None`: the payload's length.
    len: Option<u32>,
    /// `None`: stream.
    type_: Option<u16>,
    /// 1..=7 are the real operations.
    op: u8,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
    /// Header and payload in separate descriptors.
    split: bool,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Guest(GuestStep),
    TxPacket(Packet),
    /// Posts a write-only RX buffer of `len` bytes at `at`.
    RxBuffer {
        head: u16,
        at: u16,
        len: u16,
    },
    Notify(u8),
    /// A host process connects to the vsock socket and sends `CONNECT <port>\n` (or garbage).
    HostConnect {
        port: u16,
        garbage: Option<Vec<u8>>,
    },
    HostSend {
        stream: u8,
        data: Vec<u8>,
    },
    HostShutdown {
        stream: u8,
        both: bool,
    },
    HostDrain {
        stream: u8,
    },
    /// The back end's epoll fd fired.
    Backend,
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queues: [QueueSpec; 3],
    steps: Vec<Step>,
}

static N: AtomicU64 = AtomicU64::new(0);

fn encode(p: &Packet) -> Vec<u8> {
    let mut v = Vec::with_capacity(44 + p.data.len());
    v.extend_from_slice(&p.src_cid.unwrap_or(CID).to_le_bytes());
    v.extend_from_slice(&p.dst_cid.unwrap_or(HOST_CID).to_le_bytes());
    v.extend_from_slice(&u32::from(p.src_port).to_le_bytes());
    v.extend_from_slice(&p.dst_port.get().to_le_bytes());
    v.extend_from_slice(&p.len.unwrap_or(p.data.len() as u32).to_le_bytes());
    v.extend_from_slice(&p.type_.unwrap_or(1).to_le_bytes());
    v.extend_from_slice(&u16::from(p.op).to_le_bytes());
    v.extend_from_slice(&p.flags.to_le_bytes());
    v.extend_from_slice(&p.buf_alloc.to_le_bytes());
    v.extend_from_slice(&p.fwd_cnt.to_le_bytes());
    v
}

fn pick(streams: &mut [UnixStream], i: u8) -> Option<&mut UnixStream> {
    let n = streams.len();
    (n > 0).then(|| &mut streams[usize::from(i) % n])
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    let Some((queues, rings)) = build_queues(&mem, QUEUE_SIZE, &input.queues) else {
        return;
    };
    let uds = scratch_dir().join(format!("v{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let listen_path = format!("{}_{LISTEN_PORT}", uds.display());
    let listener = UnixListener::bind(&listen_path).expect("host listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut dev = Vsock::new(CID, &uds).expect("vsock");
    activate(&mut dev, &mem, queues);
    let mut streams: Vec<UnixStream> = Vec::new();

    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Guest(g) => apply_guest_step(&mem, &rings, g),
            Step::TxPacket(p) => {
                let at = u64::from(p.at);
                let hdr = encode(p);
                let _ = mem.write_slice(&hdr, GuestAddress(at));
                let data_at = at + hdr.len() as u64;
                let _ = mem.write_slice(&p.data, GuestAddress(data_at));
                let descs = if p.split && !p.data.is_empty() {
                    vec![
                        desc(
                            at,
                            hdr.len() as u32,
                            1,
                            p.head.wrapping_add(1) % rings[1].size,
                        ),
                        desc(data_at, p.data.len() as u32, 0, 0),
                    ]
                } else {
                    vec![desc(at, (hdr.len() + p.data.len()) as u32, 0, 0)]
                };
                post_chain(&mem, &rings, 1, p.head, descs);
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
            Step::Notify(q) => dev.process_queue(usize::from(*q % 3)),
            Step::HostConnect { port, garbage } => {
                if streams.len() < MAX_HOST_STREAMS {
                    if let Ok(mut s) = UnixStream::connect(&uds) {
                        let _ = s.set_nonblocking(true);
                        let line = match garbage {
                            Some(g) => g.clone(),
                            None => format!("CONNECT {port}\n").into_bytes(),
                        };
                        let _ = s.write(&line);
                        streams.push(s);
                    }
                }
            }
            Step::HostSend { stream, data } => {
                if let Some(s) = pick(&mut streams, *stream) {
                    let _ = s.write(data);
                }
            }
            Step::HostShutdown { stream, both } => {
                if let Some(s) = pick(&mut streams, *stream) {
                    let how = if *both {
                        std::net::Shutdown::Both
                    } else {
                        std::net::Shutdown::Write
                    };
                    let _ = s.shutdown(how);
                }
            }
            Step::HostDrain { stream } => {
                if let Some(s) = pick(&mut streams, *stream) {
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            Step::Backend => dev.process_backend(),
            Step::Reset => {
                reactivate(&mut dev, &mem, QUEUE_SIZE, &input.queues);
            }
        }
        // The host side of guest-initiated connections: accept whatever is queued, so the
        // listener's backlog never fills.
        while let Ok((s, _)) = listener.accept() {
            let _ = s.set_nonblocking(true);
            if streams.len() < 4 * MAX_HOST_STREAMS {
                streams.push(s);
            }
        }
    }
    dev.process_backend();
    drop(dev);
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&listen_path);
});
