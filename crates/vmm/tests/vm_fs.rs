//! KVM test of the vhost-user virtio-fs frontend: a tiny 32-bit guest drives the device by
//! hand and sends FUSE_INIT to a real virtiofsd, which reads the request from the memfd guest
//! memory after a kick that goes through the KVM ioeventfd, and writes its reply there. The
//! VMM runs with its seccomp filters on, so the deferred vhost-user start is covered too.

mod common;

use std::time::Duration;

use common::host::{virtiofsd, Virtiofsd};
use common::{assert_run, binutils, build_guest, kvm_usable, pvh_guest, require, run_tiny_guest};
use skerry_vmm::exit::EXIT_RESET;

const BODY: &str = r#"
    .set Q0, 0x40000
    .set Q1, 0x44000
    .set REQ, 0x30000
    .set REPLY, 0x31000
_start:
    cmpl $0x74726976, BASE
    jne fail
    cmpl $26, BASE+0x08
    jne fail
    movl $1, BASE+0x70
    movl $3, BASE+0x70
    movl $1, BASE+0x24
    movl $1, BASE+0x20
    movl $0, BASE+0x24
    movl $0, BASE+0x20
    movl $0xb, BASE+0x70
    testl $8, BASE+0x70
    jz fail
    /* Both queues: size 8, desc at Qn, avail at Qn+0x1000, used at Qn+0x2000. */
    setup_queues 2, Q0
    movl $0xf, BASE+0x70
    /* FUSE_INIT 7.31: in header (len 56, opcode 26, unique 1) + fuse_init_in. */
    movl $56, REQ
    movl $26, REQ+4
    movl $1, REQ+8
    movl $7, REQ+40
    movl $31, REQ+44
    /* Request queue: [REQ, 56, NEXT, 1] [REPLY, 256, WRITE]. */
    movl $REQ, Q1
    movl $56, Q1+8
    movl $0x00010001, Q1+12
    movl $REPLY, Q1+16
    movl $256, Q1+24
    movl $2, Q1+28
    movl $0x00010000, Q1+0x1000
    movl $0, Q1+0x1004
    movl $1, BASE+0x50
    wait_used Q1+0x2002, 1, 20000000
    testl $0x40, BASE+0x70
    jnz fail
    cmpl $16, Q1+0x2008
    jb fail
    cmpl $0, REPLY+4
    jne fail
    cmpl $1, REPLY+8
    jne fail
    cmpl $7, REPLY+16
    jne fail
"#;

#[test]
fn vm_virtio_fs_fuse_init_reaches_virtiofsd() {
    if !(require(kvm_usable()) && require(binutils())) {
        return;
    }
    let bin = match virtiofsd() {
        Ok(b) => b,
        Err(reason) => {
            require(Err(reason));
            return;
        }
    };
    let daemon = Virtiofsd::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(
        dir.path(),
        "fs",
        &pvh_guest(BODY, "virtio-fs ok: FUSE_INIT answered", "virtio-fs FAILED"),
    );
    let run = run_tiny_guest(
        &elf,
        &[
            "--fs-socket",
            daemon.socket.to_str().unwrap(),
            "--fs-tag",
            "skerryfs",
        ],
        Duration::from_secs(60),
    );
    drop(daemon);
    println!("{run:?}");
    assert_run(&run, "virtio-fs ok: FUSE_INIT answered", EXIT_RESET);
}
