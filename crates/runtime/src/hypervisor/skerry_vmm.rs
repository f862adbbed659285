//! skerry-vmm backend: `virtiofsd` on the host, then `skerry-vmm` in its cell,
//! started by the `jailer` (empty root, new pid namespace, cgroup, unprivileged
//! uid, empty environment).
//!
//! Files of a VM whose run dir is `R` (jail id `J`, derived from `R`):
//!
//! | host | in the jail | what |
//! |---|---|---|
//! | `R/vm/` (jail uid, 0700) | `/vm/` (bind mount) | the VM's sockets |
//! | `R/vm/fs.sock` | `/vm/fs.sock` | virtiofsd's socket (virtiofsd runs on the host), chowned to the jail uid |
//! | `R/vm/vsock.sock` | `/vm/vsock.sock` | hybrid vsock, bound by the VMM |
//! | `R/vm/api.sock` | `/vm/api.sock` | control API, bound by the VMM |
//! | kernel, initrd | `/<base name>` | read-only bind mounts of the image's files |
//! | `/dev/kvm` | `/dev/kvm` | a node owned by the jail uid |
//! | console log (through `console_log.rs`) | stdout, a pipe | the serial console |
//! | `R/vmm.log` | stderr | jailer and VMM messages |
//!
//! The jail root is `<jail_dir>/<VMM binary name>/J/root`, the cgroup
//! `skerry/J` (v1: in the pids hierarchy); `R/jail.json` names both, so that
//! `delete` removes them even when no `stop` ran.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;

use super::cgroup::{self, VmCgroup};
use super::confine::{give_to, guest_ram_file, make_vm_dir, spawn_confined, Confinement};
use super::console_log::ConsoleLog;
use super::identity::VmIds;
use super::process::{resolve, wait_for_socket, ProcExit, Process};
use super::virtiofsd::{spawn_virtiofsd, stop_virtiofsd};
use super::{HypervisorError, Vm, VmExit, VmSpec, GUEST_CID, MAX_SOCKET_PATH};
use crate::check::{cgroup_layout, CgroupLayout};
use crate::config::HypervisorConfig;
use crate::net::NetSpec;
use crate::state::ProcessId;

/// The run dir's subdirectory bound into the jail at `/vm`.
const SOCK_DIR: &str = "vm";
const FS_SOCK: &str = "fs.sock";
const VSOCK_SOCK: &str = "vsock.sock";
const API_SOCK: &str = "api.sock";
/// The run dir's record of the jail directory and cgroup.
const JAIL_RECORD: &str = "jail.json";
/// Parent cgroup of a VM's group when the sandbox has no host cgroup.
const CGROUP_PARENT: &str = "skerry";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long virtiofsd and the jailed VMM get to create their sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the VMM gets to exit after the API `shutdown`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the jailer gets to exit after its VMM was killed.
const JAILER_GRACE: Duration = Duration::from_secs(1);
/// How long the control API gets to answer.
const API_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest control API reply read.
const MAX_API_REPLY: u64 = 256;

/// Cgroup API handed to the jailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cgroup {
    /// The pids hierarchy of cgroup v1.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The cgroup API for a host with `layout` (`v1_pids`: the v1 pids hierarchy is mounted).
fn host_cgroup(layout: CgroupLayout, v1_pids: bool) -> Option<Cgroup> {
    match layout {
        CgroupLayout::V2 => Some(Cgroup::V2),
        CgroupLayout::V1 | CgroupLayout::Hybrid if v1_pids => Some(Cgroup::V1),
        _ => None,
    }
}

/// What a VM leaves outside its run dir until it is stopped (`R/jail.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JailRecord {
    /// The jailer's directory of the VM.
    jail: PathBuf,
    /// The VM's cgroup directory.
    cgroup: Option<PathBuf>,
}

impl JailRecord {
    /// Removes the jail directory and the cgroup; missing ones are fine.
    fn remove(&self) -> Result<(), HypervisorError> {
        // The jail's bind mount lives in the jail's own mount namespace: here,
        // `root/vm` is an empty directory, so this never reaches the sockets' directory.
        remove_tree(&self.jail)?;
        if let Some(dir) = &self.cgroup {
            remove_file_or_dir(dir, |p| std::fs::remove_dir(p))?;
        }
        Ok(())
    }
}

/// Removes what a skerry-vmm VM of `run_dir` left (its socket directory, and the
/// jail directory and cgroup its record names); a run dir without them is fine.
pub(crate) fn remove_leftovers(run_dir: &Path) -> Result<(), HypervisorError> {
    remove_tree(&run_dir.join(SOCK_DIR))?;
    let path = run_dir.join(JAIL_RECORD);
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(run_dir_err(&path))?,
    };
    let record: JailRecord = serde_json::from_slice(&bytes)
        .map_err(|e| HypervisorError::RunDir(path.clone(), e.into()))?;
    record.remove()?;
    remove_file_or_dir(&path, |p| std::fs::remove_file(p))
}

/// Where everything of one jailed VM lives and what it is given; turned into
/// the jailer's argv by [`jailer_args`].
#[derive(Debug, Clone)]
struct JailPlan {
    /// Jail id (names the jail directory and the cgroup).
    id: String,
    vmm: PathBuf,
    /// The VM's own uid/gid, which the VMM runs as.
    ids: VmIds,
    jail_dir: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    /// Base names of kernel and initrd, which is where they are in the jail.
    kernel_name: String,
    initrd_name: String,
    /// Host side of the socket directory.
    sock_dir: PathBuf,
    /// Where the [`JailRecord`] goes.
    record_file: PathBuf,
    cgroup: Option<Cgroup>,
    /// Parent of the jailer's cgroup: the sandbox's host cgroup, so that
    /// the jailer's own move keeps the VMM under the sandbox's limits.
    cgroup_parent: String,
    cmdline: String,
    vcpus: u32,
    memory_mib: u32,
    /// The pod NIC: the VMM runs in its namespace and attaches to its tap.
    net: Option<NetSpec>,
    /// RLIMIT_FSIZE of the VMM, bytes: its log and the guest RAM's memfd.
    file_size_max: u64,
    /// Rate limit of the NIC, each direction, in MiB/s (0 = none).
    net_rate_limit_mib: u32,
    /// Rate limit of the vsock, each direction, in MiB/s (0 = none).
    vsock_rate_limit_mib: u32,
}

/// A file's base name as the VMM is told it (UTF-8).
fn base_name(path: &Path) -> Result<String, HypervisorError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| HypervisorError::JailName(path.to_path_buf()))
}

impl JailPlan {
    fn new(
        cfg: &HypervisorConfig,
        spec: &VmSpec,
        vmm: PathBuf,
        cgroup: Option<Cgroup>,
    ) -> Result<Self, HypervisorError> {
        let ids = spec.ids.ok_or(HypervisorError::NoVmIdentity)?;
        let vmm_name = base_name(&vmm)?;
        let kernel_name = base_name(&spec.kernel)?;
        let initrd_name = base_name(&spec.initrd)?;
        // Every name at the jail root must be distinct.
        let mut taken = vec![vmm_name, SOCK_DIR.to_string(), "dev".to_string()];
        for (name, path) in [(&kernel_name, &spec.kernel), (&initrd_name, &spec.initrd)] {
            if taken.contains(name) {
                return Err(HypervisorError::JailName(path.clone()));
            }
            taken.push(name.clone());
        }
        let sock_dir = spec.run_dir.join(SOCK_DIR);
        for name in [FS_SOCK, VSOCK_SOCK, API_SOCK] {
            let p = sock_dir.join(name);
            // Guest-initiated vsock connections go to `<uds>_<port>`.
            if p.as_os_str().len() + 11 > MAX_SOCKET_PATH {
                return Err(HypervisorError::SocketPathTooLong(p));
            }
        }
        let digest = Sha256::digest(spec.run_dir.as_os_str().as_encoded_bytes());
        Ok(JailPlan {
            id: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            vmm,
            ids,
            jail_dir: cfg.jail_dir.clone(),
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            kernel_name,
            initrd_name,
            sock_dir,
            record_file: spec.run_dir.join(JAIL_RECORD),
            cgroup,
            cgroup_parent: spec.host_cgroup.as_ref().map_or_else(
                || CGROUP_PARENT.to_string(),
                |c| c.path.to_string_lossy().trim_start_matches('/').to_string(),
            ),
            cmdline: spec.kernel_cmdline(None),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            net: spec.net.clone(),
            file_size_max: cfg.helper_log_max_kib * 1024 + guest_ram_file(spec.memory_mib),
            net_rate_limit_mib: cfg.net_rate_limit_mib_per_sec,
            vsock_rate_limit_mib: cfg.vsock_rate_limit_mib_per_sec,
        })
    }

    /// Host path of socket `name`.
    fn host_sock(&self, name: &str) -> PathBuf {
        self.sock_dir.join(name)
    }

    /// The jailer's directory of this VM (`<jail_dir>/<VMM name>/<id>`; the root is its `root/`).
    fn jail_vm_dir(&self) -> PathBuf {
        let vmm_name = self.vmm.file_name().unwrap_or_default();
        self.jail_dir.join(vmm_name).join(&self.id)
    }

    /// What the VM leaves outside the run dir.
    fn record(&self) -> JailRecord {
        JailRecord {
            jail: self.jail_vm_dir(),
            cgroup: self.cgroup_dir(),
        }
    }

    /// The VM's cgroup directory.
    fn cgroup_dir(&self) -> Option<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        let hierarchy = match self.cgroup? {
            Cgroup::V1 => root.join("pids"),
            Cgroup::V2 => root.to_path_buf(),
        };
        Some(hierarchy.join(&self.cgroup_parent).join(&self.id))
    }
}

/// The jailer's command line (without the binary): the jail, then `--` and the VMM's.
fn jailer_args(p: &JailPlan) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--id".into(),
        p.id.clone().into(),
        "--exec-file".into(),
        p.vmm.clone().into(),
        "--uid".into(),
        p.ids.uid.to_string().into(),
        "--gid".into(),
        p.ids.gid.to_string().into(),
        "--chroot-base-dir".into(),
        p.jail_dir.clone().into(),
        "--new-pid-ns".into(),
        "--rlimit-fsize".into(),
        p.file_size_max.to_string().into(),
        "--copy-libs".into(),
        "--device".into(),
        "/dev/kvm".into(),
        "--file".into(),
        p.kernel.clone().into(),
        "--file".into(),
        p.initrd.clone().into(),
        "--bind-dir".into(),
        p.sock_dir.clone().into(),
    ];
    if let Some(cgroup) = p.cgroup {
        let version = match cgroup {
            Cgroup::V1 => "v1",
            Cgroup::V2 => "v2",
        };
        args.extend(
            [
                "--cgroup-version",
                version,
                "--parent-cgroup",
                &p.cgroup_parent,
            ]
            .map(OsString::from),
        );
    }
    if let Some(net) = &p.net {
        // The tap is only visible in the pod's namespace, and belongs to the jail uid.
        args.extend([
            "--netns".into(),
            net.netns.clone().into(),
            "--device".into(),
            "/dev/net/tun".into(),
        ]);
    }
    let jail_sock = |name: &str| format!("/{SOCK_DIR}/{name}");
    let mut vmm: Vec<String> = vec![
        "--kernel".into(),
        format!("/{}", p.kernel_name),
        "--initrd".into(),
        format!("/{}", p.initrd_name),
        "--cmdline".into(),
        p.cmdline.clone(),
        "--memory".into(),
        p.memory_mib.to_string(),
        "--vcpus".into(),
        p.vcpus.to_string(),
        "--vsock-cid".into(),
        GUEST_CID.to_string(),
        "--vsock-uds".into(),
        jail_sock(VSOCK_SOCK),
        "--api-sock".into(),
        jail_sock(API_SOCK),
        "--fs-socket".into(),
        jail_sock(FS_SOCK),
        "--fs-tag".into(),
        skerry_protocol::SHARED_FS_TAG.into(),
    ];
    // Each direction gets the limit, with one second's worth of burst.
    let limit = |device: &str, mib: u32| {
        ["rx", "tx"].map(|dir| [format!("--{device}-{dir}-rate-limit"), format!("{mib}M")])
    };
    if p.vsock_rate_limit_mib > 0 {
        vmm.extend(limit("vsock", p.vsock_rate_limit_mib).concat());
    }
    if let Some(net) = &p.net {
        vmm.extend([
            "--net-tap".into(),
            net.tap.clone(),
            "--net-mac".into(),
            net.mac.clone(),
        ]);
        if p.net_rate_limit_mib > 0 {
            vmm.extend(limit("net", p.net_rate_limit_mib).concat());
        }
    }
    args.push("--".into());
    args.extend(vmm.into_iter().map(OsString::from));
    args
}

/// Maps the jailer's exit to a [`VmExit`]. The jailer passes the VMM's status
/// on (`128 + N` for signal N); skerry-vmm's statuses: crates/vmm/src/exit.rs.
fn classify_exit(exit: ProcExit) -> VmExit {
    match exit {
        ProcExit::Code(0) => VmExit::Poweroff,
        ProcExit::Code(3) => VmExit::Reset,
        ProcExit::Code(4) => VmExit::Crashed,
        ProcExit::Code(5) => VmExit::Stopped,
        ProcExit::Code(c) if c > 128 => VmExit::Killed(c - 128),
        ProcExit::Code(c) => VmExit::Exited(c),
        ProcExit::Signal(sig) => VmExit::Killed(sig),
        ProcExit::Unknown => VmExit::Exited(-1),
    }
}

/// A jailed skerry-vmm and its virtiofsd.
pub(crate) struct SkerryVmm {
    sandbox: String,
    plan: JailPlan,
    /// The jailer; it waits for the VMM (PID 1 of its pid namespace) and exits with its status.
    jailer: Option<Process>,
    /// The VMM itself (the jailer's child), to kill when it does not shut down.
    vmm: Option<ProcessId>,
    virtiofsd: Option<Process>,
    console: Option<ConsoleLog>,
    /// The sandbox's host cgroup: virtiofsd and the jailer (so the VMM) run in it.
    cgroup: Option<VmCgroup>,
    exit: Option<VmExit>,
    stopped: bool,
}

/// Boots the VM; on failure stops whatever was started.
pub(crate) async fn launch(
    cfg: &HypervisorConfig,
    spec: &VmSpec,
) -> Result<SkerryVmm, HypervisorError> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        return Err(HypervisorError::NotRoot);
    }
    let jailer_bin = resolve("jailer", &cfg.jailer_path)?;
    let vmm_bin = resolve("skerry-vmm", &cfg.vmm_path)?;
    let virtiofsd_bin = resolve("virtiofsd", &cfg.virtiofsd_path)?;
    spec.check()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cgroup = host_cgroup(
        cgroup_layout(&mounts),
        Path::new(CGROUP_ROOT).join("pids/tasks").exists(),
    );
    let plan = JailPlan::new(cfg, spec, vmm_bin, cgroup)?;
    let mut vm = SkerryVmm {
        sandbox: spec.id.clone(),
        plan,
        jailer: None,
        vmm: None,
        virtiofsd: None,
        console: None,
        cgroup: None,
        exit: None,
        stopped: false,
    };
    // Leftovers of an earlier VM of this run dir that was killed without `stop`.
    vm.remove_files()?;
    vm.cgroup = spec
        .host_cgroup
        .as_ref()
        .map(|c| VmCgroup::create(&spec.run_dir, c))
        .transpose()?;
    match vm.start(spec, &jailer_bin, &virtiofsd_bin).await {
        Ok(()) => {
            tracing::info!(
                sandbox = %spec.id,
                jail = %vm.plan.id,
                pids = ?vm.pids(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "skerry-vmm started"
            );
            Ok(vm)
        }
        Err(e) => {
            let _ = vm.stop().await;
            Err(e)
        }
    }
}

fn run_dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> HypervisorError + '_ {
    move |e| HypervisorError::RunDir(path.to_path_buf(), e)
}

/// Removes `path` with `remove`; a missing one is fine.
fn remove_file_or_dir(
    path: &Path,
    remove: fn(&Path) -> std::io::Result<()>,
) -> Result<(), HypervisorError> {
    match remove(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HypervisorError::RunDir(path.to_path_buf(), e))
        }
        _ => Ok(()),
    }
}

/// Removes a directory tree; a missing one is fine.
fn remove_tree(path: &Path) -> Result<(), HypervisorError> {
    remove_file_or_dir(path, |p| std::fs::remove_dir_all(p))
}

/// Asks the VMM's control API to shut the VM down; returns its reply line.
async fn api_shutdown(path: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(b"{\"action\":\"shutdown\"}\n").await?;
    let mut reply = Vec::new();
    BufReader::new(stream.take(MAX_API_REPLY))
        .read_until(b'\n', &mut reply)
        .await?;
    Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
}

impl SkerryVmm {
    async fn start(
        &mut self,
        spec: &VmSpec,
        jailer_bin: &Path,
        virtiofsd_bin: &Path,
    ) -> Result<(), HypervisorError> {
        let plan = &self.plan;
        let deadline = Instant::now() + READY_TIMEOUT;
        let record = serde_json::to_vec(&plan.record()).expect("paths serialize");
        std::fs::write(&plan.record_file, record).map_err(run_dir_err(&plan.record_file))?;
        make_vm_dir(&plan.sock_dir, Some(plan.ids))?;

        let fs_sock = plan.host_sock(FS_SOCK);
        let fs_log = spec.run_dir.join("virtiofsd.log");
        let virtiofsd = self.virtiofsd.insert(spawn_virtiofsd(
            virtiofsd_bin,
            &spec.shared_dir,
            &fs_sock,
            &fs_log,
        )?);
        cgroup::place(self.cgroup.as_ref(), virtiofsd)?;
        wait_for_socket(virtiofsd, &fs_sock, &fs_log, deadline).await?;
        // The VMM connects to it as the jail's uid.
        give_to(&fs_sock, Some(plan.ids))?;

        let (console, console_pipe) = ConsoleLog::create(&spec.console_log, spec.console_log_max)?;
        self.console = Some(console);
        let vmm_log = spec.run_dir.join("vmm.log");
        let mut cmd = Command::new(jailer_bin);
        cmd.args(jailer_args(plan));
        tracing::debug!(sandbox = %spec.id, args = ?jailer_args(plan), "starting the jailer");
        // The jailer drops to the VM's uid itself (`--uid`), and enters the
        // pod's namespace itself (`--netns`); without one, the new empty one
        // it starts in is the VMM's.
        // It sets the VMM's file size limit itself (`--rlimit-fsize`),
        // after copying the VMM into the jail.
        let conf = Confinement {
            ids: None,
            file_size_max: None,
        };
        let jailer = self.jailer.insert(spawn_confined(
            conf,
            "skerry-vmm",
            jailer_bin,
            cmd,
            Some(console_pipe),
            &vmm_log,
        )?);
        // The jailer then moves itself into its own cgroup below this one
        // (`--parent-cgroup`) before it execs the VMM.
        cgroup::place(self.cgroup.as_ref(), jailer)?;
        for name in [API_SOCK, VSOCK_SOCK] {
            wait_for_socket(jailer, &plan.host_sock(name), &vmm_log, deadline).await?;
        }
        // The jailer's only child is the VMM, and it runs: its sockets exist.
        self.vmm = jailer
            .pids()
            .into_iter()
            .find(|&pid| pid != jailer.pid())
            .and_then(ProcessId::of);
        Ok(())
    }

    /// SIGKILLs the VMM if it is still that very process.
    fn kill_vmm(&self) {
        if let Some(p) = self.vmm {
            p.signal(Signal::SIGKILL);
        }
    }

    /// Removes the socket directory, the jail directory, the cgroup and their record.
    fn remove_files(&self) -> Result<(), HypervisorError> {
        remove_tree(&self.plan.sock_dir)?;
        self.plan.record().remove()?;
        remove_file_or_dir(&self.plan.record_file, |p| std::fs::remove_file(p))
    }
}

#[async_trait::async_trait]
impl Vm for SkerryVmm {
    async fn connect(&self, port: u32) -> Result<UnixStream, HypervisorError> {
        match &self.jailer {
            Some(j) if j.exited().is_none() && !self.stopped => {}
            _ => return Err(HypervisorError::NotRunning(self.sandbox.clone())),
        }
        super::connect_hybrid_vsock(&self.plan.host_sock(VSOCK_SOCK), port).await
    }

    fn vsock_path(&self) -> PathBuf {
        self.plan.host_sock(VSOCK_SOCK)
    }

    fn pids(&self) -> Vec<u32> {
        [&self.jailer, &self.virtiofsd]
            .into_iter()
            .filter_map(Option::as_ref)
            .flat_map(Process::pids)
            .collect()
    }

    async fn wait(&mut self) -> VmExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let status = match &self.jailer {
            Some(j) => j.wait().await,
            None => ProcExit::Unknown,
        };
        let exit = classify_exit(status);
        self.exit = Some(exit);
        exit
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(jailer) = self.jailer.as_ref().filter(|j| j.exited().is_none()) {
            let api = self.plan.host_sock(API_SOCK);
            match tokio::time::timeout(API_TIMEOUT, api_shutdown(&api)).await {
                Ok(Ok(reply)) => tracing::debug!(sandbox = %self.sandbox, %reply, "shutdown"),
                Ok(Err(e)) => tracing::debug!(sandbox = %self.sandbox, error = %e, "shutdown"),
                Err(_) => tracing::debug!(sandbox = %self.sandbox, "shutdown: no reply"),
            }
            if jailer.wait_timeout(SHUTDOWN_GRACE).await.is_none() {
                tracing::warn!(sandbox = %self.sandbox, "skerry-vmm did not shut down; killing it");
                self.kill_vmm();
                jailer.wait_timeout(JAILER_GRACE).await;
                jailer.terminate(JAILER_GRACE).await;
            }
        }
        // A jailer that died before its VMM leaves the VMM running.
        self.kill_vmm();
        if let Some(p) = &self.virtiofsd {
            stop_virtiofsd(p).await;
        }
        if self.jailer.is_some() && self.exit.is_none() {
            self.wait().await;
        }
        if let Some(console) = &mut self.console {
            console.finish().await;
        }
        if !self.stopped {
            tracing::info!(sandbox = %self.sandbox, exit = ?self.exit, "vm stopped");
        }
        self.stopped = true;
        self.remove_files()?;
        Ok(self.cgroup.as_ref().map_or(Ok(()), VmCgroup::remove)?)
    }
}

impl Drop for SkerryVmm {
    fn drop(&mut self) {
        // Dropping the jailer SIGKILLs it, which would leave its VMM running.
        if !self.stopped {
            self.kill_vmm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "ctr_1.a".into(),
            run_dir: "/run/skerry/.v/0123456789abcdef".into(),
            kernel: "/var/lib/skerry/guest/vmlinuz".into(),
            initrd: "/var/lib/skerry/guest/initramfs.img".into(),
            kernel_params: "skerry.x=1".into(),
            vcpus: 2,
            memory_mib: 256,
            shared_dir: "/run/skerry/ctr_1.a/shared".into(),
            console_log: "/run/skerry/ctr_1.a/console.log".into(),
            console_log_max: 1 << 20,
            net: None,
            host_cgroup: None,
            ids: Some(VmIds {
                uid: 200_001,
                gid: 200_001,
            }),
        }
    }

    /// [`spec`] with a pod NIC.
    fn spec_with_net() -> VmSpec {
        VmSpec {
            net: Some(NetSpec {
                netns: "/var/run/netns/pod".into(),
                tap: "tapsk0123456789".into(),
                mac: "02:00:00:aa:bb:cc".into(),
            }),
            ..spec()
        }
    }

    fn plan(cgroup: Option<Cgroup>) -> JailPlan {
        let cfg = HypervisorConfig::default();
        JailPlan::new(&cfg, &spec(), "/usr/local/bin/skerry-vmm".into(), cgroup).unwrap()
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn jailer_argv_and_jail_layout() {
        let p = plan(Some(Cgroup::V1));
        assert_eq!(p.id.len(), 16);
        assert!(p.id.chars().all(|c| c.is_ascii_hexdigit()), "{}", p.id);
        let cmdline = spec().kernel_cmdline(None);
        assert!(cmdline.ends_with(" skerry.x=1") && !cmdline.contains("tsc_early_khz"));
        let expected = format!(
            "--id {id} --exec-file /usr/local/bin/skerry-vmm --uid 200001 --gid 200001 \
             --chroot-base-dir /srv/skerry-jail --new-pid-ns --rlimit-fsize 285212672 --copy-libs \
             --device /dev/kvm \
             --file /var/lib/skerry/guest/vmlinuz --file /var/lib/skerry/guest/initramfs.img \
             --bind-dir /run/skerry/.v/0123456789abcdef/vm \
             --cgroup-version v1 --parent-cgroup skerry -- \
             --kernel /vmlinuz --initrd /initramfs.img",
            id = p.id
        );
        let args = strings(jailer_args(&p));
        assert_eq!(args[..31].join(" "), expected);
        assert_eq!(
            args[31..],
            [
                "--cmdline",
                &cmdline,
                "--memory",
                "256",
                "--vcpus",
                "2",
                "--vsock-cid",
                "3",
                "--vsock-uds",
                "/vm/vsock.sock",
                "--api-sock",
                "/vm/api.sock",
                "--fs-socket",
                "/vm/fs.sock",
                "--fs-tag",
                "skerryfs",
            ]
        );
        assert_eq!(
            p.host_sock(VSOCK_SOCK),
            Path::new("/run/skerry/.v/0123456789abcdef/vm/vsock.sock")
        );
        assert_eq!(
            p.jail_vm_dir(),
            Path::new("/srv/skerry-jail/skerry-vmm").join(&p.id)
        );
        assert_eq!(
            p.cgroup_dir(),
            Some(Path::new("/sys/fs/cgroup/pids/skerry").join(&p.id))
        );
        let v2 = plan(Some(Cgroup::V2));
        assert_eq!(
            v2.cgroup_dir(),
            Some(Path::new("/sys/fs/cgroup/skerry").join(&p.id))
        );
        assert!(strings(jailer_args(&v2))
            .join(" ")
            .contains("--cgroup-version v2 --parent-cgroup skerry --"));
        let none = plan(None);
        assert_eq!(none.cgroup_dir(), None);
        assert!(!strings(jailer_args(&none)).contains(&"--cgroup-version".to_string()));
        assert!(!strings(jailer_args(&none)).join(" ").contains("rate-limit"));
    }

    #[test]
    fn rate_limits_reach_the_vmm_for_each_direction() {
        let cfg = HypervisorConfig {
            net_rate_limit_mib_per_sec: 100,
            vsock_rate_limit_mib_per_sec: 8,
            ..HypervisorConfig::default()
        };
        let with_net = spec_with_net();
        let p = JailPlan::new(&cfg, &with_net, "/x/skerry-vmm".into(), None).unwrap();
        let args = strings(jailer_args(&p));
        let at = args.iter().position(|a| a == "--fs-tag").unwrap() + 2;
        assert_eq!(
            args[at..],
            [
                "--vsock-rx-rate-limit",
                "8M",
                "--vsock-tx-rate-limit",
                "8M",
                "--net-tap",
                "tapsk0123456789",
                "--net-mac",
                "02:00:00:aa:bb:cc",
                "--net-rx-rate-limit",
                "100M",
                "--net-tx-rate-limit",
                "100M",
            ]
        );
        // Without a NIC there is no net limit to pass (the VMM would refuse it).
        let p = JailPlan::new(&cfg, &spec(), "/x/skerry-vmm".into(), None).unwrap();
        let args = strings(jailer_args(&p)).join(" ");
        assert!(
            args.ends_with("--vsock-rx-rate-limit 8M --vsock-tx-rate-limit 8M"),
            "{args}"
        );
        assert!(!args.contains("--net-"), "{args}");
    }

    #[test]
    fn the_jailers_cgroup_lies_below_the_sandboxs_host_cgroup() {
        let cfg = HypervisorConfig::default();
        let overhead = super::super::cgroup::HostOverhead::from_config(&cfg);
        let spec = VmSpec {
            host_cgroup: Some(super::super::HostCgroup {
                path: "/kubepods/pod1/c1".into(),
                vcpus: 2,
                memory_mib: 256,
                overhead,
                memory_limit: None,
                cpu_quota: None,
            }),
            ..spec()
        };
        let p = JailPlan::new(&cfg, &spec, "/x/skerry-vmm".into(), Some(Cgroup::V1)).unwrap();
        assert!(strings(jailer_args(&p))
            .join(" ")
            .contains("--cgroup-version v1 --parent-cgroup kubepods/pod1/c1 --"));
        assert_eq!(
            p.cgroup_dir(),
            Some(Path::new("/sys/fs/cgroup/pids/kubepods/pod1/c1").join(&p.id))
        );
    }

    #[test]
    fn a_pod_nic_puts_the_vmm_in_the_pod_netns_on_its_tap() {
        let cfg = HypervisorConfig::default();
        let with_net = spec_with_net();
        let p = JailPlan::new(&cfg, &with_net, "/x/skerry-vmm".into(), None).unwrap();
        let args = strings(jailer_args(&p)).join(" ");
        let (jail, vmm) = args.split_once(" -- ").unwrap();
        assert!(
            jail.ends_with("--netns /var/run/netns/pod --device /dev/net/tun"),
            "{jail}"
        );
        assert!(
            vmm.ends_with("--net-tap tapsk0123456789 --net-mac 02:00:00:aa:bb:cc"),
            "{vmm}"
        );
        let without = strings(jailer_args(&plan(None))).join(" ");
        assert!(!without.contains("--netns") && !without.contains("--net-tap"));
    }

    #[test]
    fn jail_id_follows_the_run_dir() {
        let cfg = HypervisorConfig::default();
        let vmm = PathBuf::from("/x/skerry-vmm");
        let a = JailPlan::new(&cfg, &spec(), vmm.clone(), None).unwrap();
        let other = VmSpec {
            run_dir: "/run/other/.v/0123456789abcdef".into(),
            ..spec()
        };
        let b = JailPlan::new(&cfg, &other, vmm, None).unwrap();
        assert_ne!(a.id, b.id, "two state roots never share a jail");
    }

    #[test]
    fn jail_names_must_not_clash() {
        let cfg = HypervisorConfig::default();
        let vmm = PathBuf::from("/x/skerry-vmm");
        for (kernel, initrd) in [
            ("/a/img", "/b/img"),
            ("/a/vm", "/b/initrd"),
            ("/a/skerry-vmm", "/b/initrd"),
            ("/a/kernel", "/b/dev"),
        ] {
            let s = VmSpec {
                kernel: kernel.into(),
                initrd: initrd.into(),
                ..spec()
            };
            let err = JailPlan::new(&cfg, &s, vmm.clone(), None).unwrap_err();
            assert!(matches!(err, HypervisorError::JailName(_)), "{err}");
        }
        let long = VmSpec {
            run_dir: PathBuf::from(format!("/run/{}", "x".repeat(80))),
            ..spec()
        };
        assert!(matches!(
            JailPlan::new(&cfg, &long, vmm, None),
            Err(HypervisorError::SocketPathTooLong(_))
        ));
    }

    #[test]
    fn leftovers_named_by_the_record_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let jail = tmp.path().join("jail/skerry-vmm/abc");
        let cgroup = tmp.path().join("cg/skerry/abc");
        std::fs::create_dir_all(run_dir.join(SOCK_DIR)).unwrap();
        std::fs::write(run_dir.join(SOCK_DIR).join(API_SOCK), b"").unwrap();
        std::fs::create_dir_all(jail.join("root/dev")).unwrap();
        std::fs::write(jail.join("root/vmlinuz"), b"k").unwrap();
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(run_dir.join("console.log"), b"kept").unwrap();
        let record = JailRecord {
            jail: jail.clone(),
            cgroup: Some(cgroup.clone()),
        };
        std::fs::write(
            run_dir.join(JAIL_RECORD),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        remove_leftovers(&run_dir).unwrap();
        for gone in [
            run_dir.join(SOCK_DIR),
            run_dir.join(JAIL_RECORD),
            jail,
            cgroup,
        ] {
            assert!(!gone.exists(), "{} is left", gone.display());
        }
        assert!(
            run_dir.join("console.log").exists(),
            "nothing else is removed"
        );
        remove_leftovers(&run_dir).unwrap();
        std::fs::write(run_dir.join(JAIL_RECORD), b"{").unwrap();
        let err = remove_leftovers(&run_dir).unwrap_err().to_string();
        assert!(err.contains("jail.json"), "{err}");
    }

    #[test]
    fn host_cgroup_api() {
        assert_eq!(host_cgroup(CgroupLayout::V2, false), Some(Cgroup::V2));
        assert_eq!(host_cgroup(CgroupLayout::Hybrid, true), Some(Cgroup::V1));
        assert_eq!(host_cgroup(CgroupLayout::V1, true), Some(Cgroup::V1));
        assert_eq!(host_cgroup(CgroupLayout::V1, false), None);
        assert_eq!(host_cgroup(CgroupLayout::None, false), None);
    }

    #[test]
    fn exit_statuses_map_to_vm_exits() {
        use skerry_vmm::exit::{
            EXIT_GUEST_CRASH, EXIT_POWEROFF, EXIT_RESET, EXIT_STOPPED, EXIT_VMM_ERROR,
        };
        let code = |c| classify_exit(ProcExit::Code(c));
        assert_eq!(code(EXIT_POWEROFF), VmExit::Poweroff);
        assert_eq!(code(EXIT_RESET), VmExit::Reset);
        assert_eq!(code(EXIT_GUEST_CRASH), VmExit::Crashed);
        assert_eq!(code(EXIT_STOPPED), VmExit::Stopped);
        assert_eq!(code(EXIT_VMM_ERROR), VmExit::Exited(1));
        // The jailer passes a signal death of the VMM on as 128 + N.
        assert_eq!(code(137), VmExit::Killed(9));
        assert_eq!(code(159), VmExit::Killed(31));
        assert_eq!(
            classify_exit(ProcExit::Signal(15)),
            VmExit::Killed(15),
            "the jailer itself killed"
        );
        assert_eq!(classify_exit(ProcExit::Unknown), VmExit::Exited(-1));
    }
}
