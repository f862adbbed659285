//! Boots the guest image with the runtime's QEMU backend (same devices, same
//! back ends, same command line as a sandbox) and waits until the agent has
//! booted and powered the VM off (`skerry.poweroff_after_boot`). The baseline
//! `bench/run-overhead.sh` compares `skerry run` against.
//!
//! Usage: boot_to_poweroff IMAGE_DIR [EXTRA KERNEL PARAMS]

use std::{path::PathBuf, time::Instant};

use skerry_runtime::{
    config::HypervisorConfig,
    hypervisor::{self, VmExit, VmSpec},
    image,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let image = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: boot_to_poweroff IMAGE_DIR"))?,
    );
    let tmp = tempfile::Builder::new().prefix("skb").tempdir_in("/tmp")?;
    let keep_console = std::env::var_os("SKERRY_KEEP_CONSOLE");
    let (run_dir, shared_dir) = (tmp.path().join("vm"), tmp.path().join("shared"));
    std::fs::create_dir_all(&run_dir)?;
    std::fs::create_dir_all(&shared_dir)?;
    let spec = VmSpec {
        id: "bench".into(),
        run_dir,
        kernel: image::kernel_path(&image),
        initrd: image::initrd_path(&image),
        kernel_params: format!(
            "skerry.poweroff_after_boot {}",
            std::env::args().nth(2).unwrap_or_default()
        ),
        vcpus: 1,
        memory_mib: 512,
        shared_dir,
        console_log: tmp.path().join("console.log"),
        console_log_max: 1 << 20,
        net: None,
        host_cgroup: None,
        ids: None,
    };
    let started = Instant::now();
    let mut vm = hypervisor::launch(&HypervisorConfig::default(), &spec).await?;
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), vm.wait()).await;
    let elapsed = started.elapsed();
    vm.stop().await?;
    if let Some(path) = keep_console {
        std::fs::copy(tmp.path().join("console.log"), path)?;
    }
    let exit = exit.map_err(|_| anyhow::anyhow!("guest did not power off within 30 s"))?;
    anyhow::ensure!(exit == VmExit::Poweroff, "guest did not power off: {exit}");
    eprintln!("boot to poweroff: {} ms", elapsed.as_millis());
    Ok(())
}
