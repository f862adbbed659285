//! One host identity per VM: every VM's host helpers (QEMU, its vsock back
//! end, skerry-vmm) run as a uid (and the gid of the same number) of their
//! own, leased from `hypervisor.vm_uid_range`.
//!
//! A lease is a file `<LEASE_DIR>/<uid>` made with `O_EXCL`, recording its
//! owner (the monitor or shim, by pid and start time) and the VM's run dir.
//! Every lease operation holds an exclusive `flock` on `<LEASE_DIR>/.lock`,
//! so concurrent sandboxes never get the same uid and a stale lease is
//! reclaimed once only. A lease is stale when its owner is dead and no
//! process runs as its uid any more; releasing one first kills whatever
//! still runs as that uid (a helper the guest may have taken over and
//! forked from), so a uid is never handed on while something holds it.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::state::{lock_exclusive, ProcessId};

/// Where leases live: host-owned, shared by every state root of the host
/// (two roots must not hand out the same uid), never shared with a guest.
pub const LEASE_DIR: &str = "/run/skerry/.uids";

/// The file serialising lease operations.
const LOCK_FILE: &str = ".lock";

/// A range of host uids (and gids of the same numbers) for VMs: `"A-B"`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdRange {
    /// First id.
    pub first: u32,
    /// Last id (inclusive).
    pub last: u32,
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Only `hypervisor.vm_uid_range` is one; serde's error would not name it.
        let bad = || {
            format!(
                "hypervisor.vm_uid_range {s:?}: expected \"FIRST-LAST\" with 0 < FIRST <= LAST < 2^32-1"
            )
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        // 0 is root; u32::MAX is the kernel's "no id" (-1).
        if first == 0 || first > last || last == u32::MAX {
            return Err(bad());
        }
        Ok(IdRange { first, last })
    }
}

impl TryFrom<String> for IdRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<IdRange> for String {
    fn from(r: IdRange) -> String {
        r.to_string()
    }
}

/// The host uid and gid a VM's helpers run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmIds {
    /// uid.
    pub uid: u32,
    /// gid (the same number).
    pub gid: u32,
}

/// Failure to lease or release a VM identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The lease directory or a lease file could not be used.
    #[error("VM uid lease {0}")]
    Lease(PathBuf, #[source] std::io::Error),
    /// Every uid of the range is leased.
    #[error("no free VM uid in hypervisor.vm_uid_range {range}: every one is leased in {dir} (widen the range or delete sandboxes)")]
    Exhausted {
        /// The configured range.
        range: IdRange,
        /// The lease directory.
        dir: PathBuf,
    },
}

/// What a lease file records.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    /// The process that holds the lease.
    owner: ProcessId,
    /// The run dir of the VM whose helpers run as the uid.
    run_dir: PathBuf,
}

/// A leased uid/gid; dropping it releases it.
#[derive(Debug)]
pub struct IdLease {
    dir: PathBuf,
    ids: VmIds,
}

impl IdLease {
    /// Leases the lowest free (or stale) uid of `range` in `dir` for the
    /// VM of `run_dir`, owned by this process.
    pub fn acquire(dir: &Path, range: IdRange, run_dir: &Path) -> Result<IdLease, IdentityError> {
        let lease_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e| IdentityError::Lease(p, e)
        };
        std::fs::create_dir_all(dir).map_err(lease_err(dir))?;
        let _lock = lock_exclusive(&dir.join(LOCK_FILE)).map_err(lease_err(dir))?;
        let owner = ProcessId::of(std::process::id()).ok_or_else(|| {
            IdentityError::Lease(dir.to_path_buf(), std::io::ErrorKind::NotFound.into())
        })?;
        let record = serde_json::to_vec(&LeaseRecord {
            owner,
            run_dir: run_dir.to_path_buf(),
        })
        .expect("lease record serializes");
        for uid in range.first..=range.last {
            let path = dir.join(uid.to_string());
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !is_stale(&path, uid) {
                        continue;
                    }
                    tracing::info!(uid, "reclaiming the VM uid of a dead owner");
                }
                Err(e) => return Err(IdentityError::Lease(path, e)),
            }
            std::fs::write(&path, &record).map_err(lease_err(&path))?;
            return Ok(IdLease {
                dir: dir.to_path_buf(),
                ids: VmIds { uid, gid: uid },
            });
        }
        Err(IdentityError::Exhausted {
            range,
            dir: dir.to_path_buf(),
        })
    }

    /// The leased ids.
    pub fn ids(&self) -> VmIds {
        self.ids
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        let path = self.dir.join(self.ids.uid.to_string());
        let result = lock_exclusive(&self.dir.join(LOCK_FILE)).and_then(|_lock| {
            kill_all_of(self.ids);
            std::fs::remove_file(&path)
        });
        if let Err(e) = result {
            tracing::warn!(lease = %path.display(), error = %e, "releasing a VM uid");
        }
    }
}

/// Releases the lease of the VM of `run_dir` whose owner has died (`delete`
/// after its monitor was killed); a lease of a live owner is left alone.
pub fn release_leftover(dir: &Path, run_dir: &Path) -> Result<(), IdentityError> {
    let _lock = match lock_exclusive(&dir.join(LOCK_FILE)) {
        Ok(lock) => lock,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IdentityError::Lease(dir.to_path_buf(), e)),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| IdentityError::Lease(dir.to_path_buf(), e))?;
    for entry in entries.flatten() {
        let Some(uid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(record) = read_record(&entry.path()) else {
            continue;
        };
        if record.run_dir == run_dir && !record.owner.is_alive() {
            kill_all_of(VmIds { uid, gid: uid });
            std::fs::remove_file(entry.path())
                .map_err(|e| IdentityError::Lease(entry.path(), e))?;
        }
    }
    Ok(())
}

fn read_record(path: &Path) -> Option<LeaseRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A lease whose owner is dead (or that is unreadable: its owner died
/// while writing it) and whose uid no process runs as.
fn is_stale(path: &Path, uid: u32) -> bool {
    let owner_alive = read_record(path).is_some_and(|r| r.owner.is_alive());
    !owner_alive && !uid_in_use(uid)
}

/// Whether any process has `uid` as its real, effective, saved or fs uid.
fn uid_in_use(uid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|p| {
        std::fs::read_to_string(p.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| ids.split_whitespace().any(|id| id == uid.to_string()))
        })
    })
}

/// SIGKILLs every process running as `ids.uid`: `kill -KILL -1` run as that
/// uid reaches exactly the processes that uid may signal. Only root can.
fn kill_all_of(ids: VmIds) {
    if !nix::unistd::geteuid().is_root() || !uid_in_use(ids.uid) {
        return;
    }
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", "-1"])
        .uid(ids.uid)
        .gid(ids.gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!(uid = ids.uid, error = %e, "cannot run kill as the VM uid");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> IdRange {
        IdRange { first, last }
    }

    #[test]
    fn ranges_parse_and_print() {
        assert_eq!(
            "200000-265535".parse::<IdRange>(),
            Ok(range(200000, 265535))
        );
        assert_eq!(range(5, 5).to_string(), "5-5");
        for bad in ["", "5", "0-10", "10-5", "a-b", "1-4294967295"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
    }

    // Ids far above anything this host's processes run as.
    const BASE: u32 = 3_900_000_000;

    #[test]
    fn leases_differ_and_release_makes_a_uid_reusable() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(BASE, BASE + 1);
        let a = IdLease::acquire(dir.path(), r, Path::new("/run/a")).unwrap();
        let b = IdLease::acquire(dir.path(), r, Path::new("/run/b")).unwrap();
        assert_ne!(a.ids(), b.ids());
        assert_eq!(a.ids().uid, a.ids().gid);
        assert!(dir.path().join(a.ids().uid.to_string()).exists());
        let uid = a.ids().uid;
        drop(a);
        assert!(!dir.path().join(uid.to_string()).exists());
        let c = IdLease::acquire(dir.path(), r, Path::new("/run/c")).unwrap();
        assert_eq!(c.ids().uid, uid);
    }

    #[test]
    fn exhaustion_names_the_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(BASE + 10, BASE + 10);
        let _a = IdLease::acquire(dir.path(), r, Path::new("/run/a")).unwrap();
        let err = IdLease::acquire(dir.path(), r, Path::new("/run/b")).unwrap_err();
        assert!(matches!(err, IdentityError::Exhausted { .. }));
        let msg = err.to_string();
        assert!(msg.contains("hypervisor.vm_uid_range"), "{msg}");
        assert!(
            msg.contains(&format!("{}-{}", BASE + 10, BASE + 10)),
            "{msg}"
        );
    }

    /// A lease record owned by a process that has exited.
    fn dead_owner_record(run_dir: &str) -> Vec<u8> {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let owner = ProcessId::of(child.id()).unwrap();
        child.wait().unwrap();
        serde_json::to_vec(&LeaseRecord {
            owner,
            run_dir: run_dir.into(),
        })
        .unwrap()
    }

    #[test]
    fn a_dead_owners_uid_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(BASE + 20, BASE + 20);
        std::fs::write(
            dir.path().join((BASE + 20).to_string()),
            dead_owner_record("/run/dead"),
        )
        .unwrap();
        let lease = IdLease::acquire(dir.path(), r, Path::new("/run/new")).unwrap();
        assert_eq!(lease.ids().uid, BASE + 20);
        let record = read_record(&dir.path().join((BASE + 20).to_string())).unwrap();
        assert_eq!(record.run_dir, Path::new("/run/new"));
        assert_eq!(record.owner.pid, std::process::id());
    }

    #[test]
    fn a_live_owners_uid_is_not_reclaimed_and_leftovers_are_released_by_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(BASE + 30, BASE + 31);
        let live = IdLease::acquire(dir.path(), r, Path::new("/run/live")).unwrap();
        let dead = dir.path().join((BASE + 31).to_string());
        std::fs::write(&dead, dead_owner_record("/run/dead")).unwrap();
        // The live lease stays; the dead one is released by its run dir only.
        release_leftover(dir.path(), Path::new("/run/live")).unwrap();
        release_leftover(dir.path(), Path::new("/run/other")).unwrap();
        assert!(dir.path().join(live.ids().uid.to_string()).exists());
        assert!(dead.exists());
        release_leftover(dir.path(), Path::new("/run/dead")).unwrap();
        assert!(!dead.exists());
        // A lease dir that was never made has nothing to release.
        release_leftover(&dir.path().join("none"), Path::new("/run/dead")).unwrap();
    }

    #[test]
    fn a_uid_some_process_runs_as_is_in_use() {
        assert!(uid_in_use(nix::unistd::getuid().as_raw()));
        assert!(!uid_in_use(BASE + 99));
    }
}
