//! The commands behind the CLI.

use std::{
    fs::{self, OpenOptions},
    io::{Read, Write as _},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command as Process},
    str::FromStr,
};

use anyhow::{bail, Context};
use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag, OFlag},
    sys::signal::Signal,
    unistd::{pipe2, Pid},
};
use skerry_runtime::{
    bundle::Bundle,
    config::{Config, DEFAULT_CONFIG_PATH},
    lifecycle,
    monitor::{self, MonitorOptions, MonitorStdio},
    mounts::SysMounts,
    sandbox::{ConfiguredLauncher, SandboxParams},
    state::{validate_id, StateStore},
};

use crate::{logging, Cli, Command, ImageCommand};

/// Runs the command line; returns the process exit status.
pub fn main(cli: Cli) -> i32 {
    let log = match (&cli.log, &cli.command) {
        (Some(path), _) => Some(path.clone()),
        // The monitor's stderr belongs to the container: log to its state dir.
        (None, Command::Monitor { id, .. }) if validate_id(id).is_ok() => {
            Some(cli.root.join(id).join("monitor.log"))
        }
        (None, _) => None,
    };
    if let Err(e) = logging::init(log.as_deref(), cli.log_format, cli.debug) {
        eprintln!("skerry: {e:#}");
        return 1;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(&cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("skerry: {e:#}");
            1
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    Ok(Config::load(&path, explicit)?)
}

async fn dispatch(cli: &Cli) -> anyhow::Result<i32> {
    let store = StateStore::new(&cli.root);
    match &cli.command {
        Command::Run {
            bundle,
            pid_file,
            id,
        } => run(cli, &store, bundle, pid_file.as_deref(), id).await,
        Command::Create {
            bundle,
            pid_file,
            id,
        } => {
            create(cli, &store, bundle, pid_file.as_deref(), id)?;
            Ok(0)
        }
        Command::Start { id } => {
            lifecycle::start(&store, id).await?;
            Ok(0)
        }
        Command::State { id } => {
            let state = lifecycle::state(&store, id)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let signal = parse_signal(signal)?;
            lifecycle::kill(&store, id, signal as u32, *all).await?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            lifecycle::delete(&store, id, *force).await?;
            Ok(0)
        }
        Command::Check => {
            let report = skerry_runtime::check::run(&load_config(cli)?);
            print!("{report}");
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Image { command } => image(cli, command),
        Command::Monitor {
            bundle,
            ready_fd,
            id,
        } => run_monitor(cli, &store, bundle, *ready_fd, id).await,
    }
}

/// Parses a signal given as a name (`TERM`, `SIGTERM`, `kill`) or number.
pub fn parse_signal(text: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("invalid signal number {n}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).with_context(|| format!("invalid signal {text:?}"))
}

/// Checks everything a user can get wrong before any process is started.
fn preflight(cli: &Cli, bundle: &Path, id: &str) -> anyhow::Result<Config> {
    validate_id(id)?;
    let config = load_config(cli)?;
    Bundle::load(bundle)?;
    for (what, path) in [
        ("guest kernel", config.guest.kernel()),
        ("guest initramfs", config.guest.initrd()),
    ] {
        if !path.is_file() {
            bail!(
                "{what} {} not found (run `skerry image build`)",
                path.display()
            );
        }
    }
    Ok(config)
}

/// `create`: validates, then starts the monitor and waits until it reports
/// the container created (or the error). Returns the monitor child.
fn create(
    cli: &Cli,
    store: &StateStore,
    bundle: &Path,
    pid_file: Option<&Path>,
    id: &str,
) -> anyhow::Result<Child> {
    preflight(cli, bundle, id)?;
    store.create_dir(id)?;
    let spawned = spawn_monitor(cli, bundle, id);
    let (mut child, report) = match spawned {
        Ok(x) => x,
        Err(e) => {
            let _ = store.remove(id);
            return Err(e);
        }
    };
    if report.trim() != "ok" {
        let _ = child.wait();
        let _ = store.remove(id);
        if report.trim().is_empty() {
            bail!(
                "container monitor exited before reporting (see {})",
                cli.log
                    .as_deref()
                    .unwrap_or(Path::new("the log: use --log"))
                    .display()
            );
        }
        bail!("{}", report.trim());
    }
    if let Some(path) = pid_file {
        write_pid_file(path, child.id())?;
    }
    Ok(child)
}

fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("skerry-tmp");
    fs::write(&tmp, pid.to_string())
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}

/// Starts `skerry monitor` detached, with the CLI's stdio and a readiness
/// pipe; returns the child and what it reported.
fn spawn_monitor(cli: &Cli, bundle: &Path, id: &str) -> anyhow::Result<(Child, String)> {
    let (read_end, write_end): (OwnedFd, OwnedFd) =
        pipe2(OFlag::O_CLOEXEC).context("creating the readiness pipe")?;
    // The monitor inherits the write end; nothing else runs concurrently in
    // this process, so clearing close-on-exec leaks it nowhere else.
    fcntl(write_end.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).context("readiness pipe")?;
    let exe = std::env::current_exe().context("locating the skerry executable")?;
    let bundle =
        fs::canonicalize(bundle).with_context(|| format!("bundle {}", bundle.display()))?;
    let mut cmd = Process::new(exe);
    cmd.arg("--root").arg(&cli.root);
    if let Some(log) = &cli.log {
        cmd.arg("--log").arg(log);
    }
    if let Some(config) = &cli.config {
        cmd.arg("--config").arg(config);
    }
    if cli.debug {
        cmd.arg("--debug");
    }
    cmd.arg("--log-format")
        .arg(match cli.log_format {
            crate::LogFormat::Text => "text",
            crate::LogFormat::Json => "json",
        })
        .arg("monitor")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--ready-fd")
        .arg(write_end.as_raw_fd().to_string())
        .arg(id);
    let child = cmd.spawn().context("starting the container monitor")?;
    drop(write_end);
    let mut report = String::new();
    fs::File::from(read_end)
        .read_to_string(&mut report)
        .context("reading the monitor's report")?;
    Ok((child, report))
}

async fn run_monitor(
    cli: &Cli,
    store: &StateStore,
    bundle: &Path,
    ready_fd: i32,
    id: &str,
) -> anyhow::Result<i32> {
    // Leave the CLI's session: the monitor outlives it.
    let _ = nix::unistd::setsid();
    // Reopen the inherited pipe through /proc rather than adopting a raw fd.
    let ready = OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{ready_fd}"))
        .context("readiness pipe")?;
    let _ = nix::unistd::close(ready_fd);
    let mut ready: Box<dyn std::io::Write + Send> = Box::new(ready);
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(ready, "{e:#}");
            let _ = store.remove(id);
            return Ok(1);
        }
    };
    let opts = MonitorOptions {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        store: store.clone(),
        params: SandboxParams::from_config(&config),
        ready,
        forward_signals: true,
    };
    let stdio = MonitorStdio {
        stdin: Box::new(tokio::io::stdin()),
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
    };
    let launcher = ConfiguredLauncher(config.hypervisor.clone());
    Ok(monitor::run(opts, &launcher, Box::new(SysMounts), stdio).await)
}

/// `run`: create, start, wait, delete; the container's status is ours.
async fn run(
    cli: &Cli,
    store: &StateStore,
    bundle: &Path,
    pid_file: Option<&Path>,
    id: &str,
) -> anyhow::Result<i32> {
    let mut child = create(cli, store, bundle, pid_file, id)?;
    if let Err(e) = lifecycle::start(store, id).await {
        let _ = lifecycle::delete(store, id, true).await;
        let _ = child.wait();
        return Err(e.into());
    }
    let monitor = Pid::from_raw(child.id() as i32);
    let status = tokio::select! {
        status = tokio::task::spawn_blocking(move || child.wait()) => status?,
        () = forward_signals_to(monitor) => unreachable!("signal forwarding never ends"),
    };
    let code = status.context("waiting for the container monitor")?;
    lifecycle::delete(store, id, true).await?;
    Ok(std::os::unix::process::ExitStatusExt::signal(&code)
        .map_or_else(|| code.code().unwrap_or(1), |s| 128 + s))
}

/// Relays SIGINT, SIGTERM, SIGHUP and SIGQUIT to `pid` (which relays them to
/// the container). Never returns.
async fn forward_signals_to(pid: Pid) {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ] {
        let (Ok(mut stream), Ok(sig)) = (signal(kind), Signal::try_from(kind.as_raw_value()))
        else {
            continue;
        };
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        });
    }
    std::future::pending::<()>().await;
}

fn image(cli: &Cli, command: &ImageCommand) -> anyhow::Result<i32> {
    let ImageCommand::Build {
        output,
        agent,
        kernel_deb,
        force,
    } = command;
    let config = load_config(cli)?;
    let agent = match agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()
            .context("locating the skerry executable")?
            .with_file_name("skerry-agent"),
    };
    let opts = skerry_runtime::image::BuildOptions {
        output_dir: output.clone().unwrap_or(config.guest.image_dir.clone()),
        agent,
        kernel_deb: kernel_deb.clone(),
        force: *force,
    };
    let report = skerry_runtime::image::build(&opts)?;
    println!("{report}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
