//! One cgroup v2 per container (`/sys/fs/cgroup/<container id>`): the
//! container's processes are moved in before they run the user's program,
//! the spec's `linux.resources` are applied through youki's libcgroups (CPU
//! weight, quota and burst, cpuset, memory with swap and reservation, pids,
//! hugetlb, io and `unified`, as runc applies them), and StatsContainer reads
//! the counters back.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v2::manager::{Manager, V2ManagerError};
use oci_spec::runtime::LinuxResources;
use skerry_container::cgroup_file::{keyed, number};
use skerry_protocol as pb;
use tracing::warn;

/// Where the agent mounts cgroup2 at boot.
pub const GUEST_ROOT: &str = "/sys/fs/cgroup";

/// A container's cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be read or written.
    #[error("cgroup {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file could not be written (the cause names the file and value).
    #[error("cgroup file")]
    Write(#[source] libcgroups::common::WrappedIoError),
    /// `linux.resources` could not be applied (the cause names the file and value).
    #[error("linux.resources")]
    Apply(#[source] V2ManagerError),
    /// `linux.resources.blockIO.weight` is outside OCI's 10-1000.
    #[error("linux.resources.blockIO.weight: {0} is outside 10-1000")]
    BlockIoWeight(u16),
    /// A `linux.resources.unified` key is not a file name of the container's cgroup.
    #[error("linux.resources.unified: {0:?} is not a cgroup file name")]
    UnifiedKey(String),
}

/// The cgroup2 hierarchy containers live in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// The hierarchy at `root`, if cgroup2 is mounted there; every controller
    /// it offers is delegated to the containers' cgroups (a failure is logged:
    /// a limit that needs the controller then fails when it is applied).
    pub fn open(root: &Path) -> Option<Self> {
        let available = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        for c in available.split_whitespace() {
            if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
                warn!(controller = c, error = %e, "cannot enable cgroup controller");
            }
        }
        Some(Self {
            root: root.to_path_buf(),
        })
    }

    /// The cgroup of container `id` (a validated container id).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates the cgroup of container `id` with the spec's limits.
    pub fn create(&self, id: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let dir = self.dir(id);
        // One left by a container of this id whose processes outlived it is reused.
        if let Err(source) = std::fs::create_dir(&dir) {
            if source.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(CgroupError::Io { path: dir, source });
            }
        }
        match resources {
            Some(r) => self.update(id, r),
            None => Ok(()),
        }
    }

    /// Applies `resources` to the cgroup of container `id`; fields it leaves out keep
    /// their values.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(bad) = resources
            .unified()
            .iter()
            .flat_map(|u| u.keys())
            .find(|k| !is_cgroup_file_name(k))
        {
            return Err(CgroupError::UnifiedKey(bad.clone()));
        }
        let mut resources = resources.clone();
        if let Some(io) = resources.block_io_mut() {
            if let Some(weight) = io.weight() {
                io.set_weight(None);
                self.apply_io_weight(id, weight)?;
            }
        }
        let opt = ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        Manager::new(self.root.clone(), PathBuf::from(id))
            .and_then(|m| m.apply(&opt))
            .map_err(CgroupError::Apply)?;
        // Swap equal to the limit means no swap: runc writes 0, libcgroups 0.7 writes
        // nothing and would leave an earlier swap allowance in place.
        if let Some(m) = resources.memory() {
            if matches!((m.limit(), m.swap()), (Some(l), Some(s)) if l > 0 && s == l) {
                write(&self.dir(id).join("memory.swap.max"), 0)?;
            }
        }
        Ok(())
    }

    /// Writes `blockIO.weight` (cgroup v1's 10-1000) as BFQ's weight, or else converted to
    /// `io.weight` (1-10000), as runc does. libcgroups 0.7 computes that conversion in
    /// `u16` and overflows for every weight above 16, so it is not handed the field.
    fn apply_io_weight(&self, id: &str, weight: u16) -> Result<(), CgroupError> {
        if weight == 0 {
            return Ok(());
        }
        if !(10..=1000).contains(&weight) {
            return Err(CgroupError::BlockIoWeight(weight));
        }
        let dir = self.dir(id);
        let bfq = dir.join("io.bfq.weight");
        if bfq.exists() {
            write(&bfq, weight)
        } else {
            let io_weight = 1 + (u32::from(weight) - 10) * 9999 / 990;
            write(&dir.join("io.weight"), io_weight)
        }
    }

    /// The pids in the cgroup of container `id`.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, CgroupError> {
        let path = self.dir(id).join("cgroup.procs");
        let procs =
            std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Removes the (empty) cgroup of container `id`; a failure is logged.
    pub fn remove(&self, id: &str) {
        let dir = self.dir(id);
        if let Err(e) = std::fs::remove_dir(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %dir.display(), error = %e, "removing a container cgroup");
            }
        }
    }

    /// The counters of container `id`'s cgroup.
    pub fn stats(&self, id: &str) -> Result<pb::StatsContainerResponse, CgroupError> {
        let dir = self.dir(id);
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })
        };
        let cpu = read("cpu.stat")?;
        let memory_events = read("memory.events")?;
        Ok(pb::StatsContainerResponse {
            cpu_usage_usec: keyed(&cpu, "usage_usec"),
            cpu_user_usec: keyed(&cpu, "user_usec"),
            cpu_system_usec: keyed(&cpu, "system_usec"),
            memory_usage: number(&read("memory.current")?),
            memory_limit: number(&read("memory.max")?),
            pids_current: number(&read("pids.current")?),
            pids_limit: number(&read("pids.max")?),
            oom_kills: keyed(&memory_events, "oom_kill"),
            pids: self
                .pids(id)?
                .into_iter()
                .filter_map(|p| u32::try_from(p).ok())
                .collect(),
            ..Default::default()
        })
    }
}

/// Writes `value` into the existing cgroup file `path` (never creates one), as
/// libcgroups writes the other limits.
fn write(path: &Path, value: impl ToString) -> Result<(), CgroupError> {
    libcgroups::common::write_cgroup_file(path, value).map_err(CgroupError::Write)
}

/// Whether `key` names a controller's file in the cgroup itself: no path, and not one
/// of the `cgroup.*` core files (which move processes or change the hierarchy).
fn is_cgroup_file_name(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('/')
        && !key.starts_with('.')
        && !key.starts_with("cgroup.")
        && key.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of a cgroup v2 directory that limits are written to (cgroupfs has them
    /// all; here they start empty).
    const LIMIT_FILES: [&str; 13] = [
        "cpu.weight",
        "cpu.max",
        "cpu.max.burst",
        "cpuset.cpus",
        "cpuset.mems",
        "memory.max",
        "memory.swap.max",
        "memory.low",
        "memory.high",
        "pids.max",
        "hugetlb.2MB.max",
        "io.weight",
        "cgroup.procs",
    ];

    /// A fake hierarchy with container `c1`'s cgroup and its (empty) limit files.
    fn fake_root() -> (tempfile::TempDir, Cgroups) {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .unwrap();
        std::fs::create_dir(root.path().join("c1")).unwrap();
        for f in LIMIT_FILES {
            std::fs::write(root.path().join("c1").join(f), "").unwrap();
        }
        let cgroups = Cgroups::open(root.path()).expect("a cgroup2 root");
        (root, cgroups)
    }

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_resource_of_the_spec_reaches_its_cgroup_file() {
        let (_root, cgroups) = fake_root();
        let r = resources(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"burst":1000,
                       "cpus":"0","mems":"0"},
                "memory":{"limit":67108864,"swap":134217728,"reservation":33554432},
                "pids":{"limit":64},
                "hugepageLimits":[{"pageSize":"2MB","limit":4194304}],
                "blockIO":{"weight":500},
                "unified":{"memory.high":"60000000"}}"#,
        );
        cgroups.create("c1", Some(&r)).unwrap();
        let read = |f: &str| std::fs::read_to_string(cgroups.dir("c1").join(f)).unwrap();
        // 1024 shares (the cgroup v1 default) are cgroup v2's default weight.
        assert_eq!(read("cpu.weight"), "100");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.max.burst"), "1000");
        assert_eq!(
            (read("cpuset.cpus"), read("cpuset.mems")),
            ("0".into(), "0".into())
        );
        assert_eq!(read("memory.max"), "67108864");
        // OCI's swap is memory + swap; cgroup v2's is swap alone.
        assert_eq!(read("memory.swap.max"), "67108864");
        assert_eq!(read("memory.low"), "33554432");
        assert_eq!(read("memory.high"), "60000000");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("hugetlb.2MB.max"), "4194304");
        assert_eq!(read("io.weight"), "4950");
    }

    #[test]
    fn swap_equal_to_the_limit_is_no_swap() {
        let (_root, cgroups) = fake_root();
        let r = resources(r#"{"memory":{"limit":67108864,"swap":67108864}}"#);
        cgroups.update("c1", &r).unwrap();
        let read = |f: &str| std::fs::read_to_string(cgroups.dir("c1").join(f)).unwrap();
        assert_eq!(
            (read("memory.max"), read("memory.swap.max")),
            ("67108864".into(), "0".into())
        );
    }

    #[test]
    fn a_limit_the_guest_cannot_apply_fails_instead_of_being_dropped() {
        let (root, cgroups) = fake_root();
        std::fs::remove_file(root.path().join("c1/hugetlb.2MB.max")).unwrap();
        let r = resources(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#);
        let err = cgroups.update("c1", &r).unwrap_err();
        assert!(matches!(err, CgroupError::Apply(_)), "{err}");
        let r = resources(r#"{"memory":{"swap":134217728}}"#);
        assert!(cgroups.update("c1", &r).is_err(), "swap without a limit");
        let r = resources(r#"{"blockIO":{"weight":5000}}"#);
        let err = cgroups.update("c1", &r).unwrap_err();
        assert!(matches!(err, CgroupError::BlockIoWeight(5000)), "{err}");
    }

    #[test]
    fn unified_keys_name_files_of_the_container_cgroup_only() {
        let (_root, cgroups) = fake_root();
        for key in [
            "../cgroup.procs",
            "cgroup.procs",
            "cgroup.subtree_control",
            "..",
            "",
            "x",
        ] {
            let r = resources(&format!(r#"{{"unified":{{"{key}":"1"}}}}"#));
            let err = cgroups.update("c1", &r).unwrap_err();
            assert!(
                matches!(err, CgroupError::UnifiedKey(ref k) if k == key),
                "{key}: {err}"
            );
        }
        let procs = std::fs::read_to_string(cgroups.dir("c1").join("cgroup.procs")).unwrap();
        assert_eq!(procs, "");
    }

    #[test]
    fn stats_use_the_container_directory() {
        let (_root, cgroups) = fake_root();
        let dir = cgroups.dir("c1");
        let write = |f: &str, v: &str| std::fs::write(dir.join(f), v).unwrap();
        write("cpu.stat", "usage_usec 7\nuser_usec 5\nsystem_usec 2\n");
        write("memory.events", "low 0\noom 1\noom_kill 2\n");
        write("memory.current", "4096\n");
        write("memory.max", "67108864\n");
        write("pids.current", "3\n");
        write("pids.max", "max\n");
        write("cgroup.procs", "10\n11\n");
        let s = cgroups.stats("c1").unwrap();
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (7, 5, 2)
        );
        assert_eq!((s.memory_usage, s.memory_limit), (4096, 67108864));
        assert_eq!((s.pids_current, s.pids_limit, s.oom_kills), (3, 0, 2));
        assert_eq!(s.pids, [10, 11]);
        let err = cgroups.stats("c2").unwrap_err().to_string();
        assert!(err.contains("c2/cpu.stat"), "{err}");
    }
}
