//! Early Linux boot: the guest image's kernel (skerry's or Debian's) must print exactly our command line and an e820
//! map matching the configured memory. Under PVM a stock kernel cannot finish booting, so the
//! VM is killed as soon as those lines are out.

mod common;

use std::time::Duration;

use common::{kvm_usable, require, run_vmm_until};

const MEM_MIB: u64 = 256;

fn token() -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    format!("{}{}", std::process::id(), uuid.trim().replace('-', ""))
}

/// Usable ranges from the kernel's "BIOS-e820: [mem 0xA-0xB] usable" lines.
fn usable_ranges(console: &str) -> Vec<(u64, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.split("BIOS-e820: [mem ").nth(1)?;
            let (range, kind) = rest.split_once("] ")?;
            if kind.trim() != "usable" {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let p = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            Some((p(a)?, p(b)?))
        })
        .collect()
}

fn e820_done(console: &str) -> bool {
    // Done once a complete line follows the BIOS-e820 block.
    let complete = console.rsplit_once('\n').map_or("", |(done, _)| done);
    let mut seen = false;
    for l in complete.lines() {
        if l.contains("BIOS-e820:") {
            seen = true;
        } else if seen {
            return true;
        }
    }
    false
}

fn boot(protocol: &str) {
    if !require(kvm_usable()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = match common::kernel::vmlinux(dir.path()) {
        Ok(k) => k,
        Err(reason) => {
            require(Err(reason));
            return;
        }
    };
    let cmdline = format!(
        "console=ttyS0 earlyprintk=serial panic=-1 skerry.token={}",
        token()
    );
    let mem = MEM_MIB.to_string();
    let run = run_vmm_until(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            &mem,
            "--cmdline",
            &cmdline,
            "--boot-protocol",
            protocol,
        ],
        Duration::from_secs(120),
        e820_done,
    );
    println!(
        "status {:?} after {:?}\n--- console ---\n{}\n--- stderr ---\n{}",
        run.status, run.elapsed, run.stdout, run.stderr
    );
    let want = format!("Command line: {cmdline}");
    assert!(
        run.stdout.lines().any(|l| l.ends_with(&want)),
        "kernel did not print exactly `{want}`"
    );
    let usable = usable_ranges(&run.stdout);
    let mem_end = MEM_MIB << 20;
    assert_eq!(
        usable,
        vec![(0, 0x9fbff), (0x10_0000, mem_end - 1)],
        "e820 usable RAM does not match --memory {MEM_MIB}"
    );
    let total: u64 = usable.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(total, mem_end - (0x10_0000 - 0x9fc00));
    assert!(
        run.status.is_none(),
        "the VMM should still be running when killed: {:?}",
        run.status
    );
}

/// PVH entry (both kernels have the PVH ELF note: `CONFIG_PVH`).
#[test]
fn vm_linux_pvh_prints_cmdline_and_e820() {
    boot("auto");
}

#[test]
fn lz4_legacy_decoder_roundtrips_a_tiny_frame() {
    // One block: literals "abcd" then a 6-byte match at offset 4, then last literals "xy".
    let block: &[u8] = &[0x42, b'a', b'b', b'c', b'd', 4, 0, 0x20, b'x', b'y'];
    let mut frame = vec![0x02, 0x21, 0x4c, 0x18];
    frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
    frame.extend_from_slice(block);
    frame.extend_from_slice(&14u32.to_le_bytes()); // appended size: ignored
    let out = common::kernel::lz4_legacy(&frame).unwrap();
    assert_eq!(out, b"abcdabcdabxy");
}

/// The 64-bit Linux boot protocol (zero page in RSI) with the same kernel.
#[test]
fn vm_linux_64bit_boot_prints_cmdline_and_e820() {
    boot("linux");
}

/// ACPI: the kernel finds our RSDP/XSDT/FADT/DSDT/MADT and, from the MADT, every vCPU; the
/// virtio-mmio device is also on its command line.
#[test]
fn vm_linux_finds_acpi_tables_and_all_vcpus() {
    if !require(kvm_usable()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = match common::kernel::vmlinux(dir.path()) {
        Ok(k) => k,
        Err(reason) => {
            require(Err(reason));
            return;
        }
    };
    let run = run_vmm_until(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "256",
            "--vcpus",
            "2",
            "--rng",
            "--cmdline",
            "console=ttyS0 earlyprintk=serial",
        ],
        Duration::from_secs(150),
        // The whole line: stopping mid-line would cut the count off.
        |out| {
            out.split_once("smpboot: Allowing")
                .is_some_and(|(_, rest)| rest.contains('\n'))
        },
    );
    println!("after {:?}:\n{}", run.elapsed, run.stdout);
    assert!(run.stdout.contains(
        "Command line: console=ttyS0 earlyprintk=serial virtio_mmio.device=4K@0xd0000000:5"
    ));
    for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains(&format!("ACPI: {table} 0x")) && l.contains("SKERRY")),
            "ACPI {table} not reported"
        );
    }
    assert!(run
        .stdout
        .contains("ACPI: Using ACPI (MADT) for SMP configuration information"));
    assert!(run.stdout.contains("smpboot: Allowing 2 CPUs"));
}
