//! A vCPU: boot configuration, the run loop on its own thread, and the kick (signal +
//! `immediate_exit`) that gets it out of a blocking `KVM_RUN` (e.g. a guest HLT).

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccompiler::BpfProgram;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch;
use crate::boot::BootEntry;
use crate::control::RunControl;
use crate::devices::Bus;
use crate::exit::{ExitState, VmExit};
use crate::seccomp::{self, allow, allow_rules, SeccompError, ThreadFilter, ThreadKind};

/// Failure to configure or run a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("KVM {what} failed")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// CPUID adaptation failed.
    #[error("cannot set up CPUID")]
    Cpuid(#[source] arch::CpuidError),
    /// MSR list could not be built.
    #[error("cannot set up MSRs")]
    Msr(#[source] arch::MsrError),
    /// Not every boot MSR was accepted.
    #[error("KVM accepted {set} of {wanted} boot MSRs")]
    MsrCount {
        /// Accepted.
        set: usize,
        /// Requested.
        wanted: usize,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread's seccomp filter could not be installed.
    #[error("cannot install the vCPU seccomp filter")]
    Seccomp(#[source] SeccompError),
    /// The vCPU thread could not be started.
    #[error("cannot spawn the vCPU thread")]
    Spawn(#[source] std::io::Error),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Ioctl { what, source }
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

thread_local! {
    /// The running vCPU's `kvm_run` page, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN_PTR.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is set by this thread's run loop to its own vCPU's mmapped
        // `kvm_run` page and cleared before that mapping is dropped; the handler runs on the
        // same thread, so the page is alive. A volatile store of one byte is signal-safe.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

/// Installs the process-wide handler for the vCPU kick signal (SIGRTMIN).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VcpuError::Signal)
}

/// Sends the kick signal to a vCPU thread.
pub fn kick_thread<T>(handle: &JoinHandle<T>) {
    // The thread may already be gone; nothing to do then.
    let _ = handle.kill(SIGRTMIN());
}

/// A running vCPU thread.
pub struct VcpuHandle {
    /// The thread; joins to the vCPU (so its fd and `kvm_run` mapping are released by the
    /// joining thread, not under the vCPU filter) and the vCPU's error, if it failed.
    pub thread: JoinHandle<(Option<Vcpu>, Result<(), VcpuError>)>,
}

impl VcpuHandle {
    /// Interrupts `KVM_RUN` so the loop re-checks the exit state.
    pub fn kick(&self) {
        kick_thread(&self.thread);
    }
}

impl Vcpu {
    pub(super) fn new(index: u8, fd: VcpuFd) -> Self {
        Vcpu { index, fd }
    }

    /// The vCPU's file descriptor number (for its seccomp filter).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Sets CPUID, MSRs, the local APIC, and for the boot vCPU the registers of `entry`.
    pub fn configure(
        &mut self,
        mem: &GuestMemoryMmap,
        supported: &CpuId,
        count: u8,
        entry: Option<BootEntry>,
    ) -> Result<(), VcpuError> {
        let mut cpuid = supported.clone();
        arch::filter_cpuid(&mut cpuid, self.index, count).map_err(VcpuError::Cpuid)?;
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("SET_CPUID2"))?;

        let msrs = arch::boot_msr_entries().map_err(VcpuError::Msr)?;
        let set = self.fd.set_msrs(&msrs).map_err(ioctl("SET_MSRS"))?;
        if set != msrs.as_fam_struct_ref().nmsrs as usize {
            return Err(VcpuError::MsrCount {
                set,
                wanted: msrs.as_fam_struct_ref().nmsrs as usize,
            });
        }

        let mut lapic = self.fd.get_lapic().map_err(ioctl("GET_LAPIC"))?;
        for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let mut b = [0u8; 4];
            for (i, x) in b.iter_mut().enumerate() {
                *x = lapic.regs[off + i] as u8;
            }
            let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
            for (i, x) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[off + i] = *x as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(ioctl("SET_LAPIC"))?;

        let Some(entry) = entry else {
            return Ok(());
        };
        let _ = mem;
        let sregs = self.fd.get_sregs().map_err(ioctl("GET_SREGS"))?;
        let (regs, sregs) = match entry {
            BootEntry::Linux64 { entry } => (arch::linux64_regs(entry), arch::linux64_sregs(sregs)),
            BootEntry::Pvh { entry, start_info } => {
                (arch::pvh_regs(entry, start_info), arch::pvh_sregs(sregs))
            }
        };
        self.fd.set_sregs(&sregs).map_err(ioctl("SET_SREGS"))?;
        self.fd.set_regs(&regs).map_err(ioctl("SET_REGS"))?;
        self.fd.set_fpu(&arch::boot_fpu()).map_err(ioctl("SET_FPU"))
    }

    /// Starts the vCPU thread: installs `filter` (if any), then runs until the VM exits.
    pub fn spawn(
        self,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitState>,
        control: Arc<RunControl>,
        filter: Option<BpfProgram>,
    ) -> Result<VcpuHandle, VcpuError> {
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                if let Some(prog) = filter {
                    if let Err(e) = seccomp::apply(&prog) {
                        exit.set(VmExit::VmmError);
                        control.vcpu_gone();
                        return (Some(self), Err(VcpuError::Seccomp(e)));
                    }
                }
                let mut vcpu = self;
                let result = vcpu.run(&pio, &mmio, &exit, &control);
                control.vcpu_gone();
                (Some(vcpu), result)
            })
            .map_err(VcpuError::Spawn)?;
        Ok(VcpuHandle { thread })
    }

    /// The run loop: handles exits until the VM's exit state is set; parks while paused.
    pub fn run(
        &mut self,
        pio: &Bus,
        mmio: &Bus,
        exit: &ExitState,
        control: &RunControl,
    ) -> Result<(), VcpuError> {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run_ptr));
        let result = self.run_loop(pio, mmio, exit, control);
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        if result.is_err() {
            exit.set(VmExit::VmmError);
        }
        result
    }

    fn run_loop(
        &mut self,
        pio: &Bus,
        mmio: &Bus,
        exit: &ExitState,
        control: &RunControl,
    ) -> Result<(), VcpuError> {
        loop {
            if exit.get().is_some() {
                return Ok(());
            }
            control.park_if_paused();
            if exit.get().is_some() {
                return Ok(());
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    pio.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Hlt) => None,
                Ok(VcpuExit::Shutdown) => {
                    log::warn!("vcpu{}: triple fault", self.index);
                    Some(VmExit::GuestCrash)
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::Poweroff),
                    KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Some(VmExit::GuestCrash),
                    _ => None,
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    log::error!(
                        "vcpu{}: VM entry failed: reason {reason:#x} on cpu {cpu}",
                        self.index
                    );
                    Some(VmExit::GuestCrash)
                }
                Ok(VcpuExit::InternalError) => {
                    log::error!("vcpu{}: KVM internal error (emulation failure)", self.index);
                    Some(VmExit::GuestCrash)
                }
                Ok(other) => {
                    log::error!("vcpu{}: unexpected exit {other:?}", self.index);
                    Some(VmExit::GuestCrash)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    None
                }
                Err(source) => {
                    return Err(VcpuError::Ioctl {
                        what: "RUN",
                        source,
                    })
                }
            };
            if let Some(e) = outcome {
                exit.set(e);
            }
        }
    }
}

/// The vCPU thread's allowlist. `vcpu_fd` pins `ioctl` to this vCPU's fd (None in the summary).
pub fn seccomp_filter(vcpu_fd: Option<i32>) -> Result<ThreadFilter, SeccompError> {
    use seccompiler::{
        SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as C, SeccompRule,
    };
    let build = |e| SeccompError::Build("vcpu", e);
    let mut conds = vec![C::new(1, Len::Dword, Op::Eq, super::KVM_RUN).map_err(build)?];
    if let Some(fd) = vcpu_fd {
        conds.push(C::new(0, Len::Dword, Op::Eq, fd as u64).map_err(build)?);
    }
    Ok(ThreadFilter {
        kind: ThreadKind::Vcpu,
        allowed: vec![
            // KVM_RUN on this vCPU only.
            allow_rules(
                "ioctl",
                libc::SYS_ioctl,
                vec![SeccompRule::new(conds).map_err(build)?],
            ),
            // Serial output, irqfd and exit eventfd writes.
            allow("write", libc::SYS_write),
            // Device locks.
            allow("futex", libc::SYS_futex),
            // Return from the kick signal handler.
            allow("rt_sigreturn", libc::SYS_rt_sigreturn),
            // Thread exit: std's alt stack teardown, glibc stack release.
            allow("sigaltstack", libc::SYS_sigaltstack),
            allow("munmap", libc::SYS_munmap),
            allow("madvise", libc::SYS_madvise),
            allow("rt_sigprocmask", libc::SYS_rt_sigprocmask),
            allow("exit", libc::SYS_exit),
        ],
    })
}
