//! `skerry check`: what this host offers and which backend `auto` picks.

use std::fmt;
use std::path::Path;

use crate::config::{Accel, Config, HypervisorConfig, HypervisorKind};
use crate::hypervisor::find_binary;

/// Failure to probe the host (only used internally; probes degrade to rows).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A helper binary did not report its version.
    #[error("{0} --version failed")]
    Version(String, #[source] std::io::Error),
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but slower or less isolated than it could.
    Warn,
    /// Sandboxes cannot run until this is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    /// What was checked.
    pub item: String,
    /// Its outcome.
    pub status: Status,
    /// What was found, or what to do.
    pub detail: String,
}

/// The result of `skerry check`.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// The rows, in display order.
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    /// True when no row failed.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.status != Status::Fail)
    }

    fn push(&mut self, item: &str, status: Status, detail: impl Into<String>) {
        self.rows.push(CheckRow {
            item: item.to_string(),
            status,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let item_w = self
            .rows
            .iter()
            .map(|r| r.item.len())
            .chain(["ITEM".len()])
            .max()
            .unwrap_or(0);
        writeln!(f, "{:<item_w$}  {:<6}  DETAIL", "ITEM", "STATUS")?;
        for r in &self.rows {
            writeln!(f, "{:<item_w$}  {:<6}  {}", r.item, r.status, r.detail)?;
        }
        Ok(())
    }
}

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

/// True when KVM runs stock guest kernels at native speed (used by `accel = auto`).
pub fn kvm_runs_guest_kernels() -> bool {
    kvm_kind() == KvmKind::Native
}

/// Which hypervisor and accelerator `auto` settings resolve to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// True for KVM, false for TCG.
    pub kvm: bool,
    /// One line a person can read, e.g. "qemu with TCG: KVM is PVM and …".
    pub summary: String,
}

/// Decides the backend for `cfg` on a host with `kvm` (pure; see [`backend_choice`]).
pub fn choose_backend(cfg: &HypervisorConfig, kvm: KvmKind) -> BackendChoice {
    let kind = match cfg.kind {
        HypervisorKind::Auto => "qemu",
        HypervisorKind::Qemu => "qemu",
    };
    let (use_kvm, why) = match (cfg.accel, kvm) {
        (Accel::Tcg, _) => (false, "hypervisor.accel = \"tcg\"".to_string()),
        (Accel::Kvm, KvmKind::None) => (
            true,
            "hypervisor.accel = \"kvm\", but /dev/kvm is not usable".to_string(),
        ),
        (Accel::Kvm, _) => (true, "hypervisor.accel = \"kvm\"".to_string()),
        (Accel::Auto, KvmKind::Native) => (true, "KVM runs guest kernels natively".to_string()),
        (Accel::Auto, KvmKind::Pvm) => (
            false,
            "KVM is PVM and no PVM guest kernel is configured".to_string(),
        ),
        (Accel::Auto, KvmKind::None) => (false, "no usable KVM".to_string()),
    };
    let accel = if use_kvm { "KVM" } else { "TCG" };
    BackendChoice {
        kvm: use_kvm,
        summary: format!("{kind} with {accel}: {why}"),
    }
}

/// Decides the backend for `cfg` on this host.
pub fn backend_choice(cfg: &HypervisorConfig) -> BackendChoice {
    choose_backend(cfg, kvm_kind())
}

/// How cgroups are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Only cgroup v1 hierarchies.
    V1,
    /// The unified hierarchy at /sys/fs/cgroup.
    V2,
    /// v1 controllers plus a v2 hierarchy (usually /sys/fs/cgroup/unified).
    Hybrid,
    /// No cgroup file system under /sys/fs/cgroup.
    None,
}

/// Classifies the layout from /proc/self/mounts text.
pub fn cgroup_layout(mounts: &str) -> CgroupLayout {
    let mut v1 = false;
    let mut v2_root = false;
    let mut v2_other = false;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mountpoint, fstype, ..] = fields[..] else {
            continue;
        };
        if mountpoint != "/sys/fs/cgroup" && !mountpoint.starts_with("/sys/fs/cgroup/") {
            continue;
        }
        match fstype {
            "cgroup" => v1 = true,
            "cgroup2" if mountpoint == "/sys/fs/cgroup" => v2_root = true,
            "cgroup2" => v2_other = true,
            _ => {}
        }
    }
    match (v1, v2_root || v2_other) {
        (true, true) => CgroupLayout::Hybrid,
        (true, false) => CgroupLayout::V1,
        (false, true) => CgroupLayout::V2,
        (false, false) => CgroupLayout::None,
    }
}

/// The version line a binary prints for `--version` (first non-empty line).
fn binary_version(path: &Path) -> Result<String, CheckError> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| CheckError::Version(path.display().to_string(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no version output)")
        .to_string())
}

fn check_binary(report: &mut CheckReport, item: &str, configured: &Path) {
    match find_binary(configured) {
        None => report.push(
            item,
            Status::Fail,
            format!("{:?} not found in PATH or ~/.cargo/bin", configured),
        ),
        Some(path) => match binary_version(&path) {
            Ok(v) => report.push(item, Status::Ok, format!("{} ({v})", path.display())),
            Err(e) => report.push(item, Status::Fail, format!("{}: {e}", path.display())),
        },
    }
}

/// Probes this host and the configured binaries and guest image.
pub fn run(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    let kvm = kvm_kind();
    let (status, detail) = match kvm {
        KvmKind::Native => (Status::Ok, "VMX/SVM with a usable /dev/kvm"),
        KvmKind::Pvm => (
            Status::Warn,
            "/dev/kvm is kvm_pvm (guest ring 0 is emulated; stock kernels need TCG)",
        ),
        KvmKind::None if Path::new("/dev/kvm").exists() => (
            Status::Warn,
            "/dev/kvm cannot be opened read-write, or the CPU lacks VMX/SVM",
        ),
        KvmKind::None => (Status::Warn, "no /dev/kvm"),
    };
    report.push("kvm", status, format!("{kvm}: {detail}"));

    let hv = &config.hypervisor;
    check_binary(&mut report, "qemu", &hv.qemu_path);
    check_binary(&mut report, "virtiofsd", &hv.virtiofsd_path);
    check_binary(&mut report, "vhost-device-vsock", &hv.vsock_backend_path);

    let guest = &config.guest;
    let missing: Vec<String> = [guest.kernel(), guest.initrd()]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        let version = crate::image::read_manifest(&guest.image_dir)
            .map(|m| format!("kernel {}", m.kernel_version))
            .unwrap_or_else(|| "no manifest.json".to_string());
        report.push(
            "guest image",
            Status::Ok,
            format!("{} ({version})", guest.image_dir.display()),
        );
    } else {
        report.push(
            "guest image",
            Status::Fail,
            format!("missing {} (run `skerry image build`)", missing.join(", ")),
        );
    }

    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (status, detail) = match cgroup_layout(&mounts) {
        CgroupLayout::V2 => (Status::Ok, "v2 (unified)"),
        CgroupLayout::Hybrid => (Status::Ok, "hybrid (v1 controllers + v2 unified)"),
        CgroupLayout::V1 => (Status::Ok, "v1"),
        CgroupLayout::None => (Status::Warn, "none mounted under /sys/fs/cgroup"),
    };
    report.push("cgroups", status, detail);

    // Only specs that join a network namespace (pods) need these.
    let (status, detail) = match (
        Path::new("/dev/net/tun").exists(),
        find_binary(Path::new("ip")),
    ) {
        (true, Some(ip)) => (Status::Ok, format!("/dev/net/tun, {}", ip.display())),
        (false, _) => (
            Status::Warn,
            "no /dev/net/tun: pod networks (taps) cannot be made".into(),
        ),
        (true, None) => (
            Status::Warn,
            "no `ip` (iproute2): pod networks (taps) cannot be made".into(),
        ),
    };
    report.push("pod network", status, detail);

    let choice = choose_backend(hv, kvm);
    let status = if choice.kvm && kvm == KvmKind::None {
        Status::Fail
    } else if choice.kvm {
        Status::Ok
    } else {
        Status::Warn
    };
    report.push("backend", status, choice.summary);
    report
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
        // "svm_lock" or "vmx_flags" lines must not count.
        assert_eq!(
            classify_kvm("flags : fpu svm_lock\nvmx flags : ept\n", true, false),
            KvmKind::None
        );
    }

    const MOUNTS_HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
";
    const MOUNTS_V2: &str = "\
proc /proc proc rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
";
    const MOUNTS_V1: &str = "\
tmpfs /sys/fs/cgroup tmpfs ro 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0
";

    #[test]
    fn cgroup_layouts() {
        assert_eq!(cgroup_layout(MOUNTS_HYBRID), CgroupLayout::Hybrid);
        assert_eq!(cgroup_layout(MOUNTS_V2), CgroupLayout::V2);
        assert_eq!(cgroup_layout(MOUNTS_V1), CgroupLayout::V1);
        assert_eq!(
            cgroup_layout("proc /proc proc rw 0 0\n"),
            CgroupLayout::None
        );
        assert_eq!(
            cgroup_layout("cgroup2 /mnt/cg cgroup2 rw 0 0\n"),
            CgroupLayout::None
        );
    }

    #[test]
    fn backend_reasons() {
        let auto = HypervisorConfig::default();
        let c = choose_backend(&auto, KvmKind::Pvm);
        assert!(!c.kvm);
        assert_eq!(
            c.summary,
            "qemu with TCG: KVM is PVM and no PVM guest kernel is configured"
        );
        assert!(choose_backend(&auto, KvmKind::Native).kvm);
        assert!(!choose_backend(&auto, KvmKind::None).kvm);
        let tcg = HypervisorConfig {
            accel: Accel::Tcg,
            ..HypervisorConfig::default()
        };
        assert!(!choose_backend(&tcg, KvmKind::Native).kvm);
    }

    #[test]
    fn report_table_is_aligned_and_ok_means_no_fail() {
        let mut r = CheckReport::default();
        r.push("kvm", Status::Warn, "pvm");
        r.push("vhost-device-vsock", Status::Ok, "/x (1.0)");
        assert!(r.ok());
        let text = r.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("warn"), Some(col));
        assert_eq!(lines[2].find("ok"), Some(col));
        r.push("qemu", Status::Fail, "missing");
        assert!(!r.ok());
    }
}
