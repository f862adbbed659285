//! ACPI tables (HW-reduced): RSDP → XSDT → FADT (sleep control and reset registers, DSDT),
//! MADT (one local APIC per vCPU, the IOAPIC) and a DSDT that describes every virtio-mmio
//! device (`LNRO0005`) plus `\_S5`, so stock kernels without `virtio_mmio.device=` support
//! find the devices, bring up all vCPUs and can power off.

use acpi_tables::aml::{
    Device, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::legacy::{I8042_PORT_BASE, S5_SLP_TYP, SLEEP_CONTROL_PORT};

/// Where the RSDP goes (inside the legacy BIOS area Linux scans).
pub const RSDP_ADDR: u64 = 0xe_0000;
const TABLES_END: u64 = 0x10_0000;
const OEM_ID: [u8; 6] = *b"SKERRY";
const OEM_TABLE: [u8; 8] = *b"SKERRYVM";
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;

/// Failure to build or place the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables do not fit into the BIOS area")]
    TooBig,
    /// Guest memory write failed.
    #[error("cannot write ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device as ACPI describes it.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    /// Window base.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// GSI.
    pub irq: u32,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT body (AML).
pub fn dsdt_aml(devices: &[MmioDevice]) -> Vec<u8> {
    let mut aml = Vec::new();
    let s5 = Package::new(vec![&S5_SLP_TYP_BYTE, &0u8, &0u8, &0u8]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml);
    let names: Vec<String> = (0..devices.len()).map(|i| format!("V{i:03}")).collect();
    let mut devs = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let mem = Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = Interrupt::new(true, true, false, false, d.irq);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        let uid = i as u32;
        let hid = Name::new("_HID".into(), &"LNRO0005");
        let uid = Name::new("_UID".into(), &uid);
        let cca = Name::new("_CCA".into(), &acpi_tables::aml::ONE);
        let crs = Name::new("_CRS".into(), &crs);
        let dev = Device::new(Path::new(&names[i]), vec![&hid, &uid, &cca, &crs]);
        devs.push(bytes(&dev));
    }
    let raw: Vec<RawAml> = devs.into_iter().map(RawAml).collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|r| r as &dyn Aml).collect();
    Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut aml);
    aml
}

const S5_SLP_TYP_BYTE: u8 = S5_SLP_TYP as u8;

/// Pre-serialized AML.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Builds the tables and writes them from [`RSDP_ADDR`]; returns the RSDP address.
pub fn create_tables(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    devices: &[MmioDevice],
) -> Result<u64, AcpiError> {
    let mut next = RSDP_ADDR + 64;
    let mut place = |data: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        let end = at + data.len() as u64;
        if end > TABLES_END {
            return Err(AcpiError::TooBig);
        }
        mem.write_slice(data, GuestAddress(at))
            .map_err(AcpiError::Write)?;
        next = (end + 15) & !15;
        Ok(at)
    };

    let body = dsdt_aml(devices);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&body);
    let dsdt_addr = place(dsdt.as_slice())?;

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    fadt.sleep_control_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_CONTROL_PORT,
    );
    fadt.sleep_status_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        SLEEP_CONTROL_PORT + 1,
    );
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        I8042_PORT_BASE + 4,
    );
    fadt.reset_value = 0xfe;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SKERRYVM").into();
    let fadt_addr = place(&bytes(&fadt.finalize()))?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for i in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(i, i, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = place(&bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    for t in [fadt_addr, madt_addr] {
        xsdt.add_entry(t);
    }
    let xsdt_addr = place(&bytes(&xsdt))?;

    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&bytes(&rsdp), GuestAddress(RSDP_ADDR))
        .map_err(AcpiError::Write)?;
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let devs = [MmioDevice {
            base: 0xd000_0000,
            size: 0x1000,
            irq: 5,
        }];
        let rsdp = create_tables(&mem, 2, &devs).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let table = |addr: u64| {
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            t
        };
        let x = table(xsdt);
        assert_eq!(&x[..4], b"XSDT");
        assert!(checksum_ok(&x));
        let entries: Vec<u64> = x[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|a| table(*a)[..4].to_vec()).collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        for a in &entries {
            assert!(checksum_ok(&table(*a)));
        }
        let fadt = table(entries[0]);
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table(dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let body = &dsdt[36..];
        assert!(body.windows(8).any(|w| w == b"LNRO0005"));
        assert!(body.windows(4).any(|w| w == b"_S5_"));
    }
}
