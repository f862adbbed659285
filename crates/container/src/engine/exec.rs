//! Exec in a running container, confined as the container's init.
//!
//! libcontainer 0.7's tenant builder (its exec) rebuilds the spec's `linux`
//! without `seccomp`, and runs the process JSON as given: an exec'd process
//! would run without the container's seccomp filter and, where the JSON names
//! no capabilities, with all of root's. Here the process gets the init's
//! limits wherever it names none ([`security::exec_process`], runc's rule),
//! and [`Confined`], the executor libcontainer calls last, loads the
//! container's filter right before the exec.
//!
//! The tenant builder does not join the container's user namespace either
//! (libcontainer 0.7 joins ipc, uts, net, pid, mnt, cgroup and time only): an
//! exec into a container with a user namespace would run as the real root of
//! the caller's namespace, with the process's capabilities there. So the
//! caller opens the init's user namespace ([`Plan::open_user_namespace`]) and
//! the executor joins it last, once libcontainer has joined the others (the
//! process still holds CAP_SYS_ADMIN, lent until then), takes the process's
//! ids inside it and sets the process's capabilities, as runc's exec does.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error_chain;
use crate::security::{self, SecurityError};
use libcontainer::workload::{
    default::DefaultExecutor, Executor, ExecutorError, ExecutorValidationError,
};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxNamespaceType, LinuxSeccomp, Process, Spec,
    User,
};
use serde::{Deserialize, Serialize};

/// What libcontainer runs for one exec: the process JSON it is given and the
/// executor that confines the process last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The process, with the init's limits where the request names none.
    pub process: Process,
    /// Loads the container's seccomp filter before the exec.
    pub executor: Confined,
}

/// Plans exec'd process `requested` in the container whose spec is `init`.
pub fn plan(init: &Spec, requested: Process) -> Result<Plan, SecurityError> {
    let mut process = match init.process() {
        Some(init) => security::exec_process(init, requested),
        None => requested,
    };
    let linux = init.linux().as_ref();
    let seccomp = linux.and_then(|l| l.seccomp().clone());
    security::check_seccomp(seccomp.as_ref())?;
    let user_ns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    let own = process.capabilities().clone();
    // Without noNewPrivileges, loading a filter takes CAP_SYS_ADMIN, and so
    // does joining a user namespace; the executor runs too late to have it
    // unless it is granted until then.
    let lend = user_ns || (seccomp.is_some() && process.no_new_privileges() != Some(true));
    let lent = match (&own, lend) {
        (Some(caps), true) => with_filter_loading(caps),
        _ => None,
    };
    let restore = match (&lent, user_ns) {
        // Inside the user namespace the process holds every capability
        // until it is given its own.
        (_, true) | (Some(_), false) => own,
        (None, false) => None,
    };
    if let Some(lent) = lent {
        process.set_capabilities(Some(lent));
    }
    let user = user_ns.then(|| process.user().clone());
    Ok(Plan {
        process,
        executor: Confined {
            seccomp,
            restore,
            user,
            user_ns_fd: None,
        },
    })
}

impl Plan {
    /// Opens the user namespace of the container's init `init_pid` for the
    /// executor to join, if the plan needs it and it is not the caller's;
    /// the caller keeps the fd open until libcontainer's build returns (its
    /// processes are clones of the caller: they have it too).
    pub fn open_user_namespace(&mut self, init_pid: i32) -> Result<Option<OwnedFd>, SecurityError> {
        if self.executor.user.is_none() {
            return Ok(None);
        }
        let path = format!("/proc/{init_pid}/ns/user");
        let same = std::fs::read_link(&path).ok() == std::fs::read_link("/proc/self/ns/user").ok();
        if same {
            self.executor.user = None;
            return Ok(None);
        }
        let fd = std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| SecurityError::UserNamespace { path, source })?;
        self.executor.user_ns_fd = Some(fd.as_raw_fd());
        Ok(Some(fd))
    }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confined {
    seccomp: Option<LinuxSeccomp>,
    /// The process's own capabilities, once the filter is loaded.
    restore: Option<LinuxCapabilities>,
    /// The process's user, taken inside the container's user namespace.
    user: Option<User>,
    /// That namespace, opened by the caller ([`Plan::open_user_namespace`]).
    #[serde(skip)]
    user_ns_fd: Option<RawFd>,
}

/// Joins the user namespace `fd` and becomes `user` in it.
fn enter_user_namespace(fd: RawFd, user: &User) -> nix::Result<()> {
    // SAFETY: the fd was opened by the caller of the build, whose clone this
    // process is, and stays open until after the exec (close-on-exec).
    let ns = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER)?;
    nix::sys::prctl::set_keepcaps(true)?;
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids)?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)
}

impl Executor for Confined {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let failed = |e: SecurityError| ExecutorError::Other(error_chain(&e));
        super::restore_default_signals()?;
        if let (Some(fd), Some(user)) = (self.user_ns_fd, &self.user) {
            enter_user_namespace(fd, user).map_err(|e| {
                ExecutorError::Other(format!("joining the container's user namespace: {e}"))
            })?;
        }
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
pub fn process_file_name() -> String {
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
