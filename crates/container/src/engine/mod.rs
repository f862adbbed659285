//! The OCI engine of both isolations: youki's libcontainer, which the host's
//! container mode (`skerry_runtime::plain`) and the guest agent drive alike.
//! What libcontainer 0.7 needs around it is here: the spec changes it needs
//! ([`libcontainer_spec`]), an exec confined as the container's init
//! ([`exec`]), the reaping of a failed build's set-up processes
//! ([`build`]), the executor that gives the container's program default
//! signal dispositions ([`InitExecutor`]), and a missing working directory
//! made as runc makes it ([`create_cwd`]).

mod cwd;
pub mod exec;
mod setup;

use libcontainer::workload::{
    default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError,
};
use nix::sys::signal::{signal, SigHandler, Signal};
use oci_spec::runtime::Spec;

pub use cwd::create_cwd;
pub use setup::build;

/// Gives SIGPIPE back its default action in the calling process. The Rust
/// runtime of every process that drives libcontainer (the CLI, the shim, the
/// guest's launcher) ignores SIGPIPE, and an ignored signal stays ignored
/// across exec: a container's `yes | head -n 1` would never end. Other
/// dispositions pass through as runc passes its own.
pub fn restore_default_signals() -> Result<(), ExecutorError> {
    // SAFETY: setting SIG_DFL installs no handler; the container's init is
    // single-threaded here, right before its exec.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map(drop)
        .map_err(|e| ExecutorError::Other(format!("restoring SIGPIPE's default action: {e}")))
}

/// The executor of a container's init: libcontainer's default, after
/// [`restore_default_signals`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InitExecutor;

impl Executor for InitExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        restore_default_signals()?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// `spec` as libcontainer 0.7 must be given it, or `None` when it needs no
/// change: `linux.rootfsPropagation` in one of the recursive forms runc and
/// CRI use (`rshared`, `rslave`, `rprivate`, `runbindable`), which it does
/// not know, becomes the plain form (its remount of `/` is recursive either
/// way); a `process.apparmorProfile` where the kernel has no AppArmor
/// (`apparmor` false), which it would fail on, is left out (not applied, as
/// runc does; the caller warns).
pub fn libcontainer_spec(spec: &Spec, apparmor: bool) -> Option<Spec> {
    let mut spec = spec.clone();
    let mut changed = false;
    if let Some(mut linux) = spec.linux().clone() {
        let plain = linux
            .rootfs_propagation()
            .as_deref()
            .and_then(|p| p.strip_prefix('r'))
            .filter(|p| ["shared", "slave", "private", "unbindable"].contains(p))
            .map(str::to_string);
        if let Some(plain) = plain {
            linux.set_rootfs_propagation(Some(plain));
            spec.set_linux(Some(linux));
            changed = true;
        }
    }
    if let Some(mut process) = spec.process().clone() {
        if process.apparmor_profile().is_some() && !apparmor {
            process.set_apparmor_profile(None);
            spec.set_process(Some(process));
            changed = true;
        }
    }
    changed.then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn recursive_propagation_becomes_plain_and_apparmor_goes_where_absent() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "apparmorProfile": "tenant"},
            "linux": {"rootfsPropagation": "rslave"},
        }));
        let got = libcontainer_spec(&s, false).expect("changed");
        let linux = got.linux().as_ref().unwrap();
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("slave"));
        assert_eq!(got.process().as_ref().unwrap().apparmor_profile(), &None);
        let kept = libcontainer_spec(&s, true).expect("propagation changed");
        assert_eq!(
            kept.process()
                .as_ref()
                .unwrap()
                .apparmor_profile()
                .as_deref(),
            Some("tenant")
        );
        let plain = spec(serde_json::json!({
            "ociVersion": "1.0.2", "linux": {"rootfsPropagation": "private"},
        }));
        assert!(libcontainer_spec(&plain, false).is_none());
    }
}
