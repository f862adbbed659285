//! virtio-blk end to end: a 32-bit PVH guest writes sector 1 through virtio-mmio, reads it
//! back into another buffer and compares; the host then checks the file. Seccomp is on.

mod common;

use std::time::Duration;

use common::{assert_run, binutils, build_guest, kvm_usable, pvh_guest, require, run_vmm};
use skerry_vmm::exit::EXIT_RESET;

const BODY: &str = r#"
    .set Q, 0x40000
    .set HDR, 0x50000
    .set STATUS, 0x50100
    .set WBUF, 0x51000
    .set RBUF, 0x52000
_start:
    cmpl $0x74726976, BASE
    jne fail
    cmpl $2, BASE+0x08
    jne fail
    movl $1, BASE+0x70
    movl $3, BASE+0x70
    movl $1, BASE+0x14
    movl BASE+0x10, %eax
    andl $1, %eax
    movl $1, BASE+0x24
    movl %eax, BASE+0x20
    movl $0xb, BASE+0x70
    movl $0, BASE+0x30
    movl $8, BASE+0x38
    movl $Q, BASE+0x80
    movl $0, BASE+0x84
    movl $Q+0x100, BASE+0x90
    movl $0, BASE+0x94
    movl $Q+0x200, BASE+0xa0
    movl $0, BASE+0xa4
    movl $1, BASE+0x44
    movl $0xf, BASE+0x70
    testl $0x40, BASE+0x70
    jnz fail
    /* pattern: byte i = i*7 + 1 */
    xor %ecx, %ecx
1:  mov %cl, %al
    imul $7, %eax
    inc %al
    movb %al, WBUF(%ecx)
    inc %ecx
    cmp $512, %ecx
    jne 1b
    /* write request: descs 0,1,2 */
    movl $1, HDR
    movl $0, HDR+4
    movl $1, HDR+8
    movl $0, HDR+12
    movl $HDR, Q+0x00
    movl $0, Q+0x04
    movl $16, Q+0x08
    movl $0x00010001, Q+0x0c
    movl $WBUF, Q+0x10
    movl $0, Q+0x14
    movl $512, Q+0x18
    movl $0x00020001, Q+0x1c
    movl $STATUS, Q+0x20
    movl $0, Q+0x24
    movl $1, Q+0x28
    movl $0x00000002, Q+0x2c
    movb $0xff, STATUS
    movw $0, Q+0x104
    movw $1, Q+0x102
    movl $0, BASE+0x50
2:  cmpw $1, Q+0x202
    jb 2b
    cmpb $0, STATUS
    jne fail
    /* read request into RBUF: descs 3,4,5 */
    movl $0, HDR
    movl $HDR, Q+0x30
    movl $0, Q+0x34
    movl $16, Q+0x38
    movl $0x00040001, Q+0x3c
    movl $RBUF, Q+0x40
    movl $0, Q+0x44
    movl $512, Q+0x48
    movl $0x00050003, Q+0x4c
    movl $STATUS, Q+0x50
    movl $0, Q+0x54
    movl $1, Q+0x58
    movl $0x00000002, Q+0x5c
    movb $0xff, STATUS
    movw $3, Q+0x106
    movw $2, Q+0x102
    movl $0, BASE+0x50
3:  cmpw $2, Q+0x202
    jb 3b
    cmpb $0, STATUS
    jne fail
    cmpl $513, Q+0x210
    jne fail
    mov $WBUF, %esi
    mov $RBUF, %edi
    mov $512, %ecx
    cld
    repe cmpsb
    jne fail
"#;

#[test]
fn vm_block_write_then_read_back_with_checksum() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(
        dir.path(),
        "blk",
        &pvh_guest(BODY, "virtio-blk write+read ok", "virtio-blk FAILED"),
    );
    let disk = dir.path().join("disk.img");
    let original: Vec<u8> = (0..8 * 512u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &original).unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "32",
            "--block",
            disk.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    println!("{run:?}");
    assert_run(&run, "virtio-blk write+read ok", EXIT_RESET);

    let after = std::fs::read(&disk).unwrap();
    let pattern: Vec<u8> = (0..512u32)
        .map(|i| ((i as u8).wrapping_mul(7)).wrapping_add(1))
        .collect();
    let sum = |b: &[u8]| {
        b.iter()
            .fold(0u32, |a, x| a.wrapping_mul(31).wrapping_add(u32::from(*x)))
    };
    assert_eq!(sum(&after[512..1024]), sum(&pattern), "sector 1 checksum");
    assert_eq!(&after[..512], &original[..512], "sector 0 untouched");
    assert_eq!(&after[1024..], &original[1024..], "sectors 2.. untouched");
}
