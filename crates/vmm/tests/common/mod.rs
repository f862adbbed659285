//! Helpers for KVM tests: skip-or-require, tiny guests assembled at test time, and running the
//! `skerry-vmm` binary with a deadline.
#![allow(dead_code)]

pub mod host;
pub mod kernel;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Returns false (after printing `SKIPPED: reason`) when the test cannot run here; panics
/// instead when `SKERRY_E2E_REQUIRED=1`.
pub fn require(cond: Result<(), String>) -> bool {
    cond.map_err(|reason| skip_rule::skip(&reason)).is_ok()
}

#[path = "../../../../tests/support/skip.rs"]
pub mod skip_rule;

/// Whether /dev/kvm can be opened read-write and answers KVM_GET_API_VERSION.
pub fn kvm_usable() -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm unusable: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), 0xae00, 0) };
    if v != 12 {
        let e = std::io::Error::last_os_error();
        return Err(format!("/dev/kvm API version {v} ({e}), expected 12"));
    }
    Ok(())
}

/// Whether binutils (`as`, `ld`) are present.
pub fn binutils() -> Result<(), String> {
    for tool in ["as", "ld"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("`{tool}` (binutils) not found"));
        }
    }
    Ok(())
}

/// Assembles `source` (GNU as, AT&T syntax) and links it at 1 MiB into an ELF64 guest.
pub fn build_guest(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&src, source).unwrap();
    let st = Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "as failed for {name}");
    let st = Command::new("ld")
        .args([
            "-N",
            "-static",
            "-nostdlib",
            "--build-id=none",
            "-Ttext=0x100000",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&elf)
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success(), "ld failed for {name}");
    elf
}

/// Start of a 32-bit PVH tiny guest: the PVH note pointing at `_start`, `.code32`, `BASE`
/// (the first virtio-mmio window) and two assembler macros for virtio-mmio drivers. The
/// guest's body (which defines `_start`) follows.
pub const PVH_PROLOGUE: &str = r#"
    .section .note.pvh, "a"
    .align 4
    .long 4, 4, 18
    .asciz "Xen"
    .long _start
    .text
    .code32
    .globl _start
    .set BASE, 0xd0000000
    /* Queues 0 .. n-1, size 8: queue q's descriptor table at first + q * 0x4000, its avail
       ring 0x1000 and its used ring 0x2000 above that; each set ready. Uses eax, ebx, edi. */
    .macro setup_queues n, first
    xor %ebx, %ebx
    mov $\first, %edi
1:  movl %ebx, BASE+0x30
    movl $8, BASE+0x38
    movl %edi, BASE+0x80
    movl $0, BASE+0x84
    lea 0x1000(%edi), %eax
    movl %eax, BASE+0x90
    movl $0, BASE+0x94
    lea 0x2000(%edi), %eax
    movl %eax, BASE+0xa0
    movl $0, BASE+0xa4
    movl $1, BASE+0x44
    inc %ebx
    lea 0x4000(%edi), %edi
    cmp $\n, %ebx
    jne 1b
    .endm
    /* Spins until the 16-bit used index at idx is n; after `tries` polls, jumps to `fail`.
       Uses ecx. */
    .macro wait_used idx, n, tries
    mov $\tries, %ecx
1:  cmpw $\n, \idx
    je 2f
    pause
    loop 1b
    jmp fail
2:
    .endm
"#;

/// A PVH guest: [`PVH_PROLOGUE`], `body`, then the verdict: `body` falls through to (or jumps
/// to) `ok`, which prints `ok`, or jumps to `fail`, which prints `bad`; both then reset through
/// the i8042.
pub fn pvh_guest(body: &str, ok: &str, bad: &str) -> String {
    format!(
        r#"{PVH_PROLOGUE}{body}
ok:
    mov $okmsg, %esi
    mov $okend - okmsg, %ecx
    jmp print
fail:
    mov $badmsg, %esi
    mov $badend - badmsg, %ecx
print:
    mov $0x3f8, %dx
9:  lodsb
    outb %al, %dx
    loop 9b
    mov $0xfe, %al
    outb %al, $0x64
8:  hlt
    jmp 8b
okmsg: .ascii "{ok}\n"
okend:
badmsg: .ascii "{bad}\n"
badend:
"#
    )
}

/// Outcome of one VMM run.
#[derive(Debug)]
pub struct Run {
    /// Exit status, or None if the deadline killed it.
    pub status: Option<ExitStatus>,
    /// Everything the VMM wrote to stdout (the guest console).
    pub stdout: String,
    /// The VMM's stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

/// Asserts that the guest printed the line `line` and that the VMM exited with `status`.
pub fn assert_run(run: &Run, line: &str, status: i32) {
    assert!(run.stdout.contains(&format!("{line}\n")), "{run:?}");
    assert_eq!(run.status.and_then(|s| s.code()), Some(status), "{run:?}");
}

/// Runs the tiny guest `elf` in 32 MiB with the command line `test` and the flags `extra`.
pub fn run_tiny_guest(elf: &Path, extra: &[&str], deadline: Duration) -> Run {
    let mut args = vec![
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "32",
        "--cmdline",
        "test",
    ];
    args.extend_from_slice(extra);
    run_vmm(&args, deadline)
}

/// Runs `skerry-vmm` with `args`; kills it after `deadline`.
pub fn run_vmm(args: &[&str], deadline: Duration) -> Run {
    run_vmm_until(args, deadline, |_| false)
}

/// Runs `skerry-vmm`; kills it after `deadline` or as soon as `done(stdout so far)` holds.
pub fn run_vmm_until(args: &[&str], deadline: Duration, done: impl Fn(&str) -> bool) -> Run {
    run_vmm_full(args, None, deadline, done)
}

/// Runs `skerry-vmm` with `input` on its stdin (a pipe kept open until it exits).
pub fn run_vmm_with_input(args: &[&str], input: &[u8], deadline: Duration) -> Run {
    run_vmm_full(args, Some(input), deadline, |_| false)
}

fn run_vmm_full(
    args: &[&str],
    input: Option<&[u8]>,
    deadline: Duration,
    done: impl Fn(&str) -> bool,
) -> Run {
    use std::io::Write;
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_skerry-vmm"))
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = input.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).unwrap();
        pipe
    });
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdout = Vec::new();
    let status = loop {
        while let Ok(chunk) = rx.try_recv() {
            stdout.extend_from_slice(&chunk);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > deadline || done(&String::from_utf8_lossy(&stdout)) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = reader.join();
    while let Ok(chunk) = rx.try_recv() {
        stdout.extend_from_slice(&chunk);
    }
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
        elapsed: start.elapsed(),
    }
}
