//! Tier 3: pod networking. A network namespace holding one end of a veth
//! pair (as CNI leaves it), the other end addressed in the host's namespace;
//! the container in the VM must answer a ping and a TCP connection from the
//! host end and, as CRI's PortForward dials it, from 127.0.0.1 inside the
//! namespace; `delete` must leave the namespace as it found it.

mod common;
#[path = "../../../tests/support/netns.rs"]
mod netns;

use std::{
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant},
};

use common::{stderr, World};
use netns::PodNetns;

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
    common::edit_spec(&bundle, |spec| {
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "network", "path": pod.path()}));
    });
    w.create(&bundle, id);
    pod.assert_connected();
}

#[test]
fn vm_pod_network_answers_ping_and_tcp_from_the_host_end() {
    require_vm!();
    if netns::skip_without_net() {
        return;
    }
    let w = World::new();
    let pod = PodNetns::new();
    create_in(&w, &pod, "net1");
    let out = w.run(&["start", "net1"]);
    assert!(out.status.success(), "start: {}", stderr(&out));

    pod.assert_http_serves(8080, "hello from the pod\n", || w.log());
    pod.assert_guest_answers_ping();
    pod.assert_loopback_forwards(8080, "hello from the pod\n", || w.log());

    let out = w.run(&["delete", "--force", "net1"]);
    assert!(out.status.success(), "delete: {}", stderr(&out));
    w.assert_clean("net1");
    pod.assert_disconnected();

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
    pod.assert_disconnected();
}
