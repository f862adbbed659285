//! The runtime configuration file (`/etc/skerry/config.toml`).
//!
//! Every key is optional; its default is documented on the field and written
//! out by `Config::default()`. Unknown keys are rejected so that a typo does
//! not silently fall back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hypervisor::identity::IdRange;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/skerry/config.toml";

/// Failure to read or parse the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config file {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Which hypervisor runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HypervisorKind {
    /// Pick the best available (see `skerry check`).
    #[default]
    Auto,
    /// QEMU (`-M microvm`), with KVM where guest kernels run natively, TCG otherwise.
    Qemu,
    /// skerry-vmm, our own KVM VMM, launched through the jailer.
    SkerryVmm,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// KVM when `skerry check` finds KVM that runs guest kernels natively, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulator (slow, works everywhere).
    Tcg,
}

/// How a container is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Its own lightweight VM (the default).
    #[default]
    Vm,
    /// Namespaces, cgroups, seccomp and capabilities on the host kernel.
    Container,
}

impl Isolation {
    /// The name used in the config file and the annotation.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Container => "container",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[runtime]`: how containers are isolated.
    pub runtime: RuntimeConfig,
    /// `[hypervisor]`: what runs the sandbox VM.
    pub hypervisor: HypervisorConfig,
    /// `[guest]`: the guest kernel and initramfs.
    pub guest: GuestConfig,
    /// `[policy]`: the tenant policy floor every bundle must meet; all rules
    /// are off by default.
    pub policy: PolicyConfig,
    /// `[pod]`: sizing of a Kubernetes pod's VM (containerd shim).
    pub pod: PodConfig,
}

/// `[hypervisor]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// `kind`: "auto" (default), "qemu" or "skerry-vmm".
    pub kind: HypervisorKind,
    /// `accel`: "auto" (default), "kvm" or "tcg".
    pub accel: Accel,
    /// `qemu_path`: QEMU binary; default "qemu-system-x86_64" looked up in PATH.
    pub qemu_path: PathBuf,
    /// `virtiofsd_path`: virtiofsd binary; default "virtiofsd" looked up in PATH
    /// and then in ~/.cargo/bin.
    pub virtiofsd_path: PathBuf,
    /// `vsock_backend_path`: vhost-user vsock device binary; default
    /// "vhost-device-vsock", looked up like virtiofsd.
    pub vsock_backend_path: PathBuf,
    /// `vcpus`: virtual CPUs per sandbox VM; default 1.
    pub vcpus: u32,
    /// `memory_mib`: memory per sandbox VM in MiB; default 512.
    pub memory_mib: u32,
    /// `boot_timeout_secs`: how long one boot may take until the agent
    /// answers; default 15.
    pub boot_timeout_secs: u64,
    /// `boot_attempts`: boots of a VM whose agent does not answer in time
    /// before create fails; default 2.
    pub boot_attempts: u32,
    /// `console_log_max_kib`: most KiB the guest console log
    /// (`<root>/<id>/console.log`) holds: the first half of the boot and the
    /// latest output; default 4096.
    pub console_log_max_kib: u64,
    /// `helper_log_max_kib`: largest log QEMU, skerry-vmm and
    /// vhost-device-vsock may write (their RLIMIT_FSIZE, beside the guest
    /// RAM file for the first two); default 16384.
    pub helper_log_max_kib: u64,
    /// `require_hardware_virtualization`: refuse to boot a VM the host can
    /// only emulate (QEMU's TCG: not a security boundary by QEMU's own
    /// security policy); default false.
    pub require_hardware_virtualization: bool,
    /// `guest_kernel_pvm`: the configured guest kernel can run as a PVM guest,
    /// so KVM served by `kvm_pvm` runs it at native speed; default false.
    pub guest_kernel_pvm: bool,
    /// `vmm_path`: skerry-vmm binary; default "skerry-vmm", looked up like virtiofsd.
    pub vmm_path: PathBuf,
    /// `jailer_path`: jailer binary; default "jailer", looked up like virtiofsd.
    pub jailer_path: PathBuf,
    /// `jail_dir`: where the jailer builds each VM's root
    /// (`<jail_dir>/skerry-vmm/<jail id>/root`); default "/srv/skerry-jail".
    pub jail_dir: PathBuf,
    /// `vm_uid_range`: host uids (and gids of the same numbers) leased one
    /// per VM, which its QEMU, vsock back end or skerry-vmm run as; default
    /// "200000-265535".
    pub vm_uid_range: IdRange,
    /// `host_memory_overhead_mib`: host memory a VM's processes may use
    /// beyond its guest memory (their sandbox cgroup's memory limit); default 256.
    pub host_memory_overhead_mib: u32,
    /// `host_cpu_overhead_percent`: CPU time a VM's processes may use beyond
    /// one CPU per vCPU, in percent of one CPU; default 50.
    pub host_cpu_overhead_percent: u32,
    /// `host_pids_max`: most tasks (processes and threads) of a VM's host
    /// processes together; default 1024.
    pub host_pids_max: u32,
    /// `net_rate_limit_mib_per_sec`: most MiB per second the pod NIC moves in
    /// each direction (token bucket, one second of burst); 0 (default) =
    /// unlimited. skerry-vmm only.
    pub net_rate_limit_mib_per_sec: u32,
    /// `vsock_rate_limit_mib_per_sec`: most MiB per second of vsock payload
    /// (the agent channel, stdio, exec) in each direction; 0 (default) =
    /// unlimited. skerry-vmm only.
    pub vsock_rate_limit_mib_per_sec: u32,
}

/// Highest rate limit accepted, in MiB/s (beyond any NIC).
pub const MAX_RATE_LIMIT_MIB: u32 = 1024 * 1024;

impl HypervisorConfig {
    /// The `*_rate_limit_mib_per_sec` keys that are set (QEMU cannot apply them).
    pub fn rate_limits_set(&self) -> Vec<&'static str> {
        [
            (
                "net_rate_limit_mib_per_sec",
                self.net_rate_limit_mib_per_sec,
            ),
            (
                "vsock_rate_limit_mib_per_sec",
                self.vsock_rate_limit_mib_per_sec,
            ),
        ]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, _)| k)
        .collect()
    }
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            kind: HypervisorKind::Auto,
            accel: Accel::Auto,
            qemu_path: PathBuf::from("qemu-system-x86_64"),
            virtiofsd_path: PathBuf::from("virtiofsd"),
            vsock_backend_path: PathBuf::from("vhost-device-vsock"),
            vcpus: 1,
            memory_mib: 512,
            boot_timeout_secs: 15,
            boot_attempts: 2,
            console_log_max_kib: 4096,
            helper_log_max_kib: 16 * 1024,
            require_hardware_virtualization: false,
            guest_kernel_pvm: false,
            vmm_path: PathBuf::from("skerry-vmm"),
            jailer_path: PathBuf::from("jailer"),
            jail_dir: PathBuf::from("/srv/skerry-jail"),
            vm_uid_range: IdRange {
                first: 200_000,
                last: 265_535,
            },
            host_memory_overhead_mib: 256,
            host_cpu_overhead_percent: 50,
            host_pids_max: 1024,
            net_rate_limit_mib_per_sec: 0,
            vsock_rate_limit_mib_per_sec: 0,
        }
    }
}

/// `[runtime]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `isolation`: "vm" (default) or "container", for containers whose
    /// annotations do not choose (see `crate::isolation::resolve`).
    pub isolation: Isolation,
    /// `allow_isolation_annotation`: honour the `io.skerry.isolation`
    /// annotation of a bundle; default false.
    pub allow_isolation_annotation: bool,
}

/// `[guest]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestConfig {
    /// `image_dir`: directory holding the kernel (`vmlinux` or `vmlinuz`) and
    /// `initramfs.img` as written by `skerry image build` (`image::kernel_path`
    /// and `image::initrd_path` name them); default "/var/lib/skerry/guest".
    pub image_dir: PathBuf,
    /// `kernel_params`: extra guest kernel command-line parameters; default "".
    pub kernel_params: String,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            image_dir: PathBuf::from("/var/lib/skerry/guest"),
            kernel_params: String::new(),
        }
    }
}

/// A namespace kind that `policy.deny_host_namespaces` can require a
/// container to create for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNamespace {
    /// `network`.
    Network,
    /// `pid`.
    Pid,
    /// `ipc`.
    Ipc,
    /// `uts`.
    Uts,
    /// `mount`.
    Mount,
    /// `cgroup`.
    Cgroup,
}

impl HostNamespace {
    /// The name used in the config file and in `linux.namespaces[].type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Pid => "pid",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Mount => "mount",
            Self::Cgroup => "cgroup",
        }
    }
}

/// `[policy]` section: the floor a bundle's `config.json` must meet before
/// `create` starts anything (rules in `crate::policy`). Every rule is off by
/// default, so a config without `[policy]` accepts what it always accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `deny_privileged`: refuse privileged containers in the Docker/CRI sense
    /// (every capability, host /proc or /sys read-write, or every device
    /// allowed; the exact rule is on `crate::policy::check`); default false.
    pub deny_privileged: bool,
    /// `require_seccomp`: require `linux.seccomp` with a `defaultAction` that
    /// denies (neither SCMP_ACT_ALLOW nor SCMP_ACT_LOG); default false.
    pub require_seccomp: bool,
    /// `require_user_namespace`: require a user namespace the container
    /// creates (no `path`), with non-empty uid and gid mappings that do not
    /// map host ID 0; default false.
    pub require_user_namespace: bool,
    /// `allowed_capabilities`: capabilities a process may hold in any of its
    /// five sets, as "CAP_NAME" or "NAME" (any case); default unset: any.
    /// A spec without `process.capabilities` keeps every capability, so it is
    /// refused when this is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_capabilities: Option<Vec<String>>,
    /// `deny_host_namespaces`: namespace kinds ("network", "pid", "ipc",
    /// "uts", "mount", "cgroup") the container must create itself; a missing
    /// one, or one joined by `path`, is shared with the host; default [].
    pub deny_host_namespaces: Vec<HostNamespace>,
    /// `allowed_host_paths`: absolute host path prefixes (compared by whole
    /// components) every bind-mount source must be under; default unset:
    /// bind mounts are unrestricted. An empty list allows no bind mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_host_paths: Option<Vec<PathBuf>>,
}

/// `[pod]` section: a pod sandbox whose annotations give its resources
/// (`io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period`/`-memory`) gets a VM
/// of those resources plus this overhead (guest kernel and agent); one
/// without them gets `hypervisor.vcpus` and `hypervisor.memory_mib`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    /// `overhead_vcpus`: vCPUs added to the pod's CPU limit; default 1.
    pub overhead_vcpus: u32,
    /// `overhead_memory_mib`: MiB added to the pod's memory limit; default 128.
    pub overhead_memory_mib: u32,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            overhead_vcpus: 1,
            overhead_memory_mib: 128,
        }
    }
}

impl Config {
    /// Loads `path`; a missing file at the default path means all defaults,
    /// while a missing file the user named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message: message.to_string(),
        };
        let hv = &self.hypervisor;
        if !(1..=64).contains(&hv.vcpus) {
            return Err(invalid("hypervisor.vcpus", "must be between 1 and 64"));
        }
        if !(64..=1024 * 1024).contains(&hv.memory_mib) {
            return Err(invalid(
                "hypervisor.memory_mib",
                "must be between 64 and 1048576",
            ));
        }
        if hv.boot_timeout_secs == 0 {
            return Err(invalid("hypervisor.boot_timeout_secs", "must be > 0"));
        }
        if !(1..=10).contains(&hv.boot_attempts) {
            return Err(invalid(
                "hypervisor.boot_attempts",
                "must be between 1 and 10",
            ));
        }
        if !(16..=1024 * 1024).contains(&hv.console_log_max_kib) {
            return Err(invalid(
                "hypervisor.console_log_max_kib",
                "must be between 16 and 1048576",
            ));
        }
        if !(64..=1024 * 1024).contains(&hv.helper_log_max_kib) {
            return Err(invalid(
                "hypervisor.helper_log_max_kib",
                "must be between 64 and 1048576",
            ));
        }
        if !(32..=1024 * 1024).contains(&hv.host_memory_overhead_mib) {
            return Err(invalid(
                "hypervisor.host_memory_overhead_mib",
                "must be between 32 and 1048576",
            ));
        }
        if !(10..=6400).contains(&hv.host_cpu_overhead_percent) {
            return Err(invalid(
                "hypervisor.host_cpu_overhead_percent",
                "must be between 10 and 6400",
            ));
        }
        if !(64..=1_000_000).contains(&hv.host_pids_max) {
            return Err(invalid(
                "hypervisor.host_pids_max",
                "must be between 64 and 1000000",
            ));
        }
        for (field, value) in [
            (
                "hypervisor.net_rate_limit_mib_per_sec",
                hv.net_rate_limit_mib_per_sec,
            ),
            (
                "hypervisor.vsock_rate_limit_mib_per_sec",
                hv.vsock_rate_limit_mib_per_sec,
            ),
        ] {
            if value > MAX_RATE_LIMIT_MIB {
                return Err(invalid(field, "must be between 0 and 1048576"));
            }
            if value > 0 && hv.kind == HypervisorKind::Qemu {
                return Err(invalid(
                    field,
                    "needs kind = \"skerry-vmm\" or \"auto\" (QEMU has no virtio-net or \
                     vsock rate limiter)",
                ));
            }
        }
        if !(1..=64).contains(&self.pod.overhead_vcpus) {
            return Err(invalid("pod.overhead_vcpus", "must be between 1 and 64"));
        }
        if !(64..=1024 * 1024).contains(&self.pod.overhead_memory_mib) {
            return Err(invalid(
                "pod.overhead_memory_mib",
                "must be between 64 and 1048576",
            ));
        }
        if hv.kind == HypervisorKind::SkerryVmm && hv.accel == Accel::Tcg {
            return Err(invalid(
                "hypervisor.accel",
                "\"tcg\" needs kind = \"qemu\" or \"auto\" (skerry-vmm runs on KVM only)",
            ));
        }
        if !hv.jail_dir.is_absolute() {
            return Err(invalid("hypervisor.jail_dir", "must be an absolute path"));
        }
        let policy = &self.policy;
        for name in policy.allowed_capabilities.iter().flatten() {
            if crate::policy::parse_capability(name).is_none() {
                return Err(invalid(
                    "policy.allowed_capabilities",
                    &format!("unknown capability {name:?}"),
                ));
            }
        }
        for prefix in policy.allowed_host_paths.iter().flatten() {
            if !prefix.is_absolute() {
                return Err(invalid(
                    "policy.allowed_host_paths",
                    &format!("{prefix:?} is not an absolute path"),
                ));
            }
            if prefix
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(
                    "policy.allowed_host_paths",
                    &format!("{prefix:?} contains \"..\""),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.guest.image_dir, Path::new("/var/lib/skerry/guest"));
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            "[hypervisor]\naccel = \"tcg\"\nmemory_mib = 256\nconsole_log_max_kib = 64\n\
             [guest]\nimage_dir = \"/x\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.hypervisor.accel, Accel::Tcg);
        assert_eq!(c.hypervisor.memory_mib, 256);
        assert_eq!(c.hypervisor.console_log_max_kib, 64);
        assert_eq!(c.guest.image_dir, Path::new("/x"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[hypervisor]\nmemory = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn skerry_vmm_keys_parse_and_are_checked() {
        let c = Config::parse(
            "[hypervisor]\nkind = \"skerry-vmm\"\nguest_kernel_pvm = true\n\
             vmm_path = \"/opt/skerry-vmm\"\njailer_path = \"/opt/jailer\"\n\
             jail_dir = \"/run/jail\"\nvm_uid_range = \"4000-4999\"\n\
             net_rate_limit_mib_per_sec = 100\nvsock_rate_limit_mib_per_sec = 0\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let hv = &c.hypervisor;
        assert_eq!(hv.kind, HypervisorKind::SkerryVmm);
        assert_eq!(
            (
                hv.net_rate_limit_mib_per_sec,
                hv.vsock_rate_limit_mib_per_sec
            ),
            (100, 0)
        );
        assert_eq!(hv.rate_limits_set(), ["net_rate_limit_mib_per_sec"]);
        assert!(HypervisorConfig::default().rate_limits_set().is_empty());
        assert!(hv.guest_kernel_pvm);
        assert_eq!(hv.vmm_path, Path::new("/opt/skerry-vmm"));
        assert_eq!(hv.jailer_path, Path::new("/opt/jailer"));
        assert_eq!(hv.jail_dir, Path::new("/run/jail"));
        assert_eq!(
            hv.vm_uid_range,
            IdRange {
                first: 4000,
                last: 4999
            }
        );
        for (text, needle) in [
            (
                "kind = \"skerry-vmm\"\naccel = \"tcg\"\n",
                "hypervisor.accel: \"tcg\" needs kind",
            ),
            ("vm_uid_range = \"0-10\"\n", "vm_uid_range"),
            (
                "console_log_max_kib = 8\n",
                "hypervisor.console_log_max_kib: must be between 16",
            ),
            ("vm_uid_range = \"9-8\"\n", "expected \"FIRST-LAST\""),
            (
                "helper_log_max_kib = 1\n",
                "hypervisor.helper_log_max_kib: must be between 64",
            ),
            ("jail_uid = 4000\n", "unknown field `jail_uid`"),
            ("jail_dir = \"jail\"\n", "hypervisor.jail_dir"),
            ("kind = \"firecracker\"\n", "unknown variant `firecracker`"),
            (
                "net_rate_limit_mib_per_sec = 2000000\n",
                "hypervisor.net_rate_limit_mib_per_sec: must be between 0",
            ),
            (
                "kind = \"qemu\"\nvsock_rate_limit_mib_per_sec = 10\n",
                "hypervisor.vsock_rate_limit_mib_per_sec: needs kind = \"skerry-vmm\"",
            ),
            ("net_rate_limit_mib_per_sec = -1\n", "expected u32"),
        ] {
            let err = Config::parse(&format!("[hypervisor]\n{text}"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn out_of_range_value_names_field() {
        let err = Config::parse("[hypervisor]\nvcpus = 0\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("hypervisor.vcpus"), "{err}");
    }

    #[test]
    fn policy_is_off_by_default_and_parses() {
        assert_eq!(Config::default().policy, PolicyConfig::default());
        let c = Config::parse(
            "[policy]\ndeny_privileged = true\nrequire_seccomp = true\n\
             require_user_namespace = true\nallowed_capabilities = [\"chown\", \"CAP_KILL\"]\n\
             deny_host_namespaces = [\"network\", \"pid\"]\nallowed_host_paths = [\"/srv\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let p = &c.policy;
        assert!(p.deny_privileged && p.require_seccomp && p.require_user_namespace);
        assert_eq!(
            p.deny_host_namespaces,
            [HostNamespace::Network, HostNamespace::Pid]
        );
        assert_eq!(p.allowed_host_paths, Some(vec![PathBuf::from("/srv")]));
        assert_eq!(c.hypervisor, HypervisorConfig::default());
    }

    #[test]
    fn runtime_isolation_parses() {
        assert_eq!(Config::default().runtime.isolation, Isolation::Vm);
        let c = Config::parse(
            "[runtime]\nisolation = \"container\"\nallow_isolation_annotation = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.runtime.isolation, Isolation::Container);
        assert!(c.runtime.allow_isolation_annotation);
        let err = Config::parse("[runtime]\nisolation = \"none\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `none`"), "{err}");
    }

    #[test]
    fn bad_policy_values_name_the_key() {
        for (text, needle) in [
            (
                "[policy]\nallowed_capabilities = [\"CAP_NOPE\"]\n",
                "policy.allowed_capabilities: unknown capability \"CAP_NOPE\"",
            ),
            (
                "[policy]\nallowed_host_paths = [\"srv\"]\n",
                "policy.allowed_host_paths: \"srv\" is not an absolute path",
            ),
            (
                "[policy]\nallowed_host_paths = [\"/srv/../etc\"]\n",
                "policy.allowed_host_paths",
            ),
            (
                "[policy]\ndeny_host_namespaces = [\"user\"]\n",
                "unknown variant `user`",
            ),
            ("[policy]\ndeny_privilege = true\n", "deny_privilege"),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_error() {
        let p = Path::new("/nonexistent/skerry.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(matches!(
            Config::load(p, true),
            Err(ConfigError::Read { .. })
        ));
    }
}
