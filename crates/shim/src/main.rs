//! `containerd-shim-skerry-v2`: containerd's shim v2 for skerry. Each pod
//! (or task outside a pod) runs in its own lightweight VM, or, in container
//! isolation, as plain containers on the host.
#![forbid(unsafe_code)]

mod bootstrap;
mod container;
mod error;
mod events;
mod host_io;
mod options;
mod pod;
mod service;
mod stdio;

use std::{fs::OpenOptions, path::PathBuf, sync::Mutex};

use containerd_shim::Flags;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let flags = match containerd_shim::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-skerry-v2: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("containerd-shim-skerry-v2 {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(&flags);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match flags.action.as_str() {
            "start" => bootstrap::start(&flags).await,
            "delete" => bootstrap::delete(&flags).await,
            _ => bootstrap::serve(&flags).await,
        }
    });
    // Relay tasks may still wait on the guest: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = skerry_runtime::monitor::error_chain(&e);
            tracing::error!(container = %flags.id, "{message}");
            eprintln!("containerd-shim-skerry-v2: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to `SKERRY_SHIM_LOG` if set, else to the `log` FIFO containerd
/// reads in the bundle directory (the serving shim's cwd), else stderr.
fn init_logging(flags: &Flags) {
    let level = if flags.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("SKERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (path, create) = match std::env::var_os("SKERRY_SHIM_LOG") {
        Some(file) => (PathBuf::from(file), true),
        None => (PathBuf::from("log"), false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match OpenOptions::new().append(true).create(create).open(&path) {
        Ok(file) => builder.with_writer(Mutex::new(file)).init(),
        Err(_) => builder.with_writer(std::io::stderr).init(),
    }
}
