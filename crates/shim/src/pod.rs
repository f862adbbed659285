//! Pods: the containers of a Kubernetes pod share one sandbox VM. The CRI
//! annotations say which pod a container joins; a container without them
//! is a pod of its own.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
};

use oci_spec::runtime::Spec;
use skerry_runtime::{
    config::Config,
    mounts::SysMounts,
    sandbox::{ConfiguredLauncher, RecordingLauncher, Sandbox, SandboxParams, SandboxPaths},
    state::{self, StateStore},
    vm_namespaces::{CRIO_TYPE, CRI_TYPE},
};
use tokio::sync::{watch, Notify};
use tracing::{error, info};

use crate::error::TaskError;

/// containerd CRI: the pod sandbox's id.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O: the pod sandbox's id.
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
/// The pod's CPU limit: CFS quota and period (µs), and memory limit (bytes).
const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// Largest VM the sizing may ask for (the config's own bounds).
const MAX_VCPUS: u64 = 64;
const MAX_MEMORY_MIB: u64 = 1024 * 1024;

/// The id of the pod container `id` belongs to: the sandbox id named by
/// its CRI annotations (containerd's or CRI-O's) when it is a pod's
/// container, else its own (a pod sandbox, or a container outside any pod).
pub fn sandbox_id(id: &str, annotations: &HashMap<String, String>) -> Result<String, TaskError> {
    let typ = annotations
        .get(CRI_TYPE)
        .or_else(|| annotations.get(CRIO_TYPE));
    match typ.map(String::as_str) {
        None | Some("sandbox") => Ok(id.to_string()),
        Some("container") => {
            let (key, sandbox) = [CRI_SANDBOX_ID, CRIO_SANDBOX_ID]
                .into_iter()
                .find_map(|k| annotations.get(k).map(|v| (k, v)))
                .ok_or_else(|| {
                    TaskError::InvalidArgument(format!(
                        "annotations: {CRI_SANDBOX_ID} (or {CRIO_SANDBOX_ID}) is missing for a pod container"
                    ))
                })?;
            state::validate_id(sandbox)
                .map_err(|e| TaskError::InvalidArgument(format!("annotations: {key}: {e}")))?;
            Ok(sandbox.clone())
        }
        Some(other) => Err(TaskError::InvalidArgument(format!(
            "annotations: container type {other:?} is neither \"sandbox\" nor \"container\""
        ))),
    }
}

/// The VM size (vCPUs, MiB) of a pod sandbox: its annotated CPU and memory
/// limits plus the configured overhead, or the configured default size.
pub fn vm_size(
    annotations: &HashMap<String, String>,
    config: &Config,
) -> Result<(u32, u32), TaskError> {
    let number = |key: &str| -> Result<Option<u64>, TaskError> {
        annotations
            .get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(|_| {
                        TaskError::InvalidArgument(format!(
                            "annotations: {key}: {v:?} is not a number"
                        ))
                    })
            })
            .transpose()
    };
    let overhead = &config.pod;
    let mut vcpus = u64::from(config.hypervisor.vcpus);
    // A quota of 0 or -1 means "no limit".
    if let Some(quota) = number(CPU_QUOTA)?.filter(|q| *q > 0) {
        let period = number(CPU_PERIOD)?.filter(|p| *p > 0).unwrap_or(100_000);
        vcpus = u64::from(overhead.overhead_vcpus) + quota.div_ceil(period);
    }
    let mut memory_mib = u64::from(config.hypervisor.memory_mib);
    if let Some(bytes) = number(MEMORY)?.filter(|b| *b > 0) {
        memory_mib = u64::from(overhead.overhead_memory_mib) + bytes.div_ceil(1024 * 1024);
    }
    let clamp = |v: u64, max: u64| u32::try_from(v.min(max)).expect("bounded");
    Ok((clamp(vcpus, MAX_VCPUS), clamp(memory_mib, MAX_MEMORY_MIB)))
}

/// A running pod: its sandbox VM and the ids of the containers in it.
pub struct Pod {
    /// The sandbox id (the id of the pod's first container).
    pub id: String,
    /// The VM and its agent.
    pub sandbox: Sandbox,
    members: Mutex<HashSet<String>>,
    stop: Notify,
    /// Set when the VM is gone: it died, or the pod is being stopped.
    vm_gone: watch::Sender<bool>,
    /// Set once the VM is down and its host processes and shares are gone.
    torn_down: watch::Sender<bool>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod").field("id", &self.id).finish()
    }
}

impl Pod {
    /// Boots the VM of pod `id` (its state directory exists) with the
    /// sandbox's hostname and network namespace, sized `vcpus` × `memory_mib`,
    /// in the host cgroup the sandbox container's `spec` names.
    pub async fn boot(
        id: &str,
        (hostname, netns, spec): (&str, Option<&Path>, &Spec),
        config: &Config,
        store: &StateStore,
        (vcpus, memory_mib): (u32, u32),
    ) -> Result<Arc<Self>, TaskError> {
        let mut params = SandboxParams::from_config(config);
        params.vcpus = vcpus;
        params.memory_mib = memory_mib;
        let params = params.with_host_cgroup(id, spec);
        let paths = SandboxPaths::new(store, id);
        let launcher = ConfiguredLauncher(config.hypervisor.clone());
        let launcher = RecordingLauncher {
            inner: &launcher,
            store,
            id,
        };
        let sandbox = Sandbox::boot(
            id,
            hostname,
            netns,
            &params,
            &paths,
            &launcher,
            Box::new(SysMounts),
        )
        .await?;
        info!(pod = id, vcpus, memory_mib, "pod VM booted");
        let pod = Arc::new(Self {
            id: id.to_string(),
            sandbox,
            members: Mutex::new(HashSet::new()),
            stop: Notify::new(),
            vm_gone: watch::channel(false).0,
            torn_down: watch::channel(false).0,
        });
        tokio::spawn(Arc::clone(&pod).watch());
        Ok(pod)
    }

    /// Waits for the VM's death or the pod's stop, then tears the VM down.
    async fn watch(self: Arc<Self>) {
        tokio::select! {
            exit = self.sandbox.wait_vm() => {
                error!(pod = %self.id, ?exit, "pod VM lost");
            }
            () = self.stop.notified() => {}
        }
        self.vm_gone.send_replace(true);
        self.sandbox.shutdown().await;
        self.torn_down.send_replace(true);
    }

    /// Whether the VM is gone.
    pub fn vm_gone(&self) -> watch::Receiver<bool> {
        self.vm_gone.subscribe()
    }

    /// Records container `id` as a member.
    pub fn join(&self, id: &str) {
        self.members
            .lock()
            .expect("members lock")
            .insert(id.to_string());
    }

    /// Forgets member `id`; true when no member is left.
    pub fn leave(&self, id: &str) -> bool {
        let mut members = self.members.lock().expect("members lock");
        members.remove(id);
        members.is_empty()
    }

    /// Powers the VM off and waits until it and its host processes are gone.
    pub async fn stop(&self) {
        self.stop.notify_one();
        let mut torn_down = self.torn_down.subscribe();
        // Cannot fail: the sender lives in `self`.
        let _ = torn_down.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn containers_join_the_sandbox_their_annotations_name() {
        let none = annotations(&[]);
        assert_eq!(sandbox_id("c1", &none).unwrap(), "c1");
        let sandbox = annotations(&[(CRI_TYPE, "sandbox"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(sandbox_id("p1", &sandbox).unwrap(), "p1");
        let member = annotations(&[(CRI_TYPE, "container"), (CRI_SANDBOX_ID, "p1")]);
        assert_eq!(sandbox_id("c2", &member).unwrap(), "p1");
        let crio = annotations(&[(CRIO_TYPE, "container"), (CRIO_SANDBOX_ID, "p2")]);
        assert_eq!(sandbox_id("c3", &crio).unwrap(), "p2");
        let orphan = annotations(&[(CRI_TYPE, "container")]);
        let err = sandbox_id("c4", &orphan).unwrap_err().to_string();
        assert!(err.contains(CRI_SANDBOX_ID), "{err}");
        let bad = annotations(&[(CRI_TYPE, "container"), (CRI_SANDBOX_ID, "../x")]);
        assert!(sandbox_id("c5", &bad).is_err());
        let odd = annotations(&[(CRI_TYPE, "pod")]);
        assert!(sandbox_id("c6", &odd).is_err());
    }

    #[test]
    fn vm_size_is_pod_limits_plus_overhead() {
        let config = Config::default();
        let defaults = (config.hypervisor.vcpus, config.hypervisor.memory_mib);
        assert_eq!(vm_size(&annotations(&[]), &config).unwrap(), defaults);
        let limited = annotations(&[
            (CPU_QUOTA, "150000"),
            (CPU_PERIOD, "100000"),
            (MEMORY, "268435456"),
        ]);
        assert_eq!(
            vm_size(&limited, &config).unwrap(),
            (
                config.pod.overhead_vcpus + 2,
                config.pod.overhead_memory_mib + 256
            )
        );
        let unlimited = annotations(&[(CPU_QUOTA, "-1"), (MEMORY, "0")]);
        assert_eq!(vm_size(&unlimited, &config).unwrap(), defaults);
        let huge = annotations(&[(CPU_QUOTA, "100000000000")]);
        assert_eq!(vm_size(&huge, &config).unwrap().0, 64);
        let err = vm_size(&annotations(&[(MEMORY, "lots")]), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains(MEMORY), "{err}");
    }
}
