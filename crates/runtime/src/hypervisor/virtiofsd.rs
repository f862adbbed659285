//! virtiofsd, the vhost-user virtio-fs back end every backend runs next to its
//! VMM: one per VM, serving the sandbox's shared directory on a Unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::process::{spawn, Process};
use super::HypervisorError;
use crate::state::ProcessId;

/// SIGTERM → SIGKILL grace once it has not exited by itself.
const GRACE: Duration = Duration::from_secs(1);

/// Starts virtiofsd sharing `shared_dir` on `socket`, logging to `log`
/// (callers wait for the socket with `process::wait_for_socket`).
pub(crate) fn spawn_virtiofsd(
    binary: &Path,
    shared_dir: &Path,
    socket: &Path,
    log: &Path,
) -> Result<Process, HypervisorError> {
    let mut cmd = Command::new(binary);
    cmd.arg("--shared-dir")
        .arg(shared_dir)
        .arg("--socket-path")
        .arg(socket)
        // Its own namespaces need root; unprivileged runs use no sandbox.
        .arg("--sandbox")
        .arg(if nix::unistd::geteuid().is_root() {
            "namespace"
        } else {
            "none"
        });
    spawn("virtiofsd", binary, cmd, log)
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
