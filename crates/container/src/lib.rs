//! OCI runtime spec -> a process in its own namespaces.
//!
//! Used by the guest agent (each container of a pod) and later by the host's
//! plain-container mode. The pure parts (validation, PATH lookup, mount options,
//! rlimits, ids) are in [`spec`], [`mounts`] and [`id`]; paths and mounts inside a root are
//! made race-free by [`inroot`]; the parent side of a launch
//! is [`launch`], the child side (`<binary> init`) is [`init`]; raw syscalls sit in [`sys`].

pub mod cgroup_file;
pub mod channel;
pub mod id;
pub mod init;
pub mod inroot;
pub mod launch;
pub mod mounts;
pub mod security;
pub mod spec;
pub mod sys;
pub mod userns;

pub use channel::InitConfig;
pub use id::{validate_container_id, validate_exec_id, IdError};
pub use launch::{LaunchError, ParentStdio};
pub use spec::SpecError;
