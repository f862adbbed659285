//! `skerry image build`: the guest kernel and initramfs, around skerry's own
//! kernel (the default: `scripts/build-kernel.sh`, see [`skerry_kernel`]) or
//! Debian's cloud kernel package and its modules.
//!
//! The initramfs is an uncompressed newc cpio (nothing to inflate under TCG)
//! holding the agent as `/init`, the kernel modules the virtio devices need
//! (uncompressed, at their `/lib/modules/<version>/…` paths), the list
//! `/lib/modules/load-order` (absolute paths in dependency order, one per
//! line: the contract with the agent) and empty `/proc /sys /dev /run /tmp`.
//! skerry's kernel has everything built in and no module support: its list
//! is empty, so the agent loads nothing.
//! The kernel's built-in initramfs already provides `/dev/console`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;

mod skerry_kernel;

pub use skerry_kernel::{
    build_skerry_kernel, read_skerry_kernel, SkerryKernelInfo, CONFIG_FRAGMENT,
    SKERRY_KERNEL_CONFIG, SKERRY_KERNEL_INFO,
};

/// A kernel feature the guest needs: a module Debian's kernel loads at boot,
/// built into skerry's kernel (which has no module support).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestModule {
    /// The module's name in Debian's kernel; its dependencies are added in load order.
    pub name: &'static str,
    /// The Kconfig option (without `CONFIG_`) that must be `y` in skerry's kernel.
    pub option: &'static str,
}

const fn module(name: &'static str, option: &'static str) -> GuestModule {
    GuestModule { name, option }
}

/// What the guest kernel must provide, as Debian module and skerry Kconfig option.
pub const GUEST_MODULES: &[GuestModule] = &[
    module("virtio_mmio", "VIRTIO_MMIO"),
    module("virtio_console", "VIRTIO_CONSOLE"),
    module("vsock", "VSOCKETS"),
    module("vmw_vsock_virtio_transport", "VIRTIO_VSOCKETS"),
    module("virtiofs", "VIRTIO_FS"),
    module("fuse", "FUSE_FS"),
    module("virtio_blk", "VIRTIO_BLK"),
    module("virtio_net", "VIRTIO_NET"),
    module("virtio_balloon", "VIRTIO_BALLOON"),
    // Containers with NET_ADMIN make bridges (`ip link add type bridge`,
    // `brctl addbr`), as they can under runc; the guest cannot load modules
    // on demand.
    module("bridge", "BRIDGE"),
];

/// The names of [`GUEST_MODULES`].
fn guest_module_names() -> Vec<&'static str> {
    GUEST_MODULES.iter().map(|m| m.name).collect()
}

/// Debian's meta package that depends on the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Name of the manifest written next to the image.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the image layout; bump to force rebuilds. 2: a skerry kernel is
/// the uncompressed PVH `vmlinux`, the manifest names the kernel file.
const FORMAT: u32 = 2;

/// The kernel file of an image with skerry's kernel: an uncompressed ELF with a
/// PVH entry, booted with nothing to decompress.
pub const VMLINUX: &str = "vmlinux";

/// The kernel file of an image with Debian's kernel: its compressed bzImage.
pub const VMLINUZ: &str = "vmlinuz";

/// The initramfs file of an image.
pub const INITRAMFS: &str = "initramfs.img";

/// The kernel an image in `dir` boots: its `vmlinux` if it has one, else its
/// `vmlinuz` (which is the path to name when neither is there).
pub fn kernel_path(dir: &Path) -> PathBuf {
    let vmlinux = dir.join(VMLINUX);
    if vmlinux.is_file() {
        vmlinux
    } else {
        dir.join(VMLINUZ)
    }
}

/// The initramfs of an image in `dir`.
pub fn initrd_path(dir: &Path) -> PathBuf {
    dir.join(INITRAMFS)
}

/// Failure to build the guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The agent binary is missing.
    #[error("agent binary {0} not found (build it with `cargo build --release -p skerry-agent --target x86_64-unknown-linux-gnu`)")]
    AgentNotFound(PathBuf),
    /// The kernel package is missing.
    #[error("kernel package {0} not found")]
    DebNotFound(PathBuf),
    /// A file could not be read or written.
    #[error("cannot access {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A tool could not be run.
    #[error("cannot run `{0}` (is it installed?)")]
    Tool(String, #[source] std::io::Error),
    /// A tool ran and failed.
    #[error("`{command}` failed: {stderr}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The package is not a Debian kernel image package.
    #[error("{deb} is not a linux-image package: {reason}")]
    NotAKernelPackage {
        /// The .deb.
        deb: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The package does not hold what a kernel package should.
    #[error("kernel package {deb} has no {missing}")]
    MissingInPackage {
        /// The .deb.
        deb: PathBuf,
        /// The path that should be in it.
        missing: String,
    },
    /// A module (or one it depends on) is not in the package.
    #[error("kernel module {module} not found in {dir}")]
    ModuleNotFound {
        /// The module name.
        module: String,
        /// The modules directory searched.
        dir: PathBuf,
    },
    /// Module dependencies loop.
    #[error("kernel module dependency cycle through {0}")]
    DependencyCycle(String),
    /// A module's ELF `.modinfo` could not be read.
    #[error("cannot read .modinfo of kernel module {0}")]
    BadModule(PathBuf),
    /// The manifest could not be written.
    #[error("cannot encode {0}")]
    Manifest(PathBuf, #[source] serde_json::Error),
    /// A skerry kernel directory lacks its build description or kernel.
    #[error("{0} is not a skerry kernel build (run scripts/build-kernel.sh)")]
    NotASkerryKernel(PathBuf, #[source] std::io::Error),
    /// A skerry kernel's `vmlinux` is not an ELF file.
    #[error("{0} is not an ELF kernel (an uncompressed vmlinux)")]
    NotAnElfKernel(PathBuf),
    /// A skerry kernel's `kernel.json` does not parse.
    #[error("cannot parse {0}")]
    BadKernelInfo(PathBuf, #[source] serde_json::Error),
    /// A skerry kernel lacks something the guest needs.
    #[error("skerry kernel {dir} does not build in {module} (CONFIG_{option}=y in guest/kernel/skerry.config)")]
    KernelLacks {
        /// The kernel build directory.
        dir: PathBuf,
        /// The Debian module name of what is missing.
        module: &'static str,
        /// Its Kconfig option.
        option: &'static str,
    },
    /// The kernel build script failed (its output went to stderr).
    #[error("building skerry's guest kernel failed ({0}); its output is above")]
    KernelBuild(std::process::ExitStatus),
    /// The kernel build script printed no build directory.
    #[error("the kernel build printed no build directory: {0:?}")]
    KernelBuildOutput(String),
}

/// Which kernel the image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's cloud kernel with the virtio modules it needs: this .deb (versioned or the
    /// meta package), or `None` to download it with apt.
    Debian(Option<PathBuf>),
    /// skerry's own kernel, everything built in: a directory written by
    /// `scripts/build-kernel.sh` (`vmlinux`, `config` and `kernel.json`), or `None` to
    /// build it (or find it in the cache) with the script compiled into this binary.
    Skerry(Option<PathBuf>),
}

/// Where a manifest's kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelOrigin {
    /// Debian's `linux-image-*-cloud-amd64` package.
    #[default]
    Debian,
    /// Built from Debian's `linux-source` with guest/kernel/skerry.config.
    Skerry,
}

/// What `build` should do.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where the kernel (`vmlinux` or `vmlinuz`), `initramfs.img` and the manifest go.
    pub output_dir: PathBuf,
    /// The static agent binary that becomes `/init`.
    pub agent: PathBuf,
    /// The kernel to boot.
    pub kernel: KernelSource,
    /// Rebuild even when up to date.
    pub force: bool,
}

impl BuildOptions {
    /// Options writing to the configured image dir.
    pub fn new(config: &Config, agent: PathBuf) -> Self {
        BuildOptions {
            output_dir: config.guest.image_dir.clone(),
            agent,
            kernel: KernelSource::Skerry(None),
            force: false,
        }
    }
}

/// The manifest kept in the output dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image layout version.
    pub format: u32,
    /// Kernel release, e.g. "6.1.0-56-cloud-amd64".
    pub kernel_version: String,
    /// Debian package version, e.g. "6.1.192-2" (of linux-source for a skerry kernel).
    pub kernel_package_version: String,
    /// Where the kernel came from.
    #[serde(default)]
    pub kernel_origin: KernelOrigin,
    /// SHA-256 of the config fragment of a skerry kernel (empty for Debian's).
    #[serde(default)]
    pub kernel_config_sha256: String,
    /// Build key of a skerry kernel (empty for Debian's): see `scripts/build-kernel.sh`.
    #[serde(default)]
    pub kernel_build_key: String,
    /// SHA-256 of the agent binary (hex).
    pub agent_sha256: String,
    /// Requested module names.
    pub modules: Vec<String>,
    /// Module files in load order (absolute guest paths).
    pub module_files: Vec<String>,
    /// The kernel's file in the image: [`VMLINUX`] or [`VMLINUZ`].
    pub kernel_file: String,
    /// Size of the kernel file in bytes.
    pub kernel_bytes: u64,
    /// Size of `initramfs.img` in bytes.
    pub initramfs_bytes: u64,
}

impl Manifest {
    /// Which kernel the image has, for people: release, origin, source and config.
    pub fn kernel_summary(&self) -> String {
        match self.kernel_origin {
            KernelOrigin::Skerry => format!(
                "kernel {}: skerry's own, from linux-source {}, config sha256 {}, no modules",
                self.kernel_version,
                self.kernel_package_version,
                self.kernel_config_sha256.get(..16).unwrap_or("?")
            ),
            KernelOrigin::Debian => format!(
                "kernel {}: Debian's cloud kernel, package {}, {} modules",
                self.kernel_version,
                self.kernel_package_version,
                self.module_files.len()
            ),
        }
    }

    /// True when `self` (on disk) describes what `wanted` asks for and the files match.
    fn satisfies(&self, wanted: &Manifest, dir: &Path) -> bool {
        let size = |name: &str| std::fs::metadata(dir.join(name)).ok().map(|m| m.len());
        self.format == wanted.format
            && self.kernel_version == wanted.kernel_version
            && self.kernel_package_version == wanted.kernel_package_version
            && self.kernel_origin == wanted.kernel_origin
            && self.kernel_config_sha256 == wanted.kernel_config_sha256
            && self.kernel_build_key == wanted.kernel_build_key
            && self.agent_sha256 == wanted.agent_sha256
            && self.modules == wanted.modules
            && self.kernel_file == wanted.kernel_file
            && size(&self.kernel_file) == Some(self.kernel_bytes)
            && size(INITRAMFS) == Some(self.initramfs_bytes)
    }
}

/// Reads `<dir>/manifest.json`, if present and valid.
pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// What `build` did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// Nothing was written: the image already matched.
    pub up_to_date: bool,
    /// Output directory.
    pub output_dir: PathBuf,
    /// The kernel package (or skerry kernel directory) used.
    pub kernel_from: PathBuf,
    /// The manifest of the image now in place.
    pub manifest: Manifest,
    /// Files written with their sizes (empty when up to date).
    pub files: Vec<(PathBuf, u64)>,
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        if self.up_to_date {
            writeln!(
                f,
                "guest image in {} is up to date ({})",
                self.output_dir.display(),
                m.kernel_summary()
            )?;
            return Ok(());
        }
        writeln!(
            f,
            "built guest image in {} from {}",
            self.output_dir.display(),
            self.kernel_from.display()
        )?;
        writeln!(
            f,
            "  kernel  {} ({:?}, package {})",
            m.kernel_version, m.kernel_origin, m.kernel_package_version
        )?;
        if !m.kernel_config_sha256.is_empty() {
            writeln!(
                f,
                "  config  sha256 {}",
                m.kernel_config_sha256.get(..16).unwrap_or("")
            )?;
        }
        writeln!(
            f,
            "  agent   sha256 {}",
            m.agent_sha256.get(..16).unwrap_or("")
        )?;
        writeln!(f, "  modules {} files in load order", m.module_files.len())?;
        for (path, size) in &self.files {
            writeln!(f, "  wrote   {} ({})", path.display(), human_size(*size))?;
        }
        Ok(())
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The kernel an image build resolved to, before anything is extracted.
enum ResolvedKernel {
    /// A versioned Debian kernel package and its release.
    Debian { deb: PathBuf, release: String },
    /// A skerry kernel's `vmlinux`.
    Skerry { vmlinux: PathBuf },
}

/// Builds (or confirms up to date) the guest kernel and initramfs.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, ImageError> {
    let out = &opts.output_dir;
    if !opts.agent.is_file() {
        return Err(ImageError::AgentNotFound(opts.agent.clone()));
    }
    std::fs::create_dir_all(out).map_err(|e| ImageError::Io(out.clone(), e))?;
    let agent = std::fs::read(&opts.agent).map_err(|e| ImageError::Io(opts.agent.clone(), e))?;
    let mut manifest = Manifest {
        format: FORMAT,
        kernel_version: String::new(),
        kernel_package_version: String::new(),
        kernel_origin: KernelOrigin::Debian,
        kernel_config_sha256: String::new(),
        kernel_build_key: String::new(),
        agent_sha256: hex(&Sha256::digest(&agent)),
        modules: Vec::new(),
        module_files: Vec::new(),
        kernel_file: String::new(),
        kernel_bytes: 0,
        initramfs_bytes: 0,
    };
    let (kernel_from, kernel) = match &opts.kernel {
        KernelSource::Debian(deb) => {
            let deb = debian_package(deb.as_deref(), &out.join("cache"))?;
            let control = deb_fields(&deb, &["Package", "Version"])?;
            let package = control.get("Package").cloned().unwrap_or_default();
            let release =
                kernel_version_of(&package).ok_or_else(|| ImageError::NotAKernelPackage {
                    deb: deb.clone(),
                    reason: format!("package name {package:?}"),
                })?;
            manifest.kernel_version = release.clone();
            manifest.kernel_package_version = control.get("Version").cloned().unwrap_or_default();
            manifest.modules = guest_module_names().iter().map(|m| m.to_string()).collect();
            manifest.kernel_file = VMLINUZ.into();
            (deb.clone(), ResolvedKernel::Debian { deb, release })
        }
        KernelSource::Skerry(dir) => {
            let dir = match dir {
                Some(dir) => dir.clone(),
                None => build_skerry_kernel()?,
            };
            let info = read_skerry_kernel(&dir)?;
            manifest.kernel_version = info.release;
            manifest.kernel_package_version = info.source_version;
            manifest.kernel_origin = KernelOrigin::Skerry;
            manifest.kernel_config_sha256 = info.config_sha256;
            manifest.kernel_build_key = info.build_key;
            manifest.kernel_file = VMLINUX.into();
            let vmlinux = dir.join(VMLINUX);
            (dir, ResolvedKernel::Skerry { vmlinux })
        }
    };
    if !opts.force {
        if let Some(existing) = read_manifest(out) {
            if existing.satisfies(&manifest, out) {
                return Ok(BuildReport {
                    up_to_date: true,
                    output_dir: out.clone(),
                    kernel_from,
                    manifest: existing,
                    files: Vec::new(),
                });
            }
        }
    }

    let (kernel, modules) = match kernel {
        ResolvedKernel::Debian { deb, release } => debian_kernel(&deb, &release, out)?,
        ResolvedKernel::Skerry { vmlinux } => {
            let kernel = std::fs::read(&vmlinux).map_err(|e| ImageError::Io(vmlinux.clone(), e))?;
            (kernel, Vec::new())
        }
    };

    // initramfs
    let initramfs_path = initrd_path(out);
    let cpio_err = |e| ImageError::Io(initramfs_path.clone(), e);
    let mut cpio = CpioWriter::new(Vec::with_capacity(agent.len() + (4 << 20)));
    cpio.file("init", 0o755, &agent).map_err(cpio_err)?;
    for (dir, mode) in [
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
    ] {
        cpio.dir(dir, mode).map_err(cpio_err)?;
    }
    let mut load_order = String::new();
    for (guest_rel, data) in &modules {
        cpio.file(guest_rel, 0o644, data).map_err(cpio_err)?;
        load_order.push('/');
        load_order.push_str(guest_rel);
        load_order.push('\n');
        manifest.module_files.push(format!("/{guest_rel}"));
    }
    cpio.file("lib/modules/load-order", 0o644, load_order.as_bytes())
        .map_err(cpio_err)?;
    let initramfs = cpio.finish().map_err(cpio_err)?;

    manifest.kernel_bytes = kernel.len() as u64;
    manifest.initramfs_bytes = initramfs.len() as u64;
    let mut files = Vec::new();
    for (name, data) in [
        (manifest.kernel_file.as_str(), &kernel),
        (INITRAMFS, &initramfs),
    ] {
        let path = out.join(name);
        write_atomic(&path, data)?;
        files.push((path, data.len() as u64));
    }
    // The runtime boots `vmlinux` when there is one: the other kind's kernel goes.
    for stale in [VMLINUX, VMLINUZ] {
        if stale != manifest.kernel_file {
            let path = out.join(stale);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::Io(path, e))
                }
                _ => {}
            }
        }
    }
    let manifest_path = out.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| ImageError::Manifest(manifest_path.clone(), e))?;
    write_atomic(&manifest_path, &json)?;
    files.push((manifest_path, json.len() as u64));
    Ok(BuildReport {
        up_to_date: false,
        output_dir: out.clone(),
        kernel_from,
        manifest,
        files,
    })
}

/// The versioned Debian kernel package to use: `deb` (or what a meta package names), else
/// downloaded into `cache`.
fn debian_package(deb: Option<&Path>, cache: &Path) -> Result<PathBuf, ImageError> {
    match deb {
        Some(deb) => {
            if !deb.is_file() {
                return Err(ImageError::DebNotFound(deb.to_path_buf()));
            }
            resolve_versioned_deb(deb, cache)
        }
        None => {
            std::fs::create_dir_all(cache).map_err(|e| ImageError::Io(cache.to_path_buf(), e))?;
            let meta = apt_download(KERNEL_META_PACKAGE, cache)?;
            resolve_versioned_deb(&meta, cache)
        }
    }
}

/// Extracts `deb` (kernel `release`) and returns its vmlinuz and the guest modules in load
/// order, as (guest path relative to `/`, uncompressed contents).
#[allow(clippy::type_complexity)]
fn debian_kernel(
    deb: &Path,
    release: &str,
    out: &Path,
) -> Result<(Vec<u8>, Vec<(String, Vec<u8>)>), ImageError> {
    let extract = TempDir::new(out.join(format!(".extract-{}", std::process::id())))?;
    run_tool(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&extract.0))?;
    let missing = |missing: String| ImageError::MissingInPackage {
        deb: deb.to_path_buf(),
        missing,
    };
    let vmlinuz_src = extract.0.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz_src.is_file() {
        return Err(missing(format!("/boot/vmlinuz-{release}")));
    }
    let modules_dir = extract.0.join(format!("lib/modules/{release}"));
    if !modules_dir.is_dir() {
        return Err(missing(format!("/lib/modules/{release}")));
    }
    let mut index = ModuleIndex::load(&modules_dir)?;
    let mut modules = Vec::new();
    for rel in index.load_order(&guest_module_names())? {
        let data = read_module(&modules_dir.join(&rel))?;
        modules.push((
            format!("lib/modules/{release}/{}", strip_compression(&rel)),
            data,
        ));
    }
    let vmlinuz =
        std::fs::read(&vmlinuz_src).map_err(|e| ImageError::Io(vmlinuz_src.clone(), e))?;
    Ok((vmlinuz, modules))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> Result<Self, ImageError> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| ImageError::Io(path.clone(), e))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `data` to a temp file next to `path`, fsyncs and renames it over `path`.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::Io(path.to_path_buf(), e)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "linux-image-6.1.0-56-cloud-amd64[-unsigned]" → "6.1.0-56-cloud-amd64"; `None` for meta packages.
fn kernel_version_of(package: &str) -> Option<String> {
    let rest = package.strip_prefix("linux-image-")?;
    let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
    let valid = rest.starts_with(|c: char| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    valid.then(|| rest.to_string())
}

/// The versioned linux-image package a meta package's `Depends` names.
fn versioned_dependency(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.trim().split([' ', '(']).next().unwrap_or(""))
        .find(|name| kernel_version_of(name).is_some())
        .map(str::to_string)
}

/// For a meta package, finds (next to it, in `cache`, or via apt) the versioned package it depends on.
fn resolve_versioned_deb(deb: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
    let fields = deb_fields(deb, &["Package", "Depends"])?;
    let package = fields.get("Package").cloned().unwrap_or_default();
    if kernel_version_of(&package).is_some() {
        return Ok(deb.to_path_buf());
    }
    if !package.starts_with("linux-image-") {
        return Err(ImageError::NotAKernelPackage {
            deb: deb.to_path_buf(),
            reason: format!("package name {package:?}"),
        });
    }
    let depends = fields.get("Depends").cloned().unwrap_or_default();
    let dep = versioned_dependency(&depends).ok_or_else(|| ImageError::NotAKernelPackage {
        deb: deb.to_path_buf(),
        reason: format!("meta package {package} depends on no versioned linux-image ({depends:?})"),
    })?;
    let beside = deb.parent().unwrap_or(Path::new("."));
    for dir in [beside, cache] {
        if let Some(found) = newest_deb(dir, &dep) {
            return Ok(found);
        }
    }
    std::fs::create_dir_all(cache).map_err(|e| ImageError::Io(cache.to_path_buf(), e))?;
    apt_download(&dep, cache)
}

/// The newest `<package>_*.deb` in `dir`.
fn newest_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// `apt-get download <package>` into `dir`; falls back to a cached copy when apt fails.
fn apt_download(package: &str, dir: &Path) -> Result<PathBuf, ImageError> {
    let result = run_tool(
        Command::new("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(dir),
    );
    match (result, newest_deb(dir, package)) {
        (Ok(()), Some(deb)) => Ok(deb),
        (Ok(()), None) => Err(ImageError::ToolFailed {
            command: format!("apt-get download {package}"),
            stderr: format!("no {package}_*.deb appeared in {}", dir.display()),
        }),
        (Err(e), Some(deb)) => {
            tracing::warn!(error = %e, deb = %deb.display(), "apt-get download failed; using cached package");
            Ok(deb)
        }
        (Err(ImageError::ToolFailed { command, stderr }), None) => Err(ImageError::ToolFailed {
            command,
            stderr: format!("{stderr} (run `apt-get update` first, or pass a kernel .deb)"),
        }),
        (Err(e), None) => Err(e),
    }
}

/// Control fields of a .deb via `dpkg-deb -f`.
fn deb_fields(deb: &Path, fields: &[&str]) -> Result<HashMap<String, String>, ImageError> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-f").arg(deb).args(fields);
    let out = output_of(&mut cmd)?;
    Ok(parse_control(&out))
}

/// Parses `Field: value` lines (continuation lines appended).
fn parse_control(text: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| map.get_mut(k)) {
                let v: &mut String = v;
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            map.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    map
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output_of(cmd: &mut Command) -> Result<String, ImageError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ImageError::Tool(describe(cmd), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(ImageError::ToolFailed {
            command: describe(cmd),
            stderr: tail[tail.len().saturating_sub(3)..].join(" | "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_tool(cmd: &mut Command) -> Result<(), ImageError> {
    output_of(cmd).map(drop)
}

/// Module file name without `.xz`/`.zst`/`.gz`.
fn strip_compression(rel: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|s| rel.strip_suffix(s))
        .unwrap_or(rel)
}

/// Reads a module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` with the system tools.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(|e| ImageError::Io(path.to_path_buf(), e)),
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.arg("-dc").arg(path);
            let out = cmd
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| ImageError::Tool(describe(&cmd), e))?;
            if !out.status.success() {
                return Err(ImageError::ToolFailed {
                    command: describe(&cmd),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(out.stdout)
        }
    }
}

/// Module name of a path: file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let file = strip_compression(file);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Which modules a kernel has and what each depends on.
#[derive(Debug, Default)]
struct ModuleIndex {
    /// Modules dir (for error messages and lazy `.modinfo` reads).
    dir: PathBuf,
    /// Module name → path relative to the modules dir.
    paths: HashMap<String, String>,
    /// Module name → names it depends on, when known (from modules.dep or read lazily).
    deps: HashMap<String, Vec<String>>,
    /// Built into the kernel: nothing to load.
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Indexes `<modules dir>`: modules.dep if the package ships one, else `.modinfo` of each module.
    fn load(dir: &Path) -> Result<Self, ImageError> {
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(dep) => {
                let mut index = Self::from_modules_dep(&dep, &builtin);
                index.dir = dir.to_path_buf();
                Ok(index)
            }
            Err(_) => {
                let mut index = ModuleIndex {
                    dir: dir.to_path_buf(),
                    builtin: builtin.lines().map(module_name).collect(),
                    ..Default::default()
                };
                let mut stack = vec![dir.join("kernel")];
                while let Some(d) = stack.pop() {
                    let entries =
                        std::fs::read_dir(&d).map_err(|e| ImageError::Io(d.clone(), e))?;
                    for entry in entries {
                        let entry = entry.map_err(|e| ImageError::Io(d.clone(), e))?;
                        let path = entry.path();
                        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            stack.push(path);
                        } else if let Ok(rel) = path.strip_prefix(dir) {
                            let rel = rel.to_string_lossy().into_owned();
                            if strip_compression(&rel).ends_with(".ko") {
                                index.paths.insert(module_name(&rel), rel);
                            }
                        }
                    }
                }
                Ok(index)
            }
        }
    }

    /// Parses modules.dep (`kernel/a.ko: kernel/b.ko kernel/c.ko`) and modules.builtin text.
    fn from_modules_dep(dep: &str, builtin: &str) -> Self {
        let mut index = ModuleIndex {
            builtin: builtin.lines().map(module_name).collect(),
            ..Default::default()
        };
        for line in dep.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(module.trim());
            index.paths.insert(name.clone(), module.trim().to_string());
            index
                .deps
                .insert(name, deps.split_whitespace().map(module_name).collect());
        }
        index
    }

    /// Direct dependencies of `name` (reading its `.modinfo` when not known yet).
    fn deps_of(&mut self, name: &str) -> Result<Vec<String>, ImageError> {
        if let Some(d) = self.deps.get(name) {
            return Ok(d.clone());
        }
        let rel = self
            .paths
            .get(name)
            .ok_or_else(|| ImageError::ModuleNotFound {
                module: name.to_string(),
                dir: self.dir.clone(),
            })?;
        let path = self.dir.join(rel);
        let data = read_module(&path)?;
        let deps = modinfo_depends(&data).ok_or(ImageError::BadModule(path))?;
        self.deps.insert(name.to_string(), deps.clone());
        Ok(deps)
    }

    /// Paths (relative to the modules dir) of `requested` and their dependencies, dependencies first.
    fn load_order(&mut self, requested: &[&str]) -> Result<Vec<String>, ImageError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for name in requested {
            let mut visiting = Vec::new();
            self.visit(
                &name.replace('-', "_"),
                &mut visiting,
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &mut self,
        name: &str,
        visiting: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if done.contains(name) {
            return Ok(());
        }
        if !self.paths.contains_key(name) && self.builtin.contains(name) {
            done.insert(name.to_string());
            return Ok(());
        }
        if visiting.iter().any(|v| v == name) {
            return Err(ImageError::DependencyCycle(name.to_string()));
        }
        visiting.push(name.to_string());
        for dep in self.deps_of(name)? {
            self.visit(&dep, visiting, done, order)?;
        }
        visiting.pop();
        done.insert(name.to_string());
        order.push(self.paths[name].clone());
        Ok(())
    }
}

/// The `depends=` list in a module's ELF `.modinfo` section (64-bit little-endian ELF).
fn modinfo_depends(elf: &[u8]) -> Option<Vec<String>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 0x40 || shstrndx >= shnum {
        return None;
    }
    let section = |i: usize| -> Option<(u32, &[u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(h)?;
        let off = usize::try_from(u64_at(h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h + 0x20)?).ok()?;
        Some((name, elf.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = names.get(name_off as usize..)?;
        let name = name.split(|&b| b == 0).next()?;
        if name != b".modinfo" {
            continue;
        }
        let deps = data
            .split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(b"depends="))
            .unwrap_or(b"");
        let deps = std::str::from_utf8(deps).ok()?;
        return Some(
            deps.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect(),
        );
    }
    None
}

/// Writes a newc ("070701") cpio archive; parent directories are added as needed.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    /// Adds directory `path` (relative, `/`-separated) with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        self.parents(path)?;
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040000 | (mode & 0o7777), 2, &[])
    }

    /// Adds regular file `path` with permission bits `mode` and contents `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.entry(path, 0o100000 | (mode & 0o7777), 1, data)
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "file larger than 4 GiB")
        })?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino += 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, data) of each entry of a newc archive, trailer excluded.
    fn parse_newc(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut pos = 0usize;
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        loop {
            let h = &buf[..110];
            assert_eq!(&h[..6], b"070701");
            let mode = field(h, 1);
            let size = field(h, 6) as usize;
            let namesize = field(h, 11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_start = (pos + 110 + namesize).div_ceil(4) * 4 - pos;
            let data = buf[data_start..data_start + size].to_vec();
            let next = (pos + data_start + size).div_ceil(4) * 4 - pos;
            if name == "TRAILER!!!" {
                assert_eq!(next, buf.len(), "nothing after the trailer");
                return entries;
            }
            entries.push((name, mode, data));
            pos += next;
            buf = &buf[next..];
        }
    }

    fn sample_archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.file("init", 0o755, b"#!agent").unwrap();
        w.dir("tmp", 0o1777).unwrap();
        w.file("lib/modules/6.1/kernel/fs/fuse/fuse.ko", 0o644, b"ELFxy")
            .unwrap();
        w.file(
            "lib/modules/load-order",
            0o644,
            b"/lib/modules/6.1/kernel/fs/fuse/fuse.ko\n",
        )
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn cpio_round_trip() {
        let archive = sample_archive();
        assert_eq!(archive.len() % 4, 0);
        let entries = parse_newc(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "tmp",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/fs",
                "lib/modules/6.1/kernel/fs/fuse",
                "lib/modules/6.1/kernel/fs/fuse/fuse.ko",
                "lib/modules/load-order"
            ]
        );
        assert_eq!(entries[0].1, 0o100755);
        assert_eq!(entries[0].2, b"#!agent");
        assert_eq!(entries[1].1, 0o041777);
        assert_eq!(entries[8].2, b"ELFxy");
    }

    #[test]
    fn cpio_tool_lists_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample_archive()).unwrap();
        let out = match Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                crate::skip_rule::skip("cpio not installed");
                return;
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("drwxrwxrwt"), "{listing}");
        assert!(listing.contains("lib/modules/6.1/kernel/fs/fuse/fuse.ko"));
    }

    const MODULES_DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_balloon.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
";

    #[test]
    fn modules_dep_gives_dependency_order() {
        let mut index = ModuleIndex::from_modules_dep(MODULES_DEP, "kernel/lib/crc32c.ko\n");
        let order: Vec<String> = index
            .load_order(&guest_module_names())
            .unwrap()
            .iter()
            .map(|p| module_name(p))
            .collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_console",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "fuse",
                "virtiofs",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_balloon",
                "llc",
                "stp",
                "bridge"
            ]
        );
        // Every module comes after everything it depends on.
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        for (m, deps) in &index.deps {
            if order.contains(m) {
                for d in deps {
                    assert!(pos(d) < pos(m), "{d} before {m}");
                }
            }
        }
        // Dashes in file names become underscores; builtins need nothing.
        assert_eq!(
            index.load_order(&["virtio-rng", "crc32c"]).unwrap().len(),
            3
        );
        assert!(matches!(
            index.load_order(&["nope"]),
            Err(ImageError::ModuleNotFound { .. })
        ));
    }

    #[test]
    fn dependency_cycles_are_errors() {
        let mut index = ModuleIndex::from_modules_dep("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert!(matches!(
            index.load_order(&["a"]),
            Err(ImageError::DependencyCycle(_))
        ));
    }

    /// A minimal ELF64 with a section-name table and a `.modinfo` section.
    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 0x40];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 0x40];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, shstr_off, shstr.len());
        sh(11, modinfo_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_depends_from_elf() {
        let elf = tiny_elf(b"license=GPL\0depends=virtio,virtio_ring,net-failover\0vermagic=6.1\0");
        assert_eq!(
            modinfo_depends(&elf).unwrap(),
            ["virtio", "virtio_ring", "net_failover"]
        );
        assert_eq!(
            modinfo_depends(&tiny_elf(b"depends=\0")).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(modinfo_depends(b"not an elf"), None);
        let mut truncated = tiny_elf(b"depends=a\0");
        truncated.truncate(0x60);
        assert_eq!(modinfo_depends(&truncated), None);
    }

    #[test]
    fn kernel_package_names() {
        assert_eq!(
            kernel_version_of("linux-image-6.1.0-56-cloud-amd64").as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            kernel_version_of("linux-image-6.1.0-56-cloud-amd64-unsigned").as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(kernel_version_of("linux-image-cloud-amd64"), None);
        assert_eq!(kernel_version_of("linux-image-6.1/../x"), None);
        assert_eq!(
            versioned_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            versioned_dependency("initramfs-tools | linux-initramfs-tool, linux-image-6.12.1-cloud-amd64-unsigned (= 6.12.1-1)").as_deref(),
            Some("linux-image-6.12.1-cloud-amd64-unsigned")
        );
        let c = parse_control("Package: linux-image-cloud-amd64\nDepends: a,\n b\nVersion: 1\n");
        assert_eq!(c["Depends"], "a, b");
        assert_eq!(c["Version"], "1");
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            kernel_version: "6.1.0-56-cloud-amd64".into(),
            kernel_package_version: "6.1.192-2".into(),
            kernel_origin: KernelOrigin::Debian,
            kernel_config_sha256: String::new(),
            kernel_build_key: String::new(),
            agent_sha256: "ab".into(),
            modules: vec!["fuse".into()],
            module_files: vec![],
            kernel_file: VMLINUZ.into(),
            kernel_bytes: 3,
            initramfs_bytes: 4,
        }
    }

    /// A fake `scripts/build-kernel.sh` output directory.
    fn skerry_kernel_dir(dir: &Path, build_key: &str) -> PathBuf {
        let kdir = dir.join(format!("kernel-{build_key}"));
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::write(kdir.join(VMLINUX), b"\x7fELF vmlinux").unwrap();
        std::fs::write(kdir.join(SKERRY_KERNEL_CONFIG), CONFIG_FRAGMENT).unwrap();
        let info = serde_json::json!({
            "release": "6.1.192-skerry",
            "source_package": "linux-source-6.1",
            "source_version": "6.1.192-3",
            "config_sha256": "c0".repeat(32),
            "build_key": build_key,
            "build_seconds": 300,
        });
        std::fs::write(kdir.join(SKERRY_KERNEL_INFO), info.to_string()).unwrap();
        kdir
    }

    #[test]
    fn skerry_kernel_image_has_no_modules() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"#!agent").unwrap();
        let opts = BuildOptions {
            output_dir: dir.path().join("img"),
            agent,
            kernel: KernelSource::Skerry(Some(skerry_kernel_dir(dir.path(), "k1"))),
            force: false,
        };
        // Over an image with Debian's kernel: its vmlinuz goes (one kernel per image).
        std::fs::create_dir_all(&opts.output_dir).unwrap();
        std::fs::write(opts.output_dir.join(VMLINUZ), b"old bzImage").unwrap();
        let report = build(&opts).unwrap();
        assert!(
            !opts.output_dir.join(VMLINUZ).exists(),
            "stale vmlinuz kept"
        );
        assert!(!report.up_to_date);
        let m = &report.manifest;
        assert_eq!(m.kernel_origin, KernelOrigin::Skerry);
        assert_eq!(m.kernel_version, "6.1.192-skerry");
        assert_eq!(m.kernel_package_version, "6.1.192-3");
        assert_eq!(m.kernel_config_sha256, "c0".repeat(32));
        assert!(m.modules.is_empty() && m.module_files.is_empty());
        assert_eq!(m.kernel_file, VMLINUX);
        assert_eq!(
            std::fs::read(opts.output_dir.join(VMLINUX)).unwrap(),
            b"\x7fELF vmlinux"
        );
        let initramfs = std::fs::read(opts.output_dir.join("initramfs.img")).unwrap();
        let entries = parse_newc(&initramfs);
        let load_order = entries
            .iter()
            .find(|e| e.0 == "lib/modules/load-order")
            .unwrap();
        assert!(load_order.2.is_empty(), "the agent loads no module");
        assert!(!entries.iter().any(|e| e.0.ends_with(".ko")));
        assert_eq!(read_manifest(&opts.output_dir).as_ref(), Some(m));

        assert!(build(&opts).unwrap().up_to_date);
        let rebuilt = BuildOptions {
            kernel: KernelSource::Skerry(Some(skerry_kernel_dir(dir.path(), "k2"))),
            ..opts.clone()
        };
        assert!(!build(&rebuilt).unwrap().up_to_date, "another kernel build");
        // A bzImage where the vmlinux should be is refused, naming the file.
        let kdir = skerry_kernel_dir(dir.path(), "k4");
        std::fs::write(kdir.join(VMLINUX), b"MZ bzImage").unwrap();
        let compressed = BuildOptions {
            kernel: KernelSource::Skerry(Some(kdir.clone())),
            ..opts.clone()
        };
        match build(&compressed) {
            Err(ImageError::NotAnElfKernel(path)) => assert_eq!(path, kdir.join(VMLINUX)),
            other => panic!("{other:?}"),
        }
        let missing = BuildOptions {
            kernel: KernelSource::Skerry(Some(dir.path().join("nope"))),
            ..opts.clone()
        };
        assert!(matches!(
            build(&missing),
            Err(ImageError::NotASkerryKernel(..))
        ));
        // A kernel without bridge (a guest module) built in is refused.
        let kdir = skerry_kernel_dir(dir.path(), "k3");
        let config = CONFIG_FRAGMENT.replace("CONFIG_BRIDGE=y\n", "");
        std::fs::write(kdir.join(SKERRY_KERNEL_CONFIG), config).unwrap();
        let lacking = BuildOptions {
            kernel: KernelSource::Skerry(Some(kdir)),
            force: true,
            ..opts
        };
        let err = build(&lacking).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::KernelLacks {
                    module: "bridge",
                    option: "BRIDGE",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn kernel_summary_names_the_origin() {
        let debian = Manifest {
            module_files: vec!["/a.ko".into(), "/b.ko".into()],
            ..manifest()
        };
        assert_eq!(
            debian.kernel_summary(),
            "kernel 6.1.0-56-cloud-amd64: Debian's cloud kernel, package 6.1.192-2, 2 modules"
        );
        let skerry = Manifest {
            kernel_version: "6.1.192-skerry".into(),
            kernel_package_version: "6.1.192-3".into(),
            kernel_origin: KernelOrigin::Skerry,
            kernel_config_sha256: "911e8596391aa31313a4".into(),
            ..manifest()
        };
        assert_eq!(
            skerry.kernel_summary(),
            "kernel 6.1.192-skerry: skerry's own, from linux-source 6.1.192-3, \
             config sha256 911e8596391aa313, no modules"
        );
    }

    #[test]
    fn manifest_up_to_date_logic() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = manifest();
        let wanted = Manifest {
            kernel_bytes: 0,
            initramfs_bytes: 0,
            ..manifest()
        };
        assert!(!on_disk.satisfies(&wanted, dir.path()), "files missing");
        std::fs::write(dir.path().join("vmlinuz"), b"abc").unwrap();
        std::fs::write(dir.path().join("initramfs.img"), b"abcd").unwrap();
        assert!(on_disk.satisfies(&wanted, dir.path()));
        for changed in [
            Manifest {
                agent_sha256: "cd".into(),
                ..wanted.clone()
            },
            Manifest {
                kernel_version: "6.1.0-57-cloud-amd64".into(),
                ..wanted.clone()
            },
            Manifest {
                modules: vec!["fuse".into(), "virtio_net".into()],
                ..wanted.clone()
            },
        ] {
            assert!(!on_disk.satisfies(&changed, dir.path()));
        }
        std::fs::write(dir.path().join("initramfs.img"), b"abcde").unwrap();
        assert!(!on_disk.satisfies(&wanted, dir.path()), "size changed");
        // Round trip through the file.
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_vec(&on_disk).unwrap(),
        )
        .unwrap();
        assert_eq!(read_manifest(dir.path()), Some(on_disk));
    }
}
