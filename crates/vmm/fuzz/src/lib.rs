//! Shared pieces of the skerry-vmm fuzz targets: a small guest memory with a hole, split
//! virtqueues whose rings and descriptors come from the fuzz input (as the unit tests build
//! hostile chains, but chosen by the fuzzer), and interrupt/entropy doubles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arbitrary::Arbitrary;
use skerry_vmm::devices::virtio::rng::EntropySource;
use skerry_vmm::devices::virtio::{
    InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// First RAM region: [0, 0x8000). The rings live here.
pub const LOW: (u64, usize) = (0, 0x8000);
/// Second RAM region: [0x9000, 0x11000); [0x8000, 0x9000) is a hole.
pub const HIGH: (u64, usize) = (0x9000, 0x8000);
/// Most steps taken from one input (keeps every run short).
pub const MAX_STEPS: usize = 48;
/// Most descriptors written by one `Chain` step.
pub const MAX_CHAIN: usize = 32;
/// Largest queue the devices offer.
pub const MAX_QUEUE: u16 = 256;

/// Guest memory: two regions with a hole between them.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)])
        .expect("guest memory")
}

/// A guest-physical address: mostly near guest RAM (so the fuzzer hits RAM, the hole and the
/// edges often), sometimes anything at all.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Addr {
    /// An address below 64 KiB: RAM, the hole, or just past the end.
    Near(u16),
    /// Any 64-bit address (overflow, far outside RAM).
    Raw(u64),
}

impl Addr {
    /// The address.
    pub fn get(self) -> u64 {
        match self {
            Addr::Near(a) => u64::from(a),
            Addr::Raw(a) => a,
        }
    }
}

/// A descriptor length: mostly small, sometimes huge.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Len {
    /// Up to 64 KiB - 1.
    Small(u16),
    /// Any 32-bit length.
    Raw(u32),
}

impl Len {
    /// The length.
    pub fn get(self) -> u32 {
        match self {
            Len::Small(l) => u32::from(l),
            Len::Raw(l) => l,
        }
    }
}

/// One split descriptor; `flags` are raw (NEXT = 1, WRITE = 2, INDIRECT = 4, and junk bits).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Desc {
    /// Buffer address.
    pub addr: Addr,
    /// Buffer length.
    pub len: Len,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl Desc {
    /// The descriptor as it sits in the table.
    pub fn raw(&self) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(
            self.addr.get(),
            self.len.get(),
            self.flags,
            self.next,
        ))
    }
}

/// A descriptor with a raw address and length (one the harness builds itself).
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr: Addr::Raw(addr),
        len: Len::Raw(len),
        flags,
        next,
    }
}

/// Where a queue's rings go: the default layout, or (possibly overlapping, possibly
/// misaligned) addresses from the input — refused ones fall back to the default, as the
/// transport refuses them.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Placement {
    /// Queue `i`: descriptor table at `i * 0x2000`, avail ring `+0x1000`, used ring `+0x1400`.
    Default,
    /// Addresses from the input.
    Custom {
        /// Descriptor table.
        desc: u16,
        /// Avail ring.
        avail: u16,
        /// Used ring.
        used: u16,
    },
}

/// How to set up one queue.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct QueueSpec {
    /// Queue size is `1 << (size_log2 % 9)` (1..=256), capped at the device's maximum.
    pub size_log2: u8,
    /// Ring placement.
    pub placement: Placement,
}

/// Builds queue `index` from `spec` the way the MMIO transport would (size, addresses,
/// ready); `None` when the result is not a valid queue (the transport would then not
/// activate the device).
pub fn build_queue(
    mem: &GuestMemoryMmap,
    index: usize,
    max: u16,
    spec: &QueueSpec,
) -> Option<Queue> {
    let mut q = Queue::new(max).ok()?;
    let size = (1u16 << (spec.size_log2 % 9)).min(max);
    q.try_set_size(size).ok()?;
    let base = index as u64 * 0x2000;
    let (d, a, u) = (base, base + 0x1000, base + 0x1400);
    q.try_set_desc_table_address(GuestAddress(d)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(a)).ok()?;
    q.try_set_used_ring_address(GuestAddress(u)).ok()?;
    if let Placement::Custom { desc, avail, used } = spec.placement {
        let _ = q.try_set_desc_table_address(GuestAddress(desc.into()));
        let _ = q.try_set_avail_ring_address(GuestAddress(avail.into()));
        let _ = q.try_set_used_ring_address(GuestAddress(used.into()));
    }
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// Builds queue `i` from `specs[i]` for every spec ([`build_queue`]), with their rings;
/// `None` when any of them is not a valid queue.
pub fn build_queues(
    mem: &GuestMemoryMmap,
    max: u16,
    specs: &[QueueSpec],
) -> Option<(Vec<Queue>, Vec<Rings>)> {
    let queues = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| build_queue(mem, i, max, spec))
        .collect::<Option<Vec<_>>>()?;
    let rings = queues.iter().map(Rings::of).collect();
    Some((queues, rings))
}

/// Guest-side view of one queue's rings (what the driver writes).
#[derive(Clone, Copy, Debug)]
pub struct Rings {
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

impl Rings {
    /// The rings of `q`.
    pub fn of(q: &Queue) -> Self {
        Rings {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            size: q.size(),
        }
    }
}

/// What a guest driver does to its memory and rings.
#[derive(Arbitrary, Clone, Debug)]
pub enum GuestStep {
    /// Writes `descs` at table index `head % size` onwards and publishes that index in the
    /// avail ring.
    Chain {
        /// Queue index (taken modulo the number of queues).
        queue: u8,
        /// Table index of the first descriptor.
        head: u16,
        /// The descriptors.
        descs: Vec<Desc>,
    },
    /// Publishes `head` as is (re-used, never-written or out-of-range descriptors).
    Publish {
        /// Queue index.
        queue: u8,
        /// Head index (may be out of range).
        head: u16,
    },
    /// Sets the avail index to anything (a lying driver).
    SetAvailIdx {
        /// Queue index.
        queue: u8,
        /// New index.
        idx: u16,
    },
    /// Writes bytes anywhere (request headers, indirect tables, ring fields).
    Poke {
        /// Where.
        addr: u16,
        /// What.
        data: Vec<u8>,
    },
}

/// Writes the chain `descs` at table index `head` of `queue` and makes it available
/// ([`GuestStep::Chain`]).
pub fn post_chain(mem: &GuestMemoryMmap, rings: &[Rings], queue: u8, head: u16, descs: Vec<Desc>) {
    apply_guest_step(mem, rings, &GuestStep::Chain { queue, head, descs });
}

/// Applies a guest step to memory. Writes outside RAM are dropped, as a guest's would be.
pub fn apply_guest_step(mem: &GuestMemoryMmap, rings: &[Rings], step: &GuestStep) {
    let ring = |q: u8| rings.get(usize::from(q) % rings.len().max(1)).copied();
    match step {
        GuestStep::Chain { queue, head, descs } => {
            let Some(r) = ring(*queue) else { return };
            for (i, d) in descs.iter().take(MAX_CHAIN).enumerate() {
                let slot = (u64::from(*head) + i as u64) % u64::from(r.size);
                let _ = mem.write_obj(d.raw(), GuestAddress(r.desc + 16 * slot));
            }
            publish(mem, r, *head % r.size);
        }
        GuestStep::Publish { queue, head } => {
            if let Some(r) = ring(*queue) {
                publish(mem, r, *head);
            }
        }
        GuestStep::SetAvailIdx { queue, idx } => {
            if let Some(r) = ring(*queue) {
                let _ = mem.write_obj(*idx, GuestAddress(r.avail + 2));
            }
        }
        GuestStep::Poke { addr, data } => {
            let _ = mem.write_slice(data, GuestAddress(u64::from(*addr)));
        }
    }
}

fn publish(mem: &GuestMemoryMmap, r: Rings, head: u16) {
    let Ok(idx) = mem.read_obj::<u16>(GuestAddress(r.avail + 2)) else {
        return;
    };
    let slot = r.avail + 4 + 2 * u64::from(idx % r.size);
    let _ = mem.write_obj(head, GuestAddress(slot));
    let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(r.avail + 2));
}

/// Counts interrupts instead of raising them.
#[derive(Debug, Default)]
pub struct CountingInterrupt {
    /// Interrupts raised.
    pub count: AtomicU64,
    /// Reset requests.
    pub resets: AtomicU64,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _kind: InterruptKind) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    fn signal_needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// A new counting interrupt as the trait object devices take.
pub fn interrupt() -> Arc<CountingInterrupt> {
    Arc::new(CountingInterrupt::default())
}

/// Acks VIRTIO_F_VERSION_1 and activates `dev` with `queues`, as the transport does once the
/// driver sets DRIVER_OK.
pub fn activate(dev: &mut dyn VirtioDevice, mem: &GuestMemoryMmap, queues: Vec<Queue>) {
    dev.set_acked_features(VIRTIO_F_VERSION_1);
    dev.activate(mem.clone(), interrupt(), queues)
        .expect("activate");
}

/// Resets `dev` and [`activate`]s it again with queues built from `specs`, unless they are
/// not valid queues (then the device stays reset).
pub fn reactivate(
    dev: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    max: u16,
    specs: &[QueueSpec],
) {
    dev.reset();
    if let Some((queues, _)) = build_queues(mem, max, specs) {
        activate(dev, mem, queues);
    }
}

/// Deterministic "entropy" (a counter), so crashes reproduce and runs are cheap.
#[derive(Debug, Default)]
pub struct CounterEntropy(u8);

impl EntropySource for CounterEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

/// A per-process scratch directory for files and sockets the devices need, under
/// `std::env::temp_dir()` (`scripts/fuzz.sh` points `TMPDIR` at a tmpfs directory it removes
/// afterwards, so block flushes cost nothing and nothing is left behind).
pub fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("skerry-vmm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

/// What `run_vm` does with a parsed configuration before it touches KVM: validation and the
/// kernel command line with one virtio-mmio fragment per device. Errors are fine; panics not.
pub fn exercise_config(config: &skerry_vmm::VmConfig) {
    use skerry_vmm::arch::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
    let _ = config.validate();
    let Ok(mut cmdline) = skerry_vmm::boot::build_cmdline(&config.boot.cmdline, &[]) else {
        return;
    };
    let devices = usize::from(config.rng)
        + usize::from(config.block.is_some())
        + usize::from(config.vsock.is_some())
        + usize::from(config.net.is_some())
        + usize::from(config.fs.is_some());
    for slot in 0..devices as u32 {
        let base = VIRTIO_MMIO_START + u64::from(slot) * VIRTIO_MMIO_SIZE;
        if cmdline
            .add_virtio_mmio_device(
                VIRTIO_MMIO_SIZE,
                GuestAddress(base),
                VIRTIO_IRQ_BASE + slot,
                None,
            )
            .is_err()
        {
            return;
        }
    }
    let _ = cmdline.as_cstring();
}
