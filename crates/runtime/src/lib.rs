//! skerry host runtime: configuration, sandbox and container lifecycle,
//! hypervisor backends, guest image and host checks.
#![forbid(unsafe_code)]

#[cfg(test)]
#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

pub mod agent_client;
pub mod bundle;
pub mod check;
pub mod config;
pub mod control;
pub mod exec;
pub mod guest_text;
pub mod hooks;
pub mod hypervisor;
pub mod image;
pub mod isolation;
pub mod lifecycle;
pub mod mac_labels;
pub mod monitor;
pub mod mounts;
pub mod net;
pub mod plain;
pub mod policy;
pub mod portforward;
pub mod relay;
pub mod sandbox;
pub mod share;
mod stalled_boots;
pub mod state;
pub mod vm_namespaces;
