//! Hybrid vsock end to end: a 32-bit PVH guest drives virtio-vsock over virtio-mmio by hand;
//! the host connects to the VMM's Unix socket with `CONNECT 1234`, gets `OK <port>`, sends
//! "ping" and reads the guest's "PONG". Seccomp filters are on.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binutils, build_guest, kvm_usable, require, PVH_PROLOGUE};
use skerry_vmm::exit::EXIT_RESET;

const BODY: &str = r#"
    .set RXB0, 0x50000
    .set RXB1, 0x51000
    .set TXB, 0x60000
_start:
    mov $0x80000, %esp
    cmpl $0x74726976, BASE
    jne fail
    cmpl $19, BASE+0x08
    jne fail
    movl $1, BASE+0x70
    movl $3, BASE+0x70
    movl $1, BASE+0x14
    movl BASE+0x10, %eax
    movl $1, BASE+0x24
    movl %eax, BASE+0x20
    movl $0xb, BASE+0x70
    /* three queues: q at 0x40000 + q*0x1000: desc +0, avail +0x100, used +0x200 */
    xor %ecx, %ecx
1:  movl %ecx, BASE+0x30
    movl $8, BASE+0x38
    mov %ecx, %eax
    shl $12, %eax
    add $0x40000, %eax
    movl %eax, BASE+0x80
    movl $0, BASE+0x84
    lea 0x100(%eax), %edx
    movl %edx, BASE+0x90
    movl $0, BASE+0x94
    lea 0x200(%eax), %edx
    movl %edx, BASE+0xa0
    movl $0, BASE+0xa4
    movl $1, BASE+0x44
    inc %ecx
    cmp $3, %ecx
    jne 1b
    /* two write-only RX buffers */
    movl $RXB0, 0x40000
    movl $0, 0x40004
    movl $4096, 0x40008
    movl $2, 0x4000c
    movl $RXB1, 0x40010
    movl $0, 0x40014
    movl $4096, 0x40018
    movl $2, 0x4001c
    movl $0x00020000, 0x40100
    movl $0x00010000, 0x40104
    movl $0xf, BASE+0x70
    testl $0x40, BASE+0x70
    jnz fail
    movl $0, BASE+0x50
    mov $ready, %esi
    mov $ready_end - ready, %ecx
    call print
    /* wait for the host's connection request */
2:  cmpw $1, 0x40202
    jb 2b
    cmpw $1, RXB0+30
    jne fail
    cmpl $1234, RXB0+20
    jne fail
    mov RXB0+16, %ebx
    /* RESPONSE */
    mov $TXB, %edi
    call header
    movw $2, TXB+30
    movl $TXB, 0x41000
    movl $0, 0x41004
    movl $44, 0x41008
    movl $0, 0x4100c
    movl $0, 0x41104
    movw $1, 0x41102
    movl $1, BASE+0x50
    /* wait for data */
3:  cmpw $2, 0x40202
    jb 3b
    cmpw $5, RXB1+30
    jne fail
    cmpl $4, RXB1+24
    jne fail
    cmpl $0x676e6970, RXB1+44
    jne fail
    /* RW "PONG", header and data in one descriptor */
    mov $TXB+0x100, %edi
    call header
    movw $5, TXB+0x100+30
    movl $4, TXB+0x100+24
    movl $0x474e4f50, TXB+0x100+44
    movl $TXB+0x100, 0x41010
    movl $0, 0x41014
    movl $48, 0x41018
    movl $0, 0x4101c
    movw $1, 0x41106
    movw $2, 0x41102
    movl $1, BASE+0x50
4:  cmpw $2, 0x41202
    jb 4b
    mov $done, %esi
    mov $done_end - done, %ecx
    call print
    jmp reset
fail:
    mov $badmsg, %esi
    mov $badend - badmsg, %ecx
    call print
reset:
    mov $0xfe, %al
    outb %al, $0x64
5:  hlt
    jmp 5b
/* header at %edi: src 3:1234 -> dst 2:%ebx, stream, buf_alloc 64K */
header:
    movl $3, 0(%edi)
    movl $0, 4(%edi)
    movl $2, 8(%edi)
    movl $0, 12(%edi)
    movl $1234, 16(%edi)
    movl %ebx, 20(%edi)
    movl $0, 24(%edi)
    movw $1, 28(%edi)
    movw $0, 30(%edi)
    movl $0, 32(%edi)
    movl $65536, 36(%edi)
    movl $0, 40(%edi)
    ret
print:
    mov $0x3f8, %dx
6:  lodsb
    outb %al, %dx
    loop 6b
    ret
ready: .ascii "vsock ready\n"
ready_end:
done: .ascii "vsock echo done\n"
done_end:
badmsg: .ascii "vsock guest FAILED\n"
badend:
"#;

#[test]
fn vm_vsock_host_connect_echo_round_trip() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "vsock", &format!("{PVH_PROLOGUE}{BODY}"));
    let uds = dir.path().join("v.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skerry-vmm"))
        .args([
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "32",
            "--vsock-cid",
            "3",
        ])
        .arg("--vsock-uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    console.read_line(&mut line).unwrap();
    assert_eq!(line, "vsock ready\n");

    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    host.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    reader.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"PONG");

    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("VMM did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut rest = String::new();
    let _ = console.read_to_string(&mut rest);
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    println!("{ok}console: {rest}stderr: {stderr}");
    assert!(rest.contains("vsock echo done"), "{rest} {stderr}");
    assert_eq!(status.code(), Some(EXIT_RESET), "{stderr}");
}
