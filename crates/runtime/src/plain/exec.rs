//! Exec in a container-mode container, confined as the container's init.
//!
//! libcontainer 0.7's tenant builder (its exec) rebuilds the spec's `linux`
//! without `seccomp`, and runs the process JSON as given: an exec'd process
//! would run without the container's seccomp filter and, where the JSON names
//! no capabilities, with all of root's. Here the process gets the init's
//! limits wherever it names none ([`security::exec_process`], runc's rule),
//! and [`Confined`], the executor libcontainer calls last, loads the
//! container's filter right before the exec.

use std::sync::atomic::{AtomicU64, Ordering};

use libcontainer::workload::{
    default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError,
};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec};
use skerry_container::security::{self, SecurityError};

use crate::monitor::error_chain;

/// What libcontainer runs for one exec: the process JSON it is given and the
/// executor that confines the process last.
pub(super) struct Plan {
    /// The process, with the init's limits where the request names none.
    pub process: Process,
    /// Loads the container's seccomp filter before the exec.
    pub executor: Confined,
}

/// Plans exec'd process `requested` in the container whose spec is `init`.
pub(super) fn plan(init: &Spec, requested: Process) -> Result<Plan, SecurityError> {
    let mut process = match init.process() {
        Some(init) => security::exec_process(init, requested),
        None => requested,
    };
    let seccomp = init.linux().as_ref().and_then(|l| l.seccomp().clone());
    security::check_seccomp(seccomp.as_ref())?;
    let mut restore = None;
    // Without noNewPrivileges, loading a filter takes CAP_SYS_ADMIN, which
    // the executor runs too late to have unless it is granted until then.
    if seccomp.is_some() && process.no_new_privileges() != Some(true) {
        if let Some(caps) = process.capabilities().clone() {
            if let Some(loading) = with_filter_loading(&caps) {
                process.set_capabilities(Some(loading));
                restore = Some(caps);
            }
        }
    }
    Ok(Plan {
        process,
        executor: Confined { seccomp, restore },
    })
}

/// `caps` plus what loading a filter without noNewPrivileges takes
/// (CAP_SYS_ADMIN) and dropping that from the bounding set again
/// (CAP_SETPCAP); `None` if the process has CAP_SYS_ADMIN already (an unset
/// effective set keeps all the permitted capabilities, as libcontainer sets
/// them).
fn with_filter_loading(caps: &LinuxCapabilities) -> Option<LinuxCapabilities> {
    let has_sys_admin = caps
        .effective()
        .as_ref()
        .is_none_or(|e| e.contains(&Capability::SysAdmin));
    if has_sys_admin {
        return None;
    }
    let add = |set: Capabilities| -> Capabilities {
        let mut set = set;
        set.extend([Capability::SysAdmin, Capability::Setpcap]);
        set
    };
    let mut loading = caps.clone();
    // An unset bounding set is an empty one to libcontainer.
    loading.set_bounding(Some(add(caps.bounding().clone().unwrap_or_default())));
    loading.set_effective(caps.effective().clone().map(add));
    loading.set_permitted(caps.permitted().clone().map(add));
    Some(loading)
}

/// The executor of a container-mode exec: loads the container's seccomp
/// filter, drops the capabilities only granted to load it, then execs the
/// process as libcontainer's default executor does.
#[derive(Clone)]
pub(super) struct Confined {
    seccomp: Option<LinuxSeccomp>,
    /// The process's own capabilities, once the filter is loaded.
    restore: Option<LinuxCapabilities>,
}

impl Executor for Confined {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let failed = |e: SecurityError| ExecutorError::Other(error_chain(&e));
        if let Some(filter) = &self.seccomp {
            security::load_seccomp(filter).map_err(failed)?;
        }
        if let Some(caps) = &self.restore {
            security::set_capabilities(caps).map_err(failed)?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// A fresh name for an exec's process file in the container's directory.
pub(super) fn process_file_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "exec-{}-{}.json",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxSeccompBuilder, SpecBuilder};

    use super::*;

    fn caps(list: &[Capability]) -> Option<Capabilities> {
        Some(list.iter().copied().collect::<HashSet<_>>())
    }

    fn init(no_new_privileges: bool, seccomp: bool) -> Spec {
        let process: Process = serde_json::from_value(serde_json::json!({
            "args": ["sleep", "600"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": no_new_privileges,
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"],
            },
        }))
        .unwrap();
        let mut spec = SpecBuilder::default().process(process).build().unwrap();
        if seccomp {
            let mut linux = spec.linux().clone().unwrap_or_default();
            linux.set_seccomp(Some(LinuxSeccompBuilder::default().build().unwrap()));
            spec.set_linux(Some(linux));
        }
        spec
    }

    fn bare() -> Process {
        serde_json::from_str(r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
            .unwrap()
    }

    #[test]
    fn the_filter_is_loaded_with_no_new_privileges_and_no_extra_capability() {
        let plan = plan(&init(true, true), bare()).unwrap();
        assert!(plan.executor.seccomp.is_some());
        assert!(plan.executor.restore.is_none());
        assert_eq!(
            plan.process.capabilities(),
            init(true, true).process().as_ref().unwrap().capabilities()
        );
    }

    #[test]
    fn without_no_new_privileges_sys_admin_is_lent_until_the_filter_is_loaded() {
        let plan = plan(&init(false, true), bare()).unwrap();
        let lent = plan.process.capabilities().clone().unwrap();
        let own = init(false, true)
            .process()
            .clone()
            .unwrap()
            .capabilities()
            .clone();
        assert_eq!(plan.executor.restore, own);
        let both = [Capability::Kill, Capability::SysAdmin, Capability::Setpcap];
        assert_eq!(lent.effective(), &caps(&both));
        assert_eq!(lent.permitted(), &caps(&both));
        assert_eq!(
            lent.bounding(),
            &caps(&[
                Capability::Kill,
                Capability::Chown,
                Capability::SysAdmin,
                Capability::Setpcap
            ])
        );
    }

    #[test]
    fn nothing_is_lent_without_a_filter_or_to_a_process_holding_sys_admin() {
        let plan_ = plan(&init(false, false), bare()).unwrap();
        assert!(plan_.executor.seccomp.is_none() && plan_.executor.restore.is_none());
        let mut admin = bare();
        admin.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .effective(caps(&[Capability::SysAdmin]).unwrap())
                .build()
                .unwrap(),
        ));
        assert!(plan(&init(false, true), admin)
            .unwrap()
            .executor
            .restore
            .is_none());
    }

    #[test]
    fn a_notify_filter_is_refused() {
        let mut spec = init(true, false);
        let mut linux = spec.linux().clone().unwrap_or_default();
        let notify: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
        }))
        .unwrap();
        linux.set_seccomp(Some(notify));
        spec.set_linux(Some(linux));
        assert!(matches!(plan(&spec, bare()), Err(SecurityError::Notify)));
    }
}
