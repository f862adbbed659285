//! Assembles a VM from a [`VmConfig`] and runs the VMM thread's event loop until it ends.

use std::io::Write;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi;
use crate::api::{self, ApiError, ApiMessage, ApiReply, ApiRequest};
use crate::arch;
use crate::boot::{self, BootError, BootSource};
use crate::control::RunControl;
use crate::devices::legacy::{
    PmControl, SerialConsole, SleepControl, COM1_PORT, COM_PORT_LEN, I8042, I8042_PORT_BASE,
    I8042_PORT_LEN, PM1A_CNT_LEN, PM1A_CNT_PORT, SLEEP_CONTROL_LEN, SLEEP_CONTROL_PORT,
};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, FsError, REPLY_TIMEOUT};
use crate::devices::virtio::net::{MacAddr, Net, NetError};
use crate::devices::virtio::rate_limiter::RateLimits;
use crate::devices::virtio::rng::{GetRandom, Rng, RngError};
use crate::devices::virtio::transport::mmio::QUEUE_NOTIFY_OFFSET;
use crate::devices::virtio::transport::{MmioInterrupt, MmioTransport, MmioTransportError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioEventHandler};
use crate::devices::{Bus, BusError};
use crate::exit::{ExitState, ExitStateError, VmExit};
use crate::seccomp::{self, allow, allow_arg_in, SeccompError, ThreadFilter, ThreadKind};
use crate::vstate::{self, MemoryError, VcpuError, Vm, VmError};

/// Failure to build or run the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// KVM VM.
    #[error("KVM VM")]
    Vm(#[from] VmError),
    /// vCPU.
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    /// Boot.
    #[error("boot")]
    Boot(#[from] BootError),
    /// Boot-time CPU structures.
    #[error("boot CPU state")]
    Regs(#[from] arch::RegsError),
    /// Device placement.
    #[error("device bus")]
    Bus(#[from] BusError),
    /// Seccomp.
    #[error("seccomp")]
    Seccomp(#[from] SeccompError),
    /// Exit notification.
    #[error("exit state")]
    ExitState(#[from] ExitStateError),
    /// The virtio-rng device.
    #[error("virtio-rng")]
    Rng(#[source] RngError),
    /// The virtio-blk device.
    #[error("virtio-blk")]
    Block(#[source] BlockError),
    /// The virtio-vsock device.
    #[error("virtio-vsock")]
    Vsock(#[source] VsockError),
    /// The virtio-net device.
    #[error("virtio-net")]
    Net(#[source] NetError),
    /// The virtio-fs device (vhost-user frontend).
    #[error("virtio-fs")]
    Fs(#[source] FsError),
    /// A virtio-mmio transport.
    #[error("virtio-mmio transport")]
    Transport(#[source] MmioTransportError),
    /// ACPI tables.
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// The control API.
    #[error("control API")]
    Api(#[from] ApiError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The event loop failed.
    #[error("event loop")]
    EventManager(#[source] event_manager::Error),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel, initrd, command line.
    pub boot: BootSource,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Install the per-thread seccomp filters.
    pub seccomp: bool,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// Serve the control API on this Unix socket path.
    pub api_sock: Option<std::path::PathBuf>,
    /// Write ACPI tables (RSDP/XSDT/FADT/MADT/DSDT).
    pub acpi: bool,
    /// Add a virtio-blk device backed by this file (`true` = read-only).
    pub block: Option<(std::path::PathBuf, bool)>,
    /// Add a virtio-vsock device: guest CID and host Unix socket path (hybrid vsock).
    pub vsock: Option<(u64, std::path::PathBuf)>,
    /// Rate limits of the virtio-vsock device (default: none).
    pub vsock_limits: RateLimits,
    /// Add a virtio-net device on a host tap.
    pub net: Option<NetConfig>,
    /// Add a virtio-fs device served by a vhost-user back end (virtiofsd).
    pub fs: Option<FsConfig>,
}

/// A virtio-fs device's back end and tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// The back end's vhost-user socket (virtiofsd `--socket-path`).
    pub socket: std::path::PathBuf,
    /// The tag the guest mounts.
    pub tag: String,
}

/// A virtio-net device's host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap interface name (opened, or created, with TUNSETIFF).
    pub tap: String,
    /// Guest MAC address; `None` = random, locally administered.
    pub mac: Option<MacAddr>,
    /// Rate limits (default: none).
    pub limits: RateLimits,
}

/// Highest vCPU count we accept.
pub const MAX_VCPUS: u8 = 32;

impl VmConfig {
    /// Checks ranges a user can get wrong, naming the field.
    pub fn validate(&self) -> Result<(), VmmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmmError::Config(format!(
                "--vcpus must be 1..={MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if !(8..=(1 << 20)).contains(&self.mem_mib) {
            return Err(VmmError::Config(format!(
                "--memory must be 8..=1048576 MiB, got {}",
                self.mem_mib
            )));
        }
        if !self.boot.kernel.is_file() {
            return Err(VmmError::Config(format!(
                "--kernel {} is not a file",
                self.boot.kernel.display()
            )));
        }
        if let Some(i) = &self.boot.initrd {
            if !i.is_file() {
                return Err(VmmError::Config(format!(
                    "--initrd {} is not a file",
                    i.display()
                )));
            }
        }
        Ok(())
    }
}

/// Wakes the loop when the VM's exit state is set.
struct ExitWatcher(Arc<ExitState>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter; the loop checks the exit state after every dispatch.
        let _ = self.0.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the exit eventfd: {e}");
            self.0.set(VmExit::VmmError);
        }
    }
}

/// Wakes the loop when the API thread queued a request (handled by the loop itself).
struct ApiWake(EventFd);

impl MutEventSubscriber for ApiWake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("cannot watch the API eventfd: {e}");
        }
    }
}

/// Forwards the VMM's stdin to the serial console's receive FIFO. Like a real UART, input
/// that arrives while the FIFO is full is lost (overrun) rather than left in the pipe, which
/// would make the level-triggered loop spin.
struct StdinInput(Arc<Mutex<SerialConsole>>);

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading at most `buf.len()` bytes from fd 0 into a stack buffer.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let mut serial = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let room = serial.input_capacity().min(n as usize);
            let _ = serial.enqueue_input(&buf[..room]);
        } else if n == 0 || events.event_set().contains(EventSet::HANG_UP) {
            // End of input: stop watching stdin.
            let _ = ops.remove(Events::empty_raw(0));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled; then there is simply no input.
        let _ = ops.add(Events::new_raw(0, EventSet::IN));
    }
}

/// Builds the VM described by `config`, runs it and returns how it ended. Serial output goes
/// to `console`.
pub fn run_vm(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<VmExit, VmmError> {
    config.validate()?;
    let mem = vstate::create_guest_memory(config.mem_mib << 20)?;
    let vm = Vm::new()?;
    vm.register_memory(&mem)?;
    vm.setup_irqchip()?;
    arch::write_gdt(&mem)?;
    arch::setup_page_tables(&mem)?;

    let exit = Arc::new(ExitState::new()?);
    let mut pio = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&serial_irq, arch::SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, console)));
    pio.insert(serial.clone(), COM1_PORT, COM_PORT_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PmControl::new(exit.clone()))),
        PM1A_CNT_PORT,
        PM1A_CNT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(SleepControl::new(exit.clone()))),
        SLEEP_CONTROL_PORT,
        SLEEP_CONTROL_LEN,
    )?;
    let mut mmio = Bus::new();
    let mut cmdline = boot::build_cmdline(&config.boot.cmdline, &[])?;
    let mut virtio: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
    if config.rng {
        let rng = Rng::new(Box::new(GetRandom)).map_err(VmmError::Rng)?;
        virtio.push(Arc::new(Mutex::new(rng)));
    }
    if let Some((path, read_only)) = &config.block {
        let block = Block::new(path, *read_only).map_err(VmmError::Block)?;
        virtio.push(Arc::new(Mutex::new(block)));
    }
    if let Some((cid, uds)) = &config.vsock {
        let vsock = Vsock::new(*cid, uds)
            .and_then(|v| v.with_rate_limits(config.vsock_limits))
            .map_err(VmmError::Vsock)?;
        virtio.push(Arc::new(Mutex::new(vsock)));
    }
    if let Some(net) = &config.net {
        let net = Net::with_tap(&net.tap, net.mac)
            .and_then(|n| n.with_rate_limits(net.limits))
            .map_err(VmmError::Net)?;
        virtio.push(Arc::new(Mutex::new(net)));
    }
    let mut vhost_sockets = Vec::new();
    if let Some(fs) = &config.fs {
        let fs =
            Fs::new(&fs.socket, &fs.tag, REPLY_TIMEOUT, config.seccomp).map_err(VmmError::Fs)?;
        vhost_sockets.push(fs.socket_fd());
        virtio.push(Arc::new(Mutex::new(fs)));
    }
    let mut acpi_devices = Vec::with_capacity(virtio.len());
    for (i, dev) in virtio.iter().enumerate() {
        let d = attach_virtio_mmio(&vm, &mem, &mut mmio, &mut cmdline, i as u32, dev.clone())?;
        acpi_devices.push(d);
    }
    let rsdp = if config.acpi {
        Some(acpi::create_tables(&mem, config.vcpus, &acpi_devices)?)
    } else {
        None
    };
    let entry = boot::load(&mem, &config.boot, &cmdline, rsdp)?;

    let cpuid = vm.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(config.vcpus.into());
    for i in 0..config.vcpus {
        let mut vcpu = vm.create_vcpu(i)?;
        vcpu.configure(&mem, &cpuid, config.vcpus, (i == 0).then_some(entry))?;
        vcpus.push(vcpu);
    }

    let api_listener = match &config.api_sock {
        Some(path) => Some(api::bind(path)?),
        None => None,
    };
    vstate::install_kick_handler()?;
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(VmmError::EventManager)?;
    em.add_subscriber(Arc::new(Mutex::new(ExitWatcher(exit.clone()))));
    em.add_subscriber(Arc::new(Mutex::new(StdinInput(serial))));
    for dev in virtio {
        em.add_subscriber(Arc::new(Mutex::new(VirtioEventHandler(dev))));
    }

    let vmm_filter = if config.seccomp {
        Some(seccomp_filter(Some(&vhost_sockets))?.compile()?)
    } else {
        None
    };
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let control = Arc::new(RunControl::new(vcpus.len()));
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let filter = if config.seccomp {
            Some(vstate::vcpu::seccomp_filter(Some(vcpu.raw_fd()))?.compile()?)
        } else {
            None
        };
        match vcpu.spawn(
            pio.clone(),
            mmio.clone(),
            exit.clone(),
            control.clone(),
            filter,
        ) {
            Ok(h) => handles.push(h),
            Err(e) => {
                exit.set(VmExit::VmmError);
                stop_vcpus(handles, &control);
                return Err(e.into());
            }
        }
    }
    let (api_tx, api_rx) = std::sync::mpsc::channel::<ApiMessage>();
    if let Some(listener) = api_listener {
        let wake = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        let filter = if config.seccomp {
            Some(api::seccomp_filter()?.compile()?)
        } else {
            None
        };
        let thread_wake = wake.try_clone().map_err(VmmError::EventFd)?;
        em.add_subscriber(Arc::new(Mutex::new(ApiWake(wake))));
        if let Err(e) = api::spawn(listener, api_tx.clone(), thread_wake, filter) {
            exit.set(VmExit::VmmError);
            stop_vcpus(handles, &control);
            return Err(e.into());
        }
    }
    drop(api_tx);
    if let Some(prog) = &vmm_filter {
        if let Err(e) = seccomp::apply(prog) {
            exit.set(VmExit::VmmError);
            stop_vcpus(handles, &control);
            return Err(e.into());
        }
    }

    let mut loop_error = None;
    while exit.get().is_none() {
        if let Err(e) = em.run() {
            loop_error = Some(e);
            exit.set(VmExit::VmmError);
        }
        while let Ok((req, reply)) = api_rx.try_recv() {
            let _ = reply.send(handle_api(req, &handles, &control, &exit));
        }
    }
    stop_vcpus(handles, &control);
    if let Some(e) = loop_error {
        return Err(VmmError::EventManager(e));
    }
    Ok(exit.get().unwrap_or(VmExit::VmmError))
}

/// Places virtio device number `slot` on the MMIO bus with its irqfd and ioeventfds, and adds
/// the `virtio_mmio.device=<size>@<addr>:<irq>` command-line form for it.
fn attach_virtio_mmio(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    cmdline: &mut Cmdline,
    slot: u32,
    dev: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<acpi::MmioDevice, VmmError> {
    let irq = arch::VIRTIO_IRQ_BASE + slot;
    if irq > arch::IRQ_MAX {
        return Err(VmmError::Config(format!(
            "too many virtio devices ({})",
            slot + 1
        )));
    }
    let base = arch::VIRTIO_MMIO_START + u64::from(slot) * arch::VIRTIO_MMIO_SIZE;
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&irq_evt, irq)?;
    {
        let d = dev.lock().unwrap_or_else(|e| e.into_inner());
        for (q, evt) in d.queue_events().iter().enumerate() {
            vm.register_mmio_ioevent(evt, base + QUEUE_NOTIFY_OFFSET, q as u32)?;
        }
    }
    let transport = MmioTransport::new(dev, mem.clone(), Arc::new(MmioInterrupt::new(irq_evt)))
        .map_err(VmmError::Transport)?;
    mmio.insert(
        Arc::new(Mutex::new(transport)),
        base,
        arch::VIRTIO_MMIO_SIZE,
    )?;
    cmdline
        .add_virtio_mmio_device(arch::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
        .map_err(|e| VmmError::Boot(BootError::Cmdline(e)))?;
    Ok(acpi::MmioDevice {
        base,
        size: arch::VIRTIO_MMIO_SIZE,
        irq,
    })
}

/// Carries out one control API request on the VMM thread.
fn handle_api(
    req: ApiRequest,
    handles: &[vstate::VcpuHandle],
    control: &RunControl,
    exit: &ExitState,
) -> ApiReply {
    let state = |c: &RunControl| if c.is_paused() { "paused" } else { "running" };
    match req {
        ApiRequest::Status => ApiReply::State(state(control)),
        ApiRequest::Pause => {
            if !control.is_paused() {
                control.request_pause();
                for h in handles {
                    h.kick();
                }
                control.wait_parked();
            }
            ApiReply::State("paused")
        }
        ApiRequest::Resume => {
            control.resume();
            ApiReply::State("running")
        }
        ApiRequest::Shutdown => {
            exit.set(VmExit::Stopped);
            ApiReply::State("stopping")
        }
    }
}

/// Kicks every vCPU out of `KVM_RUN` (or its pause) and joins it (the exit state must
/// already be set).
fn stop_vcpus(handles: Vec<vstate::VcpuHandle>, control: &RunControl) {
    control.stop();
    for h in &handles {
        h.kick();
    }
    for h in handles {
        match h.thread.join() {
            Ok((_vcpu, Ok(()))) => {}
            Ok((_vcpu, Err(e))) => log::error!("vcpu: {e}"),
            Err(_) => log::error!("vcpu thread panicked"),
        }
    }
}

/// The VMM thread's allowlist (after start-up: event loop, vCPU kicks and teardown).
/// `vhost_sockets`: the vhost-user sockets `sendmsg`/`recvmsg` may use (none: neither is
/// allowed); `None` lists both without the fd check (for the summary).
pub fn seccomp_filter(vhost_sockets: Option<&[RawFd]>) -> Result<ThreadFilter, SeccompError> {
    let build = |e| SeccompError::Build("vmm", e);
    let mut vhost = Vec::new();
    for (name, nr) in [
        ("sendmsg", libc::SYS_sendmsg),
        ("recvmsg", libc::SYS_recvmsg),
    ] {
        match vhost_sockets {
            None => vhost.push(allow(name, nr)),
            Some([]) => {}
            Some(fds) => {
                let fds: Vec<u64> = fds.iter().map(|fd| *fd as u64).collect();
                vhost.push(allow_arg_in(name, nr, 0, &fds).map_err(build)?);
            }
        }
    }
    let mut allowed = vec![
        allow("epoll_wait", libc::SYS_epoll_wait),
        allow("epoll_ctl", libc::SYS_epoll_ctl),
        allow("read", libc::SYS_read),
        allow("write", libc::SYS_write),
        allow("futex", libc::SYS_futex),
        // Only the vCPU kick signal.
        allow_arg_in(
            "tgkill",
            libc::SYS_tgkill,
            2,
            &[vmm_sys_util::signal::SIGRTMIN() as u64],
        )
        .map_err(|e| SeccompError::Build("vmm", e))?,
        allow("getpid", libc::SYS_getpid),
        allow("rt_sigprocmask", libc::SYS_rt_sigprocmask),
        allow("close", libc::SYS_close),
        allow("munmap", libc::SYS_munmap),
        allow("mmap", libc::SYS_mmap),
        allow("brk", libc::SYS_brk),
        allow("sigaltstack", libc::SYS_sigaltstack),
        allow("exit_group", libc::SYS_exit_group),
        // virtio-rng entropy.
        allow("getrandom", libc::SYS_getrandom),
        // virtio-blk file I/O.
        allow("pread64", libc::SYS_pread64),
        allow("pwrite64", libc::SYS_pwrite64),
        allow("fdatasync", libc::SYS_fdatasync),
        // Hybrid vsock: accept host connections, connect to `<uds>_<port>`, stream I/O.
        allow("accept4", libc::SYS_accept4),
        allow_arg_in("socket", libc::SYS_socket, 0, &[libc::AF_UNIX as u64])
            .map_err(|e| SeccompError::Build("vmm", e))?,
        allow("connect", libc::SYS_connect),
        // Only FIONBIO (std's set_nonblocking on accepted/connected sockets); no KVM ioctl.
        allow_arg_in("ioctl", libc::SYS_ioctl, 1, &[libc::FIONBIO])
            .map_err(|e| SeccompError::Build("vmm", e))?,
        allow("recvfrom", libc::SYS_recvfrom),
        allow("sendto", libc::SYS_sendto),
        allow("shutdown", libc::SYS_shutdown),
        // Rate limiters: arm their timers; read the clock if the vDSO cannot.
        allow("timerfd_settime", libc::SYS_timerfd_settime),
        allow("clock_gettime", libc::SYS_clock_gettime),
        // Debug builds only: std checks that an fd being closed is open.
        #[cfg(debug_assertions)]
        allow("fcntl", libc::SYS_fcntl),
    ];
    // virtio-fs: vhost-user messages (with fds) on the back ends' sockets only.
    allowed.extend(vhost);
    Ok(ThreadFilter {
        kind: ThreadKind::Vmm,
        allowed,
    })
}
