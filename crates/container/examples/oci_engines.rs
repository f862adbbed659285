//! Benchmark, not shipped: creates, starts, waits for and deletes `--count` containers of
//! one OCI spec with each of two engines, alternating, and prints per-phase times.
//!
//! - `skerry`: this crate, driven the way the guest agent drives it
//!   (`crates/agent/src/state.rs`): spec parsed and validated, a cgroup v2 directory with
//!   the spec's resources (libcgroups, as `crates/agent/src/cgroup.rs`), clone + re-exec as
//!   `<exe> init`, handshake, release, `waitpid`, cgroup removed.
//! - `libcontainer`: youki's `ContainerBuilder` as container mode drives it
//!   (`crates/runtime/src/plain`): `config.json` written to a bundle, `build`, `start`,
//!   `waitpid`, `delete(force)`; the cgroup is the spec's `cgroupsPath`.
//!
//! Both give the container pipes as stdio. Run as root; `bench/guest-oci-engines.sh` drives
//! it on the host and inside a skerry guest. Output: one `sample` line per container, then
//! one `summary` line per engine and phase (median and p90 in milliseconds).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcgroups::v2::manager::Manager;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use skerry_container::launch;
use skerry_container::spec;
use skerry_container::InitConfig;

type Error = Box<dyn std::error::Error>;

/// The cgroup (under the hierarchy's root) of libcontainer's containers.
const LC_CGROUP_PARENT: &str = "ocibench-libcontainer";

/// The phases timed per container.
const PHASES: [&str; 5] = ["create", "start", "exit", "delete", "total"];

struct Options {
    spec: PathBuf,
    rootfs: PathBuf,
    work: PathBuf,
    cgroup_root: PathBuf,
    count: usize,
    warmup: usize,
    engines: Vec<Engine>,
    label: String,
    ballast_mib: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Skerry,
    Libcontainer,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Skerry => "skerry",
            Engine::Libcontainer => "libcontainer",
        }
    }
}

/// One container's phase durations.
type Sample = [Duration; 5];

fn usage() -> ! {
    eprintln!(
        "usage: oci_engines --spec CONFIG.json --rootfs DIR --work DIR [--cgroup-root DIR] \
         [--count N] [--warmup N] [--engines skerry,libcontainer] [--label TEXT] \
         [--ballast-mib N]"
    );
    std::process::exit(2)
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Options {
    let mut o = Options {
        spec: PathBuf::new(),
        rootfs: PathBuf::new(),
        work: PathBuf::new(),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        count: 20,
        warmup: 2,
        engines: vec![Engine::Skerry, Engine::Libcontainer],
        label: "here".into(),
        ballast_mib: 0,
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--spec" => o.spec = value.into(),
            "--rootfs" => o.rootfs = value.into(),
            "--work" => o.work = value.into(),
            "--cgroup-root" => o.cgroup_root = value.into(),
            "--count" => o.count = value.parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = value.parse().unwrap_or_else(|_| usage()),
            "--label" => o.label = value,
            "--ballast-mib" => o.ballast_mib = value.parse().unwrap_or_else(|_| usage()),
            "--engines" => {
                o.engines = value
                    .split(',')
                    .map(|e| match e {
                        "skerry" => Engine::Skerry,
                        "libcontainer" => Engine::Libcontainer,
                        _ => usage(),
                    })
                    .collect()
            }
            _ => usage(),
        }
    }
    if o.spec.as_os_str().is_empty()
        || o.rootfs.as_os_str().is_empty()
        || o.work.as_os_str().is_empty()
    {
        usage()
    }
    o
}

fn main() {
    // The skerry engine's child re-executes this binary as `<exe> init`, as the agent's.
    let rest = skerry_container::init::main_if_init();
    let opts = parse_args(rest.into_iter());
    if let Err(e) = run(&opts) {
        eprintln!("oci_engines: {}", skerry_container::init::error_chain(&*e));
        std::process::exit(1);
    }
}

fn run(o: &Options) -> Result<(), Error> {
    // Resident memory standing in for a larger parent (the agent, with its threads and
    // buffers): both engines clone the parent, libcontainer's children then run in the copy.
    let ballast = vec![1u8; o.ballast_mib << 20];
    let spec_json = fs::read(&o.spec)?;
    let rootfs = fs::canonicalize(&o.rootfs)?;
    fs::create_dir_all(&o.work)?;
    let own_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    println!(
        "# {} kernel {} clocksource {} cpus {} ballast {} MiB own cgroup {:?}",
        o.label,
        read("/proc/sys/kernel/osrelease").trim(),
        read("/sys/devices/system/clocksource/clocksource0/current_clocksource").trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.ballast_mib,
        own_cgroup.trim()
    );
    // As the agent at boot: every controller the hierarchy offers is delegated to the
    // containers' parent (here a directory of its own, so that cgroup v2's rule of no
    // processes in inner nodes holds for the root of a nested run too).
    let sk_root = o.cgroup_root.join("ocibench-skerry");
    fs::create_dir_all(&sk_root)?;
    let available = fs::read_to_string(o.cgroup_root.join("cgroup.controllers"))?;
    for c in available.split_whitespace() {
        let _ = fs::write(
            o.cgroup_root.join("cgroup.subtree_control"),
            format!("+{c}"),
        );
        let _ = fs::write(sk_root.join("cgroup.subtree_control"), format!("+{c}"));
    }
    let mut samples: Vec<(Engine, Sample)> = Vec::new();
    for i in 0..o.warmup + o.count {
        // Alternate which engine goes first, so neither always runs on a warmer cache.
        let mut order = o.engines.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for engine in order {
            let id = format!("{}-{i}", &engine.name()[..2]);
            let sample = match engine {
                Engine::Skerry => skerry_once(&id, &spec_json, &rootfs, &sk_root),
                Engine::Libcontainer => libcontainer_once(&id, &spec_json, &rootfs, &o.work),
            }
            .map_err(|e| format!("{} container {id}: {e}", engine.name()))?;
            if i >= o.warmup {
                println!(
                    "sample {} {} {}",
                    o.label,
                    engine.name(),
                    sample.map(|d| format!("{:.3}", ms(d))).join(" ")
                );
                samples.push((engine, sample));
            }
        }
    }
    for engine in &o.engines {
        for (p, phase) in PHASES.iter().enumerate() {
            let mut v: Vec<f64> = samples
                .iter()
                .filter(|(e, _)| e == engine)
                .map(|(_, s)| ms(s[p]))
                .collect();
            v.sort_by(f64::total_cmp);
            println!(
                "summary {} {} {phase} median {:.2} p90 {:.2} n {}",
                o.label,
                engine.name(),
                percentile(&v, 0.5),
                percentile(&v, 0.9),
                v.len()
            );
        }
    }
    let _ = fs::remove_dir(&sk_root);
    let _ = fs::remove_dir(o.cgroup_root.join(LC_CGROUP_PARENT));
    drop(std::hint::black_box(ballast));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Pipes as the container's stdio; returns the child's ends and keeps the parent's.
fn stdio_pipes() -> Result<([OwnedFd; 3], Vec<OwnedFd>), Error> {
    let (in_r, in_w) = nix::unistd::pipe()?;
    let (out_r, out_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    Ok(([in_r, out_w, err_w], vec![in_w, out_r, err_r]))
}

fn wait_exit(pid: i32) -> Result<(), Error> {
    match waitpid(Pid::from_raw(pid), None)? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(format!("container init ended with {other:?}").into()),
    }
}

/// The guest agent's path (`Sandbox::create_blocking`, `start`, the reaper, `remove`).
fn skerry_once(
    id: &str,
    spec_json: &[u8],
    rootfs: &Path,
    cgroup_root: &Path,
) -> Result<Sample, Error> {
    let t0 = Instant::now();
    let mut spec: Spec = spec::parse_spec(spec_json)?;
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    spec.set_root(Some(root));
    spec::validate_spec(&spec, rootfs)?;
    let namespaces = launch::container_namespaces(&spec, false);
    let prepared = launch::prepare(false, namespaces.flags)?;
    let cgroup = cgroup_root.join(id);
    fs::create_dir(&cgroup)?;
    if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        Manager::new(cgroup_root.to_path_buf(), PathBuf::from(id))?.apply(&opt)?;
    }
    let pid = prepared.clone_child()?;
    let (mut chan, stdio) = prepared.into_parent();
    fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
    let config = InitConfig::Container {
        id: id.to_string(),
        spec: Box::new(spec),
        rootfs: rootfs.to_path_buf(),
        join: None,
    };
    let ready = launch::handshake(&mut chan, pid, &config, |_| {});
    let stdio = ready.and_then(|r| launch::parent_stdio(stdio, r.console))?;
    let t1 = Instant::now();
    launch::release(chan)?;
    let t2 = Instant::now();
    wait_exit(pid)?;
    drop(stdio);
    let t3 = Instant::now();
    fs::remove_dir(&cgroup)?;
    let t4 = Instant::now();
    Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
}

/// Container mode's path (`plain::create`, `start`, `wait`, `delete`).
fn libcontainer_once(
    id: &str,
    spec_json: &[u8],
    rootfs: &Path,
    work: &Path,
) -> Result<Sample, Error> {
    let t0 = Instant::now();
    // The agent would get the spec as bytes too and hand libcontainer a bundle.
    let mut spec: serde_json::Value = serde_json::from_slice(spec_json)?;
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    spec["linux"]["cgroupsPath"] = format!("/{LC_CGROUP_PARENT}/{id}").into();
    let bundle = work.join("bundles").join(id);
    fs::create_dir_all(&bundle)?;
    fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let (child, parent) = stdio_pipes()?;
    let [stdin, stdout, stderr] = child;
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(work.join("state"))?
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    let pid = container
        .pid()
        .ok_or("libcontainer recorded no init pid")?
        .as_raw();
    let t1 = Instant::now();
    container.start()?;
    let t2 = Instant::now();
    wait_exit(pid)?;
    drop(parent);
    let t3 = Instant::now();
    container.delete(true)?;
    fs::remove_dir_all(&bundle)?;
    let t4 = Instant::now();
    Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
}
