//! Log set-up: `--log FILE`, `--log-format text|json`, `--debug`.

use std::{fs::OpenOptions, path::Path, sync::Mutex};

use tracing_subscriber::{fmt, EnvFilter};

use crate::LogFormat;

/// Routes tracing output to `file` (appending) or to stderr.
pub fn init(file: Option<&Path>, format: LogFormat, debug: bool) -> anyhow::Result<()> {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("SKERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_ansi(false);
    match file {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            let writer = Mutex::new(f);
            match format {
                LogFormat::Json => builder.json().with_writer(writer).init(),
                LogFormat::Text => builder.with_writer(writer).init(),
            }
        }
        None => {
            // Without --log only warnings reach stderr, unless --debug.
            let filter = if debug { "debug" } else { "warn" };
            let builder = fmt()
                .with_env_filter(EnvFilter::new(filter))
                .with_ansi(false)
                .with_writer(std::io::stderr);
            match format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
        }
    }
    Ok(())
}
