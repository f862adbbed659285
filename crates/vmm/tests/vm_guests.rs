//! KVM tests with tiny guests assembled at test time. The VMM runs as a subprocess with its
//! seccomp filters on (the default), so a filter gap shows up as a SIGSYS death.

mod common;

use std::time::Duration;

use common::{
    assert_run, binutils, build_guest, kvm_usable, pvh_guest, require, run_tiny_guest, run_vmm,
    PVH_PROLOGUE,
};
use skerry_vmm::exit::{EXIT_GUEST_CRASH, EXIT_POWEROFF, EXIT_RESET};

const DEADLINE: Duration = Duration::from_secs(20);

/// Prints `msg` on COM1 (polling nothing: the UART model never blocks).
const PRINT: &str = r#"
    mov $0x3f8, %dx
    lea msg(%rip), %rsi
    mov $msg_end - msg, %ecx
1:  lodsb
    outb %al, %dx
    loop 1b
"#;

fn guest(body_after_print: &str, msg: &str) -> String {
    format!(
        ".code64\n.globl _start\n_start:\n{PRINT}\n{body_after_print}\n2: hlt\n    jmp 2b\nmsg: .ascii \"{msg}\\n\"\nmsg_end:\n"
    )
}

const RESET: &str = "    mov $0xfe, %al\n    outb %al, $0x64\n";
const POWEROFF: &str = "    mov $0x604, %dx\n    mov $0x3400, %ax\n    outw %ax, %dx\n";
const TRIPLE_FAULT: &str = "    lidt idt0(%rip)\n    int3\nidt0: .word 0\n    .quad 0\n";

fn ready() -> bool {
    require(kvm_usable()) && require(binutils())
}

fn run_guest(name: &str, src: &str, extra: &[&str]) -> common::Run {
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), name, src);
    let run = run_tiny_guest(&elf, extra, DEADLINE);
    println!(
        "{name}: {:?} in {:?}\nstdout: {}\nstderr: {}",
        run.status, run.elapsed, run.stdout, run.stderr
    );
    run
}

#[test]
fn vm_serial_output_then_i8042_reset_exits_with_reset_status() {
    if !ready() {
        return;
    }
    let run = run_guest("reset", &guest(RESET, "skerry guest: hello over COM1"), &[]);
    assert_run(&run, "skerry guest: hello over COM1", EXIT_RESET);
}

#[test]
fn vm_acpi_s5_poweroff_exits_zero() {
    if !ready() {
        return;
    }
    let run = run_guest("poweroff", &guest(POWEROFF, "powering off"), &[]);
    assert_run(&run, "powering off", EXIT_POWEROFF);
}

#[test]
fn vm_triple_fault_exits_with_crash_status() {
    if !ready() {
        return;
    }
    let run = run_guest("crash", &guest(TRIPLE_FAULT, "about to fault"), &[]);
    assert_run(&run, "about to fault", EXIT_GUEST_CRASH);
}

/// The AP never gets a SIPI, so its KVM_RUN blocks in the kernel; the reset must still end
/// the VMM promptly: the VMM kicks it with a signal and `immediate_exit`.
#[test]
fn vm_reset_with_blocked_second_vcpu_exits_promptly() {
    if !ready() {
        return;
    }
    let run = run_guest("smp", &guest(RESET, "two vcpus"), &["--vcpus", "2"]);
    assert_run(&run, "two vcpus", EXIT_RESET);
}

/// A guest with a PVH note starts in 32-bit protected mode with EBX = hvm_start_info.
#[test]
fn vm_pvh_entry_gets_start_info_in_ebx() {
    if !ready() {
        return;
    }
    let body = r#"
_start:
    cmpl $0x336ec578, (%ebx)
    jne fail
    cmpl $1, 4(%ebx)
    jne fail
"#;
    let src = pvh_guest(body, "pvh start info ok", "pvh start info BAD");
    let run = run_guest("pvh", &src, &[]);
    assert_run(&run, "pvh start info ok", EXIT_RESET);
}

#[test]
fn vm_missing_kernel_is_a_one_line_error() {
    // Needs no KVM: the configuration is checked first.
    let run = run_vmm(
        &["--kernel", "/nonexistent/vmlinux", "--memory", "32"],
        DEADLINE,
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("--kernel /nonexistent/vmlinux"),
        "{run:?}"
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
}

/// A 32-bit PVH guest (paging off, so it can reach the MMIO window) that drives the
/// virtio-rng device through virtio-mmio by hand: handshake, one 32-byte write-only buffer,
/// notify, poll the used ring, check the bytes.
#[test]
fn vm_virtio_rng_fills_a_guest_buffer() {
    if !ready() {
        return;
    }
    let body = r#"
    .set DESC, 0x40000
    .set AVAIL, 0x41000
    .set USED, 0x42000
    .set BUFFER, 0x30000
_start:
    cmpl $0x74726976, BASE
    jne fail
    cmpl $4, BASE+0x08
    jne fail
    movl $1, BASE+0x70
    movl $3, BASE+0x70
    movl $1, BASE+0x14
    movl BASE+0x10, %eax
    movl $1, BASE+0x24
    movl %eax, BASE+0x20
    movl $0xb, BASE+0x70
    testl $8, BASE+0x70
    jz fail
    movl $0, BASE+0x30
    movl $8, BASE+0x38
    movl $BUFFER, DESC
    movl $0, DESC+4
    movl $32, DESC+8
    movl $2, DESC+12
    movl $0x00010000, AVAIL
    movl $0, AVAIL+4
    movl $DESC, BASE+0x80
    movl $0, BASE+0x84
    movl $AVAIL, BASE+0x90
    movl $0, BASE+0x94
    movl $USED, BASE+0xa0
    movl $0, BASE+0xa4
    movl $1, BASE+0x44
    movl $0xf, BASE+0x70
    testl $0x40, BASE+0x70
    jnz fail
    movl $0, BASE+0x50
    wait_used USED+2, 1, 2000000
    cmpl $32, USED+8
    jne fail
    xor %eax, %eax
    mov $BUFFER, %esi
    mov $8, %ecx
3:  orl (%esi), %eax
    add $4, %esi
    loop 3b
    test %eax, %eax
    jz fail
"#;
    let src = pvh_guest(body, "virtio-rng ok: 32 random bytes", "virtio-rng FAILED");
    let run = run_guest("rng", &src, &["--rng"]);
    assert_run(&run, "virtio-rng ok: 32 random bytes", EXIT_RESET);
}

/// The guest sees `virtio_mmio.device=<size>@<addr>:<irq>` for each device on its command line
/// (the PVH guest prints the command line it was given).
#[test]
fn vm_virtio_mmio_devices_are_announced_on_the_cmdline() {
    if !ready() {
        return;
    }
    let body = r#"
_start:
    mov 24(%ebx), %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:  mov $10, %al
    outb %al, %dx
    mov $0xfe, %al
    outb %al, $0x64
3:  hlt
    jmp 3b
"#;
    let run = run_guest("cmdline", &format!("{PVH_PROLOGUE}{body}"), &["--rng"]);
    assert_run(&run, "test virtio_mmio.device=4K@0xd0000000:5", EXIT_RESET);
}

/// The VMM's stdin reaches the guest through the UART's receive FIFO.
#[test]
fn vm_stdin_reaches_the_guest_serial_port() {
    if !ready() {
        return;
    }
    let src = r#"
    .code64
    .globl _start
_start:
1:  mov $0x3fd, %dx
2:  inb %dx, %al
    test $1, %al
    jz 2b
    mov $0x3f8, %dx
    inb %dx, %al
    cmp $0x61, %al
    jb 3f
    cmp $0x7a, %al
    ja 3f
    sub $0x20, %al
3:  outb %al, %dx
    cmp $10, %al
    jne 1b
    mov $0xfe, %al
    outb %al, $0x64
4:  hlt
    jmp 4b
"#;
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "echo", src);
    let run = common::run_vmm_with_input(
        &["--kernel", elf.to_str().unwrap(), "--memory", "32"],
        b"ping from the host\n",
        DEADLINE,
    );
    println!("{run:?}");
    assert_run(&run, "PING FROM THE HOST", EXIT_RESET);
}
