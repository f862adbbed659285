//! Per-thread seccomp filters. Each thread kind's allowlist is defined next to the code it
//! limits (`vstate::vcpu`, `vmm`, `api`); this module compiles, applies and summarises them.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Failure to build or install a seccomp filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule or filter was rejected by seccompiler.
    #[error("invalid seccomp filter for the {0} thread")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The filter could not be compiled to BPF.
    #[error("cannot compile the seccomp filter for the {0} thread")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Apply(#[source] seccompiler::Error),
}

/// The kinds of VMM threads, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread running the event loop.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The control API thread.
    Api,
    /// The vhost-user watchdog thread of a virtio-fs device.
    VhostWatchdog,
}

impl ThreadKind {
    /// The name used in the summary.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::VhostWatchdog => "vhost-watchdog",
        }
    }
}

/// One allowed syscall, unconditionally (no rules) or when any rule matches.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// Syscall name.
    pub name: &'static str,
    /// Syscall number.
    pub nr: i64,
    /// Argument rules (any may match); empty means always allowed.
    pub rules: Vec<SeccompRule>,
}

/// An allowed syscall without argument checks.
pub fn allow(name: &'static str, nr: i64) -> Allowed {
    Allowed {
        name,
        nr,
        rules: Vec::new(),
    }
}

/// An allowed syscall whose argument `arg` (32-bit compare) must equal one of `values`.
pub fn allow_arg_in(
    name: &'static str,
    nr: i64,
    arg: u8,
    values: &[u64],
) -> Result<Allowed, seccompiler::BackendError> {
    let rules = values
        .iter()
        .map(|v| {
            SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *v,
            )?])
        })
        .collect::<Result<_, _>>()?;
    Ok(Allowed { name, nr, rules })
}

/// An allowed syscall with a full rule list.
pub fn allow_rules(name: &'static str, nr: i64, rules: Vec<SeccompRule>) -> Allowed {
    Allowed { name, nr, rules }
}

/// The allowlist of one thread kind.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    /// The thread kind.
    pub kind: ThreadKind,
    /// The allowed syscalls.
    pub allowed: Vec<Allowed>,
}

impl ThreadFilter {
    /// Syscall names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut n: Vec<_> = self.allowed.iter().map(|a| a.name).collect();
        n.sort_unstable();
        n.dedup();
        n
    }

    /// Compiles to BPF; anything not allowed kills the process with SIGSYS.
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let kind = self.kind.name();
        let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for a in &self.allowed {
            map.entry(a.nr).or_default().extend(a.rules.iter().cloned());
        }
        let filter = SeccompFilter::new(
            map,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(kind, e))?;
        filter
            .try_into()
            .map_err(|e| SeccompError::Compile(kind, e))
    }
}

/// Installs `prog` on the calling thread (and sets no_new_privs).
pub fn apply(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Apply)
}

/// Every thread kind's allowlist, with placeholder values where rules depend on runtime fds.
pub fn all_filters() -> Result<Vec<ThreadFilter>, SeccompError> {
    Ok(vec![
        crate::vmm::seccomp_filter(None)?,
        crate::vstate::vcpu::seccomp_filter(None)?,
        crate::api::seccomp_filter()?,
        crate::devices::virtio::fs::watchdog::seccomp_filter(None)?,
    ])
}

/// JSON `{"vmm": [...], "vcpu": [...], "api": [...]}` of allowed syscall names.
pub fn summary_json() -> Result<String, SeccompError> {
    let mut m = serde_json::Map::new();
    for f in all_filters()? {
        m.insert(f.kind.name().to_owned(), serde_json::json!(f.names()));
    }
    Ok(serde_json::Value::Object(m).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter, each against its Firecracker counterpart (vmm 50, vcpu
    /// 27, api 31 syscalls); the vhost watchdog, which Firecracker does not
    /// have, against its smallest. A new thread kind must be added here.
    #[test]
    fn every_filter_compiles_and_is_smaller_than_firecrackers() {
        let firecracker = |kind| match kind {
            ThreadKind::Vmm => 50,
            ThreadKind::Vcpu => 27,
            ThreadKind::Api => 31,
            ThreadKind::VhostWatchdog => 27,
        };
        let filters = all_filters().unwrap();
        let kinds: Vec<&str> = filters.iter().map(|f| f.kind.name()).collect();
        assert_eq!(kinds, ["vmm", "vcpu", "api", "vhost-watchdog"]);
        for f in filters {
            f.compile().unwrap();
            assert!(
                f.names().len() < firecracker(f.kind),
                "{:?}: {:?}",
                f.kind,
                f.names()
            );
        }
        let v: serde_json::Value = serde_json::from_str(&summary_json().unwrap()).unwrap();
        assert!(v["vcpu"].as_array().unwrap().iter().any(|s| s == "ioctl"));
    }

    #[test]
    fn vmm_filter_allows_vhost_messages_only_with_a_vhost_socket() {
        let names = |s: Option<&[i32]>| crate::vmm::seccomp_filter(s).unwrap().names();
        for with in [None, Some(&[7][..])] {
            let n = names(with);
            assert!(n.contains(&"sendmsg") && n.contains(&"recvmsg"), "{with:?}");
        }
        let n = names(Some(&[]));
        assert!(!n.contains(&"sendmsg") && !n.contains(&"recvmsg"));
        crate::vmm::seccomp_filter(Some(&[7, 9]))
            .unwrap()
            .compile()
            .unwrap();
    }

    /// A thread that calls a syscall outside its filter is killed with SIGSYS. Runs in a
    /// forked child so the test runner survives.
    #[test]
    fn syscall_outside_filter_kills_with_sigsys() {
        for f in all_filters().unwrap() {
            let prog = f.compile().unwrap();
            // SAFETY: the child only calls async-signal-safe functions (prctl, seccomp,
            // syscall, _exit) on memory prepared before the fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let installed = seccompiler::apply_filter(&prog).is_ok();
                if !installed {
                    // SAFETY: _exit is always safe to call.
                    unsafe { libc::_exit(90) };
                }
                // SAFETY: `socket` with these constant arguments touches no memory of ours.
                unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(r, pid);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{:?} thread: child status {status:#x}, expected death by SIGSYS",
                f.kind
            );
        }
    }
}
