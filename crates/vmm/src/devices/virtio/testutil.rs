//! Test helpers: an interrupt double and descriptor builders.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;

use super::{InterruptKind, VirtioInterrupt};

#[path = "../../../tests/common/host.rs"]
pub mod host;

/// Descriptor flag: chain continues.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device writes this buffer.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: indirect table.
pub const F_INDIRECT: u16 = 4;

/// Records interrupts instead of raising them.
#[derive(Default)]
pub struct RecordingInterrupt {
    /// Used-ring interrupts raised.
    pub used: AtomicU32,
    /// Config interrupts raised.
    pub config: AtomicU32,
    /// Whether the device asked for a reset.
    pub needs_reset: AtomicBool,
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        match kind {
            InterruptKind::UsedRing => self.used.fetch_add(1, Ordering::SeqCst),
            InterruptKind::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
    }
    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(InterruptKind::Config);
    }
}

/// Waits up to `ms` milliseconds for any of `fds` to be readable (as the VMM loop's epoll
/// does); returns whether one is.
pub fn wait_readable(fds: &[std::os::fd::RawFd], ms: i32) -> bool {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let epoll = Epoll::new().unwrap();
    for fd in fds {
        epoll
            .ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(EventSet::IN, *fd as u64),
            )
            .unwrap();
    }
    let mut events = [EpollEvent::default(); 4];
    epoll.wait(ms, &mut events).unwrap() > 0
}

/// Asserts that a device let `got` bytes through in `took` under a limit
/// that allows `allowed`, and at least half of it (it resumed when refilled).
pub fn assert_held_to_rate(got: u64, allowed: u64, took: std::time::Duration) {
    assert!(
        got <= allowed,
        "{got} bytes in {took:?}, at most {allowed} allowed"
    );
    assert!(
        got >= allowed / 2,
        "{got} bytes in {took:?}: the device did not resume"
    );
}

/// A raw split descriptor.
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Ring addresses of one split queue, to add chains without re-creating a
/// `MockSplitQueue` (creating one zeroes its rings).
#[derive(Clone, Copy, Debug)]
pub struct Rings {
    /// Descriptor table.
    pub desc: vm_memory::GuestAddress,
    /// Available ring.
    pub avail: vm_memory::GuestAddress,
    /// Used ring.
    pub used: vm_memory::GuestAddress,
    /// Queue size.
    pub size: u16,
}

impl Rings {
    /// The rings of `q`.
    pub fn of<M: vm_memory::GuestMemory>(
        q: &virtio_queue::mock::MockSplitQueue<'_, M>,
        size: u16,
    ) -> Self {
        Rings {
            desc: q.desc_table_addr(),
            avail: q.avail_addr(),
            used: q.used_addr(),
            size,
        }
    }

    /// A ready queue of `size` with its descriptor table at `base`, avail ring at
    /// `base + 0x1000` and used ring at `base + 0x2000` (unlike `MockSplitQueue`'s layout, the
    /// rings never overlap). Memory there must be zero.
    pub fn at(base: u64, size: u16) -> (Self, virtio_queue::Queue) {
        use virtio_queue::QueueT;
        use vm_memory::GuestAddress;
        let r = Rings {
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x1000),
            used: GuestAddress(base + 0x2000),
            size,
        };
        let mut q = virtio_queue::Queue::new(size).unwrap();
        q.try_set_size(size).unwrap();
        q.try_set_desc_table_address(r.desc).unwrap();
        q.try_set_avail_ring_address(r.avail).unwrap();
        q.try_set_used_ring_address(r.used).unwrap();
        q.set_ready(true);
        (r, q)
    }

    /// Writes `descs` at table index `first` onwards and makes `first` available.
    pub fn add_chain(&self, mem: &vm_memory::GuestMemoryMmap, descs: &[RawDescriptor], first: u16) {
        use vm_memory::{Address, Bytes};
        for (i, d) in descs.iter().enumerate() {
            let at = self
                .desc
                .unchecked_add(16 * u64::from((first + i as u16) % self.size));
            mem.write_obj(*d, at).unwrap();
        }
        let idx: u16 = mem.read_obj(self.avail.unchecked_add(2)).unwrap();
        let slot = self.avail.unchecked_add(4 + 2 * u64::from(idx % self.size));
        mem.write_obj(first % self.size, slot).unwrap();
        mem.write_obj(idx.wrapping_add(1), self.avail.unchecked_add(2))
            .unwrap();
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &vm_memory::GuestMemoryMmap) -> u16 {
        use vm_memory::{Address, Bytes};
        mem.read_obj(self.used.unchecked_add(2)).unwrap()
    }

    /// Used element `i`: (descriptor head, length).
    pub fn used_elem(&self, mem: &vm_memory::GuestMemoryMmap, i: u16) -> (u32, u32) {
        use vm_memory::{Address, Bytes};
        let e = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
        (
            mem.read_obj(e).unwrap(),
            mem.read_obj(e.unchecked_add(4)).unwrap(),
        )
    }
}
