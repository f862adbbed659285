//! PID 1 duties: early mounts, kernel modules, the sandbox's hostname and shared
//! filesystem, and powering off.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, Pid};
use tracing::{error, info, warn};

use crate::state::{AgentError, Sandbox};

/// File listing the kernel modules to load, one absolute path per line, in order.
pub const MODULE_LIST: &str = "/lib/modules/load-order";

/// How long boot waits for /dev/vsock.
const VSOCK_WAIT: Duration = Duration::from_secs(5);

/// Delay between the DestroySandbox reply and the power-off.
const POWEROFF_DELAY: Duration = Duration::from_millis(5);

/// An early-boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A mount failed.
    #[error("mounting {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Re-rooting off the initramfs failed.
    #[error("re-rooting onto a bind mount of the initramfs ({step})")]
    Reroot {
        /// The step.
        step: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
}

/// Moves `/` onto a bind mount of itself, so containers can `pivot_root` (the initramfs
/// root itself cannot be pivoted away).
fn reroot() -> Result<(), BootError> {
    let e = |step| move |source| BootError::Reroot { step, source };
    let _ = std::fs::create_dir("/.root");
    mount(
        Some("/"),
        "/.root",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(e("bind"))?;
    chdir("/.root").map_err(e("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(e("move"))?;
    chroot(".").map_err(e("chroot"))?;
    chdir("/").map_err(e("chdir /"))?;
    Ok(())
}

/// Early boot as PID 1: re-root, mount the API filesystems, make sure fds 0-2 are open.
/// Returns problems to log once logging is up.
pub fn early() -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = reroot() {
        problems.push(skerry_container::error_chain(&e));
    }
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&'static str, &'static str, MsFlags, Option<&str>); 9] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        // The active LSMs: whether the kernel guards the agent's channels.
        ("securityfs", "/sys/kernel/security", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        ("tmpfs", "/dev/shm", nodev, Some("mode=1777")),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "/sys/fs/cgroup", nodev, None),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (fstype, target, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        if let Err(source) = mount(Some(fstype), target, Some(fstype), flags, data) {
            if source == Errno::EBUSY {
                continue; // already mounted (e.g. devtmpfs automount)
            }
            let e = BootError::Mount {
                fstype,
                target,
                source,
            };
            problems.push(skerry_container::error_chain(&e));
        }
    }
    ensure_stdio();
    problems
}

/// Opens /dev/console on any of fds 0-2 that is closed (the kernel leaves them closed
/// when the initramfs has no /dev/console).
fn ensure_stdio() {
    for fd in 0..=2 {
        if fcntl(fd, FcntlArg::F_GETFD).is_err() {
            if let Ok(new) = open(
                "/dev/console",
                OFlag::O_RDWR | OFlag::O_NOCTTY,
                Mode::empty(),
            ) {
                if new != fd {
                    let _ = nix::unistd::dup2(new, fd);
                    let _ = nix::unistd::close(new);
                }
            }
        }
    }
}

/// Loads the modules listed in [`MODULE_LIST`]; failures are logged and skipped.
pub fn load_modules() {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = MODULE_LIST, error = %e, "no module list, loading none");
            return;
        }
    };
    let start = Instant::now();
    let mut loaded = 0;
    for line in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let r = std::fs::File::open(line)
            .map_err(|e| e.to_string())
            .and_then(|f| match finit_module(&f, c"", ModuleInitFlags::empty()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e.to_string()),
            });
        match r {
            Ok(()) => loaded += 1,
            Err(e) => error!(module = line, error = %e, "loading kernel module failed"),
        }
    }
    info!(
        loaded,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "kernel modules loaded"
    );
}

/// Waits (bounded) for /dev/vsock to appear.
pub fn wait_for_vsock() {
    let start = Instant::now();
    while !Path::new("/dev/vsock").exists() {
        if start.elapsed() > VSOCK_WAIT {
            error!("/dev/vsock did not appear within {VSOCK_WAIT:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    info!(
        waited_ms = start.elapsed().as_millis() as u64,
        "/dev/vsock is present"
    );
}

/// CreateSandbox: hostname and the virtio-fs share (guest only).
pub fn create_sandbox(
    guest: bool,
    hostname: &str,
    tag: &str,
    shared_dir: &Path,
) -> Result<(), AgentError> {
    let bad = |m: String| AgentError::BadRequest(m);
    if hostname.len() > 64 || hostname.contains(['\0', '/']) {
        return Err(bad(format!(
            "hostname {hostname:?} is not a valid hostname"
        )));
    }
    if tag.len() > 36 || tag.contains(['\0', ',']) {
        return Err(bad(format!(
            "shared_fs_tag {tag:?} is not a valid virtio-fs tag"
        )));
    }
    if !guest {
        info!("development mode: hostname and virtio-fs mount skipped");
        return Ok(());
    }
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(|e| AgentError::System {
            what: format!("setting hostname {hostname:?}"),
            source: e.into(),
        })?;
    }
    if !tag.is_empty() {
        std::fs::create_dir_all(shared_dir).map_err(|source| AgentError::System {
            what: format!("creating {}", shared_dir.display()),
            source,
        })?;
        let start = Instant::now();
        mount(
            Some(tag),
            shared_dir,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| AgentError::System {
            what: format!("mounting virtiofs {tag:?} on {}", shared_dir.display()),
            source: e.into(),
        })?;
        info!(tag, path = %shared_dir.display(), elapsed_ms = start.elapsed().as_millis() as u64, "shared filesystem mounted");
    }
    Ok(())
}

/// DestroySandbox: kill everything, sync, unmount, and power off shortly after the reply.
pub fn destroy_sandbox(guest: bool, sandbox: &Sandbox) {
    if guest {
        // kill(-1) from PID 1 reaches every process but ourselves.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        for pid in sandbox.running_inits() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    nix::unistd::sync();
    if guest {
        let _ = umount2(sandbox.shared_dir(), MntFlags::MNT_DETACH);
    }
    info!("sandbox destroyed, powering off");
    tokio::spawn(async move {
        tokio::time::sleep(POWEROFF_DELAY).await;
        if guest {
            power_off();
        } else {
            std::process::exit(0);
        }
    });
}

/// Whether the kernel command line holds the word `flag`.
pub fn kernel_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline").is_ok_and(|cmdline| has_word(&cmdline, flag))
}

fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == word)
}

/// Powers the VM off (PID 1 must never just exit).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on failure; PID 1 exiting would panic the kernel, which with
    // panic=-1 still ends the VM.
    std::process::exit(1)
}

/// Tells the host that the API is up: a connection to the host's
/// [`skerry_protocol::AGENT_READY_VSOCK_PORT`], closed at once. The host
/// connects to the agent only after it (see that constant). A failure is
/// logged; the host's boot timeout then decides.
pub fn announce_ready() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    use std::os::fd::AsRawFd;
    let port = skerry_protocol::AGENT_READY_VSOCK_PORT;
    let announced = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| connect(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_HOST, port)));
    match announced {
        Ok(()) => info!(port, "announced to the host"),
        Err(e) => error!(port, error = %e, "cannot announce to the host"),
    }
}

#[cfg(test)]
mod tests {
    use super::has_word;

    #[test]
    fn kernel_flags_match_whole_words() {
        let cmdline = "console=ttyS0 quiet skerry.poweroff_after_boot panic=-1\n";
        assert!(has_word(cmdline, "skerry.poweroff_after_boot"));
        assert!(!has_word(cmdline, "skerry.poweroff"));
        assert!(!has_word(
            "skerry.poweroff_after_boot=0",
            "skerry.poweroff_after_boot"
        ));
    }
}
