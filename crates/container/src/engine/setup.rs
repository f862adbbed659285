//! libcontainer's set-up processes (`youki:[1:INTER]`, `youki:[2:INIT]`)
//! are children of the process that creates a container or execs into one.
//! When the set-up fails, libcontainer returns without waiting for them; in
//! a long-lived caller (the shim) they would stay zombies for good, and a
//! zombie init in a pod's pid namespace keeps the pod from stopping. Every
//! build therefore goes through [`build`], which reaps what a failed one
//! left.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// Held while libcontainer makes set-up processes, so that a failed build
/// reaps only its own, never those of a build running beside it.
static SETUP: Mutex<()> = Mutex::new(());

/// Runs libcontainer's `build`; if it fails, kills and reaps the set-up
/// processes it started (those that were not children before).
pub fn build<T, E>(build: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let _setup = SETUP.lock().unwrap_or_else(PoisonError::into_inner);
    let before = setup_children();
    let built = build();
    if built.is_err() {
        for pid in setup_children().difference(&before) {
            let pid = Pid::from_raw(*pid);
            let _ = kill(pid, Signal::SIGKILL);
            if let Err(e) = waitpid(pid, None) {
                tracing::warn!(pid = pid.as_raw(), error = %e, "reaping a failed set-up process");
            }
        }
    }
    built
}

/// Pids of this process's children named as libcontainer's set-up processes.
fn setup_children() -> BTreeSet<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(") ")?;
            let ppid = rest.split_whitespace().nth(1)?;
            (ppid == me && head.contains(" (youki:[")).then_some(pid)
        })
        .collect()
}
