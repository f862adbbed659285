//! `skerry check`: what this host offers and which backend `auto` picks.

use std::fmt;
use std::path::Path;

use crate::config::Config;
use crate::hypervisor::choice::{choose_backend, kvm_kind, Backend, BackendChoice, KvmKind};
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

/// A row for a binary: missing is a failure when the chosen `backend` needs it, else a warning.
fn check_binary(
    report: &mut CheckReport,
    item: &str,
    configured: &Path,
    needed: bool,
    backend: Backend,
) {
    match find_binary(configured) {
        None if needed => report.push(
            item,
            Status::Fail,
            format!("{:?} not found in PATH or ~/.cargo/bin", configured),
        ),
        None => report.push(
            item,
            Status::Warn,
            format!("{configured:?} not found (not needed: the backend is {backend})"),
        ),
        Some(path) => match binary_version(&path) {
            Ok(v) => report.push(item, Status::Ok, format!("{} ({v})", path.display())),
            Err(e) => report.push(item, Status::Fail, format!("{}: {e}", path.display())),
        },
    }
}

/// The `backend` row: fails when the choice needs KVM the host lacks, warns
/// when it runs guest kernels slower than they could run.
fn backend_row(choice: &BackendChoice, kvm: KvmKind) -> (Status, String) {
    let status = if choice.backend.needs_kvm() && kvm == KvmKind::None {
        Status::Fail
    } else if choice.runs_well {
        Status::Ok
    } else {
        Status::Warn
    };
    (status, choice.summary())
}

/// The `vm boundary` row: what separates a guest from the host. QEMU's
/// security policy does not count TCG (software emulation) as a security
/// boundary: a warning, or a failure when the config requires hardware.
fn isolation_row(choice: &BackendChoice, required: bool) -> (Status, String) {
    if choice.hardware_isolated() {
        return (Status::Ok, "hardware virtualisation (KVM)".into());
    }
    let status = if required { Status::Fail } else { Status::Warn };
    let advice = if required {
        "hypervisor.require_hardware_virtualization = true refuses to boot it"
    } else {
        "set hypervisor.require_hardware_virtualization = true to refuse it"
    };
    (
        status,
        format!(
            "software emulation (QEMU TCG): not a hardware isolation boundary \
             (QEMU does not treat TCG as a security boundary); {advice}"
        ),
    )
}

/// Probes this host and the configured binaries and guest image.
pub fn run(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    let kvm = kvm_kind();
    let hv = &config.hypervisor;
    let (status, detail) = match kvm {
        KvmKind::Native => (Status::Ok, "VMX/SVM with a usable /dev/kvm"),
        KvmKind::Pvm if hv.guest_kernel_pvm => (
            Status::Ok,
            "/dev/kvm is kvm_pvm and the guest kernel is PVM-capable (hypervisor.guest_kernel_pvm)",
        ),
        KvmKind::Pvm => (
            Status::Warn,
            "/dev/kvm is kvm_pvm (ring 0 of a non-PVM guest kernel is emulated; stock kernels need TCG)",
        ),
        KvmKind::None if Path::new("/dev/kvm").exists() => (
            Status::Warn,
            "/dev/kvm cannot be opened read-write, or the CPU lacks VMX/SVM",
        ),
        KvmKind::None => (Status::Warn, "no /dev/kvm"),
    };
    report.push("kvm", status, format!("{kvm}: {detail}"));

    let choice = choose_backend(hv, kvm);
    let (status, detail) = isolation_row(&choice, hv.require_hardware_virtualization);
    report.push("vm boundary", status, detail);
    let vmm = choice.backend == Backend::SkerryVmm;
    for (item, path, needed) in [
        ("qemu", &hv.qemu_path, !vmm),
        ("virtiofsd", &hv.virtiofsd_path, true),
        ("vhost-device-vsock", &hv.vsock_backend_path, !vmm),
        ("skerry-vmm", &hv.vmm_path, vmm),
        ("jailer", &hv.jailer_path, vmm),
    ] {
        check_binary(&mut report, item, path, needed, choice.backend);
    }

    let guest = &config.guest;
    let missing: Vec<String> = [
        crate::image::kernel_path(&guest.image_dir),
        crate::image::initrd_path(&guest.image_dir),
    ]
    .iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        let version = crate::image::read_manifest(&guest.image_dir)
            .map(|m| m.kernel_summary())
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

    let (status, detail) = backend_row(&choice, kvm);
    report.push("backend", status, detail);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tcg_is_not_called_a_hardware_boundary() {
        use crate::config::HypervisorConfig;
        let mut hv = HypervisorConfig::default();
        let row = |hv: &HypervisorConfig, kvm| {
            isolation_row(&choose_backend(hv, kvm), hv.require_hardware_virtualization)
        };
        assert_eq!(
            row(&hv, KvmKind::Native),
            (Status::Ok, "hardware virtualisation (KVM)".to_string())
        );
        let (status, detail) = row(&hv, KvmKind::Pvm);
        assert_eq!(status, Status::Warn);
        assert!(
            detail.starts_with("software emulation (QEMU TCG): not a hardware"),
            "{detail}"
        );
        hv.require_hardware_virtualization = true;
        assert_eq!(row(&hv, KvmKind::None).0, Status::Fail);
        assert_eq!(row(&hv, KvmKind::Native).0, Status::Ok);
    }

    #[test]
    fn backend_row_status() {
        use crate::config::{Accel, HypervisorConfig, HypervisorKind};
        let auto = HypervisorConfig::default();
        let row = |cfg: &HypervisorConfig, kvm| backend_row(&choose_backend(cfg, kvm), kvm);
        assert_eq!(row(&auto, KvmKind::Native).0, Status::Ok);
        let (status, detail) = row(&auto, KvmKind::Pvm);
        assert_eq!(status, Status::Warn);
        assert!(detail.starts_with("qemu with TCG: KVM is PVM"), "{detail}");
        let pvm = HypervisorConfig {
            guest_kernel_pvm: true,
            ..HypervisorConfig::default()
        };
        assert_eq!(
            row(&pvm, KvmKind::Pvm),
            (
                Status::Ok,
                "skerry-vmm: KVM is PVM and the guest kernel is PVM-capable \
                 (hypervisor.guest_kernel_pvm = true)"
                    .to_string()
            )
        );
        for cfg in [
            HypervisorConfig {
                kind: HypervisorKind::SkerryVmm,
                ..HypervisorConfig::default()
            },
            HypervisorConfig {
                accel: Accel::Kvm,
                ..HypervisorConfig::default()
            },
        ] {
            assert_eq!(row(&cfg, KvmKind::None).0, Status::Fail, "{cfg:?}");
        }
        assert_eq!(row(&auto, KvmKind::None).0, Status::Warn);
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
