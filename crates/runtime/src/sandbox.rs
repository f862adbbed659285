//! One sandbox: a VM with the agent connected and the containers created in
//! it (one for the CLI, a pod's for the shim).
//!
//! `Sandbox::boot`, `Sandbox::add_container` and `Sandbox::create` are
//! all-or-nothing: if a step fails, everything it had started (VM, device
//! back ends, rootfs mounts) is undone before the error is returned.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use oci_spec::runtime::{LinuxResources, Spec};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::{
    agent_client::{AgentConn, AgentError, ExitStatus, Proc},
    bundle::Bundle,
    config::{Config, HypervisorConfig, Isolation, PolicyConfig},
    hypervisor::{
        cgroup::{self as host_cgroup, HostCgroup, HostCgroupError, HostOverhead},
        identity::{IdLease, IdRange, IdentityError, LEASE_DIR},
        HypervisorError, Vm, VmExit, VmSpec,
    },
    mac_labels::{self, KernelLsms},
    mounts::HostMounts,
    net::{self, NetError, NetSpec, PodNetwork},
    policy::{self, PolicyError},
    portforward::{self, PortForward},
    share::{self, ShareError},
    stalled_boots,
    state::{ProcessId, StateStore},
    vm_namespaces::{self, VmNamespaceError},
};

/// Pause between attempts to reach the booting agent.
const AGENT_POLL: Duration = Duration::from_millis(5);

/// How long a graceful guest shutdown may take before the VM is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Failure to bring up or drive a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The VM could not be started.
    #[error("cannot start the sandbox VM")]
    Launch(#[source] HypervisorError),
    /// The agent did not answer in time.
    #[error("guest agent did not answer within {0:?}; last: {2} (guest console: {1})")]
    AgentTimeout(Duration, PathBuf, String),
    /// An agent call failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The spec breaks the tenant policy floor.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The spec asks for namespaces a VM cannot give.
    #[error(transparent)]
    Namespaces(#[from] VmNamespaceError),
    /// Sharing host paths with the guest failed.
    #[error(transparent)]
    Shared(#[from] ShareError),
    /// Connecting the VM to the pod's network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The VM's own uid could not be leased.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A directory of the sandbox could not be made.
    #[error("cannot create {path}")]
    Dir {
        /// The rootfs.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VM stopped while the container ran.
    #[error("sandbox VM exited unexpectedly: {0:?}")]
    VmExited(VmExit),
}

/// Starts VMs; the real one is [`ConfiguredLauncher`], tests use a fake.
#[async_trait]
pub trait VmLauncher: Send + Sync {
    /// Boots a VM as described.
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, HypervisorError>;
}

/// Sandbox sizing and image, from the config.
#[derive(Debug, Clone)]
pub struct SandboxParams {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Extra kernel parameters.
    pub kernel_params: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// How long the agent may take to answer after launch.
    pub boot_timeout: Duration,
    /// How many times to boot a VM whose agent does not answer.
    pub boot_attempts: u32,
    /// Most bytes of the guest console log.
    pub console_log_max: u64,
    /// The tenant policy floor the spec must meet.
    pub policy: PolicyConfig,
    /// What the VM's host processes may use beyond its size.
    pub host_overhead: HostOverhead,
    /// The sandbox's host cgroup (see [`SandboxParams::with_host_cgroup`]).
    pub host_cgroup: Option<HostCgroup>,
    /// Host uids (and gids) leased one per VM (`hypervisor.vm_uid_range`).
    pub vm_uid_range: IdRange,
}

impl SandboxParams {
    /// Sizing and image as the configuration file sets them.
    pub fn from_config(config: &Config) -> Self {
        Self {
            kernel: crate::image::kernel_path(&config.guest.image_dir),
            initrd: crate::image::initrd_path(&config.guest.image_dir),
            kernel_params: config.guest.kernel_params.clone(),
            vcpus: config.hypervisor.vcpus,
            memory_mib: config.hypervisor.memory_mib,
            boot_timeout: Duration::from_secs(config.hypervisor.boot_timeout_secs),
            boot_attempts: config.hypervisor.boot_attempts,
            console_log_max: config.hypervisor.console_log_max_kib * 1024,
            policy: config.policy.clone(),
            host_overhead: HostOverhead::from_config(&config.hypervisor),
            host_cgroup: None,
            vm_uid_range: config.hypervisor.vm_uid_range,
        }
    }

    /// These parameters with the host cgroup of sandbox `id`, whose (sandbox
    /// container's) spec is `spec`, for a VM of this size.
    pub fn with_host_cgroup(mut self, id: &str, spec: &Spec) -> Self {
        let size = (self.vcpus, self.memory_mib);
        self.host_cgroup = HostCgroup::for_sandbox(id, spec, size, self.host_overhead);
        self
    }
}

/// Launches VMs with the configured hypervisor.
#[derive(Debug, Clone)]
pub struct ConfiguredLauncher(pub HypervisorConfig);

#[async_trait]
impl VmLauncher for ConfiguredLauncher {
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        crate::hypervisor::launch(&self.0, spec).await
    }
}

/// Records the host processes of each VM `inner` launches in the state of
/// container `id` (`vm_processes`) as soon as they run, not only once the
/// guest answers: when the caller (monitor or shim) is killed while the guest
/// boots, `delete` still finds and stops them.
pub struct RecordingLauncher<'a> {
    /// The launcher that boots the VM.
    pub inner: &'a dyn VmLauncher,
    /// The state store holding the container.
    pub store: &'a StateStore,
    /// The container whose VM this is.
    pub id: &'a str,
}

#[async_trait]
impl VmLauncher for RecordingLauncher<'_> {
    async fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        let vm = self.inner.launch(spec).await?;
        let processes = vm.pids().into_iter().filter_map(ProcessId::of).collect();
        if let Err(e) = self.store.update(self.id, |s| s.vm_processes = processes) {
            warn!(sandbox = self.id, error = %e, "recording the VM's processes");
        }
        Ok(vm)
    }
}

/// When each phase of a sandbox start ended, counted from the VM's launch;
/// logged with the "sandbox booted" and "container created" lines (and
/// read from them by `bench/report.sh`).
#[derive(Debug, Clone, Default)]
pub struct BootTimings {
    /// The agent answered `Check` (VM launch and guest boot).
    pub agent_ready: Duration,
    /// `CreateSandbox` returned (hostname, share, network in the guest).
    pub sandbox_created: Duration,
    /// The CLI's container was created (its init waits for `start`).
    pub container_created: Duration,
}

/// A running sandbox VM and the containers created in it (one for the
/// CLI; every container of a pod for the shim).
pub struct Sandbox {
    id: String,
    vm: tokio::sync::Mutex<Box<dyn Vm>>,
    vsock_path: PathBuf,
    vm_pids: Vec<u32>,
    agent: AgentConn,
    paths: SandboxPaths,
    policy: PolicyConfig,
    /// Host bind mounts made for each container, in order.
    shared: std::sync::Mutex<HashMap<String, Vec<PathBuf>>>,
    mounts: Box<dyn HostMounts>,
    /// The VM's NIC in the pod's network namespace.
    net: Option<NetSpec>,
    /// Forwarding of the pod namespace's loopback to the guest, while the VM runs.
    portforward: std::sync::Mutex<Option<PortForward>>,
    /// The VM's own uid, released once its processes are gone.
    lease: std::sync::Mutex<Option<IdLease>>,
    /// The guest's kernel release, from the agent handshake.
    pub kernel_release: String,
    /// Where the start-up time went.
    pub timings: BootTimings,
    /// When the VM was launched.
    launched: Instant,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).finish()
    }
}

/// Where the files of sandbox `dir` live.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    /// VM sockets and logs.
    pub run_dir: PathBuf,
    /// Shared with the guest over virtio-fs: a read-only view of a small
    /// tmpfs (the share's skeleton) with each container's rootfs and
    /// volumes mounted below it.
    pub shared_dir: PathBuf,
    /// The skeleton's writable mount, which only the host sees: the host
    /// makes the share's directories and files here.
    pub share_rw: PathBuf,
    /// Guest serial console log.
    pub console_log: PathBuf,
}

/// Where a root runtime puts the VMs' run directories: outside every state
/// root, since the directories above one may deny a VM's uid the search its
/// helpers need (containerd's `/run/containerd` is 0700). Mode 0711: each
/// VM's uid reaches its own directory and lists none.
pub const VM_RUN_BASE: &str = "/run/skerry-vm";

impl SandboxPaths {
    /// The layout of container `id`'s sandbox. The VM's sockets and logs live
    /// in a short directory of their own: Unix socket paths are limited to
    /// 107 bytes, and container ids are up to 64. For a root runtime it is
    /// `VM_RUN_BASE/<hash of root and id>`, else `<root>/.v/<hash of id>`
    /// (no id starts with a dot).
    pub fn new(store: &StateStore, id: &str) -> Self {
        let dir = store.dir(id);
        let (base, key) = if nix::unistd::geteuid().is_root() {
            let mut key = store.root().as_os_str().as_encoded_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(id.as_bytes());
            (PathBuf::from(VM_RUN_BASE), key)
        } else {
            (store.root().join(".v"), id.as_bytes().to_vec())
        };
        let digest = Sha256::digest(&key);
        let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            run_dir: base.join(short),
            shared_dir: dir.join("shared"),
            share_rw: dir.join("share-rw"),
            console_log: dir.join("console.log"),
        }
    }

    /// Where container `id`'s rootfs is mounted in the shared directory.
    pub fn rootfs_mount(&self, id: &str) -> PathBuf {
        self.shared_dir.join(id).join("rootfs")
    }
}

impl Sandbox {
    /// Boots a sandbox VM for container `id` and creates that container in
    /// it (it then waits for `start`): the CLI's one-container sandbox.
    pub async fn create(
        id: &str,
        bundle: &Bundle,
        params: &SandboxParams,
        paths: &SandboxPaths,
        launcher: &dyn VmLauncher,
        mounts: Box<dyn HostMounts>,
    ) -> Result<Self, SandboxError> {
        // Checked before anything starts, and again by `add_container`.
        policy::check(&params.policy, &bundle.spec, Isolation::Vm)?;
        vm_namespaces::check(&bundle.spec)?;
        let hostname = hostname(bundle, id);
        let netns = net::netns_path(&bundle.spec);
        let params = params.clone().with_host_cgroup(id, &bundle.spec);
        let mut sandbox = Self::boot(
            id,
            &hostname,
            netns.as_deref(),
            &params,
            paths,
            launcher,
            mounts,
        )
        .await?;
        if let Err(e) = sandbox.add_container(id, bundle).await {
            sandbox.shutdown().await;
            return Err(e);
        }
        sandbox.timings.container_created = sandbox.launched.elapsed();
        info!(sandbox = id, timings = ?sandbox.timings, "container created");
        Ok(sandbox)
    }

    /// Boots the VM of sandbox `id`, connects the agent and prepares the
    /// guest (hostname, shared directory, and the network of the pod's
    /// network namespace `netns`, if any); containers are added later.
    pub async fn boot(
        id: &str,
        hostname: &str,
        netns: Option<&Path>,
        params: &SandboxParams,
        paths: &SandboxPaths,
        launcher: &dyn VmLauncher,
        mounts: Box<dyn HostMounts>,
    ) -> Result<Self, SandboxError> {
        for dir in [&paths.run_dir, &paths.shared_dir, &paths.share_rw] {
            std::fs::create_dir_all(dir).map_err(|source| SandboxError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        if let Some(base) = paths
            .run_dir
            .parent()
            .filter(|b| *b == Path::new(VM_RUN_BASE))
        {
            std::fs::set_permissions(base, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .map_err(|source| SandboxError::Dir {
                    path: base.to_path_buf(),
                    source,
                })?;
        }
        // The VM's helpers run as a uid of its own; a runtime without root
        // cannot switch uids, and they run as the caller.
        let lease = if nix::unistd::geteuid().is_root() {
            Some(IdLease::acquire(
                Path::new(LEASE_DIR),
                params.vm_uid_range,
                &paths.run_dir,
            )?)
        } else {
            None
        };
        let ids = lease.as_ref().map(IdLease::ids);
        if let Some(ids) = ids {
            // Only the VM's helpers may search it (for their sockets), and no
            // other VM's may read its logs.
            let run_dir = &paths.run_dir;
            std::os::unix::fs::chown(run_dir, None, Some(ids.gid))
                .and_then(|()| {
                    std::fs::set_permissions(
                        run_dir,
                        std::os::unix::fs::PermissionsExt::from_mode(0o710),
                    )
                })
                .map_err(|source| SandboxError::Dir {
                    path: run_dir.clone(),
                    source,
                })?;
        }
        // Its tap belongs to that uid, which QEMU or skerry-vmm attach as.
        let tap_owner = ids.map_or_else(
            || {
                (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )
            },
            |ids| (ids.uid, ids.gid),
        );
        mounts
            .mount_share(&paths.share_rw, &paths.shared_dir)
            .map_err(|source| ShareError::Mount {
                path: paths.shared_dir.clone(),
                source,
            })?;
        let unshare_dir = |mounts: &dyn HostMounts| unshare_dir(mounts, paths);
        let network = match connect_network(id, netns, tap_owner).await {
            Ok(network) => network,
            Err(e) => {
                unshare_dir(mounts.as_ref());
                return Err(e);
            }
        };
        let nic = network.as_ref().map(|n| n.nic.clone());
        let launched = Instant::now();
        let spec = VmSpec {
            id: id.to_string(),
            run_dir: paths.run_dir.clone(),
            kernel: params.kernel.clone(),
            initrd: params.initrd.clone(),
            kernel_params: params.kernel_params.clone(),
            vcpus: params.vcpus,
            memory_mib: params.memory_mib,
            shared_dir: paths.shared_dir.clone(),
            console_log: paths.console_log.clone(),
            console_log_max: params.console_log_max,
            net: nic.clone(),
            host_cgroup: params.host_cgroup.clone(),
            ids,
        };
        let (mut vm, agent, check) = match boot(launcher, &spec, params).await {
            Ok(booted) => booted,
            Err(e) => {
                unshare_dir(mounts.as_ref());
                disconnect_network(id, nic.as_ref()).await;
                return Err(e);
            }
        };
        let agent_ready = launched.elapsed();
        let pod_ip = network
            .as_ref()
            .and_then(|n| portforward::ipv4_of(&n.guest.addresses));
        let interfaces = network.map(|n| vec![n.guest]).unwrap_or_default();
        if let Err(e) = agent.create_sandbox(id, hostname, interfaces).await {
            if let Err(stop) = vm.stop().await {
                warn!(sandbox = id, error = %stop, "stopping VM after failed create");
            }
            unshare_dir(mounts.as_ref());
            disconnect_network(id, nic.as_ref()).await;
            return Err(e.into());
        }
        let timings = BootTimings {
            agent_ready,
            sandbox_created: launched.elapsed(),
            ..Default::default()
        };
        info!(sandbox = id, ?timings, kernel = %check.kernel_release, "sandbox booted");
        // Without it only CRI's PortForward fails, not the pod.
        let portforward = match (&nic, pod_ip) {
            (Some(nic), Some(ip)) => portforward::start(id, &nic.netns, ip)
                .await
                .map_err(|e| warn!(sandbox = id, error = %crate::monitor::error_chain(&e), "port forwarding not available"))
                .ok(),
            _ => None,
        };
        Ok(Self {
            id: id.to_string(),
            vsock_path: vm.vsock_path(),
            vm_pids: vm.pids(),
            vm: tokio::sync::Mutex::new(vm),
            agent,
            paths: paths.clone(),
            policy: params.policy.clone(),
            shared: std::sync::Mutex::new(HashMap::new()),
            mounts,
            net: nic,
            portforward: std::sync::Mutex::new(portforward),
            lease: std::sync::Mutex::new(lease),
            kernel_release: check.kernel_release,
            timings,
            launched,
        })
    }

    /// Shares container `id`'s rootfs and bind sources with the guest and
    /// creates the container (its process waits for `start`); on failure
    /// the shares are undone.
    pub async fn add_container(&self, id: &str, bundle: &Bundle) -> Result<(), SandboxError> {
        // Checked here too, on the very spec the guest gets, not only by
        // the CLI: config.json may change between the two.
        policy::check(&self.policy, &bundle.spec, Isolation::Vm)?;
        vm_namespaces::check(&bundle.spec)?;
        for warning in mac_labels::not_applied(&bundle.spec, KernelLsms::GUEST, true) {
            tracing::warn!(container = id, "{warning}");
        }
        let shared = share::share(bundle, id, &self.paths, self.mounts.as_ref())?;
        // A pod's other containers share its sandbox container's IPC and UTS
        // namespaces (the sandbox container's id is the sandbox's).
        let join_namespaces_of = if id == self.id { "" } else { self.id.as_str() };
        let created = self
            .agent
            .create_container(id, &shared.spec_json, join_namespaces_of)
            .await;
        if let Err(e) = created {
            share::unshare(&self.paths, self.mounts.as_ref(), &shared.mounts);
            return Err(e.into());
        }
        self.shared
            .lock()
            .expect("shared lock")
            .insert(id.to_string(), shared.mounts);
        Ok(())
    }

    /// Removes container `id` from the guest (killing what is left of it)
    /// and undoes its shares.
    pub async fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        let removed = self.agent.remove_container(id).await;
        let mounts = self.shared.lock().expect("shared lock").remove(id);
        share::unshare(
            &self.paths,
            self.mounts.as_ref(),
            &mounts.unwrap_or_default(),
        );
        Ok(removed?)
    }

    /// The agent connection (cheap to clone).
    pub fn agent(&self) -> &AgentConn {
        &self.agent
    }

    /// Host socket of the guest's hybrid vsock.
    pub fn vsock_path(&self) -> PathBuf {
        self.vsock_path.clone()
    }

    /// Applies what `resources` changes (memory limit, CPU quota) to the
    /// VM's host cgroup; the guest's cgroups are the agent's.
    pub fn update_host_cgroup(&self, resources: &LinuxResources) -> Result<(), HostCgroupError> {
        host_cgroup::update(&self.paths.run_dir, resources)
    }

    /// Host pids of the VM's processes.
    pub fn vm_pids(&self) -> Vec<u32> {
        self.vm_pids.clone()
    }

    /// Waits for the VM to stop (it died, or was powered off).
    pub async fn wait_vm(&self) -> VmExit {
        self.vm.lock().await.wait().await
    }

    /// Waits for the sandbox container's process to exit, or the VM to die.
    pub async fn wait(&self) -> Result<ExitStatus, SandboxError> {
        tokio::select! {
            status = self.agent.wait(Proc::init(&self.id)) => Ok(status?),
            exit = self.wait_vm() => Err(SandboxError::VmExited(exit)),
        }
    }

    /// Powers the guest off (gracefully if it answers), stops the VM's
    /// processes and undoes every share. No `wait_vm` may be pending.
    pub async fn shutdown(&self) {
        let mut vm = self.vm.lock().await;
        let graceful = async {
            // The guest powers off right after replying; a lost reply is
            // fine as long as the VM goes down.
            if let Err(e) = self.agent.destroy_sandbox().await {
                debug!(sandbox = %self.id, error = %e, "DestroySandbox");
            }
            vm.wait().await
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, graceful).await {
            Ok(exit) => info!(sandbox = %self.id, ?exit, "guest powered off"),
            Err(_) => warn!(sandbox = %self.id, "guest did not power off in time; killing the VM"),
        }
        if let Err(e) = vm.stop().await {
            warn!(sandbox = %self.id, error = %e, "stopping VM");
        }
        // Its processes are gone: the uid may serve another VM.
        drop(self.lease.lock().expect("lease lock").take());
        let shared: Vec<PathBuf> = self
            .shared
            .lock()
            .expect("shared lock")
            .drain()
            .flat_map(|(_, mounts)| mounts)
            .collect();
        share::unshare(&self.paths, self.mounts.as_ref(), &shared);
        unshare_dir(self.mounts.as_ref(), &self.paths);
        drop(self.portforward.lock().expect("portforward lock").take());
        disconnect_network(&self.id, self.net.as_ref()).await;
    }
}

/// Undoes [`HostMounts::mount_share`] (with whatever is still mounted
/// below the share).
fn unshare_dir(mounts: &dyn HostMounts, paths: &SandboxPaths) {
    for dir in [&paths.shared_dir, &paths.share_rw] {
        if let Err(e) = mounts.unmount_path(dir) {
            warn!(path = %dir.display(), error = %e, "unmounting the share");
        }
    }
}

/// Connects sandbox `id` to the pod network in `netns`, if there is one.
async fn connect_network(
    id: &str,
    netns: Option<&Path>,
    tap_owner: (u32, u32),
) -> Result<Option<PodNetwork>, SandboxError> {
    let Some(netns) = netns else {
        return Ok(None);
    };
    let network = net::connect(netns, &net::tap_name(id), tap_owner).await?;
    match &network {
        Some(n) => {
            info!(sandbox = id, netns = %netns.display(), tap = %n.nic.tap, mac = %n.nic.mac, "pod network connected")
        }
        None => {
            info!(sandbox = id, netns = %netns.display(), "no interface in the pod's network namespace; no NIC")
        }
    }
    Ok(network)
}

/// Undoes [`connect_network`]; failures are logged.
async fn disconnect_network(id: &str, nic: Option<&NetSpec>) {
    if let Some(nic) = nic {
        if let Err(e) = net::disconnect(&nic.netns, &nic.tap).await {
            warn!(sandbox = id, error = %e, "disconnecting the pod network");
        }
    }
}

/// The guest hostname of sandbox `id`: the bundle's, else the id (its first 63 characters).
pub fn hostname(bundle: &Bundle, id: &str) -> String {
    bundle
        .spec
        .hostname()
        .clone()
        .unwrap_or_else(|| id.chars().take(63).collect())
}

/// Launches the VM and waits for its agent; a guest that does not answer in
/// time is stopped and booted again, up to `boot_attempts` times (a stock
/// kernel under TCG occasionally stalls early in boot).
async fn boot(
    launcher: &dyn VmLauncher,
    spec: &VmSpec,
    params: &SandboxParams,
) -> Result<(Box<dyn Vm>, AgentConn, skerry_protocol::CheckResponse), SandboxError> {
    let mut attempt = 1;
    loop {
        let mut vm = match launcher.launch(spec).await {
            Ok(vm) => vm,
            // A helper that died as it started (seen rarely under load: its
            // pid was gone before it joined the host cgroup) gets another
            // boot; other launch failures (a missing kernel, a refused
            // accelerator) would only fail again.
            Err(e @ HypervisorError::HostCgroup(_)) if attempt < params.boot_attempts => {
                warn!(sandbox = %spec.id, attempt, error = %e, "VM did not start; starting it again");
                attempt += 1;
                continue;
            }
            Err(e) => return Err(SandboxError::Launch(e)),
        };
        match connect_agent(vm.as_ref(), params.boot_timeout, &spec.console_log).await {
            Ok((agent, check)) => return Ok((vm, agent, check)),
            Err(e) => {
                if let Err(stop) = vm.stop().await {
                    warn!(sandbox = %spec.id, error = %stop, "stopping VM after failed boot");
                }
                if matches!(e, SandboxError::AgentTimeout(..)) {
                    if let Some(kept) =
                        stalled_boots::keep(&spec.console_log, &spec.run_dir, &spec.id, attempt)
                    {
                        warn!(sandbox = %spec.id, attempt, console = %kept.display(), "boot stalled; its console is kept");
                    }
                }
                if attempt >= params.boot_attempts || !matches!(e, SandboxError::AgentTimeout(..)) {
                    return Err(e);
                }
                // Keep the stalled boot's console for diagnosis.
                let _ =
                    std::fs::rename(&spec.console_log, spec.console_log.with_extension("log.1"));
                warn!(sandbox = %spec.id, attempt, "guest agent did not answer; booting the VM again");
                attempt += 1;
            }
        }
    }
}

/// Connects to the agent, retrying until it answers `Check` or the deadline passes.
async fn connect_agent(
    vm: &dyn Vm,
    timeout: Duration,
    console: &Path,
) -> Result<(AgentConn, skerry_protocol::CheckResponse), SandboxError> {
    let deadline = Instant::now() + timeout;
    // Why the latest attempt failed, for the error and the debug log.
    let mut last = String::from("no attempt finished");
    loop {
        let attempt = async {
            let stream = match vm.connect(skerry_protocol::AGENT_VSOCK_PORT).await {
                Ok(stream) => stream,
                Err(e) => return Err(format!("connect: {e}")),
            };
            let agent = AgentConn::new(stream);
            match tokio::time::timeout(Duration::from_secs(2), agent.check()).await {
                Ok(Ok(check)) => Ok(Ok((agent, check))),
                Ok(Err(e @ AgentError::InvalidReply { .. })) => Ok(Err(e)),
                Ok(Err(e)) => Err(format!("check: {e}")),
                Err(_) => Err("check: no answer within 2s".into()),
            }
        };
        // One attempt may not outlive the deadline (a CONNECT can wait 10 s).
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(result)) => return result.map_err(SandboxError::from),
            Ok(Err(why)) => {
                tracing::debug!(error = %why, "guest agent not reached yet");
                last = why;
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::AgentTimeout(
                timeout,
                console.to_path_buf(),
                last,
            ));
        }
        tokio::time::sleep(AGENT_POLL).await;
    }
}
