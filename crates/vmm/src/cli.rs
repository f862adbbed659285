//! Command-line parsing: flags or a config file → [`Command`]. Kept in the library (not
//! `main.rs`) so tests and the `config_parser`/`config_file` fuzz targets exercise exactly
//! what the binary parses.
//!
//! `--config FILE` (TOML, or JSON when the name ends in `.json`) replaces the flags: it cannot
//! be combined with any other flag, so the two never disagree. Each top-level key is a flag's
//! long name (`kernel`, `net-tap`, `vsock-cid`, ...); a string or integer is its value, `true`
//! sets a switch and `false` leaves it off. The keys become `--key=value` arguments for the very
//! parser the flags go through, so defaults, value checks and the flags that require each other
//! are the same in both forms.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::boot::{BootProtocolChoice, BootSource};
use crate::devices::virtio::net::MacAddr;
use crate::devices::virtio::rate_limiter::{RateLimit, RateLimits};
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
    #[arg(long, required_unless_present_any = ["seccomp_summary", "config"])]
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
    /// Limit host → guest vsock payload: BYTES_PER_SEC[,BURST_BYTES[,PKTS_PER_SEC[,BURST_PKTS]]]
    /// (bytes may end in K, M or G; 0 = unlimited; a burst of 0 = one second's worth).
    #[arg(long, value_name = "LIMIT", requires = "vsock_cid")]
    vsock_rx_rate_limit: Option<RateLimit>,
    /// Limit guest → host vsock payload (as --vsock-rx-rate-limit).
    #[arg(long, value_name = "LIMIT", requires = "vsock_cid")]
    vsock_tx_rate_limit: Option<RateLimit>,
    /// Add a virtio-net device on this host tap (created if missing; IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR, no offloads).
    #[arg(long, value_name = "NAME")]
    net_tap: Option<String>,
    /// MAC address of the --net-tap device (default: random, locally administered).
    #[arg(long, value_name = "MAC", requires = "net_tap")]
    net_mac: Option<MacAddr>,
    /// Limit tap → guest frames: BYTES_PER_SEC[,BURST_BYTES[,FRAMES_PER_SEC[,BURST_FRAMES]]]
    /// (bytes may end in K, M or G; 0 = unlimited; a burst of 0 = one second's worth).
    #[arg(long, value_name = "LIMIT", requires = "net_tap")]
    net_rx_rate_limit: Option<RateLimit>,
    /// Limit guest → tap frames (as --net-rx-rate-limit).
    #[arg(long, value_name = "LIMIT", requires = "net_tap")]
    net_tx_rate_limit: Option<RateLimit>,
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
    /// Read every setting from this file instead (TOML, or JSON for `*.json`; keys are the
    /// flags' long names). Cannot be combined with other flags.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Protocol {
    Auto,
    Linux,
    Pvh,
}

/// The syntax of a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigFormat {
    /// TOML (the default).
    Toml,
    /// JSON (files named `*.json`).
    Json,
}

impl ConfigFormat {
    /// The format a file name implies.
    pub fn of(path: &std::path::Path) -> Self {
        match path.extension() {
            Some(e) if e == "json" => ConfigFormat::Json,
            _ => ConfigFormat::Toml,
        }
    }
}

/// Keys a config file may not hold: they are not VM settings.
const NOT_IN_FILE: [&str; 4] = ["config", "seccomp-summary", "help", "version"];

fn usage_error(kind: ErrorKind, msg: String) -> clap::Error {
    Args::command().error(kind, msg)
}

/// Parses `args` (the first item is the program name, as in `std::env::args_os()`). Usage
/// errors (also a bad config file), `--help` and `--version` come back as a [`clap::Error`];
/// `main` calls [`clap::Error::exit`] on it (status 2 for usage errors).
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Args::command().try_get_matches_from(args)?;
    let args = Args::from_arg_matches(&matches)?;
    let Some(path) = &args.config else {
        return Ok(command(args));
    };
    let cmd = Args::command();
    let other = cmd.get_arguments().find(|a| {
        a.get_id() != "config"
            && matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
    });
    if let Some(other) = other {
        return Err(usage_error(
            ErrorKind::ArgumentConflict,
            format!(
                "--config cannot be combined with --{} (put every setting in the file)",
                other.get_long().unwrap_or_default()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage_error(
            ErrorKind::Io,
            format!("cannot read the config file {}: {e}", path.display()),
        )
    })?;
    parse_config(&text, ConfigFormat::of(path)).map_err(|e| {
        usage_error(
            e.kind(),
            format!("config file {}: {}", path.display(), first_line(&e)),
        )
    })
}

/// clap's message on one line, without its `error: ` prefix, usage and hints.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let msg = msg.join(" ");
    msg.strip_prefix("error: ").unwrap_or(&msg).to_owned()
}

/// Parses the text of a config file: its keys become `--key=value` flags for [`parse`]'s
/// parser.
pub fn parse_config(text: &str, format: ConfigFormat) -> Result<Command, clap::Error> {
    let invalid = |msg: String| usage_error(ErrorKind::InvalidValue, msg);
    let mut argv = vec![OsString::from("skerry-vmm")];
    let mut push = |key: &str, value: Option<String>| -> Result<(), clap::Error> {
        let known = Args::command()
            .get_arguments()
            .any(|a| a.get_long() == Some(key));
        if !known || NOT_IN_FILE.contains(&key) {
            return Err(invalid(format!("key `{key}` is not a VM setting")));
        }
        argv.push(match value {
            Some(v) => format!("--{key}={v}").into(),
            None => format!("--{key}").into(),
        });
        Ok(())
    };
    let kind_err =
        |key: &str| invalid(format!("`{key}` must be a string, an integer or a boolean"));
    match format {
        ConfigFormat::Toml => {
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| invalid(format!("not TOML: {}", e.message())))?;
            for (key, value) in &table {
                match value {
                    toml::Value::String(s) => push(key, Some(s.clone()))?,
                    toml::Value::Integer(i) => push(key, Some(i.to_string()))?,
                    toml::Value::Boolean(true) => push(key, None)?,
                    toml::Value::Boolean(false) => {}
                    _ => return Err(kind_err(key)),
                }
            }
        }
        ConfigFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| invalid(format!("not a JSON object: {e}")))?;
            for (key, value) in &map {
                match value {
                    serde_json::Value::String(s) => push(key, Some(s.clone()))?,
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                        push(key, Some(n.to_string()))?
                    }
                    serde_json::Value::Bool(true) => push(key, None)?,
                    serde_json::Value::Bool(false) => {}
                    _ => return Err(kind_err(key)),
                }
            }
        }
    }
    Ok(command(Args::try_parse_from(argv)?))
}

/// The one place parsed arguments become a [`Command`].
fn command(args: Args) -> Command {
    if args.seccomp_summary {
        return Command::SeccompSummary;
    }
    Command::Run(Box::new(VmConfig {
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
        vsock_limits: RateLimits {
            rx: args.vsock_rx_rate_limit.unwrap_or_default(),
            tx: args.vsock_tx_rate_limit.unwrap_or_default(),
        },
        block: args.block.map(|p| (p, args.block_read_only)),
        net: args.net_tap.map(|tap| NetConfig {
            tap,
            mac: args.net_mac,
            limits: RateLimits {
                rx: args.net_rx_rate_limit.unwrap_or_default(),
                tx: args.net_tx_rate_limit.unwrap_or_default(),
            },
        }),
        fs: args
            .fs_socket
            .zip(args.fs_tag)
            .map(|(socket, tag)| FsConfig { socket, tag }),
    }))
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
            "--net-rx-rate-limit",
            "1M",
            "--net-tx-rate-limit",
            "64K,128K,1000,10",
            "--vsock-rx-rate-limit",
            "2M,0",
            "--vsock-tx-rate-limit",
            "0,0,500",
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
                limits: RateLimits {
                    rx: RateLimit {
                        bytes_per_sec: 1 << 20,
                        ..RateLimit::default()
                    },
                    tx: RateLimit {
                        bytes_per_sec: 64 << 10,
                        burst_bytes: 128 << 10,
                        ops_per_sec: 1000,
                        burst_ops: 10,
                    },
                },
            })
        );
        assert_eq!(
            c.vsock_limits,
            RateLimits {
                rx: RateLimit {
                    bytes_per_sec: 2 << 20,
                    ..RateLimit::default()
                },
                tx: RateLimit {
                    ops_per_sec: 500,
                    ..RateLimit::default()
                },
            }
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

    const EVERY_KEY_TOML: &str = r#"
kernel = "k"
initrd = "i"
cmdline = "a=b"
memory = 256
vcpus = 2
boot-protocol = "pvh"
rng = true
block = "disk"
block-read-only = true
vsock-cid = 3
vsock-uds = "v.sock"
api-sock = "api.sock"
net-tap = "tap0"
net-mac = "02:00:00:aa:bb:cc"
net-rx-rate-limit = "1M"
net-tx-rate-limit = 65536
vsock-tx-rate-limit = "64K,0,100"
fs-socket = "fs.sock"
fs-tag = "shared"
no-acpi = true
no-seccomp = true
"#;

    fn file_config(text: &str, format: ConfigFormat) -> Result<VmConfig, clap::Error> {
        match parse_config(text, format)? {
            Command::Run(c) => Ok(*c),
            Command::SeccompSummary => panic!("expected a VM configuration"),
        }
    }

    #[test]
    fn a_config_file_says_what_the_flags_say() {
        let flags = format!(
            "{:?}",
            run(&[
                "--kernel=k",
                "--initrd=i",
                "--cmdline=a=b",
                "--memory=256",
                "--vcpus=2",
                "--boot-protocol=pvh",
                "--rng",
                "--block=disk",
                "--block-read-only",
                "--vsock-cid=3",
                "--vsock-uds=v.sock",
                "--api-sock=api.sock",
                "--net-tap=tap0",
                "--net-mac=02:00:00:aa:bb:cc",
                "--net-rx-rate-limit=1M",
                "--net-tx-rate-limit=65536",
                "--vsock-tx-rate-limit=64K,0,100",
                "--fs-socket=fs.sock",
                "--fs-tag=shared",
                "--no-acpi",
                "--no-seccomp",
            ])
        );
        let toml = file_config(EVERY_KEY_TOML, ConfigFormat::Toml).unwrap();
        assert_eq!(format!("{toml:?}"), flags);
        let table: toml::Table = EVERY_KEY_TOML.parse().unwrap();
        let json = serde_json::to_string(&table).unwrap();
        let json = file_config(&json, ConfigFormat::Json).unwrap();
        assert_eq!(format!("{json:?}"), flags);
        // Defaults are the flags' defaults; `false` leaves a switch off.
        let small = file_config("kernel = \"k\"\nrng = false\n", ConfigFormat::Toml).unwrap();
        assert_eq!(
            format!("{small:?}"),
            format!("{:?}", run(&["--kernel", "k"]))
        );
    }

    #[test]
    fn bad_config_files_are_usage_errors_naming_the_key() {
        for (text, format, needle) in [
            ("kernel = \"k\"\nbogus = 1", ConfigFormat::Toml, "`bogus`"),
            (
                "kernel = \"k\"\n\"rng=true\" = true",
                ConfigFormat::Toml,
                "`rng=true`",
            ),
            (
                "kernel = \"k\"\nmemory = [1]",
                ConfigFormat::Toml,
                "`memory`",
            ),
            (
                "kernel = \"k\"\n[net]\ntap = \"x\"",
                ConfigFormat::Toml,
                "`net`",
            ),
            (
                "kernel = \"k\"\nmemory = 1.5",
                ConfigFormat::Toml,
                "`memory`",
            ),
            ("kernel = \"k\"\nvcpus = 300", ConfigFormat::Toml, "--vcpus"),
            ("kernel = \"k\"\nrng = \"yes\"", ConfigFormat::Toml, "--rng"),
            (
                "kernel = \"k\"\nnet-mac = \"02:00:00:00:00:01\"",
                ConfigFormat::Toml,
                "--net-tap",
            ),
            (
                "kernel = \"k\"\nconfig = \"x.toml\"",
                ConfigFormat::Toml,
                "`config`",
            ),
            (
                "kernel = \"k\"\nseccomp-summary = true",
                ConfigFormat::Toml,
                "`seccomp-summary`",
            ),
            ("memory = 256", ConfigFormat::Toml, "--kernel"),
            ("kernel = ", ConfigFormat::Toml, "TOML"),
            (
                "{\"kernel\": \"k\", \"memory\": -1}",
                ConfigFormat::Json,
                "--memory",
            ),
            (
                "{\"kernel\": \"k\", \"rng\": null}",
                ConfigFormat::Json,
                "`rng`",
            ),
            ("[1]", ConfigFormat::Json, "JSON"),
        ] {
            let e = file_config(text, format).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{text}: {e}");
            assert!(
                first_line(&e).contains(needle),
                "{text}: {}",
                first_line(&e)
            );
        }
    }

    #[test]
    fn config_flag_reads_the_file_and_excludes_other_flags() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("vm.toml");
        std::fs::write(&toml, EVERY_KEY_TOML).unwrap();
        let json = dir.path().join("vm.json");
        std::fs::write(&json, r#"{"kernel": "k", "vcpus": 2, "rng": true}"#).unwrap();
        let c = run(&["--config", toml.to_str().unwrap()]);
        assert_eq!(c.net.map(|n| n.tap), Some("tap0".to_owned()));
        let c = run(&["--config", json.to_str().unwrap()]);
        assert!(c.rng && c.vcpus == 2);
        for bad in [
            vec!["--config", toml.to_str().unwrap(), "--vcpus", "1"],
            vec!["--rng", "--config", toml.to_str().unwrap()],
            vec!["--config", "/nonexistent/vm.toml"],
        ] {
            let e = parse(std::iter::once("skerry-vmm").chain(bad.iter().copied())).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        std::fs::write(&toml, "kernel = \"k\"\nbogus = 1\n").unwrap();
        let e = parse(["skerry-vmm", "--config", toml.to_str().unwrap()]).unwrap_err();
        let msg = first_line(&e);
        assert!(msg.contains("vm.toml") && msg.contains("`bogus`"), "{msg}");
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
            &["--kernel", "k", "--net-tx-rate-limit", "1M"],
            &["--kernel", "k", "--vsock-rx-rate-limit", "1M"],
            &["--kernel", "k", "--bogus"],
        ] {
            let e = parse(std::iter::once("skerry-vmm").chain(bad.iter().copied())).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_rate_limits_are_one_line_errors_naming_the_flag() {
        for (flag, value) in [
            ("--net-rx-rate-limit", "fast"),
            ("--net-tx-rate-limit", "1,2,3,4,5"),
            ("--vsock-rx-rate-limit", "-1"),
            ("--vsock-tx-rate-limit", "99999999999999999999"),
        ] {
            let arg = format!("{flag}={value}");
            let args = [
                "skerry-vmm",
                "--kernel=k",
                "--net-tap=t",
                "--vsock-cid=3",
                "--vsock-uds=v",
                &arg,
            ];
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{flag} {value}: {e}");
            let msg = first_line(&e);
            assert!(
                msg.contains(flag) && msg.contains("BYTES_PER_SEC"),
                "{flag} {value}: {msg}"
            );
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
