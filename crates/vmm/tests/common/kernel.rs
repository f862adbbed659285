//! Finds the guest image's kernel (`SKERRY_TEST_IMAGE_DIR`) and extracts its ELF `vmlinux` from the bzImage (the
//! `extract-vmlinux` logic: the setup header says where the compressed payload is).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory holding the guest image (`SKERRY_TEST_IMAGE_DIR`, default target/guest).
pub fn image_dir() -> PathBuf {
    match std::env::var_os("SKERRY_TEST_IMAGE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guest"),
    }
}

/// An ELF vmlinux: `<dir>/vmlinux` if present, else extracted from `<dir>/vmlinuz` into `out`.
pub fn vmlinux(out: &Path) -> Result<PathBuf, String> {
    let dir = image_dir();
    let elf = dir.join("vmlinux");
    if elf.is_file() {
        return Ok(elf);
    }
    let bz = dir.join("vmlinuz");
    let image =
        std::fs::read(&bz).map_err(|e| format!("no test kernel at {}: {e}", bz.display()))?;
    let raw = extract(&image)?;
    if raw.get(..4) != Some(b"\x7fELF") {
        return Err("decompressed payload is not an ELF vmlinux".into());
    }
    let path = out.join("vmlinux");
    std::fs::write(&path, raw).map_err(|e| e.to_string())?;
    Ok(path)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decompresses the payload of a bzImage.
pub fn extract(image: &[u8]) -> Result<Vec<u8>, String> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS)".into());
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(image, 0x248).ok_or("short header")? as usize;
    let len = le32(image, 0x24c).ok_or("short header")? as usize;
    let payload = image
        .get(start..start + len)
        .ok_or("payload outside the image")?;
    match payload.get(..4) {
        Some([0x02, 0x21, 0x4c, 0x18]) => lz4_legacy(payload),
        Some([0x28, 0xb5, 0x2f, 0xfd]) => tool("zstd", &payload[..payload.len() - 4]),
        Some([0xfd, b'7', b'z', b'X']) => tool("xz", payload),
        Some([0x1f, 0x8b, _, _]) => tool("gzip", payload),
        other => Err(format!("unknown kernel compression, magic {other:02x?}")),
    }
}

fn tool(name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(name)
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("`{name}` needed to decompress the kernel: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = feeder.join();
    if out.stdout.is_empty() {
        return Err(format!("`{name} -dc` produced nothing"));
    }
    Ok(out.stdout)
}

/// LZ4 legacy frame (what Linux's `lz4 -l` produces): magic, then size-prefixed blocks.
pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    let mut out = Vec::with_capacity(data.len() * 4);
    let mut pos = 4;
    while let Some(size) = le32(data, pos) {
        pos += 4;
        if size == MAGIC {
            continue;
        }
        let Some(block) = data.get(pos..pos + size as usize) else {
            break; // the appended uncompressed size, or trailing padding
        };
        lz4_block(block, &mut out)?;
        pos += size as usize;
    }
    Ok(out)
}

fn lz4_block(src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let err = || "corrupt lz4 block".to_string();
    let mut i = 0;
    let ext_len = |i: &mut usize, mut n: usize| -> Result<usize, String> {
        if n == 15 {
            loop {
                let b = *src.get(*i).ok_or_else(err)?;
                *i += 1;
                n += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    while i < src.len() {
        let token = src[i];
        i += 1;
        let lit = ext_len(&mut i, usize::from(token >> 4))?;
        out.extend_from_slice(src.get(i..i + lit).ok_or_else(err)?);
        i += lit;
        if i >= src.len() {
            break;
        }
        let off = usize::from(u16::from_le_bytes([
            src[i],
            *src.get(i + 1).ok_or_else(err)?,
        ]));
        i += 2;
        let mlen = ext_len(&mut i, usize::from(token & 15))? + 4;
        if off == 0 || off > out.len() {
            return Err(err());
        }
        let from = out.len() - off;
        for k in 0..mlen {
            let b = out[from + k];
            out.push(b);
        }
    }
    Ok(())
}
