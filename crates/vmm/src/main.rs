//! `skerry-vmm`: boots a Linux kernel (or a test guest) with the serial console on stdout.
//! Exit status: 0 poweroff, 1 VMM error, 2 usage, 3 guest reset, 4 guest crash, 5 stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use skerry_vmm::boot::{BootProtocolChoice, BootSource};
use skerry_vmm::devices::legacy::serial::UnbufferedStdout;
use skerry_vmm::exit::EXIT_VMM_ERROR;
use skerry_vmm::{run_vm, VmConfig};

#[derive(Parser, Debug)]
#[command(name = "skerry-vmm", version, about = "skerry's minimal KVM VMM")]
struct Args {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, required_unless_present = "seccomp_summary")]
    kernel: Option<PathBuf>,
    /// Initrd / initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Boot protocol for ELF kernels.
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    boot_protocol: Protocol,
    /// Add a virtio-rng device (virtio-mmio; also announced on the command line).
    #[arg(long)]
    rng: bool,
    /// Add a virtio-blk device backed by this file (raw image, whole 512-byte sectors).
    #[arg(long)]
    block: Option<PathBuf>,
    /// Make the --block device read-only.
    #[arg(long, requires = "block")]
    block_read_only: bool,
    /// Add a virtio-vsock device with this guest CID (needs --vsock-uds).
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Host Unix socket of the hybrid vsock: hosts connect here and send `CONNECT <port>\n`;
    /// guest connections to port P reach `<path>_P`.
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// Serve the control API (JSON lines: status, pause, resume, shutdown) on this Unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Do not write ACPI tables (then Linux finds virtio devices only via the command line
    /// and sees one vCPU).
    #[arg(long)]
    no_acpi: bool,
    /// Run without the per-thread seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Print the per-thread syscall allowlists as JSON and exit.
    #[arg(long)]
    seccomp_summary: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Protocol {
    Auto,
    Linux,
    Pvh,
}

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
    let args = Args::parse();
    if args.seccomp_summary {
        match skerry_vmm::seccomp::summary_json() {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("skerry-vmm: {:#}", anyhow::Error::from(e));
                std::process::exit(EXIT_VMM_ERROR);
            }
        }
        return;
    }
    let config = VmConfig {
        boot: BootSource {
            kernel: args.kernel.unwrap_or_default(),
            initrd: args.initrd,
            cmdline: args.cmdline,
            protocol: match args.boot_protocol {
                Protocol::Auto => BootProtocolChoice::Auto,
                Protocol::Linux => BootProtocolChoice::Linux,
                Protocol::Pvh => BootProtocolChoice::Pvh,
            },
        },
        mem_mib: args.memory,
        vcpus: args.vcpus,
        seccomp: !args.no_seccomp,
        rng: args.rng,
        acpi: !args.no_acpi,
        api_sock: args.api_sock,
        vsock: args.vsock_cid.zip(args.vsock_uds),
        block: args.block.map(|p| (p, args.block_read_only)),
    };
    match run_vm(&config, Box::new(UnbufferedStdout)) {
        Ok(exit) => std::process::exit(exit.status()),
        Err(e) => {
            eprintln!("skerry-vmm: {:#}", anyhow::Error::from(e));
            std::process::exit(EXIT_VMM_ERROR);
        }
    }
}
