//! The guest console of every boot whose agent never answered, kept where an
//! operator can read it after the sandbox is gone (a pod whose boots all
//! stalled is deleted, and its state dir with it): `stalled-boots/` beside
//! the VMs' run dirs, root-only, holding the latest [`KEPT`] boots, each the
//! console (no larger than the console log's own cap) followed by the tail
//! of every helper log in the run dir (QEMU, vsock back end, virtiofsd, VMM).

use std::path::{Path, PathBuf};

/// How many stalled boots' consoles are kept.
const KEPT: usize = 16;
/// The directory's name, beside the VMs' run directories.
const DIR: &str = "stalled-boots";
/// The helper logs of a run dir appended to a kept console.
const HELPER_LOGS: [&str; 4] = ["qemu.log", "vsock.log", "virtiofsd.log", "vmm.log"];
/// How much of each helper log's end is kept, bytes.
const HELPER_TAIL: u64 = 64 << 10;

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
        append_helper_logs(run_dir, &copy)?;
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

/// Appends the last [`HELPER_TAIL`] bytes of each helper log in `run_dir` to `copy`,
/// each under a `==> name <==` line.
fn append_helper_logs(run_dir: &Path, copy: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut out = std::fs::OpenOptions::new().append(true).open(copy)?;
    for name in HELPER_LOGS {
        let Ok(mut log) = std::fs::File::open(run_dir.join(name)) else {
            continue;
        };
        let len = log.metadata()?.len();
        log.seek(SeekFrom::Start(len.saturating_sub(HELPER_TAIL)))?;
        writeln!(out, "\n==> {name} <==")?;
        std::io::copy(&mut log.take(HELPER_TAIL), &mut out)?;
    }
    Ok(())
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
        // The helpers' logs follow the console, each cut to its tail.
        std::fs::write(run_dir.join("vsock.log"), "vsock says\n").unwrap();
        let big = "x".repeat(HELPER_TAIL as usize) + "qemu's last words\n";
        std::fs::write(run_dir.join("qemu.log"), &big).unwrap();
        let kept = keep(&console, &run_dir, "pod", 99).unwrap();
        let text = std::fs::read_to_string(kept).unwrap();
        let tail = &big[big.len() - HELPER_TAIL as usize..];
        assert_eq!(
            text,
            format!(
                "boot {}\n\n==> qemu.log <==\n{tail}\n==> vsock.log <==\nvsock says\n",
                KEPT + 3
            )
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dir).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }
}
