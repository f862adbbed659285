//! The commands behind the CLI.

use std::{path::PathBuf, str::FromStr};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use skerry_runtime::{
    config::{Config, DEFAULT_CONFIG_PATH},
    image::KernelSource,
    lifecycle,
    state::{validate_id, StateStore},
};

use crate::{container_cmd, exec_cmd, logging, Cli, Command, ImageCommand, KernelKind};

/// Runs the command line; returns the process exit status.
pub fn main(cli: Cli) -> i32 {
    let log = match (&cli.log, &cli.command) {
        (Some(path), _) => Some(path.clone()),
        // A helper's stderr belongs to the guest process: log to the state dir.
        (None, Command::Monitor { id, .. } | Command::ExecProxy { id, .. })
            if validate_id(id).is_ok() =>
        {
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
    let result = runtime.block_on(dispatch(&cli));
    // A relay may still block in a read of our stdin (a terminal that stays
    // open): do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            // Without --log, tracing writes to stderr too: say it once.
            if log.is_some() {
                tracing::error!("{e:#}");
            }
            eprintln!("skerry: {e:#}");
            1
        }
    }
}

pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    Ok(Config::load(&path, explicit)?)
}

async fn dispatch(cli: &Cli) -> anyhow::Result<i32> {
    let store = StateStore::new(&cli.root);
    match &cli.command {
        Command::Run(args) => container_cmd::run(cli, &store, args).await,
        Command::Create(args) => {
            container_cmd::create(cli, &store, args, true).await?;
            Ok(0)
        }
        Command::Exec(args) => exec_cmd::exec(cli, &store, args).await,
        Command::ExecProxy {
            process_file,
            exec_id,
            id,
        } => exec_cmd::exec_proxy(&store, id, exec_id, process_file).await,
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
        Command::Pause { id } => {
            lifecycle::pause(&store, id, true).await?;
            Ok(0)
        }
        Command::Resume { id } => {
            lifecycle::pause(&store, id, false).await?;
            Ok(0)
        }
        Command::Update { resources, id } => update(&store, resources, id).await,
        Command::Spec {
            bundle,
            rootless,
            runc,
        } => crate::spec_cmd::run(bundle, *rootless, *runc),
        Command::Features => crate::features::run(),
        Command::List { format, quiet } => crate::list::list(&store, *format, *quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => crate::list::ps(&store, id, *format, ps_args),
        Command::Check => {
            let report = skerry_runtime::check::run(&load_config(cli)?);
            print!("{report}");
            Ok(if report.ok() { 0 } else { 1 })
        }
        Command::Image { command } => image(cli, command),
        Command::Monitor { bundle, id } => container_cmd::monitor(cli, &store, bundle, id).await,
    }
}

/// `update`: applies LinuxResources JSON (a file, or `-` for stdin) to the
/// container's cgroup: on the host in container mode, in the guest for a VM
/// (the VM itself keeps the size it was created with).
async fn update(store: &StateStore, resources: &std::path::Path, id: &str) -> anyhow::Result<i32> {
    let text = if resources == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("--resources -: reading stdin")?
    } else {
        std::fs::read_to_string(resources)
            .with_context(|| format!("--resources {}", resources.display()))?
    };
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "--resources {}: invalid LinuxResources JSON",
                resources.display()
            )
        })?;
    lifecycle::update(store, id, &resources).await?;
    Ok(0)
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

fn image(cli: &Cli, command: &ImageCommand) -> anyhow::Result<i32> {
    let ImageCommand::Build {
        output,
        agent,
        kernel,
        kernel_deb,
        kernel_dir,
        force,
    } = command;
    let kernel = match (kernel, kernel_deb, kernel_dir) {
        (Some(KernelKind::Debian), _, Some(_)) => bail!("--kernel-dir needs --kernel skerry"),
        (Some(KernelKind::Skerry), Some(_), _) => bail!("--kernel-deb needs --kernel debian"),
        (Some(KernelKind::Debian), deb, None) | (None, deb @ Some(_), None) => {
            KernelSource::Debian(deb.clone())
        }
        (Some(KernelKind::Skerry) | None, _, dir) => KernelSource::Skerry(dir.clone()),
    };
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
        kernel,
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
