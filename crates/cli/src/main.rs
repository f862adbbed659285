//! `skerry`: an OCI runtime CLI (runc's conventions) that runs each container
//! in its own lightweight VM.
#![forbid(unsafe_code)]

mod commands;
mod logging;

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
#[command(name = "skerry", version, about, propagate_version = true)]
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
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and start a container, wait for it, delete it; exit with its status.
    Run {
        /// Bundle directory (holds config.json).
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's host pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Container id.
        id: String,
    },
    /// Create a container; its process waits for `start`.
    Create {
        /// Bundle directory (holds config.json).
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Write the container's host pid here.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Container id.
        id: String,
    },
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
    /// Tell whether this host can run sandboxes, and with which hypervisor.
    Check,
    /// Guest image tools.
    Image {
        /// The image command.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Internal: the per-sandbox monitor started by `create`.
    #[command(hide = true)]
    Monitor {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
        /// Inherited pipe on which to report readiness.
        #[arg(long)]
        ready_fd: i32,
        /// Container id.
        id: String,
    },
}

/// `skerry image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel + initramfs from Debian's cloud kernel package.
    Build {
        /// Output directory (default: guest.image_dir of the config).
        #[arg(long)]
        output: Option<PathBuf>,
        /// The static skerry-agent binary (default: next to this executable).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// A linux-image-*-cloud-amd64 .deb to use instead of downloading one.
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// Rebuild even if the image is up to date.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = commands::main(cli);
    std::process::exit(code);
}
