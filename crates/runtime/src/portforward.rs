//! Port forwarding to a pod in a VM (`kubectl port-forward`, CRI's
//! PortForward). containerd serves it by dialling `localhost:PORT` inside the
//! pod's network namespace, where, in VM isolation, nothing listens: the
//! pod's address belongs to the guest, behind the tap (`net`), and the
//! namespace's own stack only holds the veth that mirrors the guest's frames.
//!
//! So the process that owns the sandbox (the shim, or the CLI's monitor)
//! listens on one port of 127.0.0.1 in the pod's namespace, and an nftables
//! table of its own ([`TABLE`]) redirects every other TCP connection to
//! 127.0.0.1 there to that port. For each connection it reads the port asked
//! for (`SO_ORIGINAL_DST`) and connects, from the host's network namespace,
//! to the pod's IPv4 address and that port, as the kubelet's probes do, and
//! copies both ways. The guest starts nothing here: every connection is one
//! containerd opened, the address is the pod's own, and at most
//! [`MAX_CONNECTIONS`] are served at once.

use std::{
    io,
    net::{Ipv4Addr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::net::{self, NetError};

/// The nftables table (family `ip`) holding the redirect, in the pod's namespace.
pub const TABLE: &str = "skerry_portforward";

/// Connections forwarded at once; more are closed.
const MAX_CONNECTIONS: usize = 64;

/// How long a connection to the pod may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failure to set up port forwarding for a pod.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// The pod's network namespace could not be entered.
    #[error(transparent)]
    Enter(#[from] NetError),
    /// The listener on 127.0.0.1 could not be made.
    #[error("listening on 127.0.0.1 in {netns}")]
    Listen {
        /// The pod's network namespace.
        netns: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `nft` failed to add the redirect.
    #[error("adding nftables table {TABLE} in {netns}: {reason}")]
    Nft {
        /// The pod's network namespace.
        netns: PathBuf,
        /// What nft said, or why it did not run.
        reason: String,
    },
}

/// Forwarding for one pod, until dropped.
#[derive(Debug)]
pub struct PortForward {
    task: JoinHandle<()>,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts forwarding the loopback of pod network namespace `netns` to
/// `pod_ip` (the guest's address) for sandbox `sandbox`.
pub async fn start(
    sandbox: &str,
    netns: &Path,
    pod_ip: Ipv4Addr,
) -> Result<PortForward, PortForwardError> {
    let dir = netns.to_path_buf();
    let (listener, own_port) = tokio::task::spawn_blocking(move || listen_and_redirect(&dir))
        .await
        .expect("port-forward set-up panicked")?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
        .map_err(|source| PortForwardError::Listen {
            netns: netns.to_path_buf(),
            source,
        })?;
    info!(sandbox, netns = %netns.display(), %pod_ip, port = own_port, "port forwarding ready");
    let task = tokio::spawn(serve(listener, own_port, pod_ip, sandbox.to_string()));
    Ok(PortForward { task })
}

/// In `netns`: a listener on 127.0.0.1, its port, and the table redirecting there.
fn listen_and_redirect(netns: &Path) -> Result<(StdListener, u16), PortForwardError> {
    net::run_in_netns(netns, || {
        let listen = |source| PortForwardError::Listen {
            netns: netns.to_path_buf(),
            source,
        };
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(listen)?;
        let port = listener.local_addr().map_err(listen)?.port();
        let ruleset = format!(
            "table ip {TABLE} {{\n chain output {{\n  type nat hook output priority -100; \
             policy accept;\n  oifname \"lo\" ip daddr 127.0.0.1 tcp dport != {port} \
             redirect to :{port}\n }}\n}}\n"
        );
        remove_redirect();
        nft(&["-f", "-"], Some(&ruleset)).map_err(|reason| PortForwardError::Nft {
            netns: netns.to_path_buf(),
            reason,
        })?;
        Ok((listener, port))
    })?
}

/// Deletes [`TABLE`] from the calling thread's network namespace, if it is there.
pub(crate) fn remove_redirect() {
    let _ = nft(&["delete", "table", "ip", TABLE], None);
}

/// Runs `nft ARGS` (with `input` on stdin) in the calling thread's network
/// namespace; on failure, what it said.
fn nft(args: &[&str], input: Option<&str>) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Accepts redirected connections and forwards each to the pod.
async fn serve(listener: TcpListener, own_port: u16, pod_ip: Ipv4Addr, sandbox: String) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                debug!(sandbox, error = %e, "port forward: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(
                sandbox,
                "port forward: {MAX_CONNECTIONS} connections open; one refused"
            );
            continue;
        };
        let port = match getsockopt(&conn, OriginalDst) {
            Ok(dst) => u16::from_be(dst.sin_port),
            Err(e) => {
                debug!(sandbox, error = %e, "port forward: no original destination");
                continue;
            }
        };
        if port == own_port {
            continue;
        }
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = conn;
            // A guest that drops the SYN must not hold a slot for the kernel's minutes.
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((pod_ip, port))).await {
                Ok(Ok(mut pod)) => {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut pod).await;
                }
                Ok(Err(e)) => {
                    debug!(sandbox, port, error = %e, "port forward: connecting to the pod")
                }
                Err(_) => debug!(
                    sandbox,
                    port, "port forward: the pod did not answer in time"
                ),
            }
        });
    }
}

/// The first IPv4 address of `addresses` ("10.88.0.5/16" and the like).
pub fn ipv4_of(addresses: &[String]) -> Option<Ipv4Addr> {
    addresses
        .iter()
        .find_map(|a| a.split('/').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_address_is_the_first_ipv4_one() {
        let addresses = [
            "fd00::5/64".to_string(),
            "10.88.0.5/16".into(),
            "10.1.0.1/8".into(),
        ];
        assert_eq!(ipv4_of(&addresses), Some(Ipv4Addr::new(10, 88, 0, 5)));
        assert_eq!(ipv4_of(&["fd00::5/64".to_string()]), None);
        assert_eq!(ipv4_of(&[]), None);
    }
}
