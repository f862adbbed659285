//! Starts every per-VM host helper confined: as the VM's own uid/gid (see
//! `identity.rs`) where the helper can do without root, and always in a new,
//! empty network namespace, never the host's (a pod's tap reaches QEMU as an
//! open descriptor; the jailer enters the pod's namespace itself). Helpers that write no guest data get a file size limit, so
//! that what a guest makes them log cannot fill the host's disk. It also
//! hands the VM's identity the few files it must reach.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Gid, Uid};
use tokio::process::Command;

use super::identity::VmIds;
use super::process::{spawn, spawn_with_stdout, Process};
use super::HypervisorError;

/// How one helper is confined.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confinement {
    /// The uid/gid it runs as; `None`: as the caller (a helper that needs
    /// root, or a runtime without root, which cannot switch).
    pub(crate) ids: Option<VmIds>,
    /// RLIMIT_FSIZE in bytes (writes beyond it fail, SIGXFSZ ends the
    /// helper); `None` for virtiofsd, which writes the tenant's files.
    pub(crate) file_size_max: Option<u64>,
}

/// The size of a VM's guest RAM file (the memfd the hypervisor shares with
/// virtiofsd), which its RLIMIT_FSIZE must allow beside its log.
pub(crate) fn guest_ram_file(memory_mib: u32) -> u64 {
    u64::from(memory_mib) << 20
}

/// Spawns `cmd` confined as `conf` says, with stdout and stderr appended to
/// `log`, or stdout to `stdout` when given.
pub(crate) fn spawn_confined(
    conf: Confinement,
    what: &'static str,
    binary: &Path,
    mut cmd: Command,
    stdout: Option<File>,
    log: &Path,
) -> Result<Process, HypervisorError> {
    if let Some(ids) = conf.ids {
        // std drops the supplementary groups before setuid.
        cmd.uid(ids.uid).gid(ids.gid);
    }
    if let Some(max) = conf.file_size_max {
        skerry_container::sys::limit_file_size_on_exec(cmd.as_std_mut(), max);
    }
    let rt = tokio::runtime::Handle::current();
    let run = move || {
        let _rt = rt.enter();
        match stdout {
            Some(out) => spawn_with_stdout(what, binary, cmd, out, log),
            None => spawn(what, binary, cmd, log),
        }
    };
    // Processes spawned from a thread inherit that thread's namespace.
    crate::net::run_in_new_netns(run)?
}

/// Makes `dir` (which must not exist) a directory of the VM's own, mode
/// 0700, for the sockets its helpers create; without `ids`, the caller's.
pub(crate) fn make_vm_dir(dir: &Path, ids: Option<VmIds>) -> Result<(), HypervisorError> {
    let err = |e| HypervisorError::RunDir(dir.to_path_buf(), e);
    std::fs::create_dir(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    give_to(dir, ids)
}

/// Gives `path` (a socket a root helper made) to the VM's uid and gid.
pub(crate) fn give_to(path: &Path, ids: Option<VmIds>) -> Result<(), HypervisorError> {
    let Some(ids) = ids else { return Ok(()) };
    chown(
        path,
        Some(Uid::from_raw(ids.uid)),
        Some(Gid::from_raw(ids.gid)),
    )
    .map_err(|e| HypervisorError::RunDir(path.to_path_buf(), e.into()))
}

/// What a VM's uid needs on a file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    /// Read it (kernel, initrd).
    Read,
    /// Read and write it (/dev/kvm).
    ReadWrite,
    /// Search it (a directory holding its sockets) or execute it (a binary).
    Execute,
}

/// Checks from the mode bits that `ids` can reach `path` (search every
/// directory above it) and use it as `access` says, so that a helper
/// dropped to the VM's uid does not fail with a bare EACCES in its log.
pub(crate) fn check_access(
    what: &'static str,
    path: &Path,
    ids: Option<VmIds>,
    access: Access,
) -> Result<(), HypervisorError> {
    let Some(ids) = ids else { return Ok(()) };
    let denied = |path: PathBuf, needs: &'static str| HypervisorError::VmIdentityDenied {
        what,
        path,
        uid: ids.uid,
        needs,
    };
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        if !permits(dir, ids, 0o1) {
            return Err(denied(dir.to_path_buf(), "search (x) on this directory"));
        }
    }
    let (bits, needs) = match access {
        Access::Read => (0o4, "read (r)"),
        Access::ReadWrite => (0o6, "read and write (rw)"),
        Access::Execute => (0o1, "search or execute (x)"),
    };
    if !permits(path, ids, bits) {
        return Err(denied(path.to_path_buf(), needs));
    }
    Ok(())
}

/// Whether the owner, group or other bits of `path` (whichever apply to
/// `ids`) grant all of `bits` (`0o4` r, `0o2` w, `0o1` x).
fn permits(path: &Path, ids: VmIds, bits: u32) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let mode = meta.mode();
    let class = if meta.uid() == ids.uid {
        mode >> 6
    } else if meta.gid() == ids.gid {
        mode >> 3
    } else {
        mode
    };
    class & bits == bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::process::ProcExit;

    const IDS: VmIds = VmIds {
        uid: 3_900_000_500,
        gid: 3_900_000_500,
    };

    #[test]
    fn access_follows_the_other_bits_for_a_stranger() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(tmp.path(), 0o711).unwrap();
        mode(&dir, 0o711).unwrap();
        mode(&file, 0o644).unwrap();
        check_access("kernel", &file, Some(IDS), Access::Read).unwrap();
        let err = check_access("kernel", &file, Some(IDS), Access::ReadWrite).unwrap_err();
        assert!(err.to_string().contains("read and write"), "{err}");
        mode(&dir, 0o700).unwrap();
        let err = check_access("kernel", &file, Some(IDS), Access::Read).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(msg.contains("3900000500"), "{msg}");
        // Without a VM identity the helper runs as the caller: nothing to check.
        check_access("kernel", &file, None, Access::Read).unwrap();
    }

    /// A helper that writes past its file size limit is stopped there: its
    /// log holds at most the limit, and SIGXFSZ ends it.
    #[tokio::test]
    async fn a_helper_cannot_grow_its_log_past_the_limit() {
        if !nix::unistd::geteuid().is_root() {
            crate::skip_rule::skip("a helper's new network namespace needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("helper.log");
        let mut cmd = Command::new("head");
        cmd.args(["-c", "1048576", "/dev/zero"]);
        let conf = Confinement {
            ids: None,
            file_size_max: Some(64 * 1024),
        };
        let helper = spawn_confined(conf, "helper", Path::new("head"), cmd, None, &log).unwrap();
        let exit = helper
            .wait_timeout(std::time::Duration::from_secs(10))
            .await;
        assert!(
            matches!(exit, Some(ProcExit::Signal(s)) if s == libc::SIGXFSZ),
            "{exit:?}"
        );
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 64 * 1024);
    }
}
