//! Hypervisor backends: boot one sandbox VM and reach its agent.
//!
//! Two backends: QEMU (`qemu.rs`) and skerry-vmm through the jailer
//! (`skerry_vmm.rs`); `choice.rs` decides which. The agent channel is hybrid
//! vsock (a host Unix socket speaking `CONNECT <port>`) with either; the shared
//! directory reaches the guest over virtio-fs from a `virtiofsd` per VM
//! (`virtiofsd.rs`). Either writes the guest console into a pipe that
//! `console_log.rs` copies to a capped file. All of a VM's host processes run
//! in the sandbox's host cgroup (`cgroup.rs`).

pub mod cgroup;
pub mod choice;
mod confine;
mod console_log;
pub mod identity;
mod process;
mod qemu;
mod skerry_vmm;
mod virtiofsd;

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub use cgroup::{HostCgroup, HostCgroupError};
pub use console_log::ConsoleLogError;

use crate::config::HypervisorConfig;
use crate::net::{NetError, NetSpec};
use identity::VmIds;

/// Longest path a Unix socket address can hold (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest reply line accepted from a hybrid vsock `CONNECT` (including `\n`).
const MAX_CONNECT_REPLY: usize = 32;

/// How long the guest gets to accept or refuse a vsock connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Guest context id; every VM has its own vsock device, so all can use 3.
const GUEST_CID: u32 = 3;

/// Everything needed to boot one sandbox VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id (already validated).
    pub id: String,
    /// Existing per-sandbox directory for sockets and logs.
    pub run_dir: PathBuf,
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Extra guest kernel command line.
    pub kernel_params: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Directory shared with the guest over virtio-fs (tag `skerry_protocol::SHARED_FS_TAG`).
    pub shared_dir: PathBuf,
    /// File that receives the guest serial console.
    pub console_log: PathBuf,
    /// Most bytes `console_log` may hold: it keeps the first half and the
    /// latest output (caps below 4 KiB are raised to 4 KiB).
    pub console_log_max: u64,
    /// The VM's NIC, when the pod has a network: the backend runs the VMM
    /// in `net.netns` and backs a virtio-net device with MAC `net.mac` by
    /// the tap `net.tap` there.
    pub net: Option<NetSpec>,
    /// The sandbox's host cgroup, which every host process of the VM joins
    /// before the guest runs; `None`: they stay in the caller's.
    pub host_cgroup: Option<HostCgroup>,
    /// The VM's own host uid/gid (`identity::IdLease`), which its helpers
    /// run as where they can; `None` when the runtime has no root to switch.
    pub ids: Option<VmIds>,
}

impl VmSpec {
    /// Checks that the kernel, initrd, run dir and shared dir exist.
    fn check(&self) -> Result<(), HypervisorError> {
        if !self.kernel.is_file() {
            return Err(HypervisorError::KernelNotFound(self.kernel.clone()));
        }
        if !self.initrd.is_file() {
            return Err(HypervisorError::InitrdNotFound(self.initrd.clone()));
        }
        for (what, path) in [("run dir", &self.run_dir), ("shared dir", &self.shared_dir)] {
            if !path.is_dir() {
                return Err(HypervisorError::NotADirectory {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The guest kernel command line: serial console, reboot on panic (which
    /// ends the VM), `tsc_early_khz` when given (needed under TCG), then the
    /// configured parameters.
    pub fn kernel_cmdline(&self, tsc_khz: Option<u64>) -> String {
        // cryptomgr.notests skips the crypto self-tests (~0.24 s of guest time under TCG);
        // no_timer_check skips the IO-APIC timer check. Kata passes both too.
        // percpu_alloc=page: per-CPU chunks of a few pages instead of 2 MiB units, each of
        // which comes with a 4 MiB memcg array (a container's own network namespace
        // needed a second chunk: +5.7 MiB of guest RAM; docs/architecture.md, "Memory
        // of an idle pod").
        let mut cmdline = String::from(
            "console=ttyS0 reboot=k panic=-1 quiet cryptomgr.notests no_timer_check \
             percpu_alloc=page",
        );
        if let Some(khz) = tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if !self.kernel_params.trim().is_empty() {
            cmdline.push(' ');
            cmdline.push_str(self.kernel_params.trim());
        }
        cmdline
    }
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered itself off.
    Poweroff,
    /// The guest rebooted (or its kernel panicked; `panic=-1` reboots), which ends the VM.
    Reset,
    /// The guest crashed in a way the hypervisor caught (triple fault, failed VM
    /// entry, KVM emulation failure).
    Crashed,
    /// The host stopped the hypervisor (`stop()` or a signal it handled gracefully).
    Stopped,
    /// The hypervisor was killed by this signal.
    Killed(i32),
    /// The hypervisor exited with this status for another or unknown reason.
    Exited(i32),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Poweroff => f.write_str("guest powered off"),
            VmExit::Reset => f.write_str("guest reset"),
            VmExit::Crashed => f.write_str("guest crashed"),
            VmExit::Stopped => f.write_str("stopped by the host"),
            VmExit::Killed(sig) => write!(f, "hypervisor killed by signal {sig}"),
            VmExit::Exited(code) => write!(f, "hypervisor exited with status {code}"),
        }
    }
}

/// Failure to boot, reach or stop a sandbox VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// A helper binary could not be found.
    #[error("{what} binary {name:?} not found in PATH or ~/.cargo/bin")]
    BinaryNotFound {
        /// Which program ("qemu", "virtiofsd", ...).
        what: &'static str,
        /// The configured name or path.
        name: PathBuf,
    },
    /// The guest kernel image is missing.
    #[error("guest kernel {0} not found (run `skerry image build`)")]
    KernelNotFound(PathBuf),
    /// The guest initramfs is missing.
    #[error("guest initramfs {0} not found (run `skerry image build`)")]
    InitrdNotFound(PathBuf),
    /// A directory the VM needs does not exist.
    #[error("{what} {path} is not a directory")]
    NotADirectory {
        /// Which directory ("run dir", "shared dir").
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A socket path does not fit in a Unix socket address.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes (use a shorter run dir)")]
    SocketPathTooLong(PathBuf),
    /// Only software emulation is available and the config refuses it.
    #[error(
        "hypervisor.require_hardware_virtualization = true, but this VM would run under \
         software emulation ({0}), which is not a hardware isolation boundary"
    )]
    SoftwareEmulation(String),
    /// Rate limits are set but the VM would run on QEMU, which has no
    /// virtio-net or vsock rate limiter.
    #[error("hypervisor.{key} needs skerry-vmm, but this VM would run on {choice} (QEMU has no virtio-net or vsock rate limiter; set it to 0 or make skerry-vmm usable)")]
    RateLimitUnsupported {
        /// The config key that is set.
        key: &'static str,
        /// The backend chosen, and why.
        choice: String,
    },
    /// KVM is needed (by the named backend) but cannot be used.
    #[error("{0} needs KVM, but /dev/kvm is not usable")]
    KvmUnavailable(choice::Backend),
    /// The skerry-vmm backend runs without root.
    #[error("the skerry-vmm backend needs root (the jailer builds a root, a pid namespace and a cgroup per VM)")]
    NotRoot,
    /// The skerry-vmm backend was given no uid of the VM's own to jail it as.
    #[error("the skerry-vmm backend needs the VM's own uid (leased from hypervisor.vm_uid_range)")]
    NoVmIdentity,
    /// A file for the jail root has a base name that is not UTF-8 or that
    /// another file there has.
    #[error("{0} cannot go into the jail root: its base name is not UTF-8 or is taken")]
    JailName(PathBuf),
    /// A process could not be started.
    #[error("cannot start {what} ({binary})")]
    Spawn {
        /// Which program.
        what: &'static str,
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A process exited or did not get ready while the VM was starting.
    #[error("{what} failed to start: {detail}")]
    StartFailed {
        /// Which program.
        what: &'static str,
        /// What happened, with the last lines of its log.
        detail: String,
    },
    /// A file in the run dir could not be created or removed.
    #[error("cannot prepare {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    /// A file a helper running as the VM's uid needs is out of its reach.
    #[error("{what} {path} is out of reach of VM uid {uid}: it needs {needs} for others (or for that uid/gid)")]
    VmIdentityDenied {
        /// What the file is ("guest kernel", "/dev/kvm", ...).
        what: &'static str,
        /// The file or the directory above it that denies.
        path: PathBuf,
        /// The VM's uid.
        uid: u32,
        /// The permission missing.
        needs: &'static str,
    },
    /// The pod's tap could not be opened for the hypervisor.
    #[error("cannot open the pod's tap {tap}")]
    Tap {
        /// The tap's name.
        tap: String,
        /// The cause.
        #[source]
        source: skerry_container::sys::SysError,
    },
    /// The pod's network namespace could not be entered.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The sandbox's host cgroup could not be set up or removed.
    #[error(transparent)]
    HostCgroup(#[from] HostCgroupError),
    /// The console log could not be set up.
    #[error(transparent)]
    Console(#[from] ConsoleLogError),
    /// The hypervisor is not running (any more).
    #[error("VM {0} is not running")]
    NotRunning(String),
    /// The hybrid vsock socket could not be used.
    #[error("cannot reach vsock port {port} of the guest through {path}")]
    VsockIo {
        /// The guest port.
        port: u32,
        /// The host Unix socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The vsock backend closed the connection: nothing listens on the guest port (yet).
    #[error("guest refused vsock port {0} (nothing listening yet?)")]
    VsockRefused(u32),
    /// The guest neither accepted nor refused the connection in time.
    #[error("guest did not answer a connection to vsock port {0} in time")]
    VsockTimeout(u32),
    /// The vsock backend answered `CONNECT` with something unexpected.
    #[error("bad reply to CONNECT {port}: {reply:?}")]
    VsockBadReply {
        /// The guest port.
        port: u32,
        /// What was received (lossy, bounded).
        reply: String,
    },
}

/// A running sandbox VM.
#[async_trait::async_trait]
pub trait Vm: Send + Sync {
    /// Opens a new byte stream to guest vsock `port`.
    async fn connect(&self, port: u32) -> Result<UnixStream, HypervisorError>;
    /// The host Unix socket of the guest's hybrid vsock, where other host
    /// processes (exec proxies) can reach the guest with `connect_hybrid_vsock`.
    fn vsock_path(&self) -> PathBuf;
    /// Host pids of the live processes that make up this VM (hypervisor + device backends).
    fn pids(&self) -> Vec<u32>;
    /// Resolves when the hypervisor process has exited (cancel-safe; may be called again after).
    async fn wait(&mut self) -> VmExit;
    /// Stops the hypervisor and its device backends, reaps them and removes their sockets. Idempotent.
    async fn stop(&mut self) -> Result<(), HypervisorError>;
}

/// Boots a VM for `spec` on the backend [`choice::backend_choice`] picks and
/// returns once the hypervisor runs; on failure nothing is left behind.
pub async fn launch(cfg: &HypervisorConfig, spec: &VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
    let choice = choice::backend_choice(cfg);
    tracing::debug!(sandbox = %spec.id, backend = %choice.summary(), "launching");
    choice.allowed_by(cfg)?;
    if choice.backend.needs_kvm() && !choice::dev_kvm_usable() {
        return Err(HypervisorError::KvmUnavailable(choice.backend));
    }
    Ok(match choice.backend {
        choice::Backend::SkerryVmm => Box::new(skerry_vmm::launch(cfg, spec).await?),
        choice::Backend::Qemu { kvm } => Box::new(qemu::launch(cfg, spec, kvm).await?),
    })
}

/// Removes what a VM of `run_dir` left outside its processes when it was not
/// stopped (its monitor was killed): skerry-vmm's sockets, jail directory and
/// cgroup, and the sandbox's host cgroup (killing what is left in it).
/// Call once its processes are gone.
pub fn remove_leftovers(run_dir: &Path) -> Result<(), HypervisorError> {
    skerry_vmm::remove_leftovers(run_dir)?;
    Ok(cgroup::remove_leftover(run_dir)?)
}

/// Resolves a configured binary: a path with a `/` as is, else `PATH`, else `~/.cargo/bin`.
pub fn find_binary(name: &Path) -> Option<PathBuf> {
    if name.as_os_str().is_empty() {
        return None;
    }
    if name.components().count() > 1 || name.is_absolute() {
        return is_executable(name).then(|| name.to_path_buf());
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    path_dirs
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Opens a stream to guest `port` through the hybrid vsock socket `uds`.
pub async fn connect_hybrid_vsock(uds: &Path, port: u32) -> Result<UnixStream, HypervisorError> {
    tokio::time::timeout(CONNECT_TIMEOUT, hybrid_vsock_handshake(uds, port))
        .await
        .map_err(|_| HypervisorError::VsockTimeout(port))?
}

async fn hybrid_vsock_handshake(uds: &Path, port: u32) -> Result<UnixStream, HypervisorError> {
    let io_err = |source| HypervisorError::VsockIo {
        port,
        path: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(io_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err)?;
    // Read byte by byte so that nothing the guest sends after the reply line is consumed.
    let mut line = Vec::with_capacity(MAX_CONNECT_REPLY);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(io_err)?;
        if n == 0 {
            if line.is_empty() {
                return Err(HypervisorError::VsockRefused(port));
            }
            break;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' || line.len() >= MAX_CONNECT_REPLY {
            break;
        }
    }
    parse_connect_reply(&line).map_err(|()| HypervisorError::VsockBadReply {
        port,
        reply: String::from_utf8_lossy(&line).into_owned(),
    })?;
    Ok(stream)
}

/// Checks a hybrid vsock reply line: exactly `OK <u32>\n`; returns the host-side port.
fn parse_connect_reply(line: &[u8]) -> Result<u32, ()> {
    let rest = line.strip_prefix(b"OK ").ok_or(())?;
    let digits = rest.strip_suffix(b"\n").ok_or(())?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    std::str::from_utf8(digits)
        .map_err(|_| ())?
        .parse::<u32>()
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reply_must_be_exact() {
        assert_eq!(parse_connect_reply(b"OK 1073741824\n"), Ok(1_073_741_824));
        assert_eq!(parse_connect_reply(b"OK 0\n"), Ok(0));
        for bad in [
            &b"OK\n"[..],
            b"OK 12",
            b"OK 12\r\n",
            b"ok 12\n",
            b"OK -1\n",
            b"OK 99999999999\n",
            b"OK 4294967296\n",
            b"OK 1 2\n",
            b" OK 1\n",
            b"",
        ] {
            assert!(parse_connect_reply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn find_binary_uses_paths_and_path_env() {
        assert_eq!(
            find_binary(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_binary(Path::new("/nonexistent/qemu")), None);
        assert!(find_binary(Path::new("sh")).is_some());
        assert_eq!(find_binary(Path::new("no-such-binary-skerry")), None);
        assert_eq!(find_binary(Path::new("")), None);
    }

    #[tokio::test]
    async fn hybrid_vsock_handshake_keeps_following_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            for reply in [&b"OK 77\nhello"[..], b"NOPE\n", b""] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 13];
                s.read_exact(&mut buf[..13]).await.unwrap();
                assert_eq!(&buf, b"CONNECT 1024\n");
                s.write_all(reply).await.unwrap();
            }
        });
        let mut s = connect_hybrid_vsock(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        let err = connect_hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(
            matches!(err, HypervisorError::VsockBadReply { .. }),
            "{err}"
        );
        let err = connect_hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(matches!(err, HypervisorError::VsockRefused(1024)), "{err}");
        server.await.unwrap();
    }
}
