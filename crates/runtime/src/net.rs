//! Pod networking on the host, in Kata's "tcfilter" model.
//!
//! CNI leaves a veth in the pod's network namespace (the spec's
//! `linux.namespaces[type=network].path`). [`connect`] reads that interface's
//! MAC, MTU, addresses and routes, creates a tap next to it, gives both an
//! ingress qdisc and a u32 filter whose mirred action redirects every frame
//! to the other's egress, and describes the tap for the hypervisor (which
//! runs in that namespace) and the interface for the guest agent. The guest
//! NIC gets the veth's MAC, so frames cross unchanged in both directions.
//! [`disconnect`] deletes the tap (and with it its qdisc and filter) and the
//! veth's ingress qdisc.
//!
//! Netlink (`rtnetlink`) does all of it but creating the tap: the kernel
//! refuses tun/tap creation over rtnetlink and this crate issues no ioctls
//! (`forbid(unsafe_code)`), so `ip tuntap add` (iproute2) makes the tap.
//! Work in the pod's namespace runs on a thread of its own that `setns`es
//! into it; netlink sockets and child processes made there belong to it.

use std::{
    fs::File,
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use futures_util::TryStreamExt;
use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage, AddressScope},
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
        tc::TcHandle,
    },
    Handle, LinkUnspec, RouteMessageBuilder,
};
use sha2::{Digest, Sha256};
use skerry_protocol as proto;

/// `ETH_P_ALL`: a filter for frames of every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The handle of an ingress qdisc, and so the parent of its filters (`ffff:`).
const INGRESS: u32 = 0xffff_0000;

/// Failure to connect a sandbox VM to its pod's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace could not be entered.
    #[error("cannot enter network namespace {path}")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A new network namespace could not be made.
    #[error("cannot create a network namespace")]
    NewNetns(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("network namespace {netns}: {what}")]
    Netlink {
        /// The namespace file.
        netns: PathBuf,
        /// What was being done.
        what: String,
        /// The cause (boxed: netlink errors can carry a whole message).
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// The namespace holds something this runtime will not work with.
    #[error("network namespace {netns}: {what}")]
    Pod {
        /// The namespace file.
        netns: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// The NIC of a sandbox VM: a tap in the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The pod's network namespace (a file such as `/var/run/netns/NAME`);
    /// the hypervisor runs in it, since the tap is only visible there.
    pub netns: PathBuf,
    /// Name of the (persistent) tap in that namespace that backs the NIC.
    pub tap: String,
    /// MAC of the guest NIC, `aa:bb:cc:dd:ee:ff`: the pod interface's.
    pub mac: String,
}

/// A sandbox connected to its pod's network.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The VM's NIC.
    pub nic: NetSpec,
    /// How the agent configures the guest NIC.
    pub guest: proto::Interface,
}

/// The network namespace the spec joins by path (the pod's, made by CNI).
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The tap name of sandbox `id`: short (IFNAMSIZ), and distinct per sandbox.
pub fn tap_name(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("tapsk{hex}")
}

/// Connects tap `tap` to the pod interface of `netns`; `None` when the
/// namespace holds no interface but loopback (the VM then gets no NIC).
/// The tap belongs to `owner` (uid, gid). On failure nothing is left behind.
pub async fn connect(
    netns: &Path,
    tap: &str,
    owner: (u32, u32),
) -> Result<Option<PodNetwork>, NetError> {
    refuse_host_netns(netns)?;
    let tap = tap.to_string();
    in_netns(netns, move |nl| async move {
        let Some(pod) = pod_interface(&nl).await? else {
            return Ok(None);
        };
        if nl.has_ingress(&pod).await? {
            return Err(nl.pod(format!(
                "{} already has an ingress qdisc (is another sandbox using it?)",
                pod.name
            )));
        }
        let guest = guest_interface(&nl, &pod).await?;
        // A tap of this very sandbox id left by a runtime that died.
        nl.remove_tap(&tap).await?;
        nl.create_tap(&tap, owner)?;
        if let Err(e) = nl.redirect_both(&pod, &tap).await {
            // Best effort: the first error is the one to report.
            let _ = nl.remove_tap(&tap).await;
            let _ = nl.remove_ingress(&pod).await;
            return Err(e);
        }
        let nic = NetSpec {
            netns: nl.netns.clone(),
            tap,
            mac: guest.mac.clone(),
        };
        Ok(Some(PodNetwork { nic, guest }))
    })
    .await
}

/// Undoes [`connect`]: deletes the pod interface's ingress qdisc, the port
/// forwarding redirect (`portforward`) and the tap. Idempotent: without the
/// tap, the connection is already undone (and the interface may be another
/// sandbox's by now), so nothing is touched; without the namespace file (CNI
/// removed it), neither.
pub async fn disconnect(netns: &Path, tap: &str) -> Result<(), NetError> {
    if !netns.exists() {
        return Ok(());
    }
    let tap = tap.to_string();
    in_netns(netns, move |nl| async move {
        if nl.index_of(&tap).await?.is_none() {
            return Ok(());
        }
        if let Some(pod) = pod_interface(&nl).await? {
            nl.remove_ingress(&pod).await?;
        }
        crate::portforward::remove_redirect();
        nl.remove_tap(&tap).await
    })
    .await
}

/// Refuses the runtime's own network namespace: its interfaces are the
/// host's, and redirecting one into a VM would cut the host off.
fn refuse_host_netns(netns: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let enter = |source| NetError::Enter {
        path: netns.to_path_buf(),
        source,
    };
    if id(netns).map_err(enter)? == id(Path::new("/proc/self/ns/net")).map_err(enter)? {
        return Err(NetError::Pod {
            netns: netns.to_path_buf(),
            what: "is the host's own network namespace, not a pod's".into(),
        });
    }
    Ok(())
}

/// Runs `f` on a thread of its own inside network namespace `netns`, so
/// that the sockets it opens and the processes it spawns belong there.
pub(crate) fn run_in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetError> {
    let enter = |source| NetError::Enter {
        path: netns.to_path_buf(),
        source,
    };
    let file = File::open(netns).map_err(enter)?;
    on_thread_in(
        || setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| enter(e.into())),
        f,
    )
}

/// Runs `f` on a thread of its own inside a new, empty network namespace
/// (only a down `lo`), so that the processes it spawns have no network; the
/// namespace goes away with the last of them.
pub(crate) fn run_in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    on_thread_in(
        || unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::NewNetns(e.into())),
        f,
    )
}

/// Runs `f` on a new thread once `enter` has moved that thread into a network namespace.
fn on_thread_in<T: Send>(
    enter: impl FnOnce() -> Result<(), NetError> + Send,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter()?;
            Ok(f())
        })
        .join()
        .expect("network namespace thread panicked")
    })
}

/// A netlink connection inside the pod's network namespace.
struct Netlink {
    netns: PathBuf,
    handle: Handle,
}

/// Runs `work` with a netlink connection inside `netns`.
async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run_in_netns(&netns.clone(), move || {
            let enter = |source| NetError::Enter {
                path: netns.clone(),
                source,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(enter)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(enter)?;
                tokio::spawn(conn);
                work(Netlink {
                    netns: netns.clone(),
                    handle,
                })
                .await
            })
        })?
    })
    .await
    .expect("network namespace task panicked")
}

/// The interface CNI left in the namespace.
#[derive(Debug)]
struct PodInterface {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
}

/// The first interface that is neither loopback nor a tun/tap device.
async fn pod_interface(nl: &Netlink) -> Result<Option<PodInterface>, NetError> {
    let links: Vec<LinkMessage> = nl
        .handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl.failed("listing interfaces", e))?;
    let Some(link) = links.into_iter().find(|l| {
        !l.header.flags.contains(LinkFlags::Loopback)
            && !l.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(info)
                    if info.contains(&LinkInfo::Kind(InfoKind::Tun)))
            })
    }) else {
        return Ok(None);
    };
    let mut name = String::new();
    let mut mac = None;
    let mut mtu = 0;
    for a in &link.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let Some(mac) = mac else {
        return Err(nl.pod(format!("interface {name} has no Ethernet MAC address")));
    };
    Ok(Some(PodInterface {
        index: link.header.index,
        name,
        mac,
        mtu,
    }))
}

/// The pod interface as the guest should see it: MAC, MTU, global
/// addresses and the routes through it (not the kernel's own subnet routes,
/// which the guest kernel adds itself with the addresses).
async fn guest_interface(nl: &Netlink, pod: &PodInterface) -> Result<proto::Interface, NetError> {
    let addresses: Vec<AddressMessage> = nl
        .handle
        .address()
        .get()
        .set_link_index_filter(pod.index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl.failed(&format!("listing the addresses of {}", pod.name), e))?;
    let mut routes = Vec::new();
    for family in [IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])] {
        let query = match family {
            IpAddr::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpAddr::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        let found: Vec<RouteMessage> = nl
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl.failed("listing routes", e))?;
        routes.extend(found);
    }
    Ok(describe(pod, &addresses, &routes))
}

/// The guest's view of `pod`, from its addresses and the namespace's routes.
fn describe(
    pod: &PodInterface,
    addresses: &[AddressMessage],
    routes: &[RouteMessage],
) -> proto::Interface {
    let addresses = addresses
        .iter()
        .filter(|a| a.header.index == pod.index && a.header.scope == AddressScope::Universe)
        .filter_map(|a| {
            // IPv4 names the interface's own address IFA_LOCAL (IFA_ADDRESS
            // is the peer's on point-to-point links); IPv6 has only IFA_ADDRESS.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            Some(format!("{}/{}", local.or(address)?, a.header.prefix_len))
        })
        .collect();
    let routes = routes
        .iter()
        .filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.protocol != RouteProtocol::Kernel
                && r.attributes.contains(&RouteAttribute::Oif(pod.index))
        })
        .filter_map(|r| {
            let ip = |addr: &RouteAddress| match addr {
                RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                _ => None,
            };
            let mut destination = None;
            let mut gateway = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => destination = Some(ip(d)?),
                    RouteAttribute::Gateway(g) => gateway = Some(ip(g)?),
                    _ => {}
                }
            }
            let destination = match (destination, r.header.address_family) {
                (Some(d), _) => d,
                (None, rtnetlink::packet_route::AddressFamily::Inet) => IpAddr::from([0u8; 4]),
                (None, rtnetlink::packet_route::AddressFamily::Inet6) => IpAddr::from([0u16; 8]),
                (None, _) => return None,
            };
            if let IpAddr::V6(v6) = destination {
                // fe80::/64 and multicast: the guest kernel makes its own.
                if v6.is_unicast_link_local() || v6.is_multicast() {
                    return None;
                }
            }
            Some(proto::Route {
                destination: format!("{destination}/{}", r.header.destination_prefix_length),
                gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                ..Default::default()
            })
        })
        .collect();
    proto::Interface {
        mac: proto::mac_string(&pod.mac),
        mtu: pod.mtu,
        addresses,
        routes,
        ..Default::default()
    }
}

impl Netlink {
    fn failed(&self, what: &str, source: rtnetlink::Error) -> NetError {
        NetError::Netlink {
            netns: self.netns.clone(),
            what: what.to_string(),
            source: Box::new(source),
        }
    }

    fn pod(&self, what: String) -> NetError {
        NetError::Pod {
            netns: self.netns.clone(),
            what,
        }
    }

    /// The index of interface `name`, if it exists.
    async fn index_of(&self, name: &str) -> Result<Option<u32>, NetError> {
        let found: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await;
        match found {
            Ok(links) => Ok(links.first().map(|l| l.header.index)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.failed(&format!("looking up {name}"), e)),
        }
    }

    /// Makes persistent tap `tap` owned by `(uid, gid)` (down;
    /// [`Netlink::redirect_both`] brings it up).
    fn create_tap(&self, tap: &str, (uid, gid): (u32, u32)) -> Result<(), NetError> {
        // This thread is in the pod's namespace, and so is its child.
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let out = Command::new("ip")
            .args([
                "tuntap", "add", "dev", tap, "mode", "tap", "user", &uid, "group", &gid,
            ])
            .output()
            .map_err(|e| self.pod(format!("cannot run `ip tuntap add` (iproute2): {e}")))?;
        if !out.status.success() {
            return Err(self.pod(format!(
                "`ip tuntap add dev {tap} mode tap` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Brings tap `tap` up and redirects frames between it and `pod`.
    async fn redirect_both(&self, pod: &PodInterface, tap: &str) -> Result<(), NetError> {
        let Some(tap_index) = self.index_of(tap).await? else {
            return Err(self.pod(format!("tap {tap} vanished after it was made")));
        };
        let mut up = LinkUnspec::new_with_index(tap_index).up();
        if pod.mtu > 0 {
            up = up.mtu(pod.mtu);
        }
        self.handle
            .link()
            .set(up.build())
            .execute()
            .await
            .map_err(|e| self.failed(&format!("bringing {tap} up"), e))?;
        for (from, from_name, to) in [
            (pod.index, pod.name.as_str(), tap_index),
            (tap_index, tap, pod.index),
        ] {
            self.handle
                .qdisc()
                .add(from as i32)
                .ingress()
                .execute()
                .await
                .map_err(|e| self.failed(&format!("adding an ingress qdisc to {from_name}"), e))?;
            let what = format!(
                "redirecting {from_name} ingress to {}",
                if from == pod.index { tap } else { &pod.name }
            );
            self.handle
                .traffic_filter(from as i32)
                .add()
                .parent(INGRESS)
                // The kernel reads the protocol in network byte order.
                .protocol(ETH_P_ALL.to_be())
                .redirect(to)
                .map_err(|e| self.failed(&what, e))?
                .execute()
                .await
                .map_err(|e| self.failed(&what, e))?;
        }
        Ok(())
    }

    /// Whether `pod` has an ingress qdisc.
    async fn has_ingress(&self, pod: &PodInterface) -> Result<bool, NetError> {
        let qdiscs: Vec<_> = self
            .handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.failed("listing qdiscs", e))?;
        Ok(qdiscs
            .iter()
            .any(|q| q.header.index == pod.index as i32 && q.header.parent == TcHandle::INGRESS))
    }

    /// Deletes tap `tap` if it exists (its qdisc and filter go with it).
    async fn remove_tap(&self, tap: &str) -> Result<(), NetError> {
        let Some(index) = self.index_of(tap).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(e) if errno(&e) != Some(libc::ENODEV) => {
                Err(self.failed(&format!("deleting {tap}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the ingress qdisc of `pod` (and so its filter), if any.
    async fn remove_ingress(&self, pod: &PodInterface) -> Result<(), NetError> {
        let mut del = self.handle.qdisc().del(pod.index as i32);
        let msg = del.message_mut();
        msg.header.parent = TcHandle::INGRESS;
        msg.header.handle = TcHandle::from(INGRESS);
        match del.execute().await {
            // No ingress qdisc: ENOENT or EINVAL, depending on the kernel.
            Err(e) if !matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL)) => {
                Err(self.failed(&format!("removing the ingress qdisc of {}", pod.name), e))
            }
            _ => Ok(()),
        }
    }
}

/// The errno of a netlink error reply.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_path_is_the_network_entry_with_a_path() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            netns_path(&spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"network"}]}}"#,
        )
        .unwrap();
        assert_eq!(netns_path(&spec), None);
        let spec: Spec = serde_json::from_str(r#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(netns_path(&spec), None);
    }

    #[tokio::test]
    async fn the_hosts_own_namespace_is_refused() {
        let err = connect(Path::new("/proc/self/ns/net"), "tapsk0", (0, 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the host's own network namespace"), "{err}");
        let err = connect(Path::new("/nonexistent/netns"), "tapsk0", (0, 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot enter network namespace /nonexistent/netns"),
            "{err}"
        );
    }

    #[test]
    fn the_guest_gets_global_addresses_and_the_interfaces_own_routes() {
        use rtnetlink::packet_route::{route::RouteScope, AddressFamily};
        let pod = PodInterface {
            index: 7,
            name: "eth0".into(),
            mac: [0x0a, 0x58, 0, 0, 0, 5],
            mtu: 1450,
        };
        let addr = |index, scope, prefix, ip: IpAddr| {
            let mut a = AddressMessage::default();
            a.header.index = index;
            a.header.scope = scope;
            a.header.prefix_len = prefix;
            a.attributes = vec![AddressAttribute::Address(ip)];
            if ip.is_ipv4() {
                a.attributes.push(AddressAttribute::Local(ip));
            }
            a
        };
        let addresses = [
            addr(7, AddressScope::Universe, 24, "10.1.2.2".parse().unwrap()),
            addr(7, AddressScope::Universe, 64, "fd00::2".parse().unwrap()),
            addr(7, AddressScope::Link, 64, "fe80::1".parse().unwrap()),
            addr(8, AddressScope::Universe, 24, "10.9.9.9".parse().unwrap()),
        ];
        let route = |oif, proto, dest: Option<(IpAddr, u8)>, gw: Option<IpAddr>| {
            let mut r = RouteMessage::default();
            r.header.table = RouteHeader::RT_TABLE_MAIN;
            r.header.protocol = proto;
            r.header.scope = RouteScope::Universe;
            r.header.address_family = AddressFamily::Inet;
            r.attributes.push(RouteAttribute::Oif(oif));
            if let Some((d, len)) = dest {
                if d.is_ipv6() {
                    r.header.address_family = AddressFamily::Inet6;
                }
                r.header.destination_prefix_length = len;
                r.attributes.push(RouteAttribute::Destination(d.into()));
            }
            if let Some(g) = gw {
                r.attributes.push(RouteAttribute::Gateway(g.into()));
            }
            r
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let routes = [
            route(7, RouteProtocol::Kernel, Some((ip("10.1.2.0"), 24)), None),
            route(7, RouteProtocol::Boot, None, Some(ip("10.1.2.1"))),
            route(7, RouteProtocol::Static, Some((ip("10.99.0.0"), 16)), None),
            route(8, RouteProtocol::Boot, Some((ip("10.8.0.0"), 16)), None),
            route(7, RouteProtocol::Boot, Some((ip("fe80::"), 64)), None),
        ];
        let g = describe(&pod, &addresses, &routes);
        assert_eq!(g.mac, "0a:58:00:00:00:05");
        assert_eq!(g.mtu, 1450);
        assert_eq!(g.addresses, ["10.1.2.2/24", "fd00::2/64"]);
        let routes: Vec<(&str, &str)> = g
            .routes
            .iter()
            .map(|r| (r.destination.as_str(), r.gateway.as_str()))
            .collect();
        assert_eq!(routes, [("0.0.0.0/0", "10.1.2.1"), ("10.99.0.0/16", "")]);
    }

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ() {
        let a = tap_name("a");
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, tap_name("b"));
        assert_eq!(a, tap_name("a"));
    }
}
