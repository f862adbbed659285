//! Which backend runs sandbox VMs: the one rule `kind = "auto"` follows, from
//! the config and what KVM this host has. `launch` and `skerry check` both ask
//! [`backend_choice`], so what `check` says is what `create` does.

use std::fmt;
use std::path::Path;

use crate::config::{Accel, HypervisorConfig, HypervisorKind};

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualisation (VMX/SVM) through a usable /dev/kvm.
    Native,
    /// KVM served by `kvm_pvm`: guest kernels run only if built for PVM.
    Pvm,
    /// No usable KVM.
    None,
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmKind::Native => "native",
            KvmKind::Pvm => "pvm",
            KvmKind::None => "none",
        })
    }
}

/// Classifies KVM from cpuinfo text, whether /dev/kvm opens, and whether kvm_pvm is loaded.
pub fn classify_kvm(cpuinfo: &str, dev_kvm_usable: bool, pvm_loaded: bool) -> KvmKind {
    if !dev_kvm_usable {
        return KvmKind::None;
    }
    if pvm_loaded {
        return KvmKind::Pvm;
    }
    if cpu_has_virt(cpuinfo) {
        KvmKind::Native
    } else {
        KvmKind::None
    }
}

/// True when the first CPU's flags include `vmx` or `svm`.
fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .is_some_and(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// True when /dev/kvm can be opened read-write.
pub fn dev_kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// KVM kind of this host.
pub fn kvm_kind() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify_kvm(
        &cpuinfo,
        dev_kvm_usable(),
        Path::new("/sys/module/kvm_pvm").exists(),
    )
}

/// The hypervisor a sandbox VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// skerry-vmm, launched through the jailer (always KVM).
    SkerryVmm,
    /// QEMU `-M microvm`, with KVM (`kvm: true`) or TCG.
    Qemu {
        /// KVM rather than TCG.
        kvm: bool,
    },
}

impl Backend {
    /// True when the backend opens /dev/kvm.
    pub fn needs_kvm(self) -> bool {
        matches!(self, Backend::SkerryVmm | Backend::Qemu { kvm: true })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::SkerryVmm => "skerry-vmm",
            Backend::Qemu { kvm: true } => "qemu with KVM",
            Backend::Qemu { kvm: false } => "qemu with TCG",
        })
    }
}

/// Which backend the config resolves to on a host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// The backend.
    pub backend: Backend,
    /// Why, in words a person can read (names the config keys that decided it).
    pub reason: String,
    /// False when the choice runs guest kernels slower than the host could
    /// (TCG, or skerry-vmm forced onto a KVM that emulates guest ring 0), or
    /// needs KVM the host lacks.
    pub runs_well: bool,
}

impl BackendChoice {
    /// "backend: reason", e.g. "qemu with TCG: no usable KVM".
    pub fn summary(&self) -> String {
        format!("{}: {}", self.backend, self.reason)
    }

    /// Whether the VM's boundary is the CPU's hardware virtualisation (KVM)
    /// rather than QEMU's TCG, which QEMU's security policy does not count
    /// as a security boundary.
    pub fn hardware_isolated(&self) -> bool {
        self.backend.needs_kvm()
    }

    /// Refuses software emulation when `cfg` requires hardware
    /// virtualisation, and QEMU when `cfg` sets rate limits (which only
    /// skerry-vmm applies).
    pub fn allowed_by(&self, cfg: &HypervisorConfig) -> Result<(), super::HypervisorError> {
        if cfg.require_hardware_virtualization && !self.hardware_isolated() {
            return Err(super::HypervisorError::SoftwareEmulation(self.summary()));
        }
        if let (Backend::Qemu { .. }, Some(key)) = (self.backend, cfg.rate_limits_set().first()) {
            return Err(super::HypervisorError::RateLimitUnsupported {
                key,
                choice: self.summary(),
            });
        }
        Ok(())
    }
}

/// What `auto` needs for skerry-vmm, said when it picks QEMU instead.
const AUTO_RULE: &str =
    "auto picks skerry-vmm on native KVM (VMX/SVM), or on PVM with hypervisor.guest_kernel_pvm = true";

/// Decides the backend for `cfg` on a host with `kvm` (pure; see [`backend_choice`]).
///
/// `auto` picks skerry-vmm where KVM runs the guest kernel natively (VMX/SVM,
/// or PVM with `guest_kernel_pvm = true`) unless `accel = "tcg"`, and QEMU
/// otherwise; QEMU's `accel = "auto"` is KVM under the same condition, else TCG.
pub fn choose_backend(cfg: &HypervisorConfig, kvm: KvmKind) -> BackendChoice {
    let runs_kernels = match kvm {
        KvmKind::Native => true,
        KvmKind::Pvm => cfg.guest_kernel_pvm,
        KvmKind::None => false,
    };
    let kvm_why = match kvm {
        KvmKind::Native => "KVM runs guest kernels natively (VMX/SVM)",
        KvmKind::Pvm if cfg.guest_kernel_pvm => {
            "KVM is PVM and the guest kernel is PVM-capable (hypervisor.guest_kernel_pvm = true)"
        }
        KvmKind::Pvm => {
            "KVM is PVM and no PVM guest kernel is configured (hypervisor.guest_kernel_pvm = false)"
        }
        KvmKind::None => "no usable KVM",
    };
    if cfg.kind == HypervisorKind::SkerryVmm {
        return BackendChoice {
            backend: Backend::SkerryVmm,
            reason: format!("hypervisor.kind = \"skerry-vmm\"; {kvm_why}"),
            runs_well: runs_kernels,
        };
    }
    if cfg.kind == HypervisorKind::Auto && runs_kernels && cfg.accel != Accel::Tcg {
        return BackendChoice {
            backend: Backend::SkerryVmm,
            reason: kvm_why.to_string(),
            runs_well: true,
        };
    }
    let (use_kvm, mut reason) = match cfg.accel {
        Accel::Tcg => (false, "hypervisor.accel = \"tcg\"".to_string()),
        Accel::Kvm if kvm == KvmKind::None => (
            true,
            "hypervisor.accel = \"kvm\", but /dev/kvm is not usable".to_string(),
        ),
        Accel::Kvm => (true, "hypervisor.accel = \"kvm\"".to_string()),
        Accel::Auto => (runs_kernels, kvm_why.to_string()),
    };
    if cfg.kind == HypervisorKind::Auto && cfg.accel == Accel::Tcg {
        reason = format!("{reason} (skerry-vmm runs on KVM only)");
    } else if cfg.kind == HypervisorKind::Auto {
        reason = format!("{reason}; {AUTO_RULE}");
    } else {
        reason = format!("hypervisor.kind = \"qemu\"; {reason}");
    }
    BackendChoice {
        backend: Backend::Qemu { kvm: use_kvm },
        reason,
        runs_well: use_kvm && runs_kernels,
    }
}

/// Decides the backend for `cfg` on this host.
pub fn backend_choice(cfg: &HypervisorConfig) -> BackendChoice {
    choose_backend(cfg, kvm_kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_AMD_PVM: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\ncpu MHz\t\t: 2596.122\n";
    const CPU_INTEL_VMX: &str =
        "processor\t: 0\nflags\t\t: fpu vme vmx ept tsc\nprocessor\t: 1\nflags\t\t: fpu vmx\n";
    const CPU_AMD_SVM: &str = "flags\t: fpu svm npt\n";

    #[test]
    fn kvm_kinds() {
        assert_eq!(classify_kvm(CPU_AMD_PVM, true, true), KvmKind::Pvm);
        assert_eq!(classify_kvm(CPU_AMD_PVM, true, false), KvmKind::None);
        assert_eq!(classify_kvm(CPU_INTEL_VMX, true, false), KvmKind::Native);
        assert_eq!(classify_kvm(CPU_AMD_SVM, true, false), KvmKind::Native);
        assert_eq!(classify_kvm(CPU_INTEL_VMX, false, false), KvmKind::None);
        assert_eq!(classify_kvm(CPU_INTEL_VMX, false, true), KvmKind::None);
        // "svm_lock" or "vmx_flags" lines must not count.
        assert_eq!(
            classify_kvm("flags : fpu svm_lock\nvmx flags : ept\n", true, false),
            KvmKind::None
        );
    }

    fn cfg(kind: HypervisorKind, accel: Accel, guest_kernel_pvm: bool) -> HypervisorConfig {
        HypervisorConfig {
            kind,
            accel,
            guest_kernel_pvm,
            ..HypervisorConfig::default()
        }
    }

    const VMM: Backend = Backend::SkerryVmm;
    const QKVM: Backend = Backend::Qemu { kvm: true };
    const QTCG: Backend = Backend::Qemu { kvm: false };

    /// Every row of the decision: kind × accel × host KVM × guest_kernel_pvm.
    #[test]
    fn every_row_of_the_decision() {
        use Accel::{Auto as A, Kvm as K, Tcg as T};
        use HypervisorKind::{Auto, Qemu, SkerryVmm};
        use KvmKind::{Native as N, None as X, Pvm as P};
        #[rustfmt::skip]
        let rows = [
            // kind       accel kvm  pvm-kernel → backend, runs well
            (Auto,        A,    N,   false,  VMM,  true),
            (Auto,        A,    N,   true,   VMM,  true),
            (Auto,        A,    P,   true,   VMM,  true),
            (Auto,        A,    P,   false,  QTCG, false),
            (Auto,        A,    X,   false,  QTCG, false),
            (Auto,        A,    X,   true,   QTCG, false),
            (Auto,        K,    N,   false,  VMM,  true),
            (Auto,        K,    P,   true,   VMM,  true),
            (Auto,        K,    P,   false,  QKVM, false),
            (Auto,        K,    X,   false,  QKVM, false),
            (Auto,        T,    N,   false,  QTCG, false),
            (Auto,        T,    P,   true,   QTCG, false),
            (Auto,        T,    X,   false,  QTCG, false),
            (Qemu,        A,    N,   false,  QKVM, true),
            (Qemu,        A,    P,   true,   QKVM, true),
            (Qemu,        A,    P,   false,  QTCG, false),
            (Qemu,        A,    X,   false,  QTCG, false),
            (Qemu,        K,    N,   false,  QKVM, true),
            (Qemu,        K,    P,   false,  QKVM, false),
            (Qemu,        K,    X,   false,  QKVM, false),
            (Qemu,        T,    N,   false,  QTCG, false),
            (Qemu,        T,    X,   false,  QTCG, false),
            (SkerryVmm,   A,    N,   false,  VMM,  true),
            (SkerryVmm,   A,    P,   true,   VMM,  true),
            (SkerryVmm,   A,    P,   false,  VMM,  false),
            (SkerryVmm,   K,    X,   false,  VMM,  false),
        ];
        for (kind, accel, kvm, pvm, backend, well) in rows {
            let c = choose_backend(&cfg(kind, accel, pvm), kvm);
            let row = format!("{kind:?} {accel:?} {kvm:?} pvm={pvm}: {}", c.summary());
            assert_eq!(c.backend, backend, "{row}");
            assert_eq!(c.runs_well, well, "{row}");
        }
    }

    #[test]
    fn reasons_say_why() {
        let auto = HypervisorConfig::default();
        assert_eq!(
            choose_backend(&auto, KvmKind::Pvm).summary(),
            "qemu with TCG: KVM is PVM and no PVM guest kernel is configured \
             (hypervisor.guest_kernel_pvm = false); auto picks skerry-vmm on native KVM \
             (VMX/SVM), or on PVM with hypervisor.guest_kernel_pvm = true"
        );
        assert_eq!(
            choose_backend(&auto, KvmKind::Native).summary(),
            "skerry-vmm: KVM runs guest kernels natively (VMX/SVM)"
        );
        let pvm = cfg(HypervisorKind::Auto, Accel::Auto, true);
        assert_eq!(
            choose_backend(&pvm, KvmKind::Pvm).summary(),
            "skerry-vmm: KVM is PVM and the guest kernel is PVM-capable \
             (hypervisor.guest_kernel_pvm = true)"
        );
        let tcg = cfg(HypervisorKind::Auto, Accel::Tcg, false);
        assert_eq!(
            choose_backend(&tcg, KvmKind::Native).reason,
            "hypervisor.accel = \"tcg\" (skerry-vmm runs on KVM only)"
        );
        let qemu = cfg(HypervisorKind::Qemu, Accel::Kvm, false);
        assert_eq!(
            choose_backend(&qemu, KvmKind::None).summary(),
            "qemu with KVM: hypervisor.kind = \"qemu\"; hypervisor.accel = \"kvm\", \
             but /dev/kvm is not usable"
        );
        let vmm = cfg(HypervisorKind::SkerryVmm, Accel::Auto, false);
        assert_eq!(
            choose_backend(&vmm, KvmKind::None).summary(),
            "skerry-vmm: hypervisor.kind = \"skerry-vmm\"; no usable KVM"
        );
        assert!(VMM.needs_kvm() && QKVM.needs_kvm() && !QTCG.needs_kvm());
    }

    #[test]
    fn software_emulation_is_refused_only_when_required() {
        let required = HypervisorConfig {
            require_hardware_virtualization: true,
            ..HypervisorConfig::default()
        };
        let tcg = choose_backend(&required, KvmKind::Pvm);
        assert!(!tcg.hardware_isolated());
        let err = tcg.allowed_by(&required).unwrap_err().to_string();
        assert!(
            err.starts_with("hypervisor.require_hardware_virtualization = true, but this VM")
                && err.contains("(qemu with TCG: KVM is PVM"),
            "{err}"
        );
        choose_backend(&HypervisorConfig::default(), KvmKind::Pvm)
            .allowed_by(&HypervisorConfig::default())
            .unwrap();
        let native = choose_backend(&required, KvmKind::Native);
        assert!(native.hardware_isolated());
        native.allowed_by(&required).unwrap();
    }

    #[test]
    fn rate_limits_refuse_qemu_when_auto_picks_it() {
        let limited = HypervisorConfig {
            vsock_rate_limit_mib_per_sec: 5,
            ..HypervisorConfig::default()
        };
        choose_backend(&limited, KvmKind::Native)
            .allowed_by(&limited)
            .unwrap();
        let err = choose_backend(&limited, KvmKind::None)
            .allowed_by(&limited)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("hypervisor.vsock_rate_limit_mib_per_sec needs skerry-vmm")
                && err.contains("on qemu with TCG: no usable KVM"),
            "{err}"
        );
    }
}
