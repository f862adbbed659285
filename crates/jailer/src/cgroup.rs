//! Cgroup placement, v1 (one hierarchy per controller) and v2 (unified).

use std::fs;
use std::path::{Path, PathBuf};

/// Failure to place the process into its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A setting is not `controller.file=value`.
    #[error("invalid cgroup setting {0:?} (want controller.file=value)")]
    Setting(String),
    /// A cgroup directory or file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The requested hierarchy is not mounted.
    #[error("cgroup {0} is not mounted at {1}")]
    NotMounted(&'static str, PathBuf),
}

/// Which cgroup API to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Parses `controller.file=value`.
pub fn parse_setting(s: &str) -> Result<(String, String, String), CgroupError> {
    let bad = || CgroupError::Setting(s.to_owned());
    let (file, value) = s.split_once('=').ok_or_else(bad)?;
    let (controller, _) = file.split_once('.').ok_or_else(bad)?;
    let ok = |x: &str| !x.is_empty() && !x.contains('/') && !x.contains("..");
    if !ok(file) || !ok(controller) || value.contains('\n') {
        return Err(bad());
    }
    Ok((controller.to_owned(), file.to_owned(), value.to_owned()))
}

/// Creates `<parent>/<id>` in the hierarchy, applies `settings` and moves `pid` into it.
/// Returns the cgroup directories created.
pub fn place(
    root: &Path,
    version: Version,
    parent: &str,
    id: &str,
    settings: &[String],
    pid: u32,
) -> Result<Vec<PathBuf>, CgroupError> {
    let parsed = settings
        .iter()
        .map(|s| parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dirs = Vec::new();
    match version {
        Version::V2 => {
            let base = if root.join("unified/cgroup.controllers").exists() {
                root.join("unified")
            } else {
                root.to_owned()
            };
            if !base.join("cgroup.controllers").exists() {
                return Err(CgroupError::NotMounted("v2", base));
            }
            let dir = base.join(parent).join(id);
            mkdir(&dir)?;
            for (_, file, value) in &parsed {
                write(&dir.join(file), value)?;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
            dirs.push(dir);
        }
        Version::V1 => {
            // Always the pids controller (so the cell has a cgroup even without settings),
            // plus every controller a setting names.
            let mut controllers: Vec<&str> = vec!["pids"];
            for (c, _, _) in &parsed {
                if !controllers.contains(&c.as_str()) {
                    controllers.push(c);
                }
            }
            for c in controllers {
                let hier = root.join(c);
                if !hier.join("tasks").exists() {
                    return Err(CgroupError::NotMounted("v1", hier));
                }
                let dir = hier.join(parent).join(id);
                mkdir(&dir)?;
                for (_, file, value) in parsed.iter().filter(|(pc, _, _)| pc == c) {
                    write(&dir.join(file), value)?;
                }
                write(&dir.join("tasks"), &pid.to_string())?;
                dirs.push(dir);
            }
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        assert_eq!(
            parse_setting("memory.limit_in_bytes=1048576").unwrap(),
            (
                "memory".into(),
                "memory.limit_in_bytes".into(),
                "1048576".into()
            )
        );
        for bad in [
            "memory",
            "=1",
            "../x.y=1",
            "a/b.c=1",
            "memory.max=1\n2",
            "nodot=1",
        ] {
            assert!(parse_setting(bad).is_err(), "{bad}");
        }
    }
}
