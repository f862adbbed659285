//! An OCI bundle on the host: `config.json` plus the root filesystem.
//!
//! Everything a user can get wrong is checked here, before any VM is started,
//! so a mistake costs milliseconds and leaves nothing behind.

use std::{
    fs,
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
    /// The spec breaks a rule of the OCI spec or of this runtime.
    #[error("{path}")]
    Spec {
        /// The file.
        path: PathBuf,
        /// The rule, naming the field.
        source: skerry_container::spec::SpecError,
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
        skerry_container::spec::validate_spec(&spec, &rootfs).map_err(|e| BundleError::Spec {
            path: config.clone(),
            source: e,
        })?;
        Ok(Self {
            dir,
            rootfs,
            spec,
            spec_json,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

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
        let err = crate::monitor::error_chain(&Bundle::load(tmp.path()).unwrap_err());
        assert!(
            err.contains("process.args") && err.contains("/bin/nope"),
            "{err}"
        );
    }

    #[test]
    fn empty_args_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_bundle(tmp.path(), &config("[]"));
        let err = crate::monitor::error_chain(&Bundle::load(tmp.path()).unwrap_err());
        assert!(err.contains("process.args is missing or empty"), "{err}");
    }
}
