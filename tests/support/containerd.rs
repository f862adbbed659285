//! Test fixture shared by the CLI's and the shim's containerd tests (included
//! with `#[path]`): containerd 1.6 with its root, state, socket and log in a
//! test directory, and the mounts a test leaves under its directory.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
};

/// Writes `dir/containerd.toml` (root, state and socket in `dir`, no CRI
/// plugin); returns the config file and the socket it names.
pub fn write_config(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("containerd.toml");
    let socket = dir.join("ctd.sock");
    fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            socket.display()
        ),
    )
    .unwrap();
    (config, socket)
}

/// Starts containerd with `config` and the extra environment `envs`, its
/// output appended to `dir/containerd.log` (a restart keeps the first run's).
pub fn spawn<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    config: &Path,
    envs: impl IntoIterator<Item = (K, V)>,
) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(config)
        .envs(envs)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Lines of this process's mountinfo that name a path under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}
