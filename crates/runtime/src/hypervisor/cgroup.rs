//! The sandbox's host cgroup: every host process of a VM (the VMM or the
//! jailer, virtiofsd, the vsock back end) runs in it, limited to the VM's size
//! plus a configured overhead, so that a hostile guest cannot make them grow
//! host memory, CPU or tasks beyond that. Cgroup v1 and v2 through libcgroups.
//!
//! The backends place each helper right after spawning it, before the VM runs
//! guest code (QEMU starts paused and is resumed once everything is placed).
//! The cgroup is recorded in the run dir, so that `update` can change its
//! limits and `delete` can remove it when the monitor died.

use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
    Spec,
};
use serde::{Deserialize, Serialize};

use super::process::Process;
use crate::config::HypervisorConfig;

/// Parent of a sandbox's cgroup when its spec names none (or a systemd slice).
const DEFAULT_PARENT: &str = "/skerry";
/// The run dir's record of the host cgroup.
const RECORD: &str = "host-cgroup.json";
/// CFS period when the spec gives none (the kernel's default).
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
const MIB: u64 = 1024 * 1024;

/// Failure to create, limit, fill or remove a sandbox's host cgroup.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    /// libcgroups failed on the cgroup.
    #[error("host cgroup {path}: {message}")]
    Cgroup {
        /// The cgroup path (relative to the hierarchies' root).
        path: PathBuf,
        /// What libcgroups said.
        message: String,
    },
    /// The run dir's record of the cgroup could not be written, read or removed.
    #[error("host cgroup record {0}")]
    Record(PathBuf, #[source] std::io::Error),
}

/// What a VM's host processes may use beyond its guest memory and vCPUs
/// (`[hypervisor] host_*` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostOverhead {
    /// MiB on top of the guest memory.
    pub memory_mib: u32,
    /// Percent of one CPU on top of one CPU per vCPU.
    pub cpu_percent: u32,
    /// Most tasks of all the VM's host processes.
    pub pids_max: u32,
}

impl HostOverhead {
    /// The overhead the configuration sets.
    pub fn from_config(cfg: &HypervisorConfig) -> Self {
        Self {
            memory_mib: cfg.host_memory_overhead_mib,
            cpu_percent: cfg.host_cpu_overhead_percent,
            pids_max: cfg.host_pids_max,
        }
    }
}

/// A sandbox's host cgroup and what its limits derive from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    /// Cgroup path (as `linux.cgroupsPath`: relative to each hierarchy's root).
    pub path: PathBuf,
    /// The VM's vCPUs.
    pub vcpus: u32,
    /// The VM's guest memory in MiB.
    pub memory_mib: u32,
    /// The configured overhead.
    pub overhead: HostOverhead,
    /// The sandbox's memory limit in bytes, when it sets one.
    pub memory_limit: Option<u64>,
    /// The sandbox's CFS quota and period in µs, when it sets a quota.
    pub cpu_quota: Option<(u64, u64)>,
}

/// The limits written to a sandbox's host cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// memory.max (v2) / memory.limit_in_bytes (v1).
    pub memory_bytes: u64,
    /// CFS quota in µs per period.
    pub cpu_quota_us: u64,
    /// CFS period in µs.
    pub cpu_period_us: u64,
    /// pids.max.
    pub pids: u64,
}

/// The host cgroup path of sandbox `id` whose (sandbox container's) spec is
/// `spec`: its `linux.cgroupsPath`, else `/skerry/<id>`. A systemd slice path
/// (`slice:prefix:name`) is not a cgroupfs path and falls back to the default.
pub fn sandbox_cgroup_path(id: &str, spec: &Spec) -> PathBuf {
    match spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
        Some(p) if !p.as_os_str().is_empty() && !p.to_string_lossy().contains(':') => p,
        Some(p) if !p.as_os_str().is_empty() => {
            tracing::warn!(sandbox = id, path = %p.display(), "systemd cgroup path not supported for the VM's host cgroup; using the default");
            Path::new(DEFAULT_PARENT).join(id)
        }
        _ => Path::new(DEFAULT_PARENT).join(id),
    }
}

impl HostCgroup {
    /// The host cgroup of sandbox `id` (spec `spec`) for a VM of `vcpus` ×
    /// `memory_mib`; `None` without root (no cgroup can be made then).
    pub fn for_sandbox(
        id: &str,
        spec: &Spec,
        (vcpus, memory_mib): (u32, u32),
        overhead: HostOverhead,
    ) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            tracing::warn!(sandbox = id, "not root: the VM runs without a host cgroup");
            return None;
        }
        let mut cgroup = Self {
            path: sandbox_cgroup_path(id, spec),
            vcpus,
            memory_mib,
            overhead,
            memory_limit: None,
            cpu_quota: None,
        };
        if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            cgroup.merge(r);
        }
        Some(cgroup)
    }

    /// Takes the memory limit and CPU quota `r` sets (a non-positive one
    /// clears it); what `r` leaves out stays.
    fn merge(&mut self, r: &LinuxResources) {
        if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
            self.memory_limit = u64::try_from(limit).ok().filter(|&l| l > 0);
        }
        if let Some(cpu) = r.cpu() {
            let period = cpu
                .period()
                .filter(|&p| p > 0)
                .or(self.cpu_quota.map(|(_, p)| p))
                .unwrap_or(DEFAULT_CPU_PERIOD_US);
            if let Some(quota) = cpu.quota() {
                self.cpu_quota = u64::try_from(quota)
                    .ok()
                    .filter(|&q| q > 0)
                    .map(|q| (q, period));
            }
        }
    }

    /// The limits: memory = the guest's (or the sandbox's limit, if lower) +
    /// overhead; CPU = the vCPUs (or the sandbox's quota, if lower) + the
    /// overhead share; pids = the configured bound.
    pub fn limits(&self) -> HostLimits {
        let guest = u64::from(self.memory_mib) * MIB;
        let memory = self.memory_limit.map_or(guest, |l| l.min(guest));
        let (quota, period) = self.cpu_quota.unwrap_or((0, DEFAULT_CPU_PERIOD_US));
        let vcpus = u64::from(self.vcpus) * period;
        let cpu = if quota > 0 { quota.min(vcpus) } else { vcpus };
        HostLimits {
            memory_bytes: memory + u64::from(self.overhead.memory_mib) * MIB,
            cpu_quota_us: cpu + period * u64::from(self.overhead.cpu_percent) / 100,
            cpu_period_us: period,
            pids: u64::from(self.overhead.pids_max),
        }
    }
}

impl HostLimits {
    /// As OCI resources, for libcgroups.
    fn resources(&self) -> LinuxResources {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(clamp(self.memory_bytes))
                    .build()
                    .expect("memory limits"),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(clamp(self.cpu_quota_us))
                    .period(self.cpu_period_us)
                    .build()
                    .expect("cpu limits"),
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(clamp(self.pids))
                    .build()
                    .expect("pids limit"),
            )
            .build()
            .expect("resources")
    }
}

/// The live host cgroup of one VM: helpers are placed into it as they start.
#[derive(Debug)]
pub(crate) struct VmCgroup {
    cgroup: HostCgroup,
    record: PathBuf,
}

impl VmCgroup {
    /// Records `cgroup` in `run_dir`; the cgroup itself is made when the first
    /// process is placed (cgroup v2 makes it with its first member).
    pub(crate) fn create(run_dir: &Path, cgroup: &HostCgroup) -> Result<Self, HostCgroupError> {
        let record = run_dir.join(RECORD);
        let json = serde_json::to_vec(cgroup).expect("HostCgroup serialises");
        std::fs::write(&record, json).map_err(|e| HostCgroupError::Record(record.clone(), e))?;
        Ok(Self {
            cgroup: cgroup.clone(),
            record,
        })
    }

    /// Moves `p` and the children it has already forked into the cgroup (a
    /// child forked later inherits it), then (re)applies the limits.
    pub(crate) fn place(&self, p: &Process) -> Result<(), HostCgroupError> {
        let manager = manager(&self.cgroup.path)?;
        let err = |e: &dyn std::fmt::Display| cgroup_error(&self.cgroup.path, e);
        let add = |pid: u32| {
            manager
                .add_task(Pid::from_raw(pid as i32))
                .map_err(|e| err(&e))
        };
        add(p.pid())?;
        for pid in p.pids().into_iter().filter(|&pid| pid != p.pid()) {
            add(pid)?;
        }
        apply(&manager, &self.cgroup)
    }

    /// Removes the cgroup (killing whatever is still in it) and its record.
    pub(crate) fn remove(&self) -> Result<(), HostCgroupError> {
        remove(&self.cgroup.path)?;
        remove_record(&self.record)
    }
}

/// [`VmCgroup::place`] when the VM has a host cgroup.
pub(crate) fn place(cgroup: Option<&VmCgroup>, p: &Process) -> Result<(), HostCgroupError> {
    cgroup.map_or(Ok(()), |c| c.place(p))
}

/// Removes the host cgroup the run dir's record names, and the record; a run
/// dir without one is fine.
pub(crate) fn remove_leftover(run_dir: &Path) -> Result<(), HostCgroupError> {
    let record = run_dir.join(RECORD);
    let Some(cgroup) = read_record(&record)? else {
        return Ok(());
    };
    remove(&cgroup.path)?;
    remove_record(&record)
}

/// Applies what `resources` changes (memory limit, CPU quota) to the host
/// cgroup of the VM whose run dir is `run_dir`; nothing without one.
pub fn update(run_dir: &Path, resources: &LinuxResources) -> Result<(), HostCgroupError> {
    let record = run_dir.join(RECORD);
    let Some(mut cgroup) = read_record(&record)? else {
        return Ok(());
    };
    cgroup.merge(resources);
    apply(&manager(&cgroup.path)?, &cgroup)?;
    let json = serde_json::to_vec(&cgroup).expect("HostCgroup serialises");
    std::fs::write(&record, json).map_err(|e| HostCgroupError::Record(record.clone(), e))
}

fn read_record(record: &Path) -> Result<Option<HostCgroup>, HostCgroupError> {
    let bytes = match std::fs::read(record) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(|e| HostCgroupError::Record(record.to_path_buf(), e))?,
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| HostCgroupError::Record(record.to_path_buf(), e.into()))
}

fn remove_record(record: &Path) -> Result<(), HostCgroupError> {
    match std::fs::remove_file(record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HostCgroupError::Record(record.to_path_buf(), e))
        }
        _ => Ok(()),
    }
}

fn manager(path: &Path) -> Result<AnyCgroupManager, HostCgroupError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(|e| cgroup_error(path, &e))
}

fn apply(manager: &AnyCgroupManager, cgroup: &HostCgroup) -> Result<(), HostCgroupError> {
    let limits = cgroup.limits();
    tracing::debug!(cgroup = %cgroup.path.display(), ?limits, "host cgroup limits");
    manager
        .apply(&ControllerOpt {
            resources: &limits.resources(),
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| cgroup_error(&cgroup.path, &e))
}

fn remove(path: &Path) -> Result<(), HostCgroupError> {
    manager(path)?.remove().map_err(|e| cgroup_error(path, &e))
}

fn cgroup_error(path: &Path, e: &dyn std::fmt::Display) -> HostCgroupError {
    HostCgroupError::Cgroup {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxCpuBuilder, SpecBuilder};

    use super::*;

    fn cgroup(vcpus: u32, memory_mib: u32) -> HostCgroup {
        HostCgroup {
            path: "/skerry/x".into(),
            vcpus,
            memory_mib,
            overhead: HostOverhead {
                memory_mib: 256,
                cpu_percent: 50,
                pids_max: 1024,
            },
            memory_limit: None,
            cpu_quota: None,
        }
    }

    fn resources(memory: Option<i64>, cpu: Option<(i64, u64)>) -> LinuxResources {
        let mut r = LinuxResourcesBuilder::default();
        if let Some(m) = memory {
            r = r.memory(LinuxMemoryBuilder::default().limit(m).build().unwrap());
        }
        if let Some((q, p)) = cpu {
            r = r.cpu(
                LinuxCpuBuilder::default()
                    .quota(q)
                    .period(p)
                    .build()
                    .unwrap(),
            );
        }
        r.build().unwrap()
    }

    #[test]
    fn limits_are_the_vm_size_plus_overhead() {
        assert_eq!(
            cgroup(2, 512).limits(),
            HostLimits {
                memory_bytes: (512 + 256) * MIB,
                cpu_quota_us: 250_000,
                cpu_period_us: 100_000,
                pids: 1024,
            }
        );
    }

    #[test]
    fn a_lower_sandbox_limit_wins_a_higher_one_does_not() {
        let mut c = cgroup(2, 512);
        c.merge(&resources(Some(128 * MIB as i64), Some((50_000, 200_000))));
        let l = c.limits();
        assert_eq!(l.memory_bytes, (128 + 256) * MIB);
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (150_000, 200_000));
        // Above the VM's size: the VM's size bounds what the guest can use.
        c.merge(&resources(
            Some(4096 * MIB as i64),
            Some((1_000_000, 100_000)),
        ));
        let l = c.limits();
        assert_eq!(l.memory_bytes, (512 + 256) * MIB);
        assert_eq!((l.cpu_quota_us, l.cpu_period_us), (250_000, 100_000));
        // -1 lifts the sandbox's limits; what an update leaves out stays.
        c.merge(&resources(Some(64 * MIB as i64), None));
        c.merge(&resources(None, Some((-1, 100_000))));
        assert_eq!(c.memory_limit, Some(64 * MIB));
        assert_eq!(c.cpu_quota, None);
        c.merge(&resources(Some(-1), None));
        assert_eq!(c.limits(), cgroup(2, 512).limits());
    }

    #[test]
    fn path_is_the_specs_else_the_default() {
        let spec = |path: Option<&str>| {
            let mut linux = LinuxBuilder::default();
            if let Some(p) = path {
                linux = linux.cgroups_path(PathBuf::from(p));
            }
            SpecBuilder::default()
                .linux(linux.build().unwrap())
                .build()
                .unwrap()
        };
        assert_eq!(
            sandbox_cgroup_path("c1", &spec(Some("/kubepods/pod1/c1"))),
            PathBuf::from("/kubepods/pod1/c1")
        );
        for default in [None, Some(""), Some("system.slice:cri:c1")] {
            assert_eq!(
                sandbox_cgroup_path("c1", &spec(default)),
                PathBuf::from("/skerry/c1"),
                "{default:?}"
            );
        }
    }

    #[test]
    fn update_without_a_record_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        update(dir.path(), &resources(Some(1), None)).unwrap();
        remove_leftover(dir.path()).unwrap();
    }
}
