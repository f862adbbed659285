//! Command-line parsing: flags → [`Command`]. Kept in the library (not `main.rs`) so tests
//! and the `config_parser` fuzz target exercise exactly what the binary parses.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::boot::{BootProtocolChoice, BootSource};
use crate::devices::virtio::net::MacAddr;
use crate::vmm::{FsConfig, NetConfig, VmConfig};

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Command {
    /// Boot and run a VM (not validated yet: see [`VmConfig::validate`]).
    Run(Box<VmConfig>),
    /// Print the per-thread syscall allowlists as JSON and exit.
    SeccompSummary,
}

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
    /// Add a virtio-net device on this host tap (created if missing; IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR, no offloads).
    #[arg(long, value_name = "NAME")]
    net_tap: Option<String>,
    /// MAC address of the --net-tap device (default: random, locally administered).
    #[arg(long, value_name = "MAC", requires = "net_tap")]
    net_mac: Option<MacAddr>,
    /// Add a virtio-fs device served by the vhost-user back end (virtiofsd) listening here.
    #[arg(long, value_name = "PATH", requires = "fs_tag")]
    fs_socket: Option<PathBuf>,
    /// Tag of the --fs-socket device (what the guest mounts; 1..=36 bytes).
    #[arg(long, value_name = "TAG", requires = "fs_socket")]
    fs_tag: Option<String>,
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

/// Parses `args` (the first item is the program name, as in `std::env::args_os()`). Usage
/// errors, `--help` and `--version` come back as a [`clap::Error`]; `main` calls
/// [`clap::Error::exit`] on it (status 2 for usage errors).
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    if args.seccomp_summary {
        return Ok(Command::SeccompSummary);
    }
    Ok(Command::Run(Box::new(VmConfig {
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
        net: args.net_tap.map(|tap| NetConfig {
            tap,
            mac: args.net_mac,
        }),
        fs: args
            .fs_socket
            .zip(args.fs_tag)
            .map(|(socket, tag)| FsConfig { socket, tag }),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> VmConfig {
        match parse(std::iter::once("skerry-vmm").chain(args.iter().copied())).unwrap() {
            Command::Run(c) => *c,
            Command::SeccompSummary => panic!("expected a VM configuration"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "k"]);
        assert_eq!(c.boot.kernel, PathBuf::from("k"));
        assert_eq!(c.boot.cmdline, "console=ttyS0 reboot=k panic=1");
        assert_eq!((c.mem_mib, c.vcpus), (128, 1));
        assert!(c.seccomp && c.acpi && !c.rng);
        assert!(c.block.is_none() && c.vsock.is_none() && c.api_sock.is_none());
        assert!(c.net.is_none() && c.fs.is_none());
    }

    #[test]
    fn every_flag() {
        let c = run(&[
            "--kernel=k",
            "--initrd",
            "i",
            "--cmdline",
            "a=b",
            "--memory",
            "256",
            "--vcpus",
            "2",
            "--boot-protocol",
            "pvh",
            "--rng",
            "--block",
            "disk",
            "--block-read-only",
            "--vsock-cid",
            "3",
            "--vsock-uds",
            "v.sock",
            "--api-sock",
            "api.sock",
            "--net-tap",
            "tap0",
            "--net-mac",
            "02:00:00:aa:bb:cc",
            "--fs-socket",
            "fs.sock",
            "--fs-tag",
            "shared",
            "--no-acpi",
            "--no-seccomp",
        ]);
        assert_eq!(c.boot.initrd, Some(PathBuf::from("i")));
        assert!(matches!(c.boot.protocol, BootProtocolChoice::Pvh));
        assert_eq!(
            (c.mem_mib, c.vcpus, c.boot.cmdline.as_str()),
            (256, 2, "a=b")
        );
        assert_eq!(c.block, Some((PathBuf::from("disk"), true)));
        assert_eq!(c.vsock, Some((3, PathBuf::from("v.sock"))));
        assert_eq!(c.api_sock, Some(PathBuf::from("api.sock")));
        assert_eq!(
            c.net,
            Some(NetConfig {
                tap: "tap0".into(),
                mac: Some(MacAddr([2, 0, 0, 0xaa, 0xbb, 0xcc])),
            })
        );
        assert_eq!(
            c.fs,
            Some(FsConfig {
                socket: PathBuf::from("fs.sock"),
                tag: "shared".into(),
            })
        );
        assert!(c.rng && !c.acpi && !c.seccomp);
    }

    #[test]
    fn seccomp_summary_needs_no_kernel() {
        let cmd = parse(["skerry-vmm", "--seccomp-summary"]).unwrap();
        assert!(matches!(cmd, Command::SeccompSummary));
    }

    #[test]
    fn usage_errors_are_returned_not_exited() {
        for bad in [
            &[][..],
            &["--kernel", "k", "--vcpus", "300"],
            &["--kernel", "k", "--vsock-cid", "3"],
            &["--kernel", "k", "--block-read-only"],
            &["--kernel", "k", "--fs-socket", "s"],
            &["--kernel", "k", "--fs-tag", "t"],
            &["--kernel", "k", "--net-mac", "02:00:00:00:00:01"],
            &[
                "--kernel",
                "k",
                "--net-tap",
                "t",
                "--net-mac",
                "01:00:00:00:00:01",
            ],
            &["--kernel", "k", "--boot-protocol", "efi"],
            &["--kernel", "k", "--bogus"],
        ] {
            let e = parse(std::iter::once("skerry-vmm").chain(bad.iter().copied())).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn non_utf8_arguments_do_not_panic() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let _ = parse([
            OsString::from("skerry-vmm"),
            OsString::from("--kernel"),
            bad.clone(),
        ]);
        let _ = parse([OsString::from("skerry-vmm"), bad]);
    }
}
