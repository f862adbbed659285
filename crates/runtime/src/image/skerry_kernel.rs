//! skerry's own guest kernel: the description `scripts/build-kernel.sh` writes
//! beside its `vmlinux`, the check that the kernel builds in everything the
//! guest needs (Debian's kernel loads it as [`GUEST_MODULES`]), and a build, or
//! a cache lookup, with the script, config fragment, LSM and patches compiled
//! into this binary, so that an installed `skerry image build` needs no source tree.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::{ImageError, GUEST_MODULES};

/// The file `scripts/build-kernel.sh` writes next to its `vmlinux`.
pub const SKERRY_KERNEL_INFO: &str = "kernel.json";

/// The final `.config` of the build, next to its `vmlinux`.
pub const SKERRY_KERNEL_CONFIG: &str = "config";

/// scripts/build-kernel.sh, as this binary was built with it.
const BUILD_SCRIPT: &str = include_str!("../../../../scripts/build-kernel.sh");

/// guest/kernel/skerry.config, as this binary was built with it.
pub const CONFIG_FRAGMENT: &str = include_str!("../../../../guest/kernel/skerry.config");

/// guest/kernel/skerry_lsm.c, skerry's LSM, as this binary was built with it.
const LSM_SOURCE: &str = include_str!("../../../../guest/kernel/skerry_lsm.c");

/// guest/kernel/patches/: each patch's file name and text, as this binary was built
/// with them (a test checks the list against the directory).
const PATCHES: &[(&str, &str)] = &[(
    "vsock-rx-buffers.patch",
    include_str!("../../../../guest/kernel/patches/vsock-rx-buffers.patch"),
)];

/// `kernel.json` of a skerry kernel build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SkerryKernelInfo {
    /// `make kernelrelease`, e.g. "6.1.192-skerry".
    pub release: String,
    /// Debian source package, e.g. "linux-source-6.1".
    pub source_package: String,
    /// Its version, e.g. "6.1.192-3".
    pub source_version: String,
    /// SHA-256 of guest/kernel/skerry.config (hex).
    pub config_sha256: String,
    /// The cache key: hash of source version, config fragment and build script.
    pub build_key: String,
}

/// Reads `kernel.json` of a skerry kernel build directory, checks that its
/// `vmlinux` is an ELF file (the script checked its PVH note) and that its
/// `config` builds in every guest module.
pub fn read_skerry_kernel(dir: &Path) -> Result<SkerryKernelInfo, ImageError> {
    let not_a_build = |e| ImageError::NotASkerryKernel(dir.to_path_buf(), e);
    let info_path = dir.join(SKERRY_KERNEL_INFO);
    let text = std::fs::read(&info_path).map_err(not_a_build)?;
    let vmlinux = dir.join(super::VMLINUX);
    let mut magic = [0u8; 4];
    std::fs::File::open(&vmlinux)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(not_a_build)?;
    if &magic != b"\x7fELF" {
        return Err(ImageError::NotAnElfKernel(vmlinux));
    }
    let config = std::fs::read_to_string(dir.join(SKERRY_KERNEL_CONFIG)).map_err(not_a_build)?;
    let info =
        serde_json::from_slice(&text).map_err(|e| ImageError::BadKernelInfo(info_path, e))?;
    if let Some(module) = missing_builtin(&config) {
        return Err(ImageError::KernelLacks {
            dir: dir.to_path_buf(),
            module: module.name,
            option: module.option,
        });
    }
    Ok(info)
}

/// The first guest module whose option `config` (a `.config` or the fragment)
/// does not set to `y`: without module support, a missing one is missing for good.
fn missing_builtin(config: &str) -> Option<super::GuestModule> {
    GUEST_MODULES.iter().copied().find(|m| {
        let line = format!("CONFIG_{}=y", m.option);
        !config.lines().any(|l| l.trim_end() == line)
    })
}

/// Builds skerry's kernel with the build script and fragment compiled into
/// this binary, or finds the build of the same key in the cache (see
/// `scripts/build-kernel.sh`: `$SKERRY_KERNEL_CACHE`, default
/// `~/.cache/skerry-kernel`); returns the build's directory. The script's
/// progress goes to this process's stderr. A build takes minutes and needs
/// Debian's `linux-source-6.1` and the kernel build tools.
pub fn build_skerry_kernel() -> Result<PathBuf, ImageError> {
    // The script finds the fragment relative to itself, so the temporary
    // tree mirrors the repository's; with the same contents the key is the same.
    let src = tempfile::Builder::new()
        .prefix("skerry-kernel-src-")
        .tempdir()
        .map_err(|e| ImageError::Io(std::env::temp_dir(), e))?;
    let script = src.path().join("scripts/build-kernel.sh");
    let kernel_dir = src.path().join("guest/kernel");
    let patches = PATCHES
        .iter()
        .map(|(name, text)| (kernel_dir.join("patches").join(name), *text, 0o644));
    for (path, text, mode) in [
        (script.clone(), BUILD_SCRIPT, 0o755),
        (kernel_dir.join("skerry.config"), CONFIG_FRAGMENT, 0o644),
        (kernel_dir.join("skerry_lsm.c"), LSM_SOURCE, 0o644),
    ]
    .into_iter()
    .chain(patches)
    {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().unwrap_or(src.path()))?;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(text.as_bytes())?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        };
        write().map_err(|e| ImageError::Io(path.clone(), e))?;
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| ImageError::Tool(super::describe(&cmd), e))?;
    if !out.status.success() {
        return Err(ImageError::KernelBuild(out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !dir.is_absolute() {
        return Err(ImageError::KernelBuildOutput(stdout.into_owned()));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_builds_in_every_guest_module() {
        assert_eq!(missing_builtin(CONFIG_FRAGMENT).map(|m| m.name), None);
        // The fragment switches module support off: nothing could be loaded later.
        assert!(CONFIG_FRAGMENT
            .lines()
            .any(|l| l == "# CONFIG_MODULES is not set"));
    }

    #[test]
    fn a_config_without_a_guest_module_is_refused() {
        let without_bridge: String = CONFIG_FRAGMENT
            .lines()
            .filter(|l| *l != "CONFIG_BRIDGE=y")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            missing_builtin(&without_bridge).map(|m| m.name),
            Some("bridge")
        );
        let as_module = without_bridge + "CONFIG_BRIDGE=m\n";
        assert_eq!(missing_builtin(&as_module).map(|m| m.name), Some("bridge"));
    }

    /// The binary carries every patch of guest/kernel/patches/ (so that its build
    /// hashes to the repository's key) and nothing else.
    #[test]
    fn every_kernel_patch_is_compiled_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/kernel/patches");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "patch"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .collect();
        on_disk.sort();
        let mut compiled: Vec<(String, String)> = PATCHES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        compiled.sort();
        assert_eq!(compiled, on_disk);
    }
}
