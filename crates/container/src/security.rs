//! The OCI process limits a container's processes get inside the guest: user
//! and group ids with the capabilities the spec grants, and the seccomp
//! filter. They are applied with youki's libcontainer, the code container
//! mode uses on the host, so a container is confined the same way in either
//! isolation.

use libcontainer::{
    capabilities,
    seccomp::{self, SeccompError},
    syscall::{linux::LinuxSyscall, Syscall, SyscallError},
};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Arch, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction};

/// A limit that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Switching to the process's user failed.
    #[error("process.user: setresgid/setresuid({uid}, {gid})")]
    SetId {
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
        /// The cause.
        #[source]
        source: SyscallError,
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

/// Becomes `uid`:`gid`, keeping across the switch the capabilities `caps`
/// grants (also to a non-root user), and sets every capability set to what
/// `caps` says; without `caps` the process keeps what it has, as with runc.
pub fn set_user_and_capabilities(
    uid: u32,
    gid: u32,
    caps: Option<&LinuxCapabilities>,
) -> Result<(), SecurityError> {
    let syscall = LinuxSyscall;
    syscall
        .set_id(Uid::from_raw(uid), Gid::from_raw(gid))
        .map_err(|source| SecurityError::SetId { uid, gid, source })?;
    capabilities::reset_effective(&syscall).map_err(SecurityError::Capabilities)?;
    if let Some(caps) = caps {
        capabilities::drop_privileges(caps, &syscall).map_err(SecurityError::Capabilities)?;
    }
    Ok(())
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
