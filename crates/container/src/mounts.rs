//! Mapping of OCI mount options to mount(2) flags and data (pure, no privileges).

use nix::mount::MsFlags;

use crate::sys::{mount_attr, MountSetattr};

/// Mount options of one OCI mount, split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount (or bind remount).
    pub flags: MsFlags,
    /// Propagation flags (the last given) applied once the mount is attached.
    pub propagation: MsFlags,
    /// Filesystem-specific options passed as `data`.
    pub data: String,
    /// A bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// A recursive bind mount (`rbind`).
    pub recursive: bool,
}

/// Parses OCI mount options (`ro`, `nosuid`, `rbind`, `mode=755`, …).
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
        bind: false,
        recursive: false,
    };
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let (set, flag) = match opt.as_str() {
            "defaults" | "rw" => (false, MsFlags::MS_RDONLY),
            "ro" => (true, MsFlags::MS_RDONLY),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "dev" => (false, MsFlags::MS_NODEV),
            "nodev" => (true, MsFlags::MS_NODEV),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "mand" => (true, MsFlags::MS_MANDLOCK),
            "nomand" => (false, MsFlags::MS_MANDLOCK),
            "atime" => (false, MsFlags::MS_NOATIME),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
            "bind" => {
                out.bind = true;
                continue;
            }
            "rbind" => {
                out.bind = true;
                out.recursive = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                out.propagation = propagation_flags(opt).unwrap_or(MsFlags::empty());
                continue;
            }
            other => {
                data.push(other);
                continue;
            }
        };
        if set {
            out.flags |= flag;
        } else {
            out.flags &= !flag;
        }
    }
    out.data = data.join(",");
    out
}

impl MountOptions {
    /// The per-mount attributes these options set (`ro`, `nosuid`, `noatime`, …).
    pub fn attributes(&self) -> MountSetattr {
        let f = self.flags;
        let mut change = MountSetattr::default();
        for (flag, attr) in [
            (MsFlags::MS_RDONLY, mount_attr::RDONLY),
            (MsFlags::MS_NOSUID, mount_attr::NOSUID),
            (MsFlags::MS_NODEV, mount_attr::NODEV),
            (MsFlags::MS_NOEXEC, mount_attr::NOEXEC),
            (MsFlags::MS_NODIRATIME, mount_attr::NODIRATIME),
        ] {
            if f.contains(flag) {
                change.set |= attr;
            }
        }
        let atime = if f.contains(MsFlags::MS_NOATIME) {
            Some(mount_attr::NOATIME)
        } else if f.contains(MsFlags::MS_STRICTATIME) {
            Some(mount_attr::STRICTATIME)
        } else if f.contains(MsFlags::MS_RELATIME) {
            Some(mount_attr::RELATIME)
        } else {
            None
        };
        if let Some(atime) = atime {
            change.set |= atime;
            change.clear |= mount_attr::ATIME;
        }
        change
    }

    /// The superblock flags of a new filesystem, as fsconfig(2) keys.
    pub fn superblock_flags(&self) -> Vec<&'static str> {
        [
            (MsFlags::MS_RDONLY, "ro"),
            (MsFlags::MS_SYNCHRONOUS, "sync"),
            (MsFlags::MS_DIRSYNC, "dirsync"),
            (MsFlags::MS_MANDLOCK, "mand"),
        ]
        .into_iter()
        .filter(|(flag, _)| self.flags.contains(*flag))
        .map(|(_, key)| key)
        .collect()
    }

    /// The propagation change asked for, if any.
    pub fn propagation_change(&self) -> Option<MountSetattr> {
        let kind = self.propagation - MsFlags::MS_REC;
        (!kind.is_empty()).then(|| MountSetattr {
            propagation: kind.bits(),
            recursive: self.propagation.contains(MsFlags::MS_REC),
            ..MountSetattr::default()
        })
    }
}

/// Propagation flags for `private`, `rslave`, … (also used for `linux.rootfsPropagation`).
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> MountOptions {
        parse_mount_options(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn docker_devpts_options() {
        let o = opts(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert!(!o.bind);
    }

    #[test]
    fn bind_and_propagation() {
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, "");
    }

    #[test]
    fn later_options_override_earlier() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["noexec", "exec", "nodev"]).flags, MsFlags::MS_NODEV);
        assert_eq!(propagation_flags("bogus"), None);
        assert_eq!(
            opts(&["rshared", "private"]).propagation,
            MsFlags::MS_PRIVATE
        );
    }

    #[test]
    fn flags_map_to_mount_attributes_and_superblock_keys() {
        let o = opts(&["ro", "nosuid", "nodev", "noexec", "noatime", "sync"]);
        let a = o.attributes();
        assert_eq!(
            a.set,
            mount_attr::RDONLY
                | mount_attr::NOSUID
                | mount_attr::NODEV
                | mount_attr::NOEXEC
                | mount_attr::NOATIME
        );
        assert_eq!(a.clear, mount_attr::ATIME);
        assert_eq!(o.superblock_flags(), ["ro", "sync"]);
        assert_eq!(opts(&["rw"]).attributes(), MountSetattr::default());
        assert_eq!(opts(&["rw"]).propagation_change(), None);
        let p = opts(&["rslave"]).propagation_change().unwrap();
        assert_eq!(p.propagation, MsFlags::MS_SLAVE.bits());
        assert!(p.recursive);
    }
}
