//! `skerry`: an OCI runtime CLI (runc's conventions) that runs each container
//! in its own lightweight VM, or (isolation "container") on the host kernel.
#![forbid(unsafe_code)]

mod commands;
mod console;
mod container_cmd;
mod exec_cmd;
mod features;
mod list;
mod logging;
mod seccomp_default;
mod spawn;
mod spec_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs OCI containers inside lightweight virtual machines.
#[derive(Debug, Parser)]
#[command(
    name = "skerry",
    version,
    about,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = skerry_runtime::state::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Append log lines to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of log lines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug detail.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Configuration file.
    #[arg(long, global = true, env = "SKERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Accepted for runc compatibility; sandbox VMs are not placed in systemd cgroups yet.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and start a container, wait for it, delete it; exit with its status.
    Run(CreateArgs),
    /// Create a container; its process waits for `start`.
    Create(CreateArgs),
    /// Run a new process inside a running container.
    Exec(ExecArgs),
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Print the container's OCI state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal (name or number, default SIGTERM) to the container.
    Kill {
        /// Signal every process of the container.
        #[arg(long, short)]
        all: bool,
        /// Container id.
        id: String,
        /// Signal, e.g. TERM, SIGKILL or 9.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container and everything it left on the host.
    Delete {
        /// Kill the container first if it still runs.
        #[arg(long, short)]
        force: bool,
        /// Container id.
        id: String,
    },
    /// Suspend every process of the container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// Change a running container's resource limits (LinuxResources JSON).
    Update {
        /// File with the OCI LinuxResources JSON, or "-" for stdin.
        #[arg(long, short)]
        resources: PathBuf,
        /// Container id.
        id: String,
    },
    /// Write a hardened default config.json into the bundle (runc's example with --runc).
    Spec {
        /// Bundle directory to write config.json into.
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Map the calling user to root in a user namespace.
        #[arg(long)]
        rootless: bool,
        /// Write runc's plain example instead of the hardened spec.
        #[arg(long)]
        runc: bool,
    },
    /// Print the OCI runtime features document (what skerry supports) as JSON.
    Features,
    /// List the containers in --root.
    List {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = list::Format::Table)]
        format: list::Format,
        /// Print only the container ids.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the host processes of a container (`ps -ef` by default).
    Ps {
        /// Output format: table (ps output) or json (array of host pids).
        #[arg(long, short, value_enum, default_value_t = list::Format::Table)]
        format: list::Format,
        /// Container id.
        id: String,
        /// Arguments for ps (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Tell whether this host can run sandboxes, and with which hypervisor.
    Check,
    /// Guest image tools.
    Image {
        /// The image command.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Internal: the host process standing for one exec'd process.
    #[command(hide = true)]
    ExecProxy {
        /// The OCI process JSON to run (removed once read).
        #[arg(long)]
        process_file: PathBuf,
        /// Exec id.
        #[arg(long)]
        exec_id: String,
        /// Container id.
        id: String,
    },
    /// Internal: the per-sandbox monitor started by `create`.
    #[command(hide = true)]
    Monitor {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Container id.
        id: String,
    },
}

/// `skerry create` and `skerry run` arguments (runc's).
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Bundle directory (holds config.json).
    #[arg(long, short, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's host pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the master of the container's terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (container mode; a guest always pivots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility; the guest kernel keyring is the VM's own.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass fds 3..3+N to the container (container mode; refused for a VM when N > 0).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
}

/// `skerry exec` arguments (runc's).
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// OCI process JSON to run instead of ARGS.
    #[arg(long, short)]
    pub process: Option<PathBuf>,
    /// Return once the process runs; its host pid goes to --pid-file.
    #[arg(long, short)]
    pub detach: bool,
    /// Write the process's host pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the master of the process's terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(long, short)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE), repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// User as UID[:GID].
    #[arg(long, short)]
    pub user: Option<String>,
    /// Additional group id, repeatable.
    #[arg(long = "additional-gids", short = 'g')]
    pub additional_gids: Vec<u32>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Pass fds 3..3+N to the process (container mode; refused for a VM when N > 0).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Container id.
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `skerry image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel + initramfs: around skerry's own hardened kernel
    /// (the default), or Debian's cloud kernel and its modules (`--kernel debian`).
    Build {
        /// Output directory (default: guest.image_dir of the config).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The static skerry-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Which kernel: skerry's own (everything built in, no modules; built
        /// or taken from ~/.cache/skerry-kernel) or Debian's cloud kernel. Default:
        /// debian with --kernel-deb, else skerry.
        #[arg(long, value_enum)]
        kernel: Option<KernelKind>,
        /// A linux-image-*-cloud-amd64 .deb to use instead of downloading one.
        #[arg(long, conflicts_with = "kernel_dir")]
        kernel_deb: Option<PathBuf>,
        /// A skerry kernel build (the directory scripts/build-kernel.sh
        /// printed) to use instead of building or finding one.
        #[arg(long)]
        kernel_dir: Option<PathBuf>,
        /// Rebuild even if the image is up to date.
        #[arg(long)]
        force: bool,
    },
}

/// The kernel `skerry image build` puts in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelKind {
    /// Debian's linux-image-cloud-amd64 with its virtio modules.
    Debian,
    /// skerry's hardened, module-less kernel (scripts/build-kernel.sh).
    Skerry,
}

fn main() {
    let cli = Cli::parse();
    let code = commands::main(cli);
    std::process::exit(code);
}
