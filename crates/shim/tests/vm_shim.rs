//! End to end: containerd 1.6 runs busybox tasks through
//! `containerd-shim-skerry-v2` (`--runtime io.containerd.skerry.v2`); every
//! task outside a pod runs in its own VM, the containers of a pod (CRI
//! annotations set through `ctr run --annotation`) share one.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

#[macro_use]
mod common;

#[path = "../../../tests/support/netns.rs"]
mod netns;
use netns::PodNetns;

use common::*;

/// Sends Update (a new memory limit) for task `id` straight to the shim of
/// pod `pod`: ctr 1.6 has no `task update`.
fn update_memory_limit(w: &World, pod: &str, id: &str, bytes: i64) {
    use containerd_shim::protos::{
        api::UpdateTaskRequest,
        protobuf::well_known_types::any::Any,
        shim_async::{Client, TaskClient},
        ttrpc::context,
    };
    let socket = format!("unix://{}", w.shim_socket(pod).display());
    let resources = serde_json::json!({"memory": {"limit": bytes}}).to_string();
    let req = UpdateTaskRequest {
        id: id.into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let task = TaskClient::new(Client::connect(&socket).await.unwrap());
        task.update(context::with_timeout(10_000_000_000), &req)
            .await
            .unwrap();
    });
}

#[test]
fn vm_shim_run_exec_kill_delete_leaves_nothing() {
    require_vm!();
    let w = World::new();
    let out = w.ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c1",
        "cat",
        "/proc/version",
    ]);
    eprintln!("guest kernel: {}", out.trim());
    common::guest::assert_guest_kernel(&common::image_dir(), &out);

    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c2",
        "sleep",
        "1000",
    ]);
    let out = w.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c2",
        "sh",
        "-c",
        "echo exec-in-vm; exit 4",
    ]);
    assert_eq!(
        text(&out.stdout),
        "exec-in-vm\n",
        "{}\n{}",
        text(&out.stderr),
        w.log()
    );
    assert_eq!(out.status.code(), Some(4));
    // ctr deleted the exec once it ended: its id is free again.
    let out = w.ok(&["task", "exec", "--exec-id", "e1", "c2", "echo", "again"]);
    assert_eq!(out, "again\n");

    // The pod VM's host processes run in the sandbox container's cgroup
    // (ctr's `/<namespace>/<id>`), limited to the VM's 256 MiB + 256 MiB.
    let cgroup = format!("/{}/c2", w.namespace());
    let qemu = w.qemu_pids();
    assert_eq!(qemu.len(), 1, "{:?}", w.processes());
    let of_qemu = fs::read_to_string(format!("/proc/{}/cgroup", qemu[0])).unwrap();
    assert!(
        of_qemu.lines().any(|l| l.ends_with(&format!(":{cgroup}"))
            && (l.contains(":memory:") || l.starts_with("0::"))),
        "{of_qemu}"
    );
    let v1 = format!("/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup{cgroup}/memory.max");
    let limit = || {
        fs::read_to_string(&v1)
            .or_else(|_| fs::read_to_string(&v2))
            .unwrap()
    };
    assert_eq!(limit().trim(), (512u64 << 20).to_string());
    // Update of the sandbox container (c2 is its own pod) lowers it too.
    update_memory_limit(&w, "c2", "c2", 64 << 20);
    assert_eq!(limit().trim(), ((64u64 + 256) << 20).to_string());

    w.ok(&["task", "kill", "-s", "SIGKILL", "c2"]);
    w.wait_stopped("c2", Duration::from_secs(20));
    let out = w.run(&["task", "delete", "c2"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("137"), "exit status: {said}\n{}", w.log());
    w.ok(&["container", "rm", "c2"]);
    w.assert_clean();
}

#[test]
fn vm_shim_vm_death_exits_every_task_with_255() {
    require_vm!();
    let w = World::new();
    let events_log = w.tmp.path().join("events.txt");
    let mut events = w
        .ctr()
        .arg("events")
        .stdout(fs::File::create(&events_log).unwrap())
        .spawn()
        .unwrap();
    w.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c3",
        "sleep",
        "1000",
    ]);
    w.ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        "c3",
        "sleep",
        "1000",
    ]);
    let qemu = w.qemu_pids();
    assert_eq!(qemu.len(), 1, "{:?}", w.processes());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let took = w.wait_stopped("c3", Duration::from_secs(5));
    eprintln!("task stopped {took:?} after the VM was killed");
    let deadline = Instant::now() + Duration::from_secs(5);
    let exits = loop {
        let log = fs::read_to_string(&events_log).unwrap_or_default();
        let exits: Vec<String> = log
            .lines()
            .filter(|l| l.contains("/tasks/exit"))
            .map(str::to_string)
            .collect();
        if exits.len() >= 2 || Instant::now() > deadline {
            break exits;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(exits.len(), 2, "{exits:?}\n{}", w.log());
    for id in ["\"c3\"", "\"e2\""] {
        assert!(
            exits
                .iter()
                .any(|e| e.contains(&format!("\"id\":{id}")) && e.contains("\"exit_status\":255")),
            "no TaskExit 255 for {id}: {exits:?}"
        );
    }
    let out = w.run(&["task", "delete", "c3"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("255"), "exit status: {said}\n{}", w.log());
    w.ok(&["container", "rm", "c3"]);
    w.assert_clean();
}

#[test]
fn vm_shim_pod_shares_one_vm_and_dies_together() {
    require_vm!();
    let w = World::new();
    let events = EventLog::start(&w);
    // The pod asks for 256 MiB: its VM gets that plus [pod] overhead_memory_mib
    // (128) instead of the configured 256 MiB.
    let mut sandbox = pod_annotations("p1", true);
    sandbox.extend([
        "--annotation".into(),
        "io.kubernetes.cri.sandbox-memory=268435456".into(),
        "--cap-add".into(),
        "CAP_SYS_ADMIN".into(),
    ]);
    w.run_detached(&sandbox, "p1", &["sleep", "1000"]);
    // As CRI does: c2 joins the sandbox's IPC, UTS and pid namespaces by host path.
    let p1 = w.task_pid("p1");
    let mut member = pod_annotations("p1", false);
    for ns in ["ipc", "uts", "pid"] {
        member.extend(["--with-ns".into(), format!("{ns}:/proc/{p1}/ns/{ns}")]);
    }
    w.run_detached(&member, "c2", &["sleep", "1000"]);
    let boot_id = |id: &str| w.exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let (b1, b2) = (boot_id("p1"), boot_id("c2"));
    assert!(!b1.trim().is_empty());
    assert_eq!(b1, b2, "the pod's containers run in different kernels");
    // ... and share the sandbox's IPC, UTS and pid namespaces, so its hostname
    // and its processes (CRI's PodPID, the default: p1's init is pid 1 for c2).
    for ns in ["ipc", "uts", "pid"] {
        let link = format!("/proc/self/ns/{ns}");
        let (n1, n2) = (
            w.exec("p1", &["readlink", &link]),
            w.exec("c2", &["readlink", &link]),
        );
        assert!(n1.starts_with(&format!("{ns}:[")), "{n1}");
        assert_eq!(n1, n2, "c2 did not join p1's {ns} namespace\n{}", w.log());
    }
    assert_eq!(
        w.exec("c2", &["cat", "/proc/1/cmdline"]),
        "sleep\u{0}1000\u{0}"
    );
    // The guest applies each container's capabilities: p1 has CAP_SYS_ADMIN,
    // c2 has ctr's defaults, without it, so c2 may not set the shared hostname
    // (as runc would refuse).
    w.exec("p1", &["hostname", "pod-p1"]);
    assert_eq!(w.exec("c2", &["hostname"]), "pod-p1\n");
    let out = w.run(&["task", "exec", "--exec-id", "h", "c2", "hostname", "other"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Operation not permitted"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.qemu_pids().len(), 1, "{:?}", w.processes());
    let shims: Vec<String> = w
        .processes()
        .into_iter()
        .filter(|p| p.contains("containerd-shim-skerry-v2"))
        .collect();
    assert_eq!(shims.len(), 1, "one shim per pod: {shims:?}");

    let meminfo = w.exec("p1", &["cat", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"));
    assert!(
        (300 * 1024..=384 * 1024).contains(&total_kib),
        "guest MemTotal {total_kib} kB for a 384 MiB pod VM"
    );

    // Update applies limits to c2's guest cgroup.
    update_memory_limit(&w, "p1", "c2", 67108864);
    assert_eq!(w.metric("c2", "memory.usage_limit"), 67108864);

    // Metrics from the guest cgroup of c2 move when c2 works.
    let cpu_before = w.metric("c2", "cpu.usage_usec");
    assert!(w.metric("c2", "memory.usage") > 0);
    assert!(w.metric("c2", "pids.current") >= 1);
    w.ok(&[
        "task",
        "exec",
        "--exec-id",
        "busy",
        "c2",
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    ]);
    let cpu_after = w.metric("c2", "cpu.usage_usec");
    assert!(
        cpu_after > cpu_before + 10_000,
        "cpu.usage_usec {cpu_before} -> {cpu_after}"
    );
    // ps lists the guest processes of c2 only: its sleep.
    let ps = w.ok(&["task", "ps", "c2"]);
    assert_eq!(ps.lines().count(), 2, "{ps}");

    let out = w.run(&["task", "checkpoint", "c2"]);
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("not implemented") && said.contains("VM snapshots"),
        "{said}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.qemu_pids()[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let exits = loop {
        let exits: Vec<String> = events
            .topic("/tasks/exit")
            .into_iter()
            .filter(|e| e.contains("\"exit_status\":255"))
            .collect();
        if exits.len() >= 2 || killed.elapsed() > Duration::from_secs(5) {
            break exits;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "TaskExit of the pod's containers {:?} after kill -9",
        killed.elapsed()
    );
    for id in ["\"p1\"", "\"c2\""] {
        assert!(
            exits.iter().any(|e| e.contains(&format!("\"id\":{id}"))),
            "no TaskExit 255 for {id} within 5 s: {exits:?}\n{}",
            w.log()
        );
    }
    let socket = w.shim_socket("p1");
    w.delete_all(&["c2", "p1"]);
    assert!(!socket.exists(), "shim socket {} left", socket.display());
}

#[test]
fn vm_shim_pod_network_answers_ping_and_tcp_from_the_host_end() {
    require_vm!();
    if netns::skip_without_net() {
        return;
    }
    let w = World::new();
    let pod = PodNetns::new();
    let flags = [
        "--with-ns".into(),
        format!("network:{}", pod.path().display()),
    ];
    let serve = "echo hello from the pod > /tmp/index.html && exec httpd -f -p 8080 -h /tmp";
    w.run_detached(&flags, "web", &["sh", "-c", serve]);
    pod.assert_connected();
    pod.assert_http_serves(8080, "hello from the pod\n", || w.log());
    pod.assert_guest_answers_ping();
    pod.assert_loopback_forwards(8080, "hello from the pod\n", || w.log());
    w.ok(&["task", "kill", "-s", "SIGKILL", "web"]);
    w.wait_stopped("web", Duration::from_secs(20));
    w.delete_all(&["web"]);
    pod.assert_disconnected();
}

#[test]
fn vm_shim_pod_survives_containerd_restart() {
    require_vm!();
    let mut w = World::new();
    w.run_detached(&pod_annotations("p2", true), "p2", &["sleep", "1000"]);
    w.run_detached(&pod_annotations("p2", false), "c3", &["sleep", "1000"]);
    let qemu = w.qemu_pids();
    w.restart_containerd();
    let ls = w.ok(&["task", "ls"]);
    for id in ["p2", "c3"] {
        assert!(
            ls.lines()
                .any(|l| l.starts_with(id) && l.contains("RUNNING")),
            "{id} not running after the restart: {ls}\n{}",
            w.log()
        );
    }
    assert_eq!(w.qemu_pids(), qemu, "the pod's VM changed");
    let out = w.ok(&["task", "exec", "--exec-id", "e", "c3", "echo", "still here"]);
    assert_eq!(out, "still here\n");
    for id in ["c3", "p2"] {
        w.ok(&["task", "kill", "-s", "SIGKILL", id]);
        w.wait_stopped(id, Duration::from_secs(20));
    }
    w.delete_all(&["c3", "p2"]);
}

#[test]
fn vm_shim_tty_and_exit_status() {
    require_vm!();
    require_script!();
    let w = World::new();
    let run = format!("run --rm -t --runtime {RUNTIME} {IMAGE} t1 sh -c 'tty; exit 3'");
    let (said, status) = w.ctr_on_terminal("", &run);
    assert!(said.contains("/dev/pts/"), "{said}\n{}", w.log());
    assert_eq!(status, Some(3), "{said}");
    w.assert_clean();
}

#[test]
fn vm_shim_policy_floor_refuses_a_privileged_task() {
    require_vm!();
    privileged_task_is_refused_by_the_floor(&World::with_config(DENY_PRIVILEGED));
}

#[test]
fn vm_shim_oom_kill_publishes_task_oom() {
    require_vm!();
    oom_kill_publishes_task_oom(&World::new());
}

#[test]
fn vm_shim_vm_and_container_isolation_side_by_side() {
    require_vm!();
    let w = World::with_config("[runtime]\nallow_isolation_annotation = true\n");
    w.run_detached(&[], "v1", &["sleep", "1000"]);
    let plain = [
        "--annotation".to_string(),
        "io.skerry.isolation=container".into(),
    ];
    w.run_detached(&plain, "h1", &["sleep", "1000"]);
    // One VM, for v1; h1's init is a host process.
    assert_eq!(w.qemu_pids().len(), 1, "{:?}", w.processes());
    let ps = w.ok(&["task", "ps", "h1"]);
    let pid: u32 = ps
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
    for id in ["v1", "h1"] {
        let out = w.ok(&["task", "exec", "--exec-id", "e", id, "echo", id]);
        assert_eq!(out, format!("{id}\n"));
    }
    for id in ["v1", "h1"] {
        w.ok(&["task", "kill", "-s", "SIGKILL", id]);
        w.wait_stopped(id, Duration::from_secs(30));
    }
    w.delete_all(&["v1", "h1"]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// CRI's hostNetwork (a pod sandbox without a network namespace: `ctr run
/// --net-host` with the CRI annotations) is refused at create with one line
/// naming the field, before a VM boots.
#[test]
fn vm_shim_refuses_a_pod_on_the_host_network() {
    require_vm!();
    let w = World::new();
    let mut flags = pod_annotations("hn", true);
    flags.push("--net-host".into());
    let mut args: Vec<&str> = vec!["run", "-d", "--runtime", RUNTIME];
    args.extend(flags.iter().map(String::as_str));
    args.extend([IMAGE, "hn", "sleep", "1000"]);
    let out = w.run(&args);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(
            "linux.namespaces: no \"network\" namespace in a Kubernetes pod (annotation \
             io.kubernetes.cri.container-type): the host's network namespace cannot be shared \
             with a VM"
        ),
        "{said}\n{}",
        w.log()
    );
    assert!(w.qemu_pids().is_empty(), "a VM was started");
    w.ok(&["containers", "rm", "hn"]);
    w.assert_clean();
}
