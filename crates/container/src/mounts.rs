//! Mapping of OCI mount options to mount(2) flags and data (pure, no privileges).

use nix::mount::MsFlags;

/// Mount options of one OCI mount, split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount (or bind remount).
    pub flags: MsFlags,
    /// Propagation flags applied in a separate mount(2) call.
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
                out.propagation |= propagation_flags(opt).unwrap_or(MsFlags::empty());
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
    }
}
