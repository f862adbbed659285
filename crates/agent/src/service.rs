//! The ttrpc `Agent` service: request validation and the one mapping to status codes.

use std::sync::Arc;

use async_trait::async_trait;
use skerry_protocol as pb;
use tracing::{error, info, warn};
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use crate::boot;
use crate::network;
use crate::state::{AgentError, Sandbox};

/// The agent's API implementation.
pub struct AgentService {
    sandbox: Arc<Sandbox>,
    /// Whether we are the guest's PID 1 (else a development agent on a host).
    guest: bool,
}

impl AgentService {
    /// ReadStdout / ReadStderr.
    async fn read_stream(
        &self,
        req: pb::ReadStreamRequest,
        stderr: bool,
    ) -> RpcResult<pb::ReadStreamResponse> {
        let call = if stderr { "ReadStderr" } else { "ReadStdout" };
        let p = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| to_status(call, e))?;
        let len = read_len(req.len);
        let read = if stderr {
            p.io.read_stderr(len).await
        } else {
            p.io.read_stdout(len).await
        };
        let data = read.map_err(|source| {
            to_status(
                call,
                AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                },
            )
        })?;
        Ok(pb::ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    /// A service over `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>, guest: bool) -> Self {
        AgentService { sandbox, guest }
    }
}

/// The status code the host sees for an error.
fn code_of(e: &AgentError) -> Code {
    match e {
        AgentError::BadId(_) | AgentError::BadSpec { .. } | AgentError::BadRequest(_) => {
            Code::INVALID_ARGUMENT
        }
        AgentError::UnknownContainer(_) | AgentError::UnknownExec { .. } => Code::NOT_FOUND,
        AgentError::DuplicateContainer(_) | AgentError::DuplicateExec { .. } => {
            Code::ALREADY_EXISTS
        }
        AgentError::WrongState(_)
        | AgentError::ProtocolMismatch { .. }
        | AgentError::Setup { .. }
        | AgentError::Security { .. } => Code::FAILED_PRECONDITION,
        AgentError::Stdio { .. } | AgentError::System { .. } | AgentError::Cgroup { .. } => {
            Code::INTERNAL
        }
    }
}

/// Converts an error to a ttrpc status carrying the whole cause chain (the only place).
pub fn to_status(method: &str, e: AgentError) -> ttrpc::Error {
    let code = code_of(&e);
    let msg = skerry_container::error_chain(&e);
    if code == Code::INTERNAL {
        error!(method, "{msg}");
    } else {
        warn!(method, "{msg}");
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

type RpcResult<T> = ttrpc::Result<T>;

fn read_len(len: u32) -> usize {
    let max = pb::MAX_READ_LEN;
    (if len == 0 || len > max { max } else { len }) as usize
}

#[async_trait]
impl pb::Agent for AgentService {
    async fn check(&self, _: &TtrpcContext, req: pb::CheckRequest) -> RpcResult<pb::CheckResponse> {
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(to_status(
                "Check",
                AgentError::ProtocolMismatch {
                    host: req.protocol_version,
                    agent: pb::PROTOCOL_VERSION,
                },
            ));
        }
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(pb::CheckResponse {
            protocol_version: pb::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: kernel,
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: pb::CreateSandboxRequest,
    ) -> RpcResult<pb::Empty> {
        info!(sandbox_id = %req.sandbox_id.chars().take(128).collect::<String>(), "create sandbox");
        let nics = network::parse(&req.interfaces).map_err(|e| to_status("CreateSandbox", e))?;
        boot::create_sandbox(
            self.guest,
            &req.hostname,
            &req.shared_fs_tag,
            self.sandbox.shared_dir(),
        )
        .map_err(|e| to_status("CreateSandbox", e))?;
        if self.guest {
            network::configure(&nics)
                .await
                .map_err(|e| to_status("CreateSandbox", e))?;
        }
        Ok(pb::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: pb::DestroySandboxRequest,
    ) -> RpcResult<pb::Empty> {
        boot::destroy_sandbox(self.guest, &self.sandbox);
        Ok(pb::Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> RpcResult<pb::CreateContainerResponse> {
        let pid = self
            .sandbox
            .create(
                &req.container_id,
                &req.oci_spec_json,
                &req.join_namespaces_of,
            )
            .await
            .map_err(|e| to_status("CreateContainer", e))?;
        Ok(pb::CreateContainerResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: pb::StartContainerRequest,
    ) -> RpcResult<pb::Empty> {
        self.sandbox
            .start(&req.container_id)
            .await
            .map_err(|e| to_status("StartContainer", e))?;
        Ok(pb::Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: pb::RemoveContainerRequest,
    ) -> RpcResult<pb::Empty> {
        self.sandbox
            .remove(&req.container_id)
            .await
            .map_err(|e| to_status("RemoveContainer", e))?;
        Ok(pb::Empty::new())
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        req: pb::RemoveProcessRequest,
    ) -> RpcResult<pb::Empty> {
        self.sandbox
            .remove_exec(&req.container_id, &req.exec_id)
            .map_err(|e| to_status("RemoveProcess", e))?;
        Ok(pb::Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: pb::ExecProcessRequest,
    ) -> RpcResult<pb::ExecProcessResponse> {
        let pid = self
            .sandbox
            .exec(&req.container_id, &req.exec_id, &req.oci_process_json)
            .await
            .map_err(|e| to_status("ExecProcess", e))?;
        Ok(pb::ExecProcessResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> RpcResult<pb::Empty> {
        self.sandbox
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .map_err(|e| to_status("SignalProcess", e))?;
        Ok(pb::Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> RpcResult<pb::WaitProcessResponse> {
        let p = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| to_status("WaitProcess", e))?;
        let exit = p.wait().await.ok_or_else(|| {
            to_status(
                "WaitProcess",
                AgentError::WrongState(format!("container {}: process lost", req.container_id)),
            )
        })?;
        Ok(pb::WaitProcessResponse {
            status: exit.status,
            signal: exit.signal,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: pb::WriteStreamRequest,
    ) -> RpcResult<pb::WriteStreamResponse> {
        let m = "WriteStdin";
        if req.data.len() > pb::MAX_WRITE_LEN {
            return Err(to_status(
                m,
                AgentError::BadRequest(format!(
                    "data is {} bytes, at most {} allowed",
                    req.data.len(),
                    pb::MAX_WRITE_LEN
                )),
            ));
        }
        let p = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| to_status(m, e))?;
        let n = p.io.write_stdin(&req.data).await.map_err(|source| {
            to_status(
                m,
                AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                },
            )
        })?;
        Ok(pb::WriteStreamResponse {
            len: n as u32,
            ..Default::default()
        })
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: pb::CloseStdinRequest,
    ) -> RpcResult<pb::Empty> {
        let p = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| to_status("CloseStdin", e))?;
        p.io.close_stdin().await.map_err(|source| {
            to_status(
                "CloseStdin",
                AgentError::Stdio {
                    id: req.container_id.clone(),
                    source,
                },
            )
        })?;
        Ok(pb::Empty::new())
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> RpcResult<pb::ReadStreamResponse> {
        self.read_stream(req, false).await
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> RpcResult<pb::ReadStreamResponse> {
        self.read_stream(req, true).await
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: pb::StatsContainerRequest,
    ) -> RpcResult<pb::StatsContainerResponse> {
        self.sandbox
            .stats(&req.container_id)
            .map_err(|e| to_status("StatsContainer", e))
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> RpcResult<pb::Empty> {
        self.sandbox
            .update(&req.container_id, &req.resources_json)
            .map_err(|e| to_status("UpdateContainer", e))?;
        Ok(pb::Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: pb::TtyWinResizeRequest,
    ) -> RpcResult<pb::Empty> {
        let m = "TtyWinResize";
        let (Ok(rows), Ok(cols)) = (u16::try_from(req.rows), u16::try_from(req.columns)) else {
            return Err(to_status(
                m,
                AgentError::BadRequest("rows and columns must fit in 16 bits".into()),
            ));
        };
        let p = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| to_status(m, e))?;
        match p.io.resize(rows, cols).await {
            None => Err(to_status(
                m,
                AgentError::WrongState(format!(
                    "container {}: process has no terminal",
                    req.container_id
                )),
            )),
            Some(Ok(())) => Ok(pb::Empty::new()),
            Some(Err(e)) => Err(to_status(
                m,
                AgentError::System {
                    what: format!("container {}: resizing the terminal", req.container_id),
                    source: std::io::Error::from(e.errno),
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_covers_the_codes() {
        assert_eq!(
            code_of(&AgentError::UnknownContainer("c".into())),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(&AgentError::DuplicateContainer("c".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(&AgentError::BadId(
                skerry_container::validate_container_id("../x").unwrap_err()
            )),
            Code::INVALID_ARGUMENT
        );
        let e = to_status(
            "Test",
            AgentError::BadSpec {
                id: "c1".into(),
                source: skerry_container::SpecError::Missing {
                    field: "process.args",
                },
            },
        );
        let ttrpc::Error::RpcStatus(s) = e else {
            panic!("not a status")
        };
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert_eq!(
            s.message(),
            "container c1: process.args is missing or empty"
        );
    }

    #[test]
    fn read_len_is_capped() {
        assert_eq!(read_len(0), pb::MAX_READ_LEN as usize);
        assert_eq!(read_len(10), 10);
        assert_eq!(read_len(u32::MAX), pb::MAX_READ_LEN as usize);
    }
}
