//! The guest console of every boot whose agent never answered, kept where an
//! operator can read it after the sandbox is gone (a pod whose boots all
//! stalled is deleted, and its state dir with it): `stalled-boots/` beside
//! the VMs' run dirs, root-only, holding the latest [`KEPT`] consoles, each
//! no larger than the console log's own cap.

use std::path::{Path, PathBuf};

/// How many stalled boots' consoles are kept.
const KEPT: usize = 16;
/// The directory's name, beside the VMs' run directories.
const DIR: &str = "stalled-boots";

/// Copies `console` (the stalled boot of sandbox `id`, run dir `run_dir`)
/// into the stalled-boots directory and drops the oldest beyond [`KEPT`];
/// returns the copy's path. Failures are logged: they must not hide the
/// boot's own error.
pub(crate) fn keep(console: &Path, run_dir: &Path, id: &str, attempt: u32) -> Option<PathBuf> {
    let dir = run_dir.parent()?.join(DIR);
    let kept = (|| -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let copy = dir.join(format!("{millis:015}-{id}-{attempt}.log"));
        std::fs::copy(console, &copy)?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        for old in names.iter().take(names.len().saturating_sub(KEPT)) {
            std::fs::remove_file(old)?;
        }
        Ok(copy)
    })();
    match kept {
        Ok(copy) => Some(copy),
        Err(e) => {
            tracing::warn!(sandbox = id, dir = %dir.display(), error = %e, "keeping a stalled boot's console");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_stalled_consoles_are_kept_beside_the_run_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("0123456789abcdef");
        std::fs::create_dir(&run_dir).unwrap();
        let console = tmp.path().join("console.log");
        let mut copies = vec![];
        for attempt in 1..=(KEPT as u32 + 3) {
            std::fs::write(&console, format!("boot {attempt}\n")).unwrap();
            copies.push(keep(&console, &run_dir, "pod", attempt).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let dir = tmp.path().join(DIR);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        left.sort();
        assert_eq!(left, copies[3..], "the latest {KEPT}, oldest dropped");
        let last = std::fs::read_to_string(left.last().unwrap()).unwrap();
        assert_eq!(last, format!("boot {}\n", KEPT + 3));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }
}
