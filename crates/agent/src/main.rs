//! skerry-agent: PID 1 of the sandbox VM. Serves the agent API on vsock and runs the
//! pod's containers (through youki's libcontainer, in the launcher process).

mod boot;
mod cgroup;
mod confine;
mod guest_spec;
mod launcher;
mod network;
mod reaper;
mod service;
mod state;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use skerry_container::security::ChannelGuard;
use tracing::{error, info, warn};

/// Default directory the host's virtio-fs share is mounted on.
const SHARED_DIR: &str = "/run/skerry/shared";

/// Kernel command-line flag: power off once booted instead of serving the API
/// (measures boot-to-poweroff of an image; see bench/).
const POWEROFF_AFTER_BOOT: &str = "skerry.poweroff_after_boot";

struct Options {
    listen: String,
    shared_dir: PathBuf,
    /// Bundles and libcontainer's state; default: `agent` beside the shared directory.
    state_dir: Option<PathBuf>,
}

impl Options {
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            self.shared_dir
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .join("agent")
        })
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
    let mut o = Options {
        listen: format!("vsock://-1:{}", skerry_protocol::AGENT_VSOCK_PORT),
        shared_dir: PathBuf::from(SHARED_DIR),
        state_dir: None,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => o.listen = args.next().context("--listen needs an address")?,
            "--shared-dir" => {
                o.shared_dir = args.next().context("--shared-dir needs a path")?.into()
            }
            "--state-dir" => {
                o.state_dir = Some(args.next().context("--state-dir needs a path")?.into())
            }
            // The kernel passes unknown command-line words to init; ignore them.
            _ => {}
        }
    }
    Ok(o)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(filter)
        .init();
}

async fn serve(
    opts: Options,
    guest: bool,
    launcher: launcher::Launcher,
    guard: ChannelGuard,
) -> anyhow::Result<()> {
    let reaper = Arc::new(reaper::Reaper::default());
    reaper.start()?;
    let cgroups = guest
        .then(|| cgroup::Cgroups::open(cgroup::GUEST_ROOT.as_ref()))
        .flatten();
    let state_dir = opts.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    let sandbox = Arc::new(state::Sandbox::new(
        reaper,
        launcher,
        (opts.shared_dir, state_dir),
        guard,
        cgroups,
    ));
    let service = service::AgentService::new(sandbox, guest);
    let services = skerry_protocol::create_agent(Arc::new(service));
    if let Some(path) = opts.listen.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&opts.listen)
        .with_context(|| format!("binding {}", opts.listen))?
        .register_service(services);
    server.start().await.context("starting the ttrpc server")?;
    info!(listen = %opts.listen, "agent API ready");
    if guest {
        tokio::task::spawn_blocking(boot::announce_ready);
    }
    std::future::pending::<()>().await;
    Ok(())
}

fn main() {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let guest = std::process::id() == 1;
    let problems = if guest { boot::early() } else { Vec::new() };
    init_logging();
    for p in problems {
        warn!("early boot: {p}");
    }
    std::panic::set_hook(Box::new(|info| error!("panic: {info}")));
    info!(
        version = env!("CARGO_PKG_VERSION"),
        guest, "skerry-agent starting"
    );
    let opts = match parse_args(rest.into_iter()) {
        Ok(o) => o,
        Err(e) => fatal(guest, e),
    };
    if guest {
        boot::load_modules();
        if opts.listen.starts_with("vsock://") {
            boot::wait_for_vsock();
        }
        if boot::kernel_flag(POWEROFF_AFTER_BOOT) {
            info!("boot complete; powering off as {POWEROFF_AFTER_BOOT} asks");
            boot::power_off();
        }
    } else {
        // Development mode on a host: stay the parent of re-parented exec processes.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let guard = ChannelGuard::of_this_kernel();
    info!("containers are kept off the agent's vsock and share by {guard}");
    // Set up. The launcher is forked while this is the only thread; from here
    // on the agent's threads are confined, and container processes are
    // created by the launcher, which is not.
    let launcher =
        launcher::Launcher::fork().unwrap_or_else(|e| fatal(guest, anyhow::Error::new(e)));
    if let Err(e) = confine::confine_this_thread() {
        fatal(guest, anyhow::Error::new(e));
    }
    info!(
        status = %confine::status_of_this_thread(),
        limits = %confine::limits_of_this_process(),
        "agent confined"
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(guest, anyhow::Error::new(e).context("building the runtime")),
    };
    // A panic on this thread must still end in a logged power-off, never a silent exit.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(serve(opts, guest, launcher, guard))
    }));
    match result {
        Ok(Ok(())) => fatal(guest, anyhow::anyhow!("server loop ended")),
        Ok(Err(e)) => fatal(guest, e),
        Err(_) => fatal(guest, anyhow::anyhow!("the agent's main loop panicked")),
    }
}

fn fatal(guest: bool, e: anyhow::Error) -> ! {
    error!("fatal: {e:#}");
    if guest {
        boot::power_off();
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_default_and_override() {
        let o = parse_args(std::iter::empty()).unwrap();
        assert_eq!(o.listen, "vsock://-1:1024");
        assert_eq!(o.shared_dir, PathBuf::from(SHARED_DIR));
        let o = parse_args(
            [
                "console=ttyS0",
                "--listen",
                "unix:///tmp/a.sock",
                "--shared-dir",
                "/x",
            ]
            .map(String::from)
            .into_iter(),
        )
        .unwrap();
        assert_eq!(o.listen, "unix:///tmp/a.sock");
        assert_eq!(o.shared_dir, PathBuf::from("/x"));
        assert!(parse_args(["--listen".to_string()].into_iter()).is_err());
    }
}
