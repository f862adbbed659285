//! The skerry-vmm backend launched through the jailer: the guest image's kernel
//! boots with a unique parameter and prints that command line on the console;
//! the VMM runs as PID 1 of its own pid namespace, as the jail uid, in its
//! cgroup; `stop()` ends jailer, VMM and virtiofsd and removes the jail, the
//! cgroup and the sockets.
//!
//! The kernel is the image's ELF `vmlinux` (skerry's kernel), or the one inside
//! its `vmlinuz` (Debian's, extracted by the VMM tests' helper): under PVM the bzImage decompressor alone runs for minutes
//! of emulated guest ring 0, and even the ELF kernel needs seconds to print its
//! command line here (Debian's ~15 s; with skerry's kernel the whole test took
//! 1.8 s; milliseconds on native KVM). Skips (printing why) when not
//! root, without a usable /dev/kvm, without the built `skerry-vmm` and `jailer`
//! (or a `skerry-vmm` without `--fs-socket`), virtiofsd or the guest image.

mod common;
#[path = "../../vmm/tests/common/kernel.rs"]
mod kernel;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skerry_runtime::config::{HypervisorConfig, HypervisorKind};
use skerry_runtime::hypervisor::identity::{IdLease, LEASE_DIR};
use skerry_runtime::hypervisor::{self, choice, find_binary, VmExit, VmSpec};

use common::{assert_no_leftovers, bad_kernel_spec, runtime, short_tempdir, skip};

/// How long the kernel may take to print its command line (Debian's: ~15 s under PVM).
const CMDLINE_TIMEOUT: Duration = Duration::from_secs(120);

/// A binary of this workspace's build (`target/debug`), or `$env` if set.
fn built(name: &str, env: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/debug")
            .join(name)
    })
}

/// The binaries to use, or why this host cannot run the test.
fn host() -> Result<(PathBuf, PathBuf), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root (the jailer needs it)".into());
    }
    if !choice::dev_kvm_usable() {
        return Err("/dev/kvm is absent or cannot be opened".into());
    }
    let vmm = built("skerry-vmm", "SKERRY_TEST_VMM");
    let jailer = built("jailer", "SKERRY_TEST_JAILER");
    for p in [&vmm, &jailer] {
        if !p.is_file() {
            return Err(format!(
                "{} not built (cargo build -p skerry-vmm -p skerry-jailer)",
                p.display()
            ));
        }
    }
    let cfg = HypervisorConfig::default();
    if find_binary(&cfg.virtiofsd_path).is_none() {
        return Err("virtiofsd not found".into());
    }
    Ok((vmm, jailer))
}

/// Why `vmm` cannot run the runtime's VMs, if it cannot.
fn vmm_lacks_fs(vmm: &Path) -> Option<String> {
    let help = std::process::Command::new(vmm)
        .arg("--help")
        .output()
        .ok()?;
    (!String::from_utf8_lossy(&help.stdout).contains("--fs-socket")).then(|| {
        format!(
            "{} has no --fs-socket (vhost-user-fs frontend)",
            vmm.display()
        )
    })
}

/// The skerry-vmm backend with these binaries, its jails under `jail_dir`.
fn vmm_config(vmm: PathBuf, jailer: PathBuf, jail_dir: &Path) -> HypervisorConfig {
    HypervisorConfig {
        kind: HypervisorKind::SkerryVmm,
        vmm_path: vmm,
        jailer_path: jailer,
        jail_dir: jail_dir.to_path_buf(),
        ..HypervisorConfig::default()
    }
}

fn token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// A field of /proc/<pid>/status, e.g. "Uid".
/// A VM uid of the default range, for the VM of `run_dir`.
fn lease(run_dir: &Path) -> IdLease {
    IdLease::acquire(
        Path::new(LEASE_DIR),
        HypervisorConfig::default().vm_uid_range,
        run_dir,
    )
    .expect("lease a VM uid")
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn dump_logs(spec: &VmSpec) {
    for p in [
        spec.console_log.clone(),
        spec.run_dir.join("vmm.log"),
        spec.run_dir.join("virtiofsd.log"),
    ] {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        eprintln!("--- {}\n{text}", p.display());
    }
}

#[test]
fn hv_skerry_vmm_boots_in_its_jail_and_stops_clean() {
    let (vmm, jailer) = match host() {
        Ok(bins) => bins,
        Err(reason) => return skip(&reason),
    };
    if let Some(reason) = vmm_lacks_fs(&vmm) {
        return skip(&reason);
    }
    let tmp = short_tempdir();
    let kernel = match kernel::vmlinux(tmp.path()) {
        Ok(k) => k,
        Err(reason) => return skip(&reason),
    };
    let initrd = kernel::image_dir().join("initramfs.img");
    if !initrd.is_file() {
        return skip(&format!("no guest image at {}", initrd.display()));
    }
    let run_dir = tmp.path().join("run");
    let shared_dir = tmp.path().join("shared");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::create_dir(&shared_dir).unwrap();
    let token = token();
    let lease = lease(&run_dir);
    let spec = VmSpec {
        id: "hv_vmm.test".into(),
        console_log: run_dir.join("console.log"),
        console_log_max: 1 << 20,
        net: None,
        host_cgroup: None,
        ids: Some(lease.ids()),
        run_dir,
        kernel,
        initrd,
        kernel_params: format!("ignore_loglevel earlyprintk=serial skerry.token={token}"),
        vcpus: 1,
        memory_mib: 256,
        shared_dir,
    };
    let jail_dir = tmp.path().join("jail");
    let cfg = vmm_config(vmm, jailer, &jail_dir);
    let want = format!("Command line: {}", spec.kernel_cmdline(None));
    runtime().block_on(async {
        let t = Instant::now();
        let mut vm = hypervisor::launch(&cfg, &spec).await.expect("launch");
        eprintln!("launched in {:?}; pids {:?}", t.elapsed(), vm.pids());

        // The jail: one VM directory whose root holds exactly what the VMM was given.
        let vms: Vec<PathBuf> = std::fs::read_dir(jail_dir.join("skerry-vmm"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(vms.len(), 1, "{vms:?}");
        let jail_id = vms[0].file_name().unwrap().to_string_lossy().into_owned();
        let root = vms[0].join("root");
        for name in ["skerry-vmm", "vmlinux", "initramfs.img", "dev/kvm", "vm"] {
            assert!(
                root.join(name).symlink_metadata().is_ok(),
                "{name} in the jail"
            );
        }
        assert_eq!(
            vm.vsock_path(),
            spec.run_dir.join("vm/vsock.sock"),
            "the VMM's vsock socket is reachable from the host"
        );
        assert!(vm.vsock_path().exists());

        // The VMM: the jailer's child, PID 1 of its own pid namespace, the jail uid, its cgroup.
        let pids = vm.pids();
        assert!(pids.len() >= 3, "vmm, jailer, virtiofsd: {pids:?}");
        let vmm_pid = pids
            .iter()
            .copied()
            .find(|&p| status_field(p, "NSpid").ends_with(" 1"))
            .unwrap_or_else(|| panic!("no process of {pids:?} is PID 1 of a pid namespace"));
        let ids = lease.ids();
        assert_eq!(
            status_field(vmm_pid, "Uid"),
            vec![ids.uid.to_string(); 4].join(" ")
        );
        assert_eq!(
            status_field(vmm_pid, "Gid"),
            vec![ids.gid.to_string(); 4].join(" ")
        );
        // The jailer set its file size limit: helper_log_max_kib (16 MiB)
        // beside the 256 MiB guest RAM file.
        let limits = std::fs::read_to_string(format!("/proc/{vmm_pid}/limits")).unwrap();
        let fsize = limits.lines().find(|l| l.starts_with("Max file size"));
        let max = ((16 + 256) << 20).to_string();
        assert_eq!(
            fsize.map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>()),
            Some(vec![max.as_str(), &max, "bytes"])
        );
        let cgroups = std::fs::read_to_string(format!("/proc/{vmm_pid}/cgroup")).unwrap();
        let cgroup_suffix = format!("/skerry/{jail_id}");
        assert!(
            cgroups
                .lines()
                .any(|l| (l.contains(":pids:") || l.starts_with("0::"))
                    && l.ends_with(&cgroup_suffix)),
            "{cgroups}"
        );

        // Early boot prints exactly the command line we built, then the VMM's device fragments.
        let deadline = Instant::now() + CMDLINE_TIMEOUT;
        let line = loop {
            let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
            // The whole line: under PVM the kernel prints it slowly.
            let complete = console
                .split_inclusive('\n')
                .find(|l| l.contains("Command line: ") && l.ends_with('\n'));
            if let Some(l) = complete {
                break l.trim_end().to_string();
            }
            if Instant::now() >= deadline {
                dump_logs(&spec);
                panic!("no command line on the console within {CMDLINE_TIMEOUT:?}");
            }
            if let Ok(exit) = tokio::time::timeout(Duration::from_millis(100), vm.wait()).await {
                dump_logs(&spec);
                panic!("the VM ended before printing its command line: {exit}");
            }
        };
        eprintln!("after {:?}: {line}", t.elapsed());
        assert!(line.contains(&want), "want `{want}` in `{line}`");
        assert!(line.contains(&format!(" skerry.token={token}")), "{line}");

        let t = Instant::now();
        vm.stop().await.expect("stop");
        eprintln!("stop took {:?}", t.elapsed());
        vm.stop().await.expect("a second stop is a no-op");
        assert_eq!(
            vm.wait().await,
            VmExit::Stopped,
            "shut down through the API"
        );
        assert!(vm.pids().is_empty(), "{:?}", vm.pids());
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} is left"
            );
        }
        assert!(!vms[0].exists(), "jail directory is left");
        assert!(!spec.run_dir.join("vm").exists(), "sockets are left");
        assert!(
            !spec.run_dir.join("jail.json").exists(),
            "jail record is left"
        );
        for hierarchy in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = Path::new(hierarchy).join("skerry").join(&jail_id);
            assert!(!dir.exists(), "{} is left", dir.display());
        }
        assert_no_leftovers(&spec);
    });
}

/// A kernel the VMM cannot load fails `launch` with the VMM's own words, and
/// nothing is left: no process, jail, cgroup or socket directory. A missing
/// binary is named.
#[test]
fn hv_skerry_vmm_failed_launch_leaves_nothing() {
    let (vmm, jailer) = match host() {
        Ok(bins) => bins,
        Err(reason) => return skip(&reason),
    };
    let tmp = short_tempdir();
    let mut spec = bad_kernel_spec(tmp.path());
    let lease = lease(&spec.run_dir);
    spec.ids = Some(lease.ids());
    let jail_dir = tmp.path().join("jail");
    let cfg = vmm_config(vmm, jailer, &jail_dir);
    runtime().block_on(async {
        let err = hypervisor::launch(&cfg, &spec)
            .await
            .err()
            .expect("launch must fail");
        eprintln!("error: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with("skerry-vmm failed to start: exited with status ")
                && text.contains("vmm.log: ")
                && text.contains("skerry-vmm"),
            "{text}"
        );
        assert!(!spec.run_dir.join("vm").exists(), "sockets are left");
        assert!(
            !spec.run_dir.join("jail.json").exists(),
            "jail record is left"
        );
        let vms = std::fs::read_dir(jail_dir.join("skerry-vmm"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(vms, 0, "a jail directory is left");
        assert_no_leftovers(&spec);

        let cfg = HypervisorConfig {
            vmm_path: "no-such-vmm".into(),
            ..cfg
        };
        let err = hypervisor::launch(&cfg, &spec).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "skerry-vmm binary \"no-such-vmm\" not found in PATH or ~/.cargo/bin"
        );
    });
}
