//! Pod networking in the guest (`CreateSandbox.interfaces`): the NIC to
//! which the host gave the pod interface's MAC gets that interface's MTU,
//! addresses and routes, and comes up; so does `lo`. Containers share this
//! network namespace (see `crate::guest_spec`).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use skerry_protocol as pb;
use tracing::info;

use crate::state::AgentError;

/// A guest NIC to configure, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    mac: [u8; 6],
    mtu: u32,
    addresses: Vec<(IpAddr, u8)>,
    routes: Vec<Route>,
}

/// A route through a [`Nic`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    destination: (IpAddr, u8),
    gateway: Option<IpAddr>,
}

/// Checks every field of `interfaces`; errors name the field.
pub fn parse(interfaces: &[pb::Interface]) -> Result<Vec<Nic>, AgentError> {
    interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let bad = |field: String, value: &str, what: &str| {
                AgentError::BadRequest(format!("interfaces[{i}].{field}: {value:?} {what}"))
            };
            let mac = parse_mac(&iface.mac)
                .ok_or_else(|| bad("mac".into(), &iface.mac, "is not a MAC address"))?;
            if iface.mtu != 0 && !(68..=65535).contains(&iface.mtu) {
                let mtu = iface.mtu.to_string();
                return Err(bad("mtu".into(), &mtu, "is not in 68..=65535"));
            }
            let addresses = iface
                .addresses
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    parse_cidr(a)
                        .ok_or_else(|| bad(format!("addresses[{j}]"), a, "is not ADDRESS/PREFIX"))
                })
                .collect::<Result<_, _>>()?;
            let routes = iface
                .routes
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let destination = parse_cidr(&r.destination).ok_or_else(|| {
                        bad(
                            format!("routes[{j}].destination"),
                            &r.destination,
                            "is not ADDRESS/PREFIX",
                        )
                    })?;
                    let gateway = match r.gateway.as_str() {
                        "" => None,
                        g => match g.parse::<IpAddr>() {
                            Ok(ip) if ip.is_ipv4() == destination.0.is_ipv4() => Some(ip),
                            _ => {
                                return Err(bad(
                                    format!("routes[{j}].gateway"),
                                    g,
                                    "is not an address of the destination's family",
                                ))
                            }
                        },
                    };
                    Ok(Route {
                        destination,
                        gateway,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Nic {
                mac,
                mtu: iface.mtu,
                addresses,
                routes,
            })
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff` (either case).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `ADDRESS/PREFIX` with a prefix that fits the family.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Brings `lo` up and configures `nics` (guest only).
pub async fn configure(nics: &[Nic]) -> Result<(), AgentError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| AgentError::System {
        what: "opening a netlink socket".into(),
        source,
    })?;
    let conn = tokio::spawn(conn);
    let result = configure_with(&handle, nics).await;
    conn.abort();
    result
}

/// `lo`'s index: the kernel registers it first in every network namespace (its
/// `LOOPBACK_IFINDEX`), so it is set up without listing the interfaces.
const LOOPBACK_IFINDEX: u32 = 1;

async fn configure_with(nl: &Handle, nics: &[Nic]) -> Result<(), AgentError> {
    nl.link()
        .set(LinkUnspec::new_with_index(LOOPBACK_IFINDEX).up().build())
        .execute()
        .await
        .map_err(failed("bringing lo up"))?;
    if nics.is_empty() {
        return Ok(());
    }
    let links: Vec<LinkMessage> = nl
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing the guest's interfaces"))?;
    let index_of = |want: &dyn Fn(&LinkAttribute) -> bool| {
        links
            .iter()
            .find(|l| l.attributes.iter().any(want))
            .map(|l| l.header.index)
    };
    for nic in nics {
        let mac = pb::mac_string(&nic.mac);
        let index = index_of(&|a| matches!(a, LinkAttribute::Address(m) if m[..] == nic.mac[..]))
            .ok_or_else(|| {
            AgentError::BadRequest(format!("no guest network interface has MAC {mac}"))
        })?;
        let mut link = LinkUnspec::new_with_index(index).up();
        if nic.mtu != 0 {
            link = link.mtu(nic.mtu);
        }
        nl.link()
            .set(link.build())
            .execute()
            .await
            .map_err(failed(&format!("bringing NIC {mac} up")))?;
        for &(ip, prefix) in &nic.addresses {
            nl.address()
                .add(index, ip, prefix)
                .execute()
                .await
                .map_err(failed(&format!("adding {ip}/{prefix} to NIC {mac}")))?;
        }
        for r in &nic.routes {
            let (dest, prefix) = r.destination;
            let what = format!("adding the route to {dest}/{prefix} via NIC {mac}");
            let invalid = |e| AgentError::BadRequest(format!("{what}: {e}"));
            let mut route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(dest, prefix)
                .map_err(invalid)?
                .output_interface(index);
            route = match r.gateway {
                Some(gw) => route.gateway(gw).map_err(invalid)?,
                None => route.scope(RouteScope::Link),
            };
            nl.route()
                .add(route.build())
                .execute()
                .await
                .map_err(failed(&what))?;
        }
        info!(
            mac,
            mtu = nic.mtu,
            addresses = nic.addresses.len(),
            routes = nic.routes.len(),
            "network interface configured"
        );
    }
    Ok(())
}

fn failed(what: &str) -> impl FnOnce(rtnetlink::Error) -> AgentError + '_ {
    move |e| AgentError::System {
        what: what.to_string(),
        source: match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, addresses: &[&str], routes: &[(&str, &str)]) -> pb::Interface {
        pb::Interface {
            mac: mac.into(),
            mtu: 1500,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            routes: routes
                .iter()
                .map(|(d, g)| pb::Route {
                    destination: d.to_string(),
                    gateway: g.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_interfaces_parse() {
        let nics = parse(&[iface(
            "0A:58:0a:58:00:05",
            &["10.88.0.5/16", "fd00::5/64"],
            &[
                ("0.0.0.0/0", "10.88.0.1"),
                ("10.99.0.0/16", ""),
                ("::/0", "fd00::1"),
            ],
        )])
        .unwrap();
        assert_eq!(nics[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05]);
        assert_eq!(nics[0].addresses[1], ("fd00::5".parse().unwrap(), 64));
        assert_eq!(nics[0].routes[1].gateway, None);
        assert_eq!(pb::mac_string(&nics[0].mac), "0a:58:0a:58:00:05");
    }

    #[test]
    fn errors_name_the_field() {
        let err = |i: pb::Interface| parse(&[i]).unwrap_err().to_string();
        assert!(err(iface("0a:58:0a:58:00", &[], &[])).starts_with("interfaces[0].mac: "));
        assert!(err(iface("0a:58:0a:58:00:5", &[], &[])).contains(".mac"));
        assert!(err(iface("0a:58:0a:58:00:05:06", &[], &[])).contains(".mac"));
        let mac = "0a:58:0a:58:00:05";
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "fd00::1/129",
            "x/8",
        ] {
            assert!(
                err(iface(mac, &["10.0.0.2/8", bad], &[]))
                    .starts_with("interfaces[0].addresses[1]: "),
                "{bad}"
            );
        }
        assert!(err(iface(mac, &[], &[("10.0.0.0/8", "fd00::1")]))
            .starts_with("interfaces[0].routes[0].gateway: "));
        assert!(err(iface(mac, &[], &[("default", "")]))
            .starts_with("interfaces[0].routes[0].destination: "));
        let mut small = iface(mac, &[], &[]);
        small.mtu = 67;
        assert!(err(small).starts_with("interfaces[0].mtu: "));
    }
}
