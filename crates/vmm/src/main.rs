//! `skerry-vmm`: boots a Linux kernel (or a test guest) with the serial console on stdout.
//! Exit status: 0 poweroff, 1 VMM error, 2 usage, 3 guest reset, 4 guest crash, 5 stopped.

use std::sync::atomic::{AtomicU64, Ordering};

use skerry_vmm::cli::{self, Command};
use skerry_vmm::devices::legacy::serial::UnbufferedStdout;
use skerry_vmm::exit::EXIT_VMM_ERROR;
use skerry_vmm::run_vm;

/// Logs to stderr; level from `SKERRY_VMM_LOG` (error, warn, info, debug; default warn).
/// Rate-limited as a whole because a guest can trigger some log lines: the first
/// `LOG_BURST` lines are printed, then one in `LOG_SAMPLE` with the running count. No clock
/// is read, so logging needs no syscall beyond `write` (allowed on every thread).
struct StderrLogger {
    lines: AtomicU64,
}

const LOG_BURST: u64 = 50;
const LOG_SAMPLE: u64 = 1000;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n < LOG_BURST {
            eprintln!("skerry-vmm: {}: {}", r.level(), r.args());
        } else if (n - LOG_BURST) % LOG_SAMPLE == 0 {
            eprintln!(
                "skerry-vmm: {}: {} (log rate-limited: {n} lines so far, 1 in {LOG_SAMPLE} shown)",
                r.level(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger {
    lines: AtomicU64::new(0),
};

fn main() {
    let level = std::env::var("SKERRY_VMM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
    let config = match cli::parse(std::env::args_os()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::SeccompSummary) => {
            match skerry_vmm::seccomp::summary_json() {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("skerry-vmm: {:#}", anyhow::Error::from(e));
                    std::process::exit(EXIT_VMM_ERROR);
                }
            }
            return;
        }
        // --help/--version (status 0) or a usage error (status 2), printed by clap.
        Err(e) => e.exit(),
    };
    match run_vm(&config, Box::new(UnbufferedStdout)) {
        Ok(exit) => std::process::exit(exit.status()),
        Err(e) => {
            eprintln!("skerry-vmm: {:#}", anyhow::Error::from(e));
            std::process::exit(EXIT_VMM_ERROR);
        }
    }
}
