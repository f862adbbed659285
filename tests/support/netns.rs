//! Test fixture shared by the CLI's and the shim's pod networking tests
//! (included with `#[path]`): a network namespace holding one end of a veth
//! pair, as CNI leaves it, the other end addressed in the host's namespace.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A network namespace `sknet<pid>` holding an up `lo` and `eth0` (10.a.b.2/24 and
/// fd77:a:b::2/64, default routes via the host end), paired with `skh<pid>`
/// (10.a.b.1/24, fd77:a:b::1/64) on the host.
pub struct PodNetns {
    name: String,
    host_veth: String,
    subnet: [u8; 3],
}

/// Runs a command and fails the test with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PodNetns {
    pub fn new() -> Self {
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
        // As CNI's loopback plugin leaves every pod namespace.
        pod.ip(&["link", "set", "lo", "up"]);
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
    pub fn path(&self) -> PathBuf {
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

    /// A VM is attached: the namespace has a tap and an ingress qdisc on eth0.
    pub fn assert_connected(&self) {
        let links = self.ip(&["-o", "link", "show"]);
        assert!(
            links.contains("tapsk"),
            "no tap in the pod's netns: {links}"
        );
        let qdiscs = self.eth0_qdiscs();
        assert!(qdiscs.contains("ingress"), "{qdiscs}");
    }

    /// The namespace is as the test made it: no tap, no ingress qdisc, eth0 kept.
    pub fn assert_disconnected(&self) {
        let links = self.ip(&["-o", "link", "show"]);
        assert!(!links.contains("tapsk"), "tap left behind: {links}");
        assert!(links.contains("eth0"), "the pod's veth is gone: {links}");
        let qdiscs = self.eth0_qdiscs();
        assert!(
            !qdiscs.contains("ingress"),
            "ingress qdisc left behind: {qdiscs}"
        );
        let tables = sh(
            "ip",
            &["netns", "exec", &self.name, "nft", "list", "tables"],
        );
        assert!(
            !tables.contains("skerry_portforward"),
            "port-forward table left behind: {tables}"
        );
    }

    /// What containerd's CRI PortForward does: from inside the namespace,
    /// `GET /` of 127.0.0.1:`port` reaches the guest and returns `body`.
    pub fn assert_loopback_forwards(&self, port: u16, body: &str, log: impl Fn() -> String) {
        let path = self.path();
        let reply = std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                try_http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            })
            .join()
            .unwrap()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
        assert!(
            reply.starts_with("HTTP/1.") && reply.ends_with(&format!("\r\n\r\n{body}")),
            "GET / from 127.0.0.1:{port} in the pod's namespace: {reply}"
        );
    }

    /// The pod's address answers a ping from the host end, and the replies
    /// came from the guest, not from the namespace's own stack: the veth's
    /// ingress filter stole the frames.
    pub fn assert_guest_answers_ping(&self) {
        let ping = Command::new("/bin/busybox")
            .args(["ping", "-c", "1", "-W", "5", &self.pod_ip().to_string()])
            .output()
            .unwrap();
        assert!(
            ping.status.success(),
            "ping: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );
        let stats = sh(
            "tc",
            &[
                "-s", "-n", &self.name, "filter", "show", "dev", "eth0", "ingress",
            ],
        );
        assert!(
            stats.contains("Sent ") && !stats.contains("Sent 0 bytes"),
            "{stats}"
        );
    }

    /// `/` on `port` of the pod's IPv4 and IPv6 addresses answers `body` over
    /// HTTP (retrying while the guest boots); `log` explains a failure.
    pub fn assert_http_serves(&self, port: u16, body: &str, log: impl Fn() -> String) {
        for addr in [
            SocketAddr::from((self.pod_ip(), port)),
            SocketAddr::from((self.pod_ip6(), port)),
        ] {
            let reply = http_get(addr, &log);
            assert!(
                reply.starts_with("HTTP/1.") && reply.ends_with(&format!("\r\n\r\n{body}")),
                "GET / from {addr}: {reply}"
            );
        }
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

/// Whether this host cannot run pod networking (beyond what `require_vm!`
/// checks): prints why, or fails under SKERRY_E2E_REQUIRED=1.
pub fn skip_without_net() -> bool {
    let Some(reason) = net_skip_reason() else {
        return false;
    };
    crate::common::skip::skip(&reason);
    true
}

fn net_skip_reason() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("no `{tool}` ({package})"));
        }
    }
    None
}

/// Fetches `/` from `addr`, retrying while the guest boots.
fn http_get(addr: SocketAddr, log: &impl Fn() -> String) -> String {
    try_http_get(addr).unwrap_or_else(|e| panic!("{e}\n{}", log()))
}

/// Fetches `/` from `addr`, retrying while the guest boots; the last error
/// once the time is up.
fn try_http_get(addr: SocketAddr) -> Result<String, String> {
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
            Ok(reply) => return Ok(reply),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no TCP connection to {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
