//! Parsing and validation of OCI runtime specs and process objects (pure, no privileges).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{PosixRlimitType, Process, Spec};

/// Largest spec or process JSON accepted from the host.
pub const MAX_SPEC_LEN: usize = 4 * 1024 * 1024;

/// PATH used when the process environment has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Symlinks followed before a path lookup inside a root gives up (as the kernel's ELOOP).
const MAX_SYMLINKS: usize = 40;

/// A spec or process object that cannot be used; every variant names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The JSON is larger than [`MAX_SPEC_LEN`].
    #[error("{what} is {len} bytes, at most {MAX_SPEC_LEN} allowed")]
    TooLarge {
        /// "oci spec" or "oci process".
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The JSON does not parse as the OCI schema.
    #[error("{what} is not valid OCI JSON")]
    Json {
        /// "oci spec" or "oci process".
        what: &'static str,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A required field is absent or empty.
    #[error("{field} is missing or empty")]
    Missing {
        /// The field, e.g. `process.args`.
        field: &'static str,
    },
    /// A field holds an unusable value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `process.cwd`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `process.args[0]` cannot be found or executed inside the root.
    #[error("process.args[0] {arg0:?} {reason}")]
    Executable {
        /// The program as given.
        arg0: String,
        /// Why it is unusable.
        reason: String,
    },
}

/// Parses an OCI runtime spec (config.json bytes).
pub fn parse_spec(json: &[u8]) -> Result<Spec, SpecError> {
    if json.len() > MAX_SPEC_LEN {
        return Err(SpecError::TooLarge {
            what: "oci spec",
            len: json.len(),
        });
    }
    serde_json::from_slice(json).map_err(|source| SpecError::Json {
        what: "oci spec",
        source,
    })
}

/// Parses an OCI `process` object (exec requests).
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    if json.len() > MAX_SPEC_LEN {
        return Err(SpecError::TooLarge {
            what: "oci process",
            len: json.len(),
        });
    }
    serde_json::from_slice(json).map_err(|source| SpecError::Json {
        what: "oci process",
        source,
    })
}

/// The process's arguments; an error if there are none.
pub fn process_args(process: &Process) -> Result<&[String], SpecError> {
    process
        .args()
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or(SpecError::Missing {
            field: "process.args",
        })
}

/// Checks a process object against the root it will run in; returns the program path
/// as the container sees it.
pub fn validate_process(process: &Process, root: &Path) -> Result<PathBuf, SpecError> {
    let args = process_args(process)?;
    for (i, a) in args.iter().enumerate() {
        if a.as_bytes().contains(&0) {
            return Err(SpecError::Invalid {
                field: format!("process.args[{i}]"),
                reason: "contains a NUL byte".into(),
            });
        }
    }
    if args[0].is_empty() {
        return Err(SpecError::Missing {
            field: "process.args",
        });
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(SpecError::Invalid {
            field: "process.cwd".into(),
            reason: format!("{cwd:?} is not an absolute path"),
        });
    }
    if let Some(env) = process.env() {
        for (i, e) in env.iter().enumerate() {
            if !e.contains('=') || e.starts_with('=') || e.as_bytes().contains(&0) {
                return Err(SpecError::Invalid {
                    field: format!("process.env[{i}]"),
                    reason: format!("{e:?} is not KEY=VALUE"),
                });
            }
        }
    }
    if let Some(rlimits) = process.rlimits() {
        for r in rlimits {
            if r.soft() > r.hard() {
                return Err(SpecError::Invalid {
                    field: format!("process.rlimits[{}]", rlimit_name(r.typ())),
                    reason: format!("soft {} exceeds hard {}", r.soft(), r.hard()),
                });
            }
        }
    }
    find_executable(root, &args[0], path_env(process), cwd)
}

/// Checks a whole spec against the rootfs it will use; returns the program path.
pub fn validate_spec(spec: &Spec, rootfs: &Path) -> Result<PathBuf, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::Missing { field: "process" })?;
    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            if !m.destination().is_absolute() {
                return Err(SpecError::Invalid {
                    field: format!("mounts[{i}].destination"),
                    reason: format!("{:?} is not an absolute path", m.destination()),
                });
            }
        }
    }
    if let Some(h) = spec.hostname() {
        if h.len() > 64 {
            return Err(SpecError::Invalid {
                field: "hostname".into(),
                reason: "longer than 64 bytes".into(),
            });
        }
    }
    validate_process(process, rootfs)
}

/// The PATH value of a process environment, or [`DEFAULT_PATH`].
pub fn path_env(process: &Process) -> &str {
    process
        .env()
        .as_ref()
        .and_then(|env| env.iter().rev().find_map(|e| e.strip_prefix("PATH=")))
        .unwrap_or(DEFAULT_PATH)
}

/// Finds `arg0` the way execvp would, inside `root`; returns the path as the container sees it.
pub fn find_executable(
    root: &Path,
    arg0: &str,
    path: &str,
    cwd: &Path,
) -> Result<PathBuf, SpecError> {
    let err = |reason: &str| SpecError::Executable {
        arg0: arg0.to_string(),
        reason: reason.to_string(),
    };
    if arg0.contains('/') {
        let inner = if arg0.starts_with('/') {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        return match check_executable(root, &inner) {
            Ok(()) => Ok(inner),
            Err(reason) => Err(err(&reason)),
        };
    }
    let mut last = String::from("not found in rootfs (PATH is empty)");
    for dir in path.split(':') {
        // An empty PATH entry means the current directory, as for execvp.
        let dir = if dir.is_empty() { cwd } else { Path::new(dir) };
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(arg0);
        match check_executable(root, &candidate) {
            Ok(()) => return Ok(candidate),
            Err(reason) => last = reason,
        }
    }
    if last.starts_with("not found") {
        Err(err(&format!("not found in rootfs (PATH={path})")))
    } else {
        Err(err(&last))
    }
}

fn check_executable(root: &Path, inner: &Path) -> Result<(), String> {
    let host = resolve_in_root(root, inner).map_err(|e| format!("not found in rootfs: {e}"))?;
    let meta = std::fs::metadata(&host).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "not found in rootfs".to_string(),
        _ => format!("cannot be inspected: {e}"),
    })?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable".into());
    }
    Ok(())
}

/// `path` with `.` and `..` resolved lexically; None for a relative path.
pub fn lexical(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Why a path could not be resolved inside a root.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Too many symlinks.
    #[error("too many levels of symbolic links")]
    Loop,
    /// A symlink could not be read.
    #[error("reading symlink {path:?}")]
    ReadLink {
        /// The link as seen on the host.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Joins `inner` under `root`, following symlinks as if `root` were `/` (no escape via `..`
/// or absolute links). Missing trailing components are kept as they are.
pub fn resolve_in_root(root: &Path, inner: &Path) -> Result<PathBuf, ResolveError> {
    let mut todo: Vec<std::ffi::OsString> = components(inner);
    todo.reverse();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(done.iter());
        candidate.push(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::Loop);
                }
                let target =
                    std::fs::read_link(&candidate).map_err(|source| ResolveError::ReadLink {
                        path: candidate.clone(),
                        source,
                    })?;
                if target.is_absolute() {
                    done.clear();
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
            }
            _ => done.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(done.iter());
    Ok(out)
}

fn components(p: &Path) -> Vec<std::ffi::OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsStr::new("..").to_os_string()),
            _ => None,
        })
        .collect()
}

/// The OCI name of an rlimit type, e.g. `RLIMIT_NOFILE`.
pub fn rlimit_name(t: PosixRlimitType) -> &'static str {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => "RLIMIT_CPU",
        T::RlimitFsize => "RLIMIT_FSIZE",
        T::RlimitData => "RLIMIT_DATA",
        T::RlimitStack => "RLIMIT_STACK",
        T::RlimitCore => "RLIMIT_CORE",
        T::RlimitRss => "RLIMIT_RSS",
        T::RlimitNproc => "RLIMIT_NPROC",
        T::RlimitNofile => "RLIMIT_NOFILE",
        T::RlimitMemlock => "RLIMIT_MEMLOCK",
        T::RlimitAs => "RLIMIT_AS",
        T::RlimitLocks => "RLIMIT_LOCKS",
        T::RlimitSigpending => "RLIMIT_SIGPENDING",
        T::RlimitMsgqueue => "RLIMIT_MSGQUEUE",
        T::RlimitNice => "RLIMIT_NICE",
        T::RlimitRtprio => "RLIMIT_RTPRIO",
        T::RlimitRttime => "RLIMIT_RTTIME",
    }
}

/// The kernel resource number of an rlimit type.
pub fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake busybox rootfs in a temp dir removed when dropped.
    fn busybox_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"\x7fELF").unwrap();
        std::fs::set_permissions(root.join("bin/busybox"), PermissionsExt::from_mode(0o755))
            .unwrap();
        symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        symlink("../../bin/busybox", root.join("usr/bin/env")).unwrap();
        std::fs::write(root.join("bin/data"), b"x").unwrap();
        // An absolute link that would escape the root if followed naively.
        symlink("/etc/passwd", root.join("bin/escape")).unwrap();
        dir
    }

    fn spec_json(args: &str, env: &str) -> Vec<u8> {
        format!(
            r#"{{"ociVersion":"1.0.2","process":{{"cwd":"/","args":{args},"env":{env},
            "user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn finds_program_through_path_and_symlinks() {
        let dir = busybox_root();
        let root = dir.path();
        let spec = parse_spec(&spec_json(
            r#"["sh","-c","true"]"#,
            r#"["PATH=/usr/bin:/bin"]"#,
        ))
        .unwrap();
        assert_eq!(validate_spec(&spec, root).unwrap(), Path::new("/bin/sh"));
        let spec = parse_spec(&spec_json(r#"["env"]"#, "[]")).unwrap();
        assert_eq!(
            validate_spec(&spec, root).unwrap(),
            Path::new("/usr/bin/env")
        );
    }

    #[test]
    fn names_the_field_on_errors() {
        let dir = busybox_root();
        let root = dir.path();
        let spec = parse_spec(&spec_json(r#"["/bin/nope"]"#, "[]")).unwrap();
        let e = validate_spec(&spec, root).unwrap_err().to_string();
        assert!(e.contains("process.args[0] \"/bin/nope\" not found"), "{e}");
        let spec = parse_spec(&spec_json(r#"["/bin/data"]"#, "[]")).unwrap();
        let e = validate_spec(&spec, root).unwrap_err().to_string();
        assert!(e.contains("not executable"), "{e}");
        let spec = parse_spec(&spec_json("[]", "[]")).unwrap();
        let e = validate_spec(&spec, root).unwrap_err().to_string();
        assert_eq!(e, "process.args is missing or empty");
        let spec = parse_spec(&spec_json(r#"["sh"]"#, r#"["NOEQUALS"]"#)).unwrap();
        let e = validate_spec(&spec, root).unwrap_err().to_string();
        assert!(e.starts_with("process.env[0]"), "{e}");
        let spec = parse_spec(br#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(
            validate_spec(&spec, root).unwrap_err().to_string(),
            "process is missing or empty"
        );
        assert!(parse_spec(b"{not json").is_err());
        assert!(parse_spec(&vec![b' '; MAX_SPEC_LEN + 1]).is_err());
    }

    #[test]
    fn resolution_stays_inside_root() {
        let dir = busybox_root();
        let root = dir.path();
        assert_eq!(
            resolve_in_root(root, Path::new("/bin/escape")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../../etc")).unwrap(),
            root.join("etc")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(matches!(
            resolve_in_root(root, Path::new("/loop")),
            Err(ResolveError::Loop)
        ));
    }

    #[test]
    fn path_env_defaults_and_last_wins() {
        let p: Process = serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert_eq!(path_env(&p), DEFAULT_PATH);
        let p: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"env":["PATH=/a","PATH=/b"]}"#,
        )
        .unwrap();
        assert_eq!(path_env(&p), "/b");
    }

    #[test]
    fn rlimits_map_to_kernel_numbers() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            libc::RLIMIT_NOFILE
        );
        assert_eq!(rlimit_name(PosixRlimitType::RlimitNproc), "RLIMIT_NPROC");
        let p: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["x"],
                "rlimits":[{"type":"RLIMIT_NOFILE","soft":10,"hard":5}]}"#,
        )
        .unwrap();
        let e = validate_process(&p, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RLIMIT_NOFILE"), "{e}");
    }
}
