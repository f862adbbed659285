//! virtiofsd, the vhost-user virtio-fs back end every backend runs next to its
//! VMM: one per VM, serving the sandbox's shared directory on a Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::confine::{spawn_confined, Confinement};
use super::process::Process;
use super::HypervisorError;
use crate::state::ProcessId;

/// SIGTERM → SIGKILL grace once it has not exited by itself.
const GRACE: Duration = Duration::from_secs(1);

/// Starts virtiofsd sharing `shared_dir` on `socket`, logging to `log`
/// (callers wait for the socket with `process::wait_for_socket`).
///
/// It stays root: it must create and chown files of any owner in a
/// container's rootfs, which a uid map (`--uid-map`, `--translate-uid`)
/// covers only for the ids it maps. It confines itself: new mount, pid and
/// network namespaces with the shared dir as its root (`--sandbox
/// namespace`), a seccomp allow-list that kills on anything else, and no
/// `CAP_MKNOD` or `CAP_SETFCAP`, so the guest cannot make device nodes or
/// file-capability binaries on the host.
pub(crate) fn spawn_virtiofsd(
    binary: &Path,
    shared_dir: &Path,
    socket: &Path,
    log: &Path,
) -> Result<Process, HypervisorError> {
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = Command::new(binary);
    cmd.arg("--shared-dir")
        .arg(shared_dir)
        .arg("--socket-path")
        .arg(socket)
        // Its own namespaces need root; unprivileged runs use no sandbox.
        .arg("--sandbox")
        .arg(if root { "namespace" } else { "none" })
        .arg("--seccomp")
        .arg("kill");
    if root {
        cmd.arg("--modcaps=-mknod:-setfcap");
    }
    let conf = Confinement {
        ids: None,
        file_size_max: None,
    };
    spawn_confined(conf, "virtiofsd", binary, cmd, None, log)
}

/// Stops virtiofsd after its VMM has gone: it exits by itself once the VMM
/// disconnects. Else its sandbox child (which does the work) is terminated
/// first, so that the parent reaps it and exits; the parent is terminated only
/// when that fails or there is no child (`--sandbox none`).
pub(crate) async fn stop_virtiofsd(p: &Process) {
    if p.wait_timeout(Duration::from_millis(500)).await.is_some() {
        return;
    }
    let children: Vec<ProcessId> = p
        .pids()
        .into_iter()
        .filter(|&pid| pid != p.pid())
        .filter_map(ProcessId::of)
        .collect();
    for child in &children {
        child.signal(Signal::SIGTERM);
    }
    if children.is_empty() || p.wait_timeout(GRACE).await.is_none() {
        p.terminate(GRACE).await;
    }
}

/// The pid file virtiofsd writes next to its socket.
pub(crate) fn pid_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}
