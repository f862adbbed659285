//! An OCI bundle on the host: `config.json` plus the root filesystem.
//!
//! Everything a user can get wrong is checked here, before any VM is started,
//! so a mistake costs milliseconds and leaves nothing behind.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use oci_spec::runtime::Spec;

/// A mistake in the bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory is missing or unreadable.
    #[error("bundle {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No config.json.
    #[error("bundle {0}: config.json not found")]
    NoConfig(PathBuf),
    /// config.json does not parse.
    #[error("{path}: invalid JSON: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The parser's message with line and column.
        message: String,
    },
    /// A field is missing or wrong.
    #[error("{path}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The JSON path of the field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute root filesystem directory.
    pub rootfs: PathBuf,
    /// The parsed spec.
    pub spec: Spec,
    /// config.json as read, passed to the guest unchanged.
    pub spec_json: Vec<u8>,
}

impl Bundle {
    /// Reads and validates the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let dir = fs::canonicalize(dir).map_err(|source| BundleError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let config = dir.join("config.json");
        let spec_json = match fs::read(&config) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NoConfig(dir))
            }
            Err(source) => {
                return Err(BundleError::Dir {
                    path: config,
                    source,
                })
            }
        };
        let spec: Spec =
            serde_json::from_slice(&spec_json).map_err(|e| BundleError::InvalidJson {
                path: config.clone(),
                message: e.to_string(),
            })?;
        let field = |field, message: String| BundleError::Field {
            path: config.clone(),
            field,
            message,
        };
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| field("root", "missing".into()))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(field(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| field("process", "missing".into()))?;
        let args = process.args().clone().unwrap_or_default();
        let Some(program) = args.first() else {
            return Err(field("process.args", "must not be empty".into()));
        };
        let env = process.env().clone().unwrap_or_default();
        if resolve_program(&rootfs, program, &env).is_none() {
            return Err(field(
                "process.args",
                format!(
                    "executable {program:?} not found in rootfs {}",
                    rootfs.display()
                ),
            ));
        }
        if !process.cwd().is_absolute() {
            return Err(field("process.cwd", "must be an absolute path".into()));
        }
        Ok(Self {
            dir,
            rootfs,
            spec,
            spec_json,
        })
    }
}

/// Finds `program` inside `rootfs` the way execvp would inside the container:
/// a name with a '/' is taken as is, otherwise each entry of the spec's PATH
/// (or a default PATH) is tried. Symlinks are followed within the rootfs.
pub fn resolve_program(rootfs: &Path, program: &str, env: &[String]) -> Option<PathBuf> {
    if program.contains('/') {
        let inside = Path::new(program);
        return is_executable(rootfs, inside).then(|| inside.to_path_buf());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(rootfs, p))
}

/// Whether `inside` (a path as seen in the container) is an executable file,
/// resolving symlinks relative to `rootfs` so that absolute links do not
/// escape to the host.
fn is_executable(rootfs: &Path, inside: &Path) -> bool {
    let mut current = inside.to_path_buf();
    for _ in 0..40 {
        let host = rootfs.join(current.strip_prefix("/").unwrap_or(&current));
        let Ok(meta) = fs::symlink_metadata(&host) else {
            return false;
        };
        if meta.file_type().is_symlink() {
            let Ok(target) = fs::read_link(&host) else {
                return false;
            };
            current = if target.is_absolute() {
                target
            } else {
                current.parent().unwrap_or(Path::new("/")).join(target)
            };
            continue;
        }
        return meta.is_file() && meta.permissions().mode() & 0o111 != 0;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn write_bundle(dir: &Path, config: &str) {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/busybox"), b"").unwrap();
        fs::set_permissions(
            rootfs.join("bin/busybox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("/bin/busybox", rootfs.join("bin/sh")).unwrap();
        symlink("busybox", rootfs.join("bin/cat")).unwrap();
        fs::write(dir.join("config.json"), config).unwrap();
    }

    fn config(args: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
               "process":{{"cwd":"/","args":{args},"env":["PATH=/bin"],
               "user":{{"uid":0,"gid":0}}}}}}"#
        )
    }

    #[test]
    fn valid_bundle_loads() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), &config(r#"["sh","-c","true"]"#));
        let b = Bundle::load(tmp.path()).unwrap();
        assert_eq!(
            b.rootfs,
            fs::canonicalize(tmp.path()).unwrap().join("rootfs")
        );
        assert!(!b.spec_json.is_empty());
    }

    #[test]
    fn missing_config_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Bundle::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("config.json not found"), "{err}");
    }

    #[test]
    fn invalid_json_is_named_with_position() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), "{\"ociVersion\": ");
        let err = Bundle::load(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("invalid JSON") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn missing_program_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), &config(r#"["/bin/nope"]"#));
        let err = Bundle::load(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("process.args") && err.contains("/bin/nope"),
            "{err}"
        );
    }

    #[test]
    fn empty_args_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), &config("[]"));
        let err = Bundle::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("process.args: must not be empty"), "{err}");
    }

    #[test]
    fn path_lookup_follows_links_inside_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), &config(r#"["cat"]"#));
        let rootfs = tmp.path().join("rootfs");
        assert_eq!(
            resolve_program(&rootfs, "cat", &["PATH=/usr/bin:/bin".into()]),
            Some(PathBuf::from("/bin/cat"))
        );
        assert_eq!(
            resolve_program(&rootfs, "cat", &["PATH=/usr/bin".into()]),
            None
        );
        // An absolute link pointing outside the rootfs is resolved inside it.
        symlink("/usr/bin/env", rootfs.join("bin/escape")).unwrap();
        assert_eq!(resolve_program(&rootfs, "/bin/escape", &[]), None);
        // Link loops end.
        symlink("loop", rootfs.join("bin/loop")).unwrap();
        assert_eq!(resolve_program(&rootfs, "/bin/loop", &[]), None);
    }
}
