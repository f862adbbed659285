//! Boots real guests under QEMU: a busybox `/init` that exercises the module
//! load order and virtio-fs, and the real agent answering a ttrpc `Check`
//! over hybrid vsock.
//!
//! Skips (with the reason printed) when not root, when QEMU, virtiofsd or
//! vhost-device-vsock are missing, or when no kernel .deb / agent binary is
//! available. These guests boot Debian's cloud kernel (the one with modules):
//! the package comes from `SKERRY_KERNEL_DEB`, else the first
//! `linux-image-*-cloud-amd64_*.deb` in target/guest-debian/cache (left there
//! by scripts/test.sh, which builds a `--kernel debian` image),
//! target/guest/cache or /tmp/kpkg.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skerry_runtime::config::{HypervisorConfig, HypervisorKind};
use skerry_runtime::hypervisor::{self, find_binary, Vm, VmExit, VmSpec};
use skerry_runtime::image::{self, BuildOptions, CpioWriter};

mod common;
use common::{assert_no_leftovers, bad_kernel_spec, runtime, short_tempdir, skip};

/// One VM at a time: the host has 2 cores and the timings should mean something.
static SERIAL: Mutex<()> = Mutex::new(());

/// Why this host cannot run the test, if it cannot.
fn host_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    let cfg = HypervisorConfig::default();
    for (what, name) in [
        ("qemu", &cfg.qemu_path),
        ("virtiofsd", &cfg.virtiofsd_path),
        ("vhost-device-vsock", &cfg.vsock_backend_path),
    ] {
        if find_binary(name).is_none() {
            return Some(format!("{what} ({}) not found", name.display()));
        }
    }
    if find_binary(Path::new("dpkg-deb")).is_none() {
        return Some("dpkg-deb not found".into());
    }
    None
}

fn kernel_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKERRY_KERNEL_DEB") {
        return Some(PathBuf::from(p));
    }
    // `skerry image build --kernel debian` leaves the package it used in the image's cache.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let mut debs: Vec<PathBuf> = [
        target.join("guest-debian/cache"),
        target.join("guest/cache"),
        PathBuf::from("/tmp/kpkg"),
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flatten()
    .filter_map(|e| e.ok().map(|e| e.path()))
    .filter(|p| {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        n.starts_with("linux-image-") && n.contains("-cloud-amd64_") && n.ends_with(".deb")
    })
    .collect();
    debs.sort();
    debs.into_iter().next()
}

fn agent_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/skerry-agent")
}

struct Guest {
    _tmp: tempfile::TempDir,
    spec: VmSpec,
}

/// Builds an image with `agent` as /init (plus `extra` cpio appended) and a VmSpec for it.
fn prepare(agent: &Path, extra: Option<Vec<u8>>) -> Option<Guest> {
    let deb = match kernel_deb() {
        Some(d) if d.is_file() => d,
        _ => {
            skip("no Debian kernel .deb (scripts/test.sh builds a --kernel debian image into target/guest-debian; or set SKERRY_KERNEL_DEB)");
            return None;
        }
    };
    // Short paths: socket addresses must stay under 108 bytes.
    let tmp = short_tempdir();
    let image_dir = tmp.path().join("img");
    let t = Instant::now();
    let report = image::build(&BuildOptions {
        output_dir: image_dir.clone(),
        agent: agent.to_path_buf(),
        kernel: image::KernelSource::Debian(Some(deb)),
        force: false,
    })
    .expect("image build");
    eprintln!("image built in {:?}:\n{report}", t.elapsed());
    assert!(!report.up_to_date);
    let again = image::build(&BuildOptions {
        output_dir: image_dir.clone(),
        agent: agent.to_path_buf(),
        kernel: image::KernelSource::Debian(kernel_deb()),
        force: false,
    })
    .unwrap();
    assert!(again.up_to_date, "second build is a no-op");
    let initrd = image_dir.join("initramfs.img");
    if let Some(extra) = extra {
        // The kernel unpacks concatenated archives in order.
        let mut data = std::fs::read(&initrd).unwrap();
        data.extend_from_slice(&extra);
        std::fs::write(&initrd, data).unwrap();
    }
    let run_dir = tmp.path().join("run");
    let shared_dir = tmp.path().join("shared");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::create_dir(&shared_dir).unwrap();
    let spec = VmSpec {
        id: "hvtest".into(),
        console_log: run_dir.join("console.log"),
        console_log_max: 1 << 20,
        net: None,
        host_cgroup: None,
        ids: None,
        run_dir,
        kernel: image::kernel_path(&image_dir),
        initrd,
        kernel_params: String::new(),
        vcpus: 1,
        memory_mib: 512,
        shared_dir,
    };
    Some(Guest { _tmp: tmp, spec })
}

/// The QEMU backend, whatever `auto` would pick on this host.
fn qemu_config() -> HypervisorConfig {
    HypervisorConfig {
        kind: HypervisorKind::Qemu,
        ..HypervisorConfig::default()
    }
}

/// Stops the VM and checks that no process and no socket is left.
async fn stop_and_check_clean(vm: &mut Box<dyn Vm>, spec: &VmSpec) {
    let pids = vm.pids();
    let t = Instant::now();
    vm.stop().await.expect("stop");
    eprintln!("stop took {:?}", t.elapsed());
    vm.stop().await.expect("second stop is a no-op");
    assert!(vm.pids().is_empty(), "pids left: {:?}", vm.pids());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists"
        );
    }
    assert_no_leftovers(spec);
}

fn dump_logs(spec: &VmSpec) {
    for name in ["console.log", "qemu.log", "virtiofsd.log", "vsock.log"] {
        let text = std::fs::read_to_string(spec.run_dir.join(name)).unwrap_or_default();
        eprintln!("--- {name}\n{text}");
    }
}

const BUSYBOX_INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
while read m; do $B insmod "$m" || echo "skerry-test: insmod $m failed"; done < /lib/modules/load-order
$B mkdir -p /mnt
$B mount -t virtiofs skerryfs /mnt || echo "skerry-test: virtiofs mount failed"
$B cat /proc/version > /mnt/version
$B echo "skerry-test: done after $($B cut -d' ' -f1 /proc/uptime)s"
$B poweroff -f
"#;

/// A busybox /init loads the modules in load-order, writes /proc/version to the
/// shared dir over virtio-fs and powers off.
#[test]
fn hv_busybox_guest_uses_load_order_and_virtiofs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = host_missing() {
        return skip(&reason);
    }
    let Ok(busybox) = std::fs::read("/bin/busybox") else {
        return skip("no /bin/busybox (apt-get install busybox-static)");
    };
    let work = tempfile::tempdir().unwrap();
    let init = work.path().join("init.sh");
    std::fs::write(&init, BUSYBOX_INIT).unwrap();
    let mut extra = CpioWriter::new(Vec::new());
    extra.file("bin/busybox", 0o755, &busybox).unwrap();
    let Some(guest) = prepare(&init, Some(extra.finish().unwrap())) else {
        return;
    };
    let spec = guest.spec.clone();
    runtime().block_on(async move {
        let cfg = qemu_config();
        let t = Instant::now();
        let mut vm = hypervisor::launch(&cfg, &spec).await.expect("launch");
        let launched = t.elapsed();
        assert!(vm.pids().len() >= 3, "pids: {:?}", vm.pids());
        eprintln!("pids: {:?}", vm.pids());
        let exit = tokio::time::timeout(Duration::from_secs(60), vm.wait()).await;
        let total = t.elapsed();
        let Ok(exit) = exit else {
            dump_logs(&spec);
            panic!("guest did not power off within 60 s");
        };
        eprintln!("launch returned after {launched:?}; guest powered off after {total:?}: {exit}");
        let console = std::fs::read_to_string(&spec.console_log).unwrap();
        eprintln!("console:\n{console}");
        if exit != VmExit::Poweroff || !console.contains("skerry-test: done") {
            dump_logs(&spec);
        }
        assert_eq!(exit, VmExit::Poweroff);
        assert_eq!(vm.wait().await, VmExit::Poweroff, "wait is repeatable");
        assert!(!console.contains("failed"), "{console}");
        let version = std::fs::read_to_string(spec.shared_dir.join("version")).unwrap();
        assert!(version.starts_with("Linux version 6.1"), "{version}");
        stop_and_check_clean(&mut vm, &spec).await;
    });
}

/// The real agent answers a ttrpc Check over hybrid vsock.
#[test]
fn hv_agent_answers_check_over_vsock() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = host_missing() {
        return skip(&reason);
    }
    let agent = agent_binary();
    if !agent.is_file() {
        return skip(&format!(
            "no agent binary at {} (cargo build --release -p skerry-agent --target x86_64-unknown-linux-gnu)",
            agent.display()
        ));
    }
    let Some(guest) = prepare(&agent, None) else {
        return;
    };
    let spec = guest.spec.clone();
    runtime().block_on(async move {
        let cfg = qemu_config();
        let t = Instant::now();
        let mut vm = hypervisor::launch(&cfg, &spec).await.expect("launch");
        let launched = t.elapsed();
        let deadline = Instant::now() + Duration::from_secs(cfg.boot_timeout_secs);
        let mut attempts = 0;
        let stream = loop {
            attempts += 1;
            match vm.connect(skerry_protocol::AGENT_VSOCK_PORT).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    if attempts == 1 {
                        eprintln!("first connect: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    dump_logs(&spec);
                    panic!("agent did not answer within {}s: {e}", cfg.boot_timeout_secs);
                }
            }
        };
        let connected = t.elapsed();
        let client = skerry_protocol::AgentClient::new(ttrpc::asynchronous::Client::new(
            ttrpc::asynchronous::transport::Socket::new(stream),
        ));
        let req = skerry_protocol::CheckRequest {
            protocol_version: skerry_protocol::PROTOCOL_VERSION,
            ..Default::default()
        };
        let resp = client
            .check(ttrpc::context::with_timeout(10_000_000_000), &req)
            .await;
        let answered = t.elapsed();
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                dump_logs(&spec);
                panic!("Check failed: {e:?}");
            }
        };
        eprintln!(
            "launch {launched:?}, vsock connected {connected:?} ({attempts} attempts), Check answered {answered:?}: agent {} kernel {}",
            resp.agent_version, resp.kernel_release
        );
        assert_eq!(resp.protocol_version, skerry_protocol::PROTOCOL_VERSION);
        // The guest image's kernel, by the release its manifest records.
        let manifest = std::fs::read(spec.kernel.with_file_name("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(
            Some(resp.kernel_release.as_str()),
            manifest["kernel_version"].as_str()
        );
        drop(client);
        stop_and_check_clean(&mut vm, &spec).await;
        let exit = vm.wait().await;
        assert!(
            matches!(exit, VmExit::Stopped | VmExit::Killed(_)),
            "{exit:?}"
        );
    });
}

/// `skerry check` runs on any host and names the backend `auto` picks: the
/// one `launch` uses.
#[test]
fn hv_check_report() {
    let config = skerry_runtime::config::Config::default();
    let report = skerry_runtime::check::run(&config);
    eprintln!("{report}");
    let backend = report.rows.iter().find(|r| r.item == "backend").unwrap();
    let choice = hypervisor::choice::backend_choice(&config.hypervisor);
    assert_eq!(backend.detail, choice.summary());
}

/// A kernel QEMU cannot load fails `launch` with QEMU's own words and leaves nothing behind.
#[test]
fn hv_failed_launch_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = host_missing() {
        return skip(&reason);
    }
    let tmp = short_tempdir();
    let spec = bad_kernel_spec(tmp.path());
    runtime().block_on(async {
        let cfg = qemu_config();
        let err = hypervisor::launch(&cfg, &spec)
            .await
            .err()
            .expect("launch must fail");
        eprintln!("error: {err}");
        assert!(err.to_string().starts_with("qemu failed to start"), "{err}");
        assert_no_leftovers(&spec);

        let missing = VmSpec {
            kernel: tmp.path().join("nope"),
            ..spec.clone()
        };
        let err = hypervisor::launch(&cfg, &missing).await.err().unwrap();
        assert!(
            err.to_string()
                .contains("not found (run `skerry image build`)"),
            "{err}"
        );
        let cfg = HypervisorConfig {
            qemu_path: "no-such-qemu".into(),
            ..cfg
        };
        let err = hypervisor::launch(&cfg, &spec).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "qemu binary \"no-such-qemu\" not found in PATH or ~/.cargo/bin"
        );
    });
}
