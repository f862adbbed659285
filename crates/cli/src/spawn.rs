//! Detached helper processes (the sandbox monitor, exec proxies): started
//! from this executable with a readiness pipe, they report "ok" or a one-line
//! error, then live on as the host process standing for a guest process.

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    io::Read,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    process::{Child, Command as Process, Stdio},
};

use anyhow::{bail, Context};
use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag, OFlag},
    unistd::pipe2,
};

use crate::{console::Console, Cli, LogFormat};

/// Environment variable naming the inherited readiness pipe.
pub const READY_FD_ENV: &str = "SKERRY_READY_FD";

/// Starts `skerry [global flags] SUBCOMMAND…` with `console` as its stdio
/// (or ours), waits for its report and returns the child. A child that
/// reports an error has exited; the error is returned.
pub fn spawn(
    cli: &Cli,
    what: &str,
    subcommand: Vec<OsString>,
    console: Console,
) -> anyhow::Result<Child> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        pipe2(OFlag::O_CLOEXEC).context("creating the readiness pipe")?;
    // The child inherits the write end; nothing else runs concurrently in
    // this process, so clearing close-on-exec leaks it nowhere else.
    fcntl(write_end.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).context("readiness pipe")?;
    let exe = std::env::current_exe().context("locating the skerry executable")?;
    let mut cmd = Process::new(exe);
    cmd.args(global_args(cli))
        .args(subcommand)
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string());
    if let Console::Pty(slave) = &console {
        let stdio =
            || -> anyhow::Result<Stdio> { Ok(slave.try_clone().context("terminal")?.into()) };
        cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting the {what}"))?;
    drop(write_end);
    drop(console);
    let mut report = String::new();
    fs::File::from(read_end)
        .read_to_string(&mut report)
        .with_context(|| format!("reading the {what}'s report"))?;
    let report = report.trim();
    if report == "ok" {
        return Ok(child);
    }
    let _ = child.wait();
    if report.is_empty() {
        bail!(
            "the {what} exited before reporting (see {})",
            cli.log
                .as_deref()
                .unwrap_or(Path::new("its log: use --log"))
                .display()
        );
    }
    bail!("{report}");
}

/// The global flags a helper inherits.
fn global_args(cli: &Cli) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--root".into(), cli.root.clone().into()];
    if let Some(log) = &cli.log {
        args.extend(["--log".into(), log.clone().into()]);
    }
    if let Some(config) = &cli.config {
        args.extend(["--config".into(), config.clone().into()]);
    }
    if cli.debug {
        args.push("--debug".into());
    }
    args.push("--log-format".into());
    args.push(
        match cli.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .into(),
    );
    args
}

/// In a helper: leaves the caller's session and opens the readiness pipe.
pub fn helper_ready_pipe() -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    // The helper outlives the CLI that started it.
    let _ = nix::unistd::setsid();
    let fd: i32 = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{READY_FD_ENV} is not set: this command is internal"))?;
    // Reopen the inherited pipe through /proc rather than adopting a raw fd.
    let ready = OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .context("readiness pipe")?;
    let _ = nix::unistd::close(fd);
    Ok(Box::new(ready))
}

/// Writes a pid file atomically, as runc does.
pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("skerry-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}
