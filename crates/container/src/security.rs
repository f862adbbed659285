//! The OCI process limits a container's processes get inside the guest: user
//! and group ids with the capabilities the spec grants, and the seccomp
//! filter. They are applied with youki's libcontainer, the code container
//! mode uses on the host, so a container is confined the same way in either
//! isolation.

use libcontainer::{
    capabilities,
    seccomp::{self, SeccompError},
    syscall::{linux::LinuxSyscall, SyscallError},
};
use oci_spec::runtime::{Arch, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, Process};

/// A limit that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The container's user namespace could not be opened for an exec.
    #[error("linux.namespaces: user namespace {path}")]
    UserNamespace {
        /// `/proc/<init>/ns/user`.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Setting the capability sets failed.
    #[error("process.capabilities")]
    Capabilities(#[source] SyscallError),
    /// Building or loading the seccomp filter failed.
    #[error("linux.seccomp")]
    Seccomp(#[source] SeccompError),
    /// The filter asks for a user-space notifier, which the guest has not.
    #[error("linux.seccomp: SCMP_ACT_NOTIFY is not supported")]
    Notify,
}

/// Sets every capability set of this process to what `caps` says (an unset
/// bounding set is an empty one; other unset sets stay as they are).
pub fn set_capabilities(caps: &LinuxCapabilities) -> Result<(), SecurityError> {
    capabilities::drop_privileges(caps, &LinuxSyscall).map_err(SecurityError::Capabilities)
}

/// Every capability this build knows by name (`CAP_CHOWN`, ...), sorted.
pub fn known_capabilities() -> Vec<String> {
    let mut names: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    names.sort();
    names
}

/// The seccomp actions a filter may use here (`SCMP_ACT_NOTIFY` is refused).
pub const SECCOMP_ACTIONS: &[LinuxSeccompAction] = &[
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];

/// The architectures a filter may name (the guest is x86-64).
pub const SECCOMP_ARCHS: &[Arch] = &[Arch::ScmpArchX86, Arch::ScmpArchX86_64, Arch::ScmpArchX32];

/// The argument comparisons a filter may use.
pub const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// The filter flags libcontainer maps (all supported by the guest kernel).
pub const SECCOMP_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/// Refuses a filter the guest cannot apply, before anything runs.
pub fn check_seccomp(filter: Option<&LinuxSeccomp>) -> Result<(), SecurityError> {
    match filter {
        Some(f) if seccomp::is_notify(f) => Err(SecurityError::Notify),
        _ => Ok(()),
    }
}

/// Loads the seccomp filter into this process (and what it execs).
pub fn load_seccomp(filter: &LinuxSeccomp) -> Result<(), SecurityError> {
    seccomp::initialize_seccomp(filter).map_err(SecurityError::Seccomp)?;
    Ok(())
}

/// Where the kernel lists its active security modules (securityfs, which the
/// agent mounts at boot).
const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// What keeps a guest's containers off the agent's channels (vsock, the
/// share's virtio-fs tag), whatever their spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelGuard {
    /// skerry's guest kernel: its `skerry` LSM denies them to every task
    /// outside the agent's pid namespace (guest/kernel/skerry_lsm.c); a
    /// container's seccomp status is its spec's.
    Kernel,
    /// Any other kernel: [`guest_channel_filter`] in every container process.
    Seccomp,
}

impl std::fmt::Display for ChannelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kernel => "the kernel's skerry LSM",
            Self::Seccomp => "a seccomp filter in every container",
        })
    }
}

impl ChannelGuard {
    /// The guard of the running kernel; read before a container's mount
    /// namespace hides securityfs. A list that cannot be read means
    /// [`ChannelGuard::Seccomp`].
    pub fn of_this_kernel() -> Self {
        std::fs::read_to_string(ACTIVE_LSMS).map_or(Self::Seccomp, |list| Self::of_lsms(&list))
    }

    /// The guard for the comma-separated list of active LSMs `list`.
    fn of_lsms(list: &str) -> Self {
        if list.trim_end().split(',').any(|m| m == "skerry") {
            Self::Kernel
        } else {
            Self::Seccomp
        }
    }
}

/// The filter every container process in a guest gets on top of its spec's
/// where the kernel does not guard the channels ([`ChannelGuard::Seccomp`]):
/// no AF_VSOCK socket (the agent's channel to the host, and the host's
/// vsock back end, are not a container's to reach, whatever its spec or
/// seccomp profile) and no io_uring (its socket operation would go around
/// that rule, as containerd's and Docker's default profiles also deny it).
pub fn guest_channel_filter() -> LinuxSeccomp {
    serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["socket", "socketpair"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": libc::EAFNOSUPPORT,
                "args": [{"index": 0, "value": libc::AF_VSOCK, "op": "SCMP_CMP_EQ"}],
            },
            {
                "names": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": libc::EPERM,
            },
        ],
    }))
    .expect("a valid seccomp filter")
}

/// The process an exec runs in a container, as runc's exec builds it: the
/// security fields `requested` leaves out (capabilities, noNewPrivileges,
/// rlimits, AppArmor profile, SELinux label) are the container init's. The
/// container's seccomp filter is not a process field: the caller loads it
/// into every exec'd process, whatever the request says.
pub fn exec_process(init: &Process, mut requested: Process) -> Process {
    if requested.capabilities().is_none() {
        requested.set_capabilities(init.capabilities().clone());
    }
    if requested.no_new_privileges().is_none() {
        requested.set_no_new_privileges(init.no_new_privileges());
    }
    if requested.rlimits().as_ref().is_none_or(Vec::is_empty) {
        requested.set_rlimits(init.rlimits().clone());
    }
    if requested
        .apparmor_profile()
        .as_ref()
        .is_none_or(String::is_empty)
    {
        requested.set_apparmor_profile(init.apparmor_profile().clone());
    }
    if requested
        .selinux_label()
        .as_ref()
        .is_none_or(String::is_empty)
    {
        requested.set_selinux_label(init.selinux_label().clone());
    }
    requested
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        Capability, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    };

    use super::*;

    #[test]
    fn only_the_skerry_lsm_guards_the_channels() {
        assert_eq!(
            ChannelGuard::of_lsms("lockdown,capability,yama,skerry\n"),
            ChannelGuard::Kernel
        );
        assert_eq!(
            ChannelGuard::of_lsms("lockdown,capability,skerryx,apparmor"),
            ChannelGuard::Seccomp
        );
        assert_eq!(ChannelGuard::of_lsms(""), ChannelGuard::Seccomp);
    }

    fn init() -> Process {
        let caps: std::collections::HashSet<_> = [Capability::Chown, Capability::Kill].into();
        ProcessBuilder::default()
            .args(vec!["sleep".to_string()])
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps)
                    .effective(std::collections::HashSet::from([Capability::Chown]))
                    .build()
                    .unwrap(),
            )
            .no_new_privileges(true)
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(64u64)
                .hard(128u64)
                .build()
                .unwrap()])
            .apparmor_profile("tenant")
            .selinux_label("system_u:system_r:container_t:s0")
            .build()
            .unwrap()
    }

    #[test]
    fn a_bare_exec_gets_the_init_limits() {
        // As a process JSON without those fields reads.
        let bare: Process =
            serde_json::from_str(r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
                .unwrap();
        let got = exec_process(&init(), bare);
        assert_eq!(got.args(), &Some(vec!["sh".to_string()]));
        assert_eq!(got.capabilities(), init().capabilities());
        assert_eq!(got.no_new_privileges(), Some(true));
        assert_eq!(got.rlimits(), init().rlimits());
        assert_eq!(got.apparmor_profile().as_deref(), Some("tenant"));
        assert_eq!(got.selinux_label(), init().selinux_label());
    }

    #[test]
    fn what_the_exec_asks_for_stands() {
        let asked = ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .capabilities(LinuxCapabilitiesBuilder::default().build().unwrap())
            .no_new_privileges(false)
            .rlimits(vec![])
            .apparmor_profile("")
            .build()
            .unwrap();
        let got = exec_process(&init(), asked);
        assert_eq!(
            got.capabilities(),
            &Some(LinuxCapabilitiesBuilder::default().build().unwrap())
        );
        assert_eq!(got.no_new_privileges(), Some(false));
        // Empty means unset, as in runc.
        assert_eq!(got.rlimits(), init().rlimits());
        assert_eq!(got.apparmor_profile().as_deref(), Some("tenant"));
    }
}
