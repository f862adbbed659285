//! `exec` and the hidden `exec-proxy` command.

use std::{
    fs,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context};
use oci_spec::runtime::{Process, Spec, UserBuilder};
use skerry_runtime::{
    config::Isolation,
    exec::{self, ExecOptions},
    plain,
    relay::{ProcessStdio, RelayOptions},
    state::StateStore,
};

use crate::{
    console::{self, Console, RawMode},
    container_cmd::{own_stdio, relay_options, wait_forwarding_signals},
    spawn::{self, write_pid_file},
    Cli, ExecArgs,
};

/// The OCI process `exec` runs: `--process FILE`, or ARGS on top of the
/// container's own process (env, cwd, user) with the flags applied.
fn build_process(args: &ExecArgs, bundle: &Path) -> anyhow::Result<Process> {
    let mut process = match &args.process {
        Some(file) => {
            let text = fs::read(file).with_context(|| format!("--process {}", file.display()))?;
            serde_json::from_slice::<Process>(&text).with_context(|| {
                format!("--process {}: invalid OCI process JSON", file.display())
            })?
        }
        None => {
            if args.args.is_empty() {
                bail!("exec: no command given (pass ARGS or --process FILE)");
            }
            let config = bundle.join("config.json");
            let spec = Spec::load(&config).with_context(|| format!("{}", config.display()))?;
            let mut process = spec.process().clone().unwrap_or_default();
            process.set_args(Some(args.args.clone()));
            process.set_terminal(Some(args.tty));
            process
        }
    };
    if args.tty {
        process.set_terminal(Some(true));
    }
    if !args.env.is_empty() {
        if let Some(bad) = args.env.iter().find(|e| !e.contains('=')) {
            bail!("--env {bad:?}: expected KEY=VALUE");
        }
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(args.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if args.user.is_some() || !args.additional_gids.is_empty() {
        let (uid, gid) = match &args.user {
            Some(user) => parse_user(user)?,
            None => (process.user().uid(), process.user().gid()),
        };
        let mut user = UserBuilder::default().uid(uid).gid(gid);
        if !args.additional_gids.is_empty() {
            user = user.additional_gids(args.additional_gids.clone());
        }
        process.set_user(user.build().context("--user")?);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    Ok(process)
}

/// Parses `UID[:GID]`.
fn parse_user(text: &str) -> anyhow::Result<(u32, u32)> {
    let parse = |s: &str| {
        s.parse::<u32>()
            .with_context(|| format!("--user {text:?}: expected UID[:GID] as numbers"))
    };
    match text.split_once(':') {
        Some((uid, gid)) => Ok((parse(uid)?, parse(gid)?)),
        None => Ok((parse(text)?, 0)),
    }
}

/// `exec`.
pub async fn exec(cli: &Cli, store: &StateStore, args: &ExecArgs) -> anyhow::Result<i32> {
    let state = store.load(&args.id)?;
    let process = build_process(args, &state.bundle)?;
    if state.isolation == Isolation::Container {
        return exec_plain(store, args, &process).await;
    }
    if args.preserve_fds > 0 {
        bail!(
            "--preserve-fds {}: host file descriptors cannot be passed into a VM",
            args.preserve_fds
        );
    }
    let terminal = process.terminal().unwrap_or(false);
    let console = console::setup(terminal, args.console_socket.as_deref(), args.detach)?;
    let exec_id = exec::new_exec_id();
    if args.detach {
        let file = store.dir(&args.id).join(format!("{exec_id}.process.json"));
        fs::write(&file, serde_json::to_vec(&process)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let subcommand = vec![
            "exec-proxy".into(),
            "--process-file".into(),
            file.clone().into_os_string(),
            "--exec-id".into(),
            exec_id.into(),
            args.id.clone().into(),
        ];
        let child = spawn::spawn(cli, "exec proxy", subcommand, console);
        let _ = fs::remove_file(&file);
        let child = child?;
        if let Some(path) = &args.pid_file {
            write_pid_file(path, child.id())?;
        }
        return Ok(0);
    }
    // In the foreground this process is the exec proxy.
    if let Some(path) = &args.pid_file {
        write_pid_file(path, std::process::id())?;
    }
    let (stdio, relay, _raw) = match console {
        Console::Pty(slave) => {
            let file = || -> anyhow::Result<tokio::fs::File> {
                Ok(tokio::fs::File::from_std(fs::File::from(
                    slave.try_clone()?,
                )))
            };
            let stdio = ProcessStdio {
                stdin: Box::new(file()?),
                stdout: Box::new(file()?),
                stderr: Box::new(file()?),
            };
            let relay = RelayOptions {
                forward_signals: true,
                terminal: Some(fs::File::from(slave)),
            };
            (stdio, relay, None)
        }
        Console::Inherit => {
            let raw = terminal.then(|| RawMode::enter(std::io::stdin())).flatten();
            (own_stdio(), relay_options(), raw)
        }
    };
    let report = Arc::new(Mutex::new(Vec::new()));
    let opts = ExecOptions {
        id: args.id.clone(),
        exec_id,
        process,
        store: store.clone(),
        ready: Box::new(SharedBuf(Arc::clone(&report))),
        relay,
    };
    let status = exec::run(opts, stdio).await;
    let report = String::from_utf8_lossy(&report.lock().expect("report lock"))
        .trim()
        .to_string();
    if report != "ok" {
        bail!("{report}");
    }
    Ok(status)
}

/// `exec` in a container-mode container: libcontainer joins its namespaces
/// and cgroup; the process is our child, so the foreground waits for it.
async fn exec_plain(store: &StateStore, args: &ExecArgs, process: &Process) -> anyhow::Result<i32> {
    let opts = plain::ExecOptions {
        process: process.clone(),
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
        detached: args.detach,
    };
    let pid = plain::exec(store, &args.id, &opts)?;
    if args.detach {
        return Ok(0);
    }
    wait_forwarding_signals(pid).await
}

/// The hidden `exec-proxy` command: stands for one detached exec'd process.
pub async fn exec_proxy(
    store: &StateStore,
    id: &str,
    exec_id: &str,
    process_file: &Path,
) -> anyhow::Result<i32> {
    let mut ready = spawn::helper_ready_pipe()?;
    let process = fs::read(process_file)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(serde_json::from_slice::<Process>(&bytes)?));
    let process = match process {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(ready, "exec: {}: {e:#}", process_file.display());
            return Ok(1);
        }
    };
    let opts = ExecOptions {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        process,
        store: store.clone(),
        ready,
        relay: relay_options(),
    };
    Ok(exec::run(opts, own_stdio()).await)
}

/// A `Write` into a shared buffer (the foreground exec's readiness report).
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("report lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("bob")
            .unwrap_err()
            .to_string()
            .contains("UID[:GID]"));
    }
}
