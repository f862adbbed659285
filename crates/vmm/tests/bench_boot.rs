//! Benchmark (ignored by default; run with
//! `cargo nextest run -p skerry-vmm --release --run-ignored only bench_`): process start →
//! first guest serial byte, and VMM RSS at that moment, for skerry-vmm and for
//! `qemu-system-x86_64 -M microvm -enable-kvm` running the same tiny PVH guest. Median of 15.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binutils, build_guest, kvm_usable, require, PVH_PROLOGUE};

const BODY: &str = r#"
_start:
    mov $0x3f8, %dx
    mov $0x21, %al
    outb %al, %dx
1:  hlt
    jmp 1b
"#;

/// Starts `cmd`, waits for the first stdout byte; returns (elapsed, RSS in KiB).
fn first_byte(mut cmd: Command) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    let elapsed = start.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, rss)
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_start_to_first_serial_byte_and_rss() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "bench", &format!("{PVH_PROLOGUE}{BODY}"));
    let runs = 15;
    let ours: Vec<(Duration, u64)> = (0..runs)
        .map(|_| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_skerry-vmm"));
            c.args([
                "--kernel",
                elf.to_str().unwrap(),
                "--memory",
                "32",
                "--no-acpi",
            ]);
            first_byte(c)
        })
        .collect();
    let t = median(ours.iter().map(|x| x.0).collect());
    let rss = median(ours.iter().map(|x| x.1).collect());
    println!("skerry-vmm: start→first byte median {t:?}, RSS median {rss} KiB ({runs} runs)");
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !qemu {
        common::skip_rule::skip("qemu-system-x86_64 not found, no comparison");
        return;
    }
    let theirs: Vec<(Duration, u64)> = (0..runs)
        .map(|_| {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "microvm",
                "-enable-kvm",
                "-m",
                "32",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-serial", "stdio", "-kernel"])
            .arg(&elf);
            first_byte(c)
        })
        .collect();
    let qt = median(theirs.iter().map(|x| x.0).collect());
    let qrss = median(theirs.iter().map(|x| x.1).collect());
    println!("qemu microvm: start→first byte median {qt:?}, RSS median {qrss} KiB ({runs} runs)");
    println!(
        "ratio skerry/qemu: time {:.3}, RSS {:.3}",
        t.as_secs_f64() / qt.as_secs_f64(),
        rss as f64 / qrss as f64
    );
}
