//! Tier 3: pod networking. A network namespace holding one end of a veth
//! pair (as CNI leaves it), the other end addressed in the host's namespace;
//! the container in the VM must answer a ping and a TCP connection from the
//! host end, and `delete` must leave the namespace as it found it.

mod common;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{stderr, World};

/// A network namespace `sknet<pid>` holding `eth0` (10.a.b.2/24 and
/// fd77:a:b::2/64, default routes via the host end), paired with `skh<pid>`
/// (10.a.b.1/24, fd77:a:b::1/64) on the host.
struct PodNetns {
    name: String,
    host_veth: String,
    subnet: [u8; 3],
}

/// Runs a command and fails the test with its stderr if it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PodNetns {
    fn new() -> Self {
        let pid = std::process::id();
        // A subnet of its own per test process, in a range this host does not use.
        let subnet = [10, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8];
        let pod = PodNetns {
            name: format!("sknet{pid}"),
            host_veth: format!("skh{pid}"),
            subnet,
        };
        let net = |host: u8| format!("{}.{}.{}.{host}", subnet[0], subnet[1], subnet[2]);
        sh("ip", &["netns", "add", &pod.name]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &pod.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pod.name,
            ],
        );
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net(1)),
                "dev",
                &pod.host_veth,
            ],
        );
        sh("ip", &["link", "set", &pod.host_veth, "up"]);
        pod.ip(&["addr", "add", &format!("{}/24", net(2)), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", &net(1)]);
        let net6 = |host: u8| format!("fd77:{}:{}::{host}", subnet[1], subnet[2]);
        // nodad: usable at once (the guest's copy goes through DAD itself).
        let host6 = format!("{}/64", net6(1));
        sh(
            "ip",
            &["addr", "add", &host6, "dev", &pod.host_veth, "nodad"],
        );
        pod.ip(&[
            "addr",
            "add",
            &format!("{}/64", net6(2)),
            "dev",
            "eth0",
            "nodad",
        ]);
        pod.ip(&["-6", "route", "add", "default", "via", &net6(1)]);
        pod
    }

    /// The IPv6 address of the pod's interface.
    fn pod_ip6(&self) -> Ipv6Addr {
        format!("fd77:{}:{}::2", self.subnet[1], self.subnet[2])
            .parse()
            .unwrap()
    }

    /// The address of the pod's interface.
    fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 2)
    }

    /// The namespace file a CNI plugin would hand over.
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <netns> ARGS`.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// `tc -n <netns> qdisc show dev eth0`.
    fn eth0_qdiscs(&self) -> String {
        sh("tc", &["-n", &self.name, "qdisc", "show", "dev", "eth0"])
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Deleting the namespace deletes eth0 and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .stderr(Stdio::null())
            .status();
    }
}

/// Why this host cannot run pod networking, beyond what `require_vm!` checks.
fn net_skip_reason() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("no `{tool}` (iproute2)"));
        }
    }
    None
}

/// Fetches `/` from the container's httpd, retrying while the guest boots.
fn http_get(addr: SocketAddr, w: &World) -> String {
    // Room for a rebooted stalled guest (boot_attempts in the test config).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let attempt = || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        };
        match attempt() {
            Ok(reply) => return reply,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no TCP connection to {addr}: {e}\n{}",
                w.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates container `id` serving "hello from the pod" on port 8080 in
/// `pod`'s network namespace, and checks the namespace got a tap and an
/// ingress qdisc on eth0.
fn create_in(w: &World, pod: &PodNetns, id: &str) {
    let bundle = w.bundle(
        id,
        &[
            "sh",
            "-c",
            "echo hello from the pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir(rootfs.join("www")).unwrap();
    symlink("busybox", rootfs.join("bin/httpd")).unwrap();
    let config = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "network", "path": pod.path()}));
    std::fs::write(&config, spec.to_string()).unwrap();
    w.create(&bundle, id);
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("tapsk"),
        "no tap in the pod's netns: {links}"
    );
    let qdiscs = pod.eth0_qdiscs();
    assert!(qdiscs.contains("ingress"), "{qdiscs}");
}

/// The namespace is as the test made it: no tap, no ingress qdisc, eth0 kept.
fn assert_disconnected(pod: &PodNetns) {
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("tapsk"), "tap left behind: {links}");
    assert!(links.contains("eth0"), "the pod's veth is gone: {links}");
    let qdiscs = pod.eth0_qdiscs();
    assert!(
        !qdiscs.contains("ingress"),
        "ingress qdisc left behind: {qdiscs}"
    );
}

#[test]
fn vm_pod_network_answers_ping_and_tcp_from_the_host_end() {
    require_vm!();
    if let Some(reason) = net_skip_reason() {
        if std::env::var_os("SKERRY_E2E_REQUIRED").is_some() {
            panic!("VM test cannot run: {reason}");
        }
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let w = World::new();
    let pod = PodNetns::new();
    create_in(&w, &pod, "net1");
    let out = w.run(&["start", "net1"]);
    assert!(out.status.success(), "start: {}", stderr(&out));

    let reply = http_get(SocketAddr::from((pod.pod_ip(), 8080)), &w);
    assert!(reply.starts_with("HTTP/1."), "{reply}");
    assert!(reply.ends_with("\r\n\r\nhello from the pod\n"), "{reply}");
    let reply = http_get(SocketAddr::from((pod.pod_ip6(), 8080)), &w);
    assert!(
        reply.ends_with("\r\n\r\nhello from the pod\n"),
        "IPv6: {reply}"
    );
    let ping = Command::new("/bin/busybox")
        .args(["ping", "-c", "1", "-W", "5", &pod.pod_ip().to_string()])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    // The replies came from the guest, not from the namespace's own stack:
    // the veth's ingress filter stole the frames.
    let stats = sh(
        "tc",
        &[
            "-s", "-n", &pod.name, "filter", "show", "dev", "eth0", "ingress",
        ],
    );
    assert!(
        stats.contains("Sent ") && !stats.contains("Sent 0 bytes"),
        "{stats}"
    );

    let out = w.run(&["delete", "--force", "net1"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("net1");
    assert_disconnected(&pod);

    // A monitor killed outright cannot disconnect; `delete` does. That the
    // second sandbox connects at all shows the first left the veth free.
    create_in(&w, &pod, "net2");
    let state = w.run(&["state", "net2"]);
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    let monitor = state["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{monitor}")).exists() {
        assert!(
            Instant::now() < deadline,
            "monitor {monitor} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = w.run(&["delete", "--force", "net2"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("net2");
    assert_disconnected(&pod);
}
