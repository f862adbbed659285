//! One cgroup v2 per container (`/sys/fs/cgroup/<container id>`): the
//! container's processes are moved in before they run the user's program,
//! the spec's `linux.resources` limits are applied, and StatsContainer reads
//! the counters back.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use skerry_container::cgroup_file::{keyed, number};
use skerry_protocol as pb;
use tracing::warn;

/// Where the agent mounts cgroup2 at boot.
pub const GUEST_ROOT: &str = "/sys/fs/cgroup";

/// The controllers containers get.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// The default CFS period when the spec gives a quota only (µs).
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// A cgroup file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The cgroup2 hierarchy containers live in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// The hierarchy at `root`, if cgroup2 is mounted there; its controllers
    /// are delegated to the containers' cgroups (a missing one is logged).
    pub fn open(root: &Path) -> Option<Self> {
        if !root.join("cgroup.controllers").is_file() {
            return None;
        }
        for c in CONTROLLERS {
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
                return Err(CgroupError { path: dir, source });
            }
        }
        if let Some(r) = resources {
            apply(&dir, r)?;
        }
        Ok(())
    }

    /// Applies new limits to the cgroup of container `id`.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), CgroupError> {
        apply(&self.dir(id), resources)
    }

    /// Moves `pid` into the cgroup of container `id`.
    pub fn add(&self, id: &str, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir(id), "cgroup.procs", &pid.to_string())
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
            std::fs::read_to_string(&path).map_err(|source| CgroupError { path, source })
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
            pids: read("cgroup.procs")?
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect(),
            ..Default::default()
        })
    }
}

/// Writes the memory, CPU and pids limits of `r` into cgroup `dir`.
fn apply(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
        write(dir, "memory.max", &limit_value(limit))?;
    }
    if let Some(cpu) = r.cpu() {
        if let Some(quota) = cpu.quota() {
            let period = cpu.period().unwrap_or(DEFAULT_CPU_PERIOD);
            write(dir, "cpu.max", &format!("{} {period}", limit_value(quota)))?;
        }
    }
    if let Some(pids) = r.pids() {
        write(dir, "pids.max", &limit_value(pids.limit()))?;
    }
    Ok(())
}

/// A limit as cgroup v2 writes it: "max" for none (0 or negative).
fn limit_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_as_cgroup_values() {
        assert_eq!(limit_value(-1), "max");
        assert_eq!(limit_value(0), "max");
        assert_eq!(limit_value(512), "512");
    }

    #[test]
    fn stats_and_limits_use_the_container_directory() {
        let root = std::env::temp_dir().join(format!("skerry-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let cgroups = Cgroups::open(&root).expect("a cgroup2 root");
        let resources: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864},"cpu":{"quota":50000},"pids":{"limit":-1}}"#,
        )
        .unwrap();
        cgroups.create("c1", Some(&resources)).unwrap();
        let dir = cgroups.dir("c1");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "max");
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 7\nuser_usec 5\nsystem_usec 2\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 2\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "10\n11\n").unwrap();
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
        std::fs::remove_dir_all(&root).unwrap();
    }
}
