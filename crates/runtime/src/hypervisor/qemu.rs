//! QEMU backend: `-M microvm` with virtio-mmio devices described in ACPI,
//! virtio-fs through `virtiofsd` and vsock through `vhost-device-vsock`
//! (vhost-user, so guest memory is a shared memfd).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::cgroup::{self, VmCgroup};
use super::confine::{
    check_access, give_to, guest_ram_file, make_vm_dir, spawn_confined, Access, Confinement,
};
use super::console_log::ConsoleLog;
use super::process::{resolve, start_failed, wait_for_socket, ProcExit, Process};
use super::virtiofsd::{pid_file, spawn_virtiofsd, stop_virtiofsd};
use super::{HypervisorError, Vm, VmExit, VmSpec, GUEST_CID, MAX_SOCKET_PATH};
use crate::config::HypervisorConfig;
use crate::net::NetSpec;

/// How long the vhost-user backends get to create their sockets.
const BACKEND_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long QEMU gets to answer on QMP.
const QMP_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGTERM → SIGKILL grace for QEMU.
const QEMU_GRACE: Duration = Duration::from_secs(2);
/// SIGTERM → SIGKILL grace for vhost-device-vsock.
const BACKEND_GRACE: Duration = Duration::from_secs(1);
/// Longest QMP line accepted.
const MAX_QMP_LINE: usize = 64 * 1024;
/// TCG translation cache in MiB: a cap on what QEMU keeps resident, above
/// what booting skerry's kernel and creating a container translate (~46 MiB).
/// A full cache is flushed and everything retranslated: at 40 MiB that flush
/// fell in the container's creation and cost ~110 ms of it
/// (docs/architecture.md, "Memory of an idle pod").
const TCG_TB_SIZE_MIB: u32 = 64;
/// The CPU a TCG guest sees: QEMU's `max` without ERMS. With ERMS the guest's
/// kernel (memcpy, copy to and from user space, clear_page) and its libc copy
/// with `rep movsb`, which TCG runs one byte per step; without it they move 8
/// bytes a step or use vector loops. Reading 2 MB from the share went from
/// 150 to 40 ms, exec'ing a binary from it from 80 to 30 ms
/// (docs/architecture.md, "Guest image and kernel"). KVM guests get the host's CPU.
const TCG_CPU: &str = "max,erms=off";

/// QEMU's seccomp sandbox: no obsolete syscalls, no setuid/setgid or
/// capability changes, no fork/exec, no scheduler/affinity/rlimit changes.
/// The descriptor number of the pod's tap in QEMU.
const QEMU_TAP_FD: i32 = 3;

const QEMU_SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Names of the files this backend creates in the run dir: virtiofsd's
/// socket (virtiofsd runs as root), and the VM's own directory for the
/// sockets that QEMU and vhost-device-vsock (running as the VM's uid) create.
const FS_SOCK: &str = "fs.sock";
const VM_DIR: &str = "vm";
const VSOCK_CTL_SOCK: &str = "vsock-ctl.sock";
const VSOCK_UDS: &str = "vsock.sock";
const QMP_SOCK: &str = "qmp.sock";

/// Paths of the sockets in the run dir.
#[derive(Debug, Clone)]
struct Sockets {
    fs: PathBuf,
    vm_dir: PathBuf,
    vsock_ctl: PathBuf,
    vsock_uds: PathBuf,
    /// Where the guest's announcement arrives (a guest-initiated connection to
    /// [`skerry_protocol::AGENT_READY_VSOCK_PORT`]).
    agent_ready: PathBuf,
    qmp: PathBuf,
}

impl Sockets {
    fn new(run_dir: &Path) -> Result<Self, HypervisorError> {
        let vm_dir = run_dir.join(VM_DIR);
        let s = Sockets {
            fs: run_dir.join(FS_SOCK),
            vsock_ctl: vm_dir.join(VSOCK_CTL_SOCK),
            vsock_uds: vm_dir.join(VSOCK_UDS),
            agent_ready: vm_dir.join(format!(
                "{VSOCK_UDS}_{}",
                skerry_protocol::AGENT_READY_VSOCK_PORT
            )),
            qmp: vm_dir.join(QMP_SOCK),
            vm_dir,
        };
        for p in s.all() {
            // The vsock backend appends `_<port>` for guest-initiated connections.
            if p.as_os_str().len() + 11 > MAX_SOCKET_PATH {
                return Err(HypervisorError::SocketPathTooLong(p.to_path_buf()));
            }
        }
        Ok(s)
    }

    fn all(&self) -> [&Path; 4] {
        [&self.fs, &self.vsock_ctl, &self.vsock_uds, &self.qmp]
    }

    /// Removes the sockets, the VM's directory (with whatever its uid left
    /// there) and virtiofsd's pid file; missing files are fine.
    fn remove(&self) -> Result<(), HypervisorError> {
        let pid_file = pid_file(&self.fs);
        let mut result = Ok(());
        for p in [&self.fs, &pid_file, &self.vm_dir] {
            let removed = if p == &self.vm_dir {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => result = Err(HypervisorError::RunDir(p.to_path_buf(), e)),
            }
        }
        result
    }
}

/// What QEMU is told to do; turned into arguments by [`qemu_args`].
#[derive(Debug, Clone)]
struct QemuPlan {
    kvm: bool,
    vcpus: u32,
    memory_mib: u32,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
    sockets: Sockets,
    net: Option<NetSpec>,
    /// Largest log of QEMU and vhost-device-vsock, bytes (their RLIMIT_FSIZE;
    /// QEMU's also allows for the guest RAM's memfd).
    log_max: u64,
}

/// A running QEMU microvm and its device backends.
pub(crate) struct QemuVm {
    id: String,
    qemu: Option<Process>,
    virtiofsd: Option<Process>,
    vsock: Option<Process>,
    console: Option<ConsoleLog>,
    cgroup: Option<VmCgroup>,
    sockets: Sockets,
    qmp_reader: Option<JoinHandle<Option<String>>>,
    shutdown_reason: Option<String>,
    exit: Option<VmExit>,
    stopped: bool,
    /// Listens for the agent's announcement until it came; `None` after.
    agent_ready: tokio::sync::Mutex<Option<tokio::net::UnixListener>>,
}

/// Boots the VM (with KVM or TCG); on failure stops whatever was started.
pub(crate) async fn launch(
    cfg: &HypervisorConfig,
    spec: &VmSpec,
    kvm: bool,
) -> Result<QemuVm, HypervisorError> {
    let started = Instant::now();
    let qemu_bin = resolve("qemu", &cfg.qemu_path)?;
    let virtiofsd_bin = resolve("virtiofsd", &cfg.virtiofsd_path)?;
    let vsock_bin = resolve("vhost-device-vsock", &cfg.vsock_backend_path)?;
    spec.check()?;
    let sockets = Sockets::new(&spec.run_dir)?;
    sockets.remove()?;

    let tsc_khz = if kvm { None } else { host_tsc_khz() };
    let cmdline = spec.kernel_cmdline(tsc_khz);
    let plan = QemuPlan {
        kvm,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline,
        sockets: sockets.clone(),
        net: spec.net.clone(),
        log_max: cfg.helper_log_max_kib * 1024,
    };

    let cgroup = spec
        .host_cgroup
        .as_ref()
        .map(|c| VmCgroup::create(&spec.run_dir, c))
        .transpose()?;
    let mut vm = QemuVm {
        id: spec.id.clone(),
        qemu: None,
        virtiofsd: None,
        vsock: None,
        console: None,
        cgroup,
        sockets,
        qmp_reader: None,
        shutdown_reason: None,
        exit: None,
        stopped: false,
        agent_ready: tokio::sync::Mutex::new(None),
    };
    match vm
        .start(spec, &plan, &qemu_bin, &virtiofsd_bin, &vsock_bin)
        .await
    {
        Ok(()) => {
            tracing::info!(
                sandbox = %spec.id,
                accel = if kvm { "kvm" } else { "tcg" },
                pids = ?vm.pids(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "qemu started"
            );
            Ok(vm)
        }
        Err(e) => {
            let _ = vm.stop().await;
            Err(e)
        }
    }
}

impl QemuVm {
    /// Resolves once the agent has announced that its API is up (at once after
    /// the first time). A host connection while the guest driver sets up the
    /// device kills vhost-device-vsock's vring worker for good (see
    /// [`skerry_protocol::AGENT_READY_VSOCK_PORT`]); after the announcement the
    /// rings are ready. Cancel-safe: a caller's timeout leaves the listener in
    /// place. A guest that announces early only breaks its own back end.
    async fn agent_announced(&self) {
        let mut ready = self.agent_ready.lock().await;
        let Some(listener) = ready.as_ref() else {
            return;
        };
        match listener.accept().await {
            Ok(_) => tracing::debug!(sandbox = %self.id, "agent announced its API"),
            // The listener is unusable; connecting (and the caller's deadline) decides.
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "waiting for the agent's announcement")
            }
        }
        *ready = None;
        let _ = std::fs::remove_file(&self.sockets.agent_ready);
    }

    async fn start(
        &mut self,
        spec: &VmSpec,
        plan: &QemuPlan,
        qemu_bin: &Path,
        virtiofsd_bin: &Path,
        vsock_bin: &Path,
    ) -> Result<(), HypervisorError> {
        let run = &spec.run_dir;
        let ids = spec.ids;
        check_access("run dir", run, ids, Access::Execute)?;
        check_access("qemu binary", qemu_bin, ids, Access::Execute)?;
        check_access("vhost-device-vsock binary", vsock_bin, ids, Access::Execute)?;
        check_access("guest kernel", &spec.kernel, ids, Access::Read)?;
        check_access("guest initramfs", &spec.initrd, ids, Access::Read)?;
        if plan.kvm {
            check_access("KVM device", Path::new("/dev/kvm"), ids, Access::ReadWrite)?;
        }
        self.sockets.remove()?;
        make_vm_dir(&self.sockets.vm_dir, ids)?;
        // The vsock back end (the VM's uid) connects here for the guest.
        let ready = &self.sockets.agent_ready;
        let listener = tokio::net::UnixListener::bind(ready)
            .map_err(|e| HypervisorError::RunDir(ready.clone(), e))?;
        give_to(ready, ids)?;
        *self.agent_ready.get_mut() = Some(listener);

        // Each helper joins the host cgroup right after it starts: the
        // back ends serve nothing before QEMU runs the guest, and QEMU starts
        // paused (-S) until `qmp_handshake` resumes it.
        let log = run.join("virtiofsd.log");
        let virtiofsd = self.virtiofsd.insert(spawn_virtiofsd(
            virtiofsd_bin,
            &spec.shared_dir,
            &self.sockets.fs,
            &log,
        )?);
        cgroup::place(self.cgroup.as_ref(), virtiofsd)?;

        let mut cmd = Command::new(vsock_bin);
        cmd.arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&self.sockets.vsock_ctl)
            .arg("--uds-path")
            .arg(&self.sockets.vsock_uds);
        let log = run.join("vsock.log");
        let alone = Confinement {
            ids,
            file_size_max: Some(plan.log_max),
        };
        let vsock = self.vsock.insert(spawn_confined(
            alone,
            "vhost-device-vsock",
            vsock_bin,
            cmd,
            None,
            &log,
        )?);
        cgroup::place(self.cgroup.as_ref(), vsock)?;

        let deadline = Instant::now() + BACKEND_READY_TIMEOUT;
        for (proc_, sock, log) in [
            (&self.virtiofsd, &self.sockets.fs, run.join("virtiofsd.log")),
            (&self.vsock, &self.sockets.vsock_ctl, run.join("vsock.log")),
        ] {
            let proc_ = proc_.as_ref().expect("spawned above");
            wait_for_socket(proc_, sock, &log, deadline).await?;
        }
        // QEMU connects to it as the VM's uid.
        give_to(&self.sockets.fs, ids)?;

        let qemu_log = run.join("qemu.log");
        let (console, console_pipe) = ConsoleLog::create(&spec.console_log, spec.console_log_max)?;
        self.console = Some(console);
        let mut cmd = Command::new(qemu_bin);
        cmd.args(qemu_args(plan));
        tracing::debug!(sandbox = %spec.id, args = ?qemu_args(plan), "starting qemu");
        if let Some(net) = &spec.net {
            // The tap is only visible in the pod's namespace: it is opened
            // there, by us, and QEMU gets the open descriptor; it needs
            // neither /dev/net/tun nor the pod's namespace.
            let tap =
                crate::net::run_in_netns(&net.netns, || skerry_container::sys::open_tap(&net.tap))?
                    .map_err(|source| HypervisorError::Tap {
                        tap: net.tap.clone(),
                        source,
                    })?;
            skerry_container::sys::pass_fd_on_exec(cmd.as_std_mut(), tap, QEMU_TAP_FD);
        }
        // QEMU's stdout is the console; its stderr goes to its log.
        let conf = Confinement {
            ids,
            file_size_max: Some(plan.log_max + guest_ram_file(plan.memory_mib)),
        };
        let qemu = self.qemu.insert(spawn_confined(
            conf,
            "qemu",
            qemu_bin,
            cmd,
            Some(console_pipe),
            &qemu_log,
        )?);
        cgroup::place(self.cgroup.as_ref(), qemu)?;
        let reader = qmp_handshake(qemu, &self.sockets.qmp, &qemu_log).await?;
        self.qmp_reader = Some(reader);
        Ok(())
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        [&self.qemu, &self.virtiofsd, &self.vsock]
            .into_iter()
            .filter_map(Option::as_ref)
    }
}

/// Connects QMP, negotiates capabilities, resumes the VM (QEMU starts paused,
/// `-S`) and returns a task that reports the last SHUTDOWN reason once QEMU
/// closes the socket.
async fn qmp_handshake(
    qemu: &Process,
    path: &Path,
    log: &Path,
) -> Result<JoinHandle<Option<String>>, HypervisorError> {
    let deadline = Instant::now() + QMP_READY_TIMEOUT;
    let stream = loop {
        if let Some(exit) = qemu.exited() {
            return Err(start_failed("qemu", &exit.to_string(), log));
        }
        if let Ok(s) = UnixStream::connect(path).await {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(start_failed("qemu", "QMP socket did not answer", log));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let fail = |what: &str| start_failed("qemu", what, log);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let exchange = async {
        let greeting = read_line_bounded(&mut reader).await?;
        if !greeting.as_deref().is_some_and(|g| g.contains("\"QMP\"")) {
            return Err("no QMP greeting");
        }
        for (command, refused) in [
            ("qmp_capabilities", "QMP refused capabilities"),
            ("cont", "QMP refused to resume the VM"),
        ] {
            write
                .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
                .await
                .map_err(|_| "QMP write failed")?;
            loop {
                match read_line_bounded(&mut reader).await? {
                    None => return Err("QMP closed"),
                    Some(l) if l.contains("\"return\"") => break,
                    Some(l) if l.contains("\"error\"") => return Err(refused),
                    Some(_) => {}
                }
            }
        }
        Ok(())
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(what)) => {
            // QEMU may be dying; give it a moment so that its log says why.
            return Err(match qemu.wait_timeout(Duration::from_millis(200)).await {
                Some(exit) => fail(&format!("{what}; qemu {exit}")),
                None => fail(what),
            });
        }
        Err(_) => return Err(fail("QMP handshake timed out")),
    }
    Ok(tokio::spawn(async move {
        let _write = write; // keep the connection open
        let mut reason = None;
        while let Ok(Some(line)) = read_line_bounded(&mut reader).await {
            if let Some(r) = parse_shutdown_event(&line) {
                reason = Some(r);
            }
        }
        reason
    }))
}

/// Reads one `\n`-terminated line of at most [`MAX_QMP_LINE`] bytes; `None` at EOF.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<String>, &'static str> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(|_| "QMP read failed")?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > MAX_QMP_LINE {
            return Err("QMP line too long");
        }
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// The `reason` of a QMP `SHUTDOWN` event line, if it is one.
fn parse_shutdown_event(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("event")?.as_str()? != "SHUTDOWN" {
        return None;
    }
    Some(v.get("data")?.get("reason")?.as_str()?.to_string())
}

/// Maps QEMU's exit and the last SHUTDOWN reason to a [`VmExit`].
fn classify_exit(exit: ProcExit, reason: Option<&str>) -> VmExit {
    match exit {
        ProcExit::Signal(sig) => VmExit::Killed(sig),
        ProcExit::Code(0) => match reason {
            Some("guest-shutdown") => VmExit::Poweroff,
            Some("guest-reset") | Some("guest-panic") => VmExit::Reset,
            Some(r) if r.starts_with("host-") => VmExit::Stopped,
            _ => VmExit::Exited(0),
        },
        ProcExit::Code(c) => VmExit::Exited(c),
        ProcExit::Unknown => VmExit::Exited(-1),
    }
}

/// Escapes a value for QEMU's comma-separated option syntax.
fn opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The QEMU command line (without the binary).
fn qemu_args(plan: &QemuPlan) -> Vec<OsString> {
    let s = &plan.sockets;
    let mut args: Vec<String> = vec![
        "-M".into(),
        "microvm,acpi=on,pit=off,pic=off,rtc=on,isa-serial=on,memory-backend=mem".into(),
        "-accel".into(),
        if plan.kvm {
            "kvm".into()
        } else {
            format!("tcg,tb-size={TCG_TB_SIZE_MIB}")
        },
        "-cpu".into(),
        if plan.kvm { "host" } else { TCG_CPU }.into(),
        "-m".into(),
        format!("{}M", plan.memory_mib),
        "-smp".into(),
        plan.vcpus.to_string(),
        "-object".into(),
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            plan.memory_mib
        ),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // Paused until every process is in the host cgroup (qmp_handshake resumes it).
        "-S".into(),
        "-sandbox".into(),
        QEMU_SANDBOX.into(),
        // stdout is the pipe of the capped console log (console_log.rs).
        "-chardev".into(),
        "stdio,id=console,signal=off".into(),
        "-serial".into(),
        "chardev:console".into(),
        "-chardev".into(),
        format!("socket,id=fs,path={}", opt_path(&s.fs)),
        "-device".into(),
        format!(
            "vhost-user-fs-device,chardev=fs,tag={}",
            skerry_protocol::SHARED_FS_TAG
        ),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", opt_path(&s.vsock_ctl)),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
        // The guest reports freed 2 MiB blocks (virtio_balloon is in the image);
        // QEMU punches them out of the memfd, so the host gets them back.
        "-device".into(),
        "virtio-balloon-device,free-page-reporting=on".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt_path(&s.qmp)),
        "-kernel".into(),
        plan.kernel.to_string_lossy().into_owned(),
        "-initrd".into(),
        plan.initrd.to_string_lossy().into_owned(),
        "-append".into(),
        plan.cmdline.clone(),
    ];
    if let Some(net) = &plan.net {
        args.extend([
            "-netdev".into(),
            format!("tap,id=net0,fd={QEMU_TAP_FD}"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    args.into_iter().map(OsString::from).collect()
}

/// Host TSC frequency in kHz from /proc/cpuinfo, for `tsc_early_khz=` under TCG.
fn host_tsc_khz() -> Option<u64> {
    parse_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// The first `cpu MHz` line of a cpuinfo text, in kHz.
fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split_once(':')?.1.trim().parse().ok()?;
    (mhz > 0.0 && mhz < 1.0e6).then(|| (mhz * 1000.0).round() as u64)
}

#[async_trait::async_trait]
impl Vm for QemuVm {
    async fn connect(&self, port: u32) -> Result<UnixStream, HypervisorError> {
        match &self.qemu {
            Some(q) if q.exited().is_none() && !self.stopped => {}
            _ => return Err(HypervisorError::NotRunning(self.id.clone())),
        }
        self.agent_announced().await;
        super::connect_hybrid_vsock(&self.sockets.vsock_uds, port).await
    }

    fn vsock_path(&self) -> PathBuf {
        self.sockets.vsock_uds.clone()
    }

    fn pids(&self) -> Vec<u32> {
        self.processes().flat_map(Process::pids).collect()
    }

    async fn wait(&mut self) -> VmExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let status = match &self.qemu {
            Some(q) => q.wait().await,
            None => ProcExit::Unknown,
        };
        if let Some(reader) = &mut self.qmp_reader {
            // QEMU has exited, so its QMP socket is at EOF or about to be.
            if let Ok(Ok(reason)) = tokio::time::timeout(Duration::from_secs(1), reader).await {
                self.shutdown_reason = reason;
            }
            self.qmp_reader = None;
        }
        let exit = classify_exit(status, self.shutdown_reason.as_deref());
        self.exit = Some(exit);
        exit
    }

    async fn stop(&mut self) -> Result<(), HypervisorError> {
        if let Some(q) = &self.qemu {
            q.terminate(QEMU_GRACE).await;
        }
        // virtiofsd exits by itself once QEMU disconnects; vhost-device-vsock does not.
        if let Some(p) = &self.virtiofsd {
            stop_virtiofsd(p).await;
        }
        if let Some(p) = &self.vsock {
            p.terminate(BACKEND_GRACE).await;
        }
        if self.qemu.is_some() && self.exit.is_none() {
            self.wait().await;
        }
        if let Some(reader) = self.qmp_reader.take() {
            reader.abort();
        }
        if let Some(console) = &mut self.console {
            console.finish().await;
        }
        if !self.stopped {
            tracing::info!(sandbox = %self.id, exit = ?self.exit, "vm stopped");
        }
        self.stopped = true;
        let cgroup = self.cgroup.as_ref().map_or(Ok(()), VmCgroup::remove);
        self.sockets.remove()?;
        Ok(cgroup?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> QemuPlan {
        QemuPlan {
            kvm: false,
            vcpus: 2,
            memory_mib: 256,
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initramfs.img".into(),
            cmdline: "console=ttyS0".into(),
            sockets: Sockets::new(Path::new("/r,x")).unwrap(),
            net: None,
            log_max: 1 << 20,
        }
    }

    #[test]
    fn command_line_has_shared_memory_and_vhost_user_devices() {
        let args: Vec<String> = qemu_args(&plan())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-M microvm,acpi=on"), "{joined}");
        assert!(joined.contains("-accel tcg,tb-size=64"), "{joined}");
        assert!(joined.contains("-device virtio-balloon-device,free-page-reporting=on"));
        assert!(joined.contains("-cpu max,erms=off"), "{joined}");
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(joined.contains("memory-backend=mem"));
        assert!(joined.contains("vhost-user-fs-device,chardev=fs,tag=skerryfs"));
        assert!(joined.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(joined.contains("-chardev stdio,id=console,signal=off -serial chardev:console"));
        assert!(
            joined.contains("socket,id=fs,path=/r,,x/fs.sock"),
            "commas escaped"
        );
        assert!(joined.contains("-smp 2"));
        assert!(joined.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(joined.contains("socket,id=vsock,path=/r,,x/vm/vsock-ctl.sock"));
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[append + 1], "console=ttyS0");
        let mut kvm = plan();
        kvm.kvm = true;
        let joined = qemu_args(&kvm)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
        assert!(!joined.contains("tb-size"));
        assert!(!joined.contains("-netdev"));
        let mut net = plan();
        net.net = Some(NetSpec {
            netns: "/var/run/netns/pod".into(),
            tap: "tapsk0123456789".into(),
            mac: "02:00:00:aa:bb:cc".into(),
        });
        let joined = qemu_args(&net)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.contains(
            "-netdev tap,id=net0,fd=3 \
             -device virtio-net-device,netdev=net0,mac=02:00:00:aa:bb:cc"
        ));
    }

    #[test]
    fn socket_paths_are_bounded() {
        assert!(Sockets::new(Path::new("/run/skerry/abc")).is_ok());
        let long = format!("/run/{}", "x".repeat(90));
        assert!(matches!(
            Sockets::new(Path::new(&long)),
            Err(HypervisorError::SocketPathTooLong(_))
        ));
    }

    #[test]
    fn cpu_khz_from_cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.122\ncache size\t: 512 KB\n\nprocessor\t: 1\ncpu MHz\t\t: 1800.000\n";
        assert_eq!(parse_cpu_khz(text), Some(2_596_122));
        assert_eq!(parse_cpu_khz("processor : 0\n"), None);
        assert_eq!(parse_cpu_khz("cpu MHz : fast\n"), None);
    }

    #[test]
    fn exits_are_classified_from_qmp_reason() {
        let reason = |l: &str| parse_shutdown_event(l);
        let off = reason(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#,
        );
        assert_eq!(off.as_deref(), Some("guest-shutdown"));
        assert_eq!(reason(r#"{"event": "RESUME"}"#), None);
        assert_eq!(reason("not json"), None);
        assert_eq!(
            classify_exit(ProcExit::Code(0), off.as_deref()),
            VmExit::Poweroff
        );
        assert_eq!(
            classify_exit(ProcExit::Code(0), Some("guest-reset")),
            VmExit::Reset
        );
        assert_eq!(
            classify_exit(ProcExit::Code(0), Some("host-signal")),
            VmExit::Stopped
        );
        assert_eq!(classify_exit(ProcExit::Code(0), None), VmExit::Exited(0));
        assert_eq!(classify_exit(ProcExit::Code(1), None), VmExit::Exited(1));
        assert_eq!(classify_exit(ProcExit::Signal(9), None), VmExit::Killed(9));
    }

    #[tokio::test]
    async fn bounded_lines() {
        let data: &[u8] = b"{\"QMP\": {}}\nsecond";
        let mut r = BufReader::new(data);
        assert_eq!(
            read_line_bounded(&mut r).await.unwrap().as_deref(),
            Some("{\"QMP\": {}}\n")
        );
        assert_eq!(
            read_line_bounded(&mut r).await.unwrap().as_deref(),
            Some("second")
        );
        assert_eq!(read_line_bounded(&mut r).await.unwrap(), None);
        let long = vec![b'a'; MAX_QMP_LINE + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(read_line_bounded(&mut r).await.is_err());
    }
}
