//! containerd's Task service over skerry pods. Each handler is a thin
//! shell: the work happens in `Container` and `Pod`, errors become ttrpc
//! statuses in `error::to_ttrpc`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::ExitSignal,
    protos::{
        api::{self, Empty},
        cgroups_v2::metrics::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat},
        events::task::{
            TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused,
            TaskResumed, TaskStart,
        },
        protobuf::{well_known_types::any::Any, Message, MessageField},
        shim_async::Task,
        topics::{
            TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
            TASK_EXEC_STARTED_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
        },
        ttrpc::r#async::TtrpcContext,
        types::task::{ProcessInfo, Status as ApiStatus},
    },
    TtrpcResult,
};
use skerry_runtime::{
    config::Isolation, lifecycle, monitor::error_chain, net, sandbox, state::StateStore,
};
use tracing::{info, warn};

use crate::{
    container::{host_pid, Container, Prepared, TaskStatus},
    error::{to_ttrpc, TaskError},
    events::Events,
    options,
    pod::{self, Pod},
    stdio::StdioPaths,
};

/// Type URL of the metrics Stats returns (containerd's cgroups v2 type).
const METRICS_V2: &str = "io.containerd.cgroups.v2.Metrics";

/// The Task service of one shim process.
pub struct TaskService {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
    store: StateStore,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// A service keeping state in `store`, publishing through `events`, and
    /// asking the shim to exit through `exit`.
    pub fn new(store: StateStore, events: Events, exit: Arc<ExitSignal>) -> Self {
        Self {
            containers: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            store,
            events: Arc::new(events),
            exit,
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("container {id:?}")))
    }

    async fn create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(TaskError::Unimplemented("restoring a checkpoint"));
        }
        if self.container(&req.id).is_ok() {
            return Err(TaskError::AlreadyExists(format!("container {:?}", req.id)));
        }
        let config = options::load_config(req.options.as_ref())?;
        info!(container = %req.id, bundle = %req.bundle, "creating task");
        let prepared = Prepared::new(&req, self.store.clone(), &config).await?;
        let c = match self.join_pod(&prepared, &config).await {
            Ok(c) => c,
            Err(e) => {
                prepared.abort().await;
                return Err(e);
            }
        };
        let pid = c.init.pid();
        self.containers
            .lock()
            .expect("containers lock")
            .insert(req.id.clone(), c);
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.events.send(TASK_CREATE_EVENT_TOPIC, event).await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Creates the prepared container in its pod, booting the pod's VM if
    /// the container is the pod's sandbox (or in no pod).
    async fn join_pod(
        &self,
        prepared: &Prepared,
        config: &skerry_runtime::config::Config,
    ) -> Result<Arc<Container>, TaskError> {
        let annotations = prepared.annotations();
        let sandbox_id = pod::sandbox_id(&prepared.id, &annotations)?;
        if sandbox_id != prepared.id {
            let sandbox = self.container(&sandbox_id).ok();
            let sandbox_isolation = match sandbox.as_deref().map(Container::pod) {
                Some(Some(_)) => Some(Isolation::Vm),
                Some(None) => Some(Isolation::Container),
                None => None,
            };
            if sandbox_isolation.is_some_and(|i| i != prepared.isolation) {
                return Err(TaskError::FailedPrecondition(format!(
                    "container {:?} asks for {} isolation but its pod {sandbox_id:?} runs in {} \
                     isolation: a pod's containers share one isolation",
                    prepared.id,
                    prepared.isolation.name(),
                    sandbox_isolation.expect("checked").name()
                )));
            }
        }
        if prepared.isolation == Isolation::Container {
            // Each container of a container-mode pod is a host container.
            return Container::create_plain(prepared, Arc::clone(&self.events)).await;
        }
        let existing = self
            .pods
            .lock()
            .expect("pods lock")
            .get(&sandbox_id)
            .cloned();
        let (pod, booted) = match existing {
            Some(pod) => (pod, false),
            None if sandbox_id == prepared.id => {
                let hostname = sandbox::hostname(&prepared.bundle, &sandbox_id);
                let netns = net::netns_path(&prepared.bundle.spec);
                let size = pod::vm_size(&annotations, config)?;
                let guest = (hostname.as_str(), netns.as_deref(), &prepared.bundle.spec);
                let pod = Pod::boot(&sandbox_id, guest, config, &self.store, size).await?;
                (pod, true)
            }
            None => {
                return Err(TaskError::FailedPrecondition(format!(
                    "pod sandbox {sandbox_id:?} is not running in this shim"
                )))
            }
        };
        let created = async {
            if booted {
                prepared.record_vm(&pod)?;
            }
            Container::create(prepared, Arc::clone(&pod), Arc::clone(&self.events)).await
        };
        match created.await {
            Ok(c) => {
                pod.join(&prepared.id);
                if booted {
                    self.pods.lock().expect("pods lock").insert(sandbox_id, pod);
                }
                Ok(c)
            }
            Err(e) => {
                if booted {
                    pod.stop().await;
                }
                Err(e)
            }
        }
    }

    /// Forgets container `c`; powers its pod off once no container is left.
    async fn leave_pod(&self, c: &Container) -> Result<(), TaskError> {
        let Some(pod) = c.pod() else {
            return Ok(());
        };
        if !pod.leave(&c.id) {
            return Ok(());
        }
        info!(pod = %pod.id, "last container of the pod deleted; stopping its VM");
        pod.stop().await;
        self.pods.lock().expect("pods lock").remove(&pod.id);
        lifecycle::delete(&self.store, &pod.id, true).await?;
        Ok(())
    }

    async fn start(&self, req: api::StartRequest) -> Result<api::StartResponse, TaskError> {
        let c = self.container(&req.id)?;
        c.start(&req.exec_id).await?;
        let pid = c.process(&req.exec_id)?.pid();
        if req.exec_id.is_empty() {
            let event = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.events.send(TASK_START_EVENT_TOPIC, event).await;
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.events.send(TASK_EXEC_STARTED_EVENT_TOPIC, event).await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, req: api::StateRequest) -> Result<api::StateResponse, TaskError> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let status = match c.status(&p) {
            TaskStatus::Created => ApiStatus::CREATED,
            TaskStatus::Running => ApiStatus::RUNNING,
            TaskStatus::Paused => ApiStatus::PAUSED,
            TaskStatus::Stopped => ApiStatus::STOPPED,
        };
        let exit = p.exit();
        Ok(api::StateResponse {
            id: req.id,
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid(),
            status: status.into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        let c = self.container(&req.id)?;
        let pid = c.process(&req.exec_id)?.pid();
        let exit = if req.exec_id.is_empty() {
            let exit = c.delete().await?;
            self.containers
                .lock()
                .expect("containers lock")
                .remove(&req.id);
            if let Err(e) = self.leave_pod(&c).await {
                warn!(container = %c.id, error = %error_chain(&e), "cleaning up the pod");
            }
            let event = TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            };
            self.events.send(TASK_DELETE_EVENT_TOPIC, event).await;
            info!(container = %req.id, status = exit.status, "task deleted");
            Some(exit)
        } else {
            c.delete_exec(&req.exec_id).await?
        };
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn exec(&self, req: api::ExecProcessRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| TaskError::InvalidArgument("spec: missing".into()))?;
        let io = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.add_exec(&req.exec_id, io, spec)?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.events.send(TASK_EXEC_ADDED_EVENT_TOPIC, event).await;
        Ok(())
    }

    async fn stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse, TaskError> {
        let s = self.container(&req.id)?.stats().await?;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: s.cpu_usage_usec,
                user_usec: s.cpu_user_usec,
                system_usec: s.cpu_system_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: s.memory_usage,
                usage_limit: s.memory_limit,
                ..Default::default()
            }),
            memory_events: MessageField::some(MemoryEvents {
                oom_kill: s.oom_kills,
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = metrics
            .write_to_bytes()
            .map_err(|e| TaskError::InvalidArgument(format!("metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_V2.to_string(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse, TaskError> {
        let s = self.container(&req.id)?.stats().await?;
        Ok(api::PidsResponse {
            processes: s
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn freeze(&self, id: &str, freeze: bool) -> Result<(), TaskError> {
        self.container(id)?.freeze(freeze).await?;
        if freeze {
            let event = TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.events.send(TASK_PAUSED_EVENT_TOPIC, event).await;
        } else {
            let event = TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            };
            self.events.send(TASK_RESUMED_EVENT_TOPIC, event).await;
        }
        Ok(())
    }
}

/// Runs a request handler and converts its error in the one place.
fn reply<T>(result: Result<T, TaskError>) -> TtrpcResult<T> {
    result.map_err(|e| {
        warn!(error = %skerry_runtime::monitor::error_chain(&e), "task request failed");
        to_ttrpc(e)
    })
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        reply(TaskService::create(self, req).await)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        reply(TaskService::start(self, req).await)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        reply(TaskService::state(self, req).await)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        reply(TaskService::delete(self, req).await)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        reply(TaskService::exec(self, req).await.map(|()| Empty::new()))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let killed = async {
            let c = self.container(&req.id)?;
            c.kill(&req.exec_id, req.signal, req.all).await
        };
        reply(killed.await.map(|()| Empty::new()))
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let process = self
            .container(&req.id)
            .and_then(|c| c.process(&req.exec_id));
        let exit = match process {
            Ok(p) => p.wait().await,
            Err(e) => return reply(Err(e)),
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        reply(TaskService::pids(self, req).await)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        reply(self.freeze(&req.id, true).await.map(|()| Empty::new()))
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        reply(self.freeze(&req.id, false).await.map(|()| Empty::new()))
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let resized = async {
            let c = self.container(&req.id)?;
            c.resize(&req.exec_id, req.height, req.width).await
        };
        reply(resized.await.map(|()| Empty::new()))
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let closed = async {
            let c = self.container(&req.id)?;
            if req.stdin {
                c.close_stdin(&req.exec_id).await?;
            }
            Ok(())
        };
        reply(closed.await.map(|()| Empty::new()))
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        reply(self.container(&req.id).map(|c| api::ConnectResponse {
            shim_pid: host_pid(),
            task_pid: c.init.pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }))
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let remaining = self.containers.lock().expect("containers lock").len();
        if remaining > 0 && !req.now {
            return Ok(Empty::new());
        }
        info!(remaining, "shutting down");
        self.exit.signal();
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let updated = async {
            let resources = req
                .resources
                .as_ref()
                .ok_or_else(|| TaskError::InvalidArgument("resources: missing".into()))?;
            self.container(&req.id)?.update(&resources.value).await
        };
        reply(updated.await.map(|()| Empty::new()))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        reply(Err(TaskError::Unimplemented(
            "Checkpoint (it needs VM snapshots)",
        )))
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        reply(TaskService::stats(self, req).await)
    }
}
