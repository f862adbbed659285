//! AppArmor and SELinux fields of a spec, one rule for both isolations
//! (docs/config.md#apparmor-and-selinux): a label names a policy of the kernel
//! that runs the container's processes. It is applied where that kernel has
//! the security module enabled and skerry can apply the field; otherwise it
//! is not applied and `create` warns, naming the field and why (runc's rule
//! for a kernel without the module). In container isolation that kernel is
//! the host's: libcontainer applies `process.apparmorProfile` and
//! `linux.mountLabel`, not `process.selinuxLabel`. In VM isolation it is
//! skerry's guest kernel, which has neither module: the VM boundary stands in
//! for them, and a host profile (containerd sets one on every container of an
//! AppArmor host) has nothing to confine there.

use std::path::Path;

use oci_spec::runtime::Spec;

/// Which security modules the kernel that runs a container has enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLsms {
    /// AppArmor is enabled.
    pub apparmor: bool,
    /// SELinux is enabled.
    pub selinux: bool,
}

impl KernelLsms {
    /// skerry's guest kernel (`guest/kernel/skerry.config`).
    pub const GUEST: Self = Self {
        apparmor: false,
        selinux: false,
    };

    /// This host's kernel.
    pub fn host() -> Self {
        Self {
            apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|s| s.trim() == "Y"),
            selinux: Path::new("/sys/fs/selinux/enforce").exists(),
        }
    }
}

/// One warning per label of `spec` that will not be applied to a container
/// whose processes run on `kernel` (`in_vm`: the guest's), naming the field,
/// its value and why.
pub fn not_applied(spec: &Spec, kernel: KernelLsms, in_vm: bool) -> Vec<String> {
    let process = spec.process().as_ref();
    let where_ = if in_vm {
        "the guest kernel"
    } else {
        "this host"
    };
    let fields = [
        (
            "process.apparmorProfile",
            process.and_then(|p| p.apparmor_profile().clone()),
            (!kernel.apparmor).then(|| format!("AppArmor is not enabled on {where_}")),
        ),
        (
            "process.selinuxLabel",
            process.and_then(|p| p.selinux_label().clone()),
            Some(if kernel.selinux {
                "skerry does not set SELinux process labels".to_string()
            } else {
                format!("SELinux is not enabled on {where_}")
            }),
        ),
        (
            "linux.mountLabel",
            spec.linux().as_ref().and_then(|l| l.mount_label().clone()),
            (!kernel.selinux).then(|| format!("SELinux is not enabled on {where_}")),
        ),
    ];
    fields
        .into_iter()
        .filter_map(|(field, value, why)| match (value, why) {
            (Some(value), Some(why)) if !value.is_empty() => {
                Some(format!("{field} {value:?}: not applied: {why}"))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, SpecBuilder};

    use super::*;

    fn labelled() -> Spec {
        let process = ProcessBuilder::default()
            .apparmor_profile("cri-containerd.apparmor.d")
            .selinux_label("system_u:system_r:container_t:s0")
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .mount_label("system_u:object_r:container_file_t:s0")
            .build()
            .unwrap();
        SpecBuilder::default()
            .process(process)
            .linux(linux)
            .build()
            .unwrap()
    }

    #[test]
    fn every_label_a_vm_cannot_apply_is_named() {
        assert_eq!(
            not_applied(&labelled(), KernelLsms::GUEST, true),
            [
                "process.apparmorProfile \"cri-containerd.apparmor.d\": not applied: AppArmor \
                 is not enabled on the guest kernel",
                "process.selinuxLabel \"system_u:system_r:container_t:s0\": not applied: \
                 SELinux is not enabled on the guest kernel",
                "linux.mountLabel \"system_u:object_r:container_file_t:s0\": not applied: \
                 SELinux is not enabled on the guest kernel",
            ]
        );
    }

    #[test]
    fn a_host_with_both_modules_applies_all_but_the_process_label() {
        let both = KernelLsms {
            apparmor: true,
            selinux: true,
        };
        assert_eq!(
            not_applied(&labelled(), both, false),
            [
                "process.selinuxLabel \"system_u:system_r:container_t:s0\": not applied: skerry \
              does not set SELinux process labels"
            ]
        );
    }

    #[test]
    fn no_or_empty_labels_ask_for_nothing() {
        assert!(not_applied(&Spec::default(), KernelLsms::GUEST, true).is_empty());
        let linux = LinuxBuilder::default().mount_label("").build().unwrap();
        let spec = SpecBuilder::default().linux(linux).build().unwrap();
        assert!(not_applied(&spec, KernelLsms::GUEST, true).is_empty());
    }
}
