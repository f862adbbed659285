//! `create`, `run` and the hidden `monitor` command.

use std::{
    fs,
    io::Write as _,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    process::Child,
};

use anyhow::{bail, Context};
use nix::{sys::signal::Signal, unistd::Pid};
use skerry_runtime::{
    bundle::Bundle,
    config::{Config, Isolation},
    image, isolation, lifecycle,
    monitor::{self, MonitorOptions},
    mounts::SysMounts,
    plain,
    relay::{ProcessStdio, RelayOptions},
    sandbox::{ConfiguredLauncher, SandboxParams},
    state::{validate_id, StateStore},
};

use crate::{
    commands::load_config,
    console::{self, RawMode},
    spawn::{self, write_pid_file},
    Cli, CreateArgs,
};

/// Checks everything a user can get wrong before any process is started,
/// and decides the container's isolation.
fn preflight(cli: &Cli, opts: &CreateArgs) -> anyhow::Result<(Config, Bundle, Isolation)> {
    validate_id(&opts.id)?;
    let config = load_config(cli)?;
    let bundle = Bundle::load(&opts.bundle)?;
    let isolation = isolation::resolve(&config.runtime, bundle.spec.annotations().as_ref())?;
    skerry_runtime::policy::check(&config.policy, &bundle.spec, isolation)?;
    if isolation == Isolation::Container {
        return Ok((config, bundle, isolation));
    }
    skerry_runtime::vm_namespaces::check(&bundle.spec)?;
    if opts.preserve_fds > 0 {
        bail!(
            "--preserve-fds {}: host file descriptors cannot be passed into a VM",
            opts.preserve_fds
        );
    }
    for (what, path) in [
        ("guest kernel", image::kernel_path(&config.guest.image_dir)),
        (
            "guest initramfs",
            image::initrd_path(&config.guest.image_dir),
        ),
    ] {
        if !path.is_file() {
            bail!(
                "{what} {} not found (run `skerry image build`)",
                path.display()
            );
        }
    }
    Ok((config, bundle, isolation))
}

fn terminal(bundle: &Bundle) -> bool {
    bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// What `create` left running.
#[derive(Debug)]
pub enum Created {
    /// A VM container: its monitor, and whether it has a terminal.
    Vm(Child, bool),
    /// A container-mode container: the host pid of its init.
    Plain(u32),
}

/// `create`: validates; for a VM container starts the monitor and waits
/// until it reports the container created (or the error); in container mode
/// creates the container with libcontainer.
pub async fn create(
    cli: &Cli,
    store: &StateStore,
    opts: &CreateArgs,
    detached: bool,
) -> anyhow::Result<Created> {
    let id = opts.id.as_str();
    let (_, bundle, isolation) = preflight(cli, opts)?;
    if isolation == Isolation::Container {
        let options = plain::CreateOptions {
            pid_file: opts.pid_file.clone(),
            console_socket: opts.console_socket.clone(),
            preserve_fds: opts.preserve_fds,
            no_pivot: opts.no_pivot,
            detached,
        };
        return Ok(Created::Plain(plain::create(store, id, &bundle, &options)?));
    }
    let tty = terminal(&bundle);
    store.create_dir(id)?;
    let started = console::setup(tty, opts.console_socket.as_deref(), detached).and_then(|c| {
        let args = vec![
            "monitor".into(),
            "--bundle".into(),
            bundle.dir.clone().into_os_string(),
            id.into(),
        ];
        spawn::spawn(cli, "container monitor", args, c)
    });
    let child = match started {
        Ok(child) => child,
        Err(e) => {
            // A monitor that failed removed what it made; one that died (was
            // killed) left its state, with the VM processes it launched.
            if store.load(id).is_ok() {
                if let Err(cleanup) = lifecycle::delete(store, id, true).await {
                    tracing::warn!(container = id, error = %cleanup, "cleaning up after the monitor");
                }
            }
            let _ = store.remove(id);
            return Err(e);
        }
    };
    if let Some(path) = &opts.pid_file {
        write_pid_file(path, child.id())?;
    }
    Ok(Created::Vm(child, tty))
}

/// The hidden `monitor` command: the per-sandbox monitor.
pub async fn monitor(
    cli: &Cli,
    store: &StateStore,
    bundle: &Path,
    id: &str,
) -> anyhow::Result<i32> {
    let mut ready = spawn::helper_ready_pipe()?;
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
        relay: relay_options(),
    };
    let launcher = ConfiguredLauncher(config.hypervisor.clone());
    Ok(monitor::run(opts, &launcher, Box::new(SysMounts), own_stdio()).await)
}

/// This process's stdio, handed to a guest process.
pub fn own_stdio() -> ProcessStdio {
    ProcessStdio {
        stdin: Box::new(tokio::io::stdin()),
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
    }
}

/// Forward signals; follow our terminal's size if stdin is one.
pub fn relay_options() -> RelayOptions {
    let stdin = std::io::stdin();
    let terminal = nix::unistd::isatty(stdin.as_raw_fd())
        .unwrap_or(false)
        .then(|| stdin.as_fd().try_clone_to_owned().ok())
        .flatten()
        .map(fs::File::from);
    RelayOptions {
        forward_signals: true,
        terminal,
    }
}

/// `run`: create, start, wait, delete; the container's status is ours.
pub async fn run(cli: &Cli, store: &StateStore, opts: &CreateArgs) -> anyhow::Result<i32> {
    let id = opts.id.as_str();
    let (mut child, terminal) = match create(cli, store, opts, false).await? {
        Created::Vm(child, terminal) => (child, terminal),
        Created::Plain(pid) => {
            if let Err(e) = lifecycle::start(store, id).await {
                let _ = lifecycle::delete(store, id, true).await;
                return Err(e.into());
            }
            let code = wait_forwarding_signals(pid).await?;
            lifecycle::delete(store, id, true).await?;
            return Ok(code);
        }
    };
    // A terminal on our own tty: pass keystrokes through uncooked.
    let _raw = (terminal && opts.console_socket.is_none())
        .then(|| RawMode::enter(std::io::stdin()))
        .flatten();
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
    Ok(exit_code(code))
}

/// Waits for our child `pid` (a container-mode init or exec'd process),
/// relaying signals to it; returns its status as a shell reports it.
pub async fn wait_forwarding_signals(pid: u32) -> anyhow::Result<i32> {
    tokio::select! {
        status = plain::wait(pid) => Ok(status?),
        () = forward_signals_to(Pid::from_raw(pid as i32)) => unreachable!("signal forwarding never ends"),
    }
}

/// A child's exit status as a shell reports it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    std::os::unix::process::ExitStatusExt::signal(&status)
        .map_or_else(|| status.code().unwrap_or(1), |s| 128 + s)
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
