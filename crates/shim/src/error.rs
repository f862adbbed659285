//! What can go wrong serving a Task request, and the one place where that
//! becomes a ttrpc status code for containerd.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};
use skerry_runtime::{
    agent_client::AgentError, bundle::BundleError, config::ConfigError,
    hypervisor::HostCgroupError, lifecycle::LifecycleError, monitor::error_chain,
    plain::PlainError, sandbox::SandboxError, state::StateError, state::Status,
};

/// Failure of a Task request.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such container or process.
    #[error("{0} not found")]
    NotFound(String),
    /// The request itself is wrong (names the field).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request does not fit the process's status.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A container or exec with this id exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// This shim does not offer the call yet.
    #[error("{0} is not implemented by the skerry shim yet")]
    Unimplemented(&'static str),
    /// The runtime configuration file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The sandbox could not be brought up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The guest agent refused or failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Cleaning up a container failed.
    #[error(transparent)]
    Cleanup(#[from] LifecycleError),
    /// A container-mode operation (libcontainer, the host cgroup) failed.
    #[error(transparent)]
    Plain(#[from] PlainError),
    /// The pod VM's host cgroup could not be updated.
    #[error(transparent)]
    HostCgroup(#[from] HostCgroupError),
    /// A stdio FIFO could not be opened.
    #[error("{stream} {path}: cannot open")]
    Stdio {
        /// stdin, stdout or stderr.
        stream: &'static str,
        /// The FIFO.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Mounting the container's root filesystem failed.
    #[error("rootfs[{index}] onto {target}: cannot mount")]
    Mount {
        /// Index in the request's rootfs list.
        index: usize,
        /// The bundle's rootfs directory.
        target: PathBuf,
        /// The cause.
        #[source]
        source: containerd_shim::Error,
    },
}

impl TaskError {
    /// The ttrpc status code containerd sees for this error.
    fn code(&self) -> Code {
        match self {
            // A container-mode init that has just exited (before the shim
            // saw it, or after its state says stopped): containerd takes
            // NotFound as "already gone", as runc's shim answers.
            TaskError::NotFound(_)
            | TaskError::Plain(PlainError::NotRunning { .. })
            | TaskError::Cleanup(LifecycleError::Plain(PlainError::NotRunning { .. }))
            | TaskError::Cleanup(LifecycleError::WrongStatus {
                status: Status::Stopped,
                ..
            }) => Code::NOT_FOUND,
            TaskError::InvalidArgument(_)
            | TaskError::Bundle(_)
            | TaskError::Stdio { .. }
            | TaskError::State(StateError::InvalidId(_)) => Code::INVALID_ARGUMENT,
            TaskError::FailedPrecondition(_) | TaskError::Config(_) => Code::FAILED_PRECONDITION,
            TaskError::AlreadyExists(_) | TaskError::State(StateError::Exists(_)) => {
                Code::ALREADY_EXISTS
            }
            TaskError::State(StateError::NotFound(_)) => Code::NOT_FOUND,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Agent(e) | TaskError::Sandbox(SandboxError::Agent(e)) => match e.code() {
                Some(
                    code @ (Code::NOT_FOUND
                    | Code::INVALID_ARGUMENT
                    | Code::FAILED_PRECONDITION
                    | Code::ALREADY_EXISTS),
                ) => code,
                _ => Code::INTERNAL,
            },
            TaskError::State(_)
            | TaskError::Sandbox(_)
            | TaskError::Cleanup(_)
            | TaskError::Plain(_)
            | TaskError::HostCgroup(_)
            | TaskError::Mount { .. } => Code::INTERNAL,
        }
    }
}

/// Converts a Task error into the ttrpc status containerd receives: the
/// code from [`TaskError::code`], the whole cause chain as the message.
pub fn to_ttrpc(e: TaskError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: TaskError) -> Code {
        match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn codes_follow_the_kind_of_failure() {
        assert_eq!(
            code_of(TaskError::NotFound("process \"e1\"".into())),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(TaskError::State(StateError::Exists("c1".into()))),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(TaskError::State(StateError::InvalidId("x/y".into()))),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(TaskError::Unimplemented("Stats")),
            Code::UNIMPLEMENTED
        );
        let agent = AgentError::Status {
            call: "SignalProcess",
            code: Code::NOT_FOUND,
            message: "no such process".into(),
        };
        assert_eq!(code_of(TaskError::Agent(agent)), Code::NOT_FOUND);
        let agent = AgentError::Status {
            call: "StartContainer",
            code: Code::UNKNOWN,
            message: "exec failed".into(),
        };
        assert_eq!(code_of(TaskError::Agent(agent)), Code::INTERNAL);
        let exited = || PlainError::NotRunning { id: "c1".into() };
        assert_eq!(code_of(TaskError::Plain(exited())), Code::NOT_FOUND);
        assert_eq!(
            code_of(TaskError::Cleanup(LifecycleError::Plain(exited()))),
            Code::NOT_FOUND
        );
        // Killing an init whose state already says stopped (critest's attach
        // and HostNetwork specs leaked pods when this was Unknown).
        let stopped = |status| LifecycleError::WrongStatus {
            id: "c1".into(),
            status,
            message: "cannot signal a container that is not running",
        };
        assert_eq!(
            code_of(TaskError::Cleanup(stopped(Status::Stopped))),
            Code::NOT_FOUND
        );
        assert_eq!(
            code_of(TaskError::Cleanup(stopped(Status::Creating))),
            Code::INTERNAL
        );
    }

    #[test]
    fn message_carries_the_cause_chain() {
        let e = TaskError::Stdio {
            stream: "stdout",
            path: "/run/fifo/out".into(),
            source: std::io::Error::other("no reader"),
        };
        match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.message, "stdout /run/fifo/out: cannot open: no reader")
            }
            other => panic!("{other:?}"),
        }
    }
}
