//! Control API over a Unix socket: status, pause (guest output stops), resume (it goes on),
//! shutdown (the VMM exits with status 5). Seccomp filters are on.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{binutils, build_guest, kvm_usable, require};
use skerry_vmm::exit::EXIT_STOPPED;

/// Prints 'x' forever, with a short delay loop between characters.
const TICKER: &str = r#"
    .code64
    .globl _start
_start:
    mov $0x3f8, %dx
1:  mov $0x78, %al
    outb %al, %dx
    mov $200, %ecx
2:  loop 2b
    jmp 1b
"#;

fn request(conn: &mut BufReader<UnixStream>, action: &str) -> String {
    writeln!(conn.get_mut(), "{{\"action\":\"{action}\"}}").unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn wait_for(what: &str, deadline: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vm_api_status_pause_resume_shutdown() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "ticker", TICKER);
    let sock = dir.path().join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skerry-vmm"))
        .args([
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "32",
            "--vcpus",
            "2",
        ])
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(0usize));
    let mut stdout = child.stdout.take().unwrap();
    let counter = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            *counter.lock().unwrap() += n;
        }
    });
    let count = || *out.lock().unwrap();
    let deadline = Duration::from_secs(20);
    wait_for("guest output", deadline, || count() > 10);
    wait_for("API socket", deadline, || sock.exists());
    let mut conn = BufReader::new(UnixStream::connect(&sock).unwrap());

    assert_eq!(
        request(&mut conn, "status"),
        r#"{"ok":true,"state":"running"}"#
    );
    assert_eq!(
        request(&mut conn, "pause"),
        r#"{"ok":true,"state":"paused"}"#
    );
    std::thread::sleep(Duration::from_millis(100)); // let the pipe drain
    let frozen = count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), frozen, "guest kept printing while paused");
    assert_eq!(
        request(&mut conn, "status"),
        r#"{"ok":true,"state":"paused"}"#
    );
    assert!(request(&mut conn, "reboot").contains(r#""ok":false"#));

    assert_eq!(
        request(&mut conn, "resume"),
        r#"{"ok":true,"state":"running"}"#
    );
    wait_for("output after resume", deadline, || count() > frozen + 10);

    assert_eq!(
        request(&mut conn, "shutdown"),
        r#"{"ok":true,"state":"stopping"}"#
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("VMM did not exit after shutdown");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = reader.join();
    println!(
        "status {status:?}, {} console bytes, stderr: {stderr}",
        count()
    );
    assert_eq!(status.code(), Some(EXIT_STOPPED), "stderr: {stderr}");
}
