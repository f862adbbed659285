//! Benchmark (ignored by default; run with
//! `cargo nextest run -p skerry-vmm --release --run-ignored only bench_`): the same tiny PVH
//! guest under skerry-vmm and under `qemu-system-x86_64 -M microvm` (with KVM, and with TCG),
//! runs interleaved: process start → first guest serial byte, process start → exit (the guest
//! exits at once after that byte), and the VMM's peak RSS. Medians of `SKERRY_BENCH_RUNS`
//! (default 15); with `SKERRY_BENCH_OUT=DIR` the raw samples go to `DIR/tiny_guest.tsv` and the
//! configurations that could not run, with the reason, to `DIR/tiny_guest_unavailable.tsv`
//! (`bench/report.sh` reads both).

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binutils, build_guest, kvm_usable, require, PVH_PROLOGUE};
use skerry_vmm::exit::EXIT_RESET;

/// Prints `!` on COM1, then resets through the i8042 (skerry-vmm exits with `EXIT_RESET`).
/// QEMU's microvm has no i8042 and PVM cannot emulate the triple fault that `-no-reboot`
/// would turn into an exit, so QEMU gets an `isa-debug-exit` device at port 0xf4, which the
/// guest writes next (QEMU exits with status 1).
const BODY: &str = r#"
_start:
    mov $0x3f8, %dx
    mov $0x21, %al
    outb %al, %dx
    mov $0xfe, %al
    outb %al, $0x64
    mov $0, %al
    outb %al, $0xf4
1:  hlt
    jmp 1b
"#;

/// QEMU's exit status for the guest's write of 0 to `isa-debug-exit`: (0 << 1) | 1.
const QEMU_DEBUG_EXIT: i32 = 1;

/// How long one run may take before it is killed and counts as a failure.
const DEADLINE: Duration = Duration::from_secs(30);

/// One run: start → first serial byte, start → exit, peak RSS in KiB.
struct Sample {
    first_byte: Duration,
    exit: Duration,
    max_rss_kib: i64,
}

/// A VMM to compare and the exit status its run of the guest must end with.
struct Config {
    name: &'static str,
    command: Box<dyn Fn(&Path) -> Command>,
    exit_code: i32,
}

/// Starts `cmd`, times its first stdout byte and its exit, and checks that it printed exactly
/// `!` and exited with `exit_code`; kills it after [`DEADLINE`] (a VMM that stops the guest
/// without exiting, as QEMU does on a KVM internal error).
fn sample(mut cmd: Command, exit_code: i32) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let pid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + DEADLINE;
            while Instant::now() < until {
                if done.load(Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: `pid` is our child, not yet reaped (we wait for it only after `done`).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        })
    };
    let mut first = [0u8; 1];
    let got_byte = out.read_exact(&mut first).is_ok();
    let first_byte = start.elapsed();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    done.store(true, Ordering::SeqCst);
    let killed = watchdog.join().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writes.
    let pid = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if killed {
        return Err(format!(
            "killed after {DEADLINE:?} without exiting: {}",
            stderr.trim()
        ));
    }
    let status = ExitStatus::from_raw(status);
    let stdout = String::from_utf8_lossy(&[&first[..], &rest].concat()).into_owned();
    if !got_byte || stdout != "!" || status.code() != Some(exit_code) {
        return Err(format!(
            "expected `!` and exit status {exit_code}, got {stdout:?} and {status}: {}",
            stderr.trim()
        ));
    }
    Ok(Sample {
        first_byte,
        exit,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_tiny_guest_skerry_vmm_against_qemu_microvm() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let runs: usize = std::env::var("SKERRY_BENCH_RUNS")
        .ok()
        .map(|v| v.parse().expect("SKERRY_BENCH_RUNS: a number"))
        .unwrap_or(15);
    let out_dir = std::env::var_os("SKERRY_BENCH_OUT").map(std::path::PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "bench", &format!("{PVH_PROLOGUE}{BODY}"));
    let qemu = |accel: &'static str| -> Box<dyn Fn(&Path) -> Command> {
        Box::new(move |elf: &Path| {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-M", "microvm", "-accel", accel, "-m", "32"])
                .args(["-nodefaults", "-no-user-config", "-no-reboot"])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
                .args(["-display", "none", "-serial", "stdio", "-kernel"])
                .arg(elf);
            c
        })
    };
    let configs = [
        Config {
            name: "skerry-vmm (KVM)",
            command: Box::new(|elf: &Path| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_skerry-vmm"));
                c.args(["--memory", "32", "--no-acpi", "--kernel"]).arg(elf);
                c
            }),
            exit_code: EXIT_RESET,
        },
        Config {
            name: "qemu microvm (KVM)",
            command: qemu("kvm"),
            exit_code: QEMU_DEBUG_EXIT,
        },
        Config {
            name: "qemu microvm (TCG)",
            command: qemu("tcg"),
            exit_code: QEMU_DEBUG_EXIT,
        },
    ];
    // A configuration that fails its first run is reported as unavailable, with the reason;
    // skerry-vmm itself must run.
    let mut unavailable = Vec::new();
    let mut live = Vec::new();
    for config in &configs {
        match sample((config.command)(&elf), config.exit_code) {
            Ok(_) => live.push(config),
            Err(reason) => {
                assert!(config.exit_code != EXIT_RESET, "{}: {reason}", config.name);
                println!("UNAVAILABLE: {}: {reason}", config.name);
                unavailable.push((config.name, reason));
            }
        }
    }
    let mut samples: Vec<Vec<Sample>> = live.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        // Rotate the order each round, so that no configuration always runs first.
        for k in 0..live.len() {
            let i = (round + k) % live.len();
            let s = sample((live[i].command)(&elf), live[i].exit_code)
                .unwrap_or_else(|e| panic!("{}: {e}", live[i].name));
            samples[i].push(s);
        }
    }
    for (config, s) in live.iter().zip(&samples) {
        println!(
            "{}: start→first byte median {:.2} ms, start→exit median {:.2} ms, peak RSS median {:.0} KiB ({runs} runs)",
            config.name,
            median(s.iter().map(|x| ms(x.first_byte)).collect()),
            median(s.iter().map(|x| ms(x.exit)).collect()),
            median(s.iter().map(|x| x.max_rss_kib as f64).collect()),
        );
    }
    if let Some(out) = out_dir {
        let mut tsv = String::from("config\tround\tfirst_byte_ms\texit_ms\tmax_rss_kib\n");
        for (config, s) in live.iter().zip(&samples) {
            for (round, x) in s.iter().enumerate() {
                tsv += &format!(
                    "{}\t{}\t{:.3}\t{:.3}\t{}\n",
                    config.name,
                    round + 1,
                    ms(x.first_byte),
                    ms(x.exit),
                    x.max_rss_kib
                );
            }
        }
        std::fs::write(out.join("tiny_guest.tsv"), tsv).unwrap();
        let mut file = std::fs::File::create(out.join("tiny_guest_unavailable.tsv")).unwrap();
        writeln!(file, "config\treason").unwrap();
        for (name, reason) in unavailable {
            writeln!(file, "{name}\t{}", reason.replace(['\t', '\n'], " ")).unwrap();
        }
    }
}
