//! The OCI engine both isolations share: youki's libcontainer, and what
//! skerry puts around it.
//!
//! The host's container mode and the guest agent create and exec into
//! containers with libcontainer ([`engine`]); [`spec`] validates a spec or
//! process with errors naming the field, [`security`] holds the seccomp and
//! capability rules both apply, [`id`] the id rules; raw syscalls the host and
//! the agent need beyond libcontainer's sit in [`sys`].

pub mod cgroup_file;
pub mod engine;
pub mod id;
pub mod security;
pub mod spec;
pub mod sys;

pub use id::{validate_container_id, validate_exec_id, IdError};
pub use spec::SpecError;

/// Formats an error with its whole source chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
