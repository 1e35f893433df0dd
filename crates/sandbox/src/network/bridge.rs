//! The host's side of bridge mode, set up once and torn down at shutdown: the bridge, IPv4
//! forwarding, and one nftables table.
//!
//! * **The bridge** is created over rtnetlink with a fixed, random, locally administered MAC
//!   (otherwise it takes its lowest port's MAC, which changes as instances come and go and
//!   leaves their ARP entries for the gateway stale), the alias `wharf bridge` (Wharf's mark:
//!   an interface of that name without it is never reused or removed), the subnet's first
//!   address, and IPv6 off. A bridge left by an earlier daemon is reused, after its leftover
//!   ports are deleted and its addresses reset.
//! * **IPv4 forwarding** (`/proc/sys/net/ipv4/ip_forward`) is turned on, and logged when it was
//!   off, as Docker does; it is host-wide, and left on at shutdown (other software may rely on
//!   it by then). Forwarding is decided per *incoming* interface in IPv4, and the answers to
//!   instances come in on the host's uplinks, so turning it on for the bridge alone would not do.
//! * **The nftables table** `inet wharf-<bridge>`, replaced atomically (`table`; `delete
//!   table`; `table { … }` in one `nft -f` transaction): masquerade for the subnet leaving
//!   through any other interface; in `forward`, instance-to-instance traffic is dropped, and
//!   so is traffic to link-local addresses (a cloud's metadata service at 169.254.169.254
//!   hands out the host's credentials), other traffic from the bridge accepted, traffic to it
//!   only when established or related; in `input`,
//!   everything from the bridge is dropped except answers (an instance reaches none of the
//!   host's own addresses, Wharf's API included). `inet` rather than `ip`, so that IPv6 from the
//!   bridge is dropped too, should an instance ever have it. `nft` runs once per set-up and
//!   once per tear-down; nothing per instance.
//!
//! Instances on the same bridge would reach each other at layer 2, where the `forward` hook
//! does not see them unless `br_netfilter` passes bridged frames to it
//! (`bridge-nf-call-iptables = 1`, then with the bridge as both `iifname` and `oifname`, so
//! the drop catches them): bridge-port isolation on each veth (`prepare`) is the wall that
//! does not depend on it. The `forward` drop also covers traffic routed through the gateway.
//!
//! Accepting in our table does not override a drop in another table on the same hook: a
//! host whose own firewall drops forwarded traffic (Docker's `FORWARD` policy) must allow the
//! bridge there too.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::netlink::{self, Addr, Link, NetlinkError, RT_TABLE_LOCAL, Route, Rtnl};
use super::subnet::Subnet;
use crate::error::NetworkError;
use crate::host::{Host, RuntimeCommand};

/// The alias Wharf gives its bridge, and looks for before reusing or removing one.
pub(crate) const BRIDGE_ALIAS: &str = "wharf bridge";
/// Host ends of the instances' veth pairs: `wh` + the instance's address in hex.
pub(crate) const VETH_PREFIX: &str = "wh";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Never forwarded from the bridge: link-local addresses, where clouds serve instance metadata
/// and with it the host's credentials (169.254.169.254).
const LINK_LOCAL: &str = "169.254.0.0/16";

/// The host-side veth of the instance with `addr`. Unique on the host: the address is unique
/// in its subnet, and subnets of different bridges never overlap (checked at set-up).
pub(crate) fn veth_name(addr: Ipv4Addr) -> String {
    format!("{VETH_PREFIX}{:08x}", u32::from(addr))
}

fn is_veth_name(name: &str) -> bool {
    name.len() == VETH_PREFIX.len() + 8
        && name.starts_with(VETH_PREFIX)
        && name[VETH_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn table_name(bridge: &str) -> String {
    format!("wharf-{bridge}")
}

/// The whole table, replacing any previous version in one transaction.
pub(crate) fn ruleset(bridge: &str, subnet: Subnet) -> String {
    let table = table_name(bridge);
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" oifname \"{bridge}\" drop\n\
         \t\tiifname \"{bridge}\" ip daddr {LINK_LOCAL} drop\n\
         \t\tiifname \"{bridge}\" accept\n\
         \t\toifname \"{bridge}\" ct state established,related accept\n\
         \t\toifname \"{bridge}\" drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" ct state established,related accept\n\
         \t\tiifname \"{bridge}\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Removes the table whether or not it exists.
pub(crate) fn delete_ruleset(bridge: &str) -> String {
    let table = table_name(bridge);
    format!("table inet {table}\ndelete table inet {table}\n")
}

/// The subnet must not overlap an address or a route the host has on another interface
/// (default routes aside): instances' traffic would go the wrong way, or theirs would.
pub(crate) fn check_overlap(
    subnet: Subnet,
    bridge: &str,
    links: &[Link],
    addrs: &[Addr],
    routes: &[Route],
) -> Result<(), NetworkError> {
    let ours = links.iter().find(|l| l.name == bridge).map(|l| l.index);
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    };
    for a in addrs {
        if Some(a.index) != ours && subnet.overlaps(a.addr, a.prefix_len) {
            return Err(NetworkError::SubnetOverlap {
                subnet: subnet.to_string(),
                what: "the address",
                existing: format!("{}/{}", a.addr, a.prefix_len),
                interface: name_of(a.index),
            });
        }
    }
    for r in routes {
        // The local table holds the host's own addresses, checked above; a default route
        // overlaps everything and claims nothing.
        if r.table == RT_TABLE_LOCAL || r.dst_len == 0 {
            continue;
        }
        if r.oif.is_some() && r.oif == ours {
            continue;
        }
        if subnet.overlaps(r.dst, r.dst_len) {
            return Err(NetworkError::SubnetOverlap {
                subnet: subnet.to_string(),
                what: "the route to",
                existing: format!("{}/{}", r.dst, r.dst_len),
                interface: r.oif.map_or_else(|| "(none)".into(), name_of),
            });
        }
    }
    Ok(())
}

/// An existing interface called like our bridge must be our bridge.
pub(crate) fn check_ours(link: &Link) -> Result<(), NetworkError> {
    if link.kind.as_deref() == Some("bridge") && link.alias.as_deref() == Some(BRIDGE_ALIAS) {
        Ok(())
    } else {
        Err(NetworkError::NotOurs {
            name: link.name.clone(),
        })
    }
}

fn netlink_err(op: &'static str, interface: &str) -> impl FnOnce(NetlinkError) -> NetworkError {
    let interface = interface.to_owned();
    move |source| NetworkError::Netlink {
        op,
        interface,
        source,
    }
}

/// A random, locally administered, unicast MAC.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: writes at most 6 bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        // No entropy to be had: any fixed local address still keeps the MAC stable.
        let pid = std::process::id().to_ne_bytes();
        mac = [0, 0x57, pid[0], pid[1], pid[2], pid[3]];
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

pub(crate) fn write_sysctl(path: &Path, value: &str) -> Result<(), NetworkError> {
    debug!(path = %path.display(), value, "sysctl");
    std::fs::write(path, value).map_err(|source| NetworkError::Sysctl {
        path: path.to_owned(),
        source,
    })
}

/// IPv6 off on `interface` of the current thread's namespace (no link-local address, no
/// router solicitations on the bridge). A kernel without IPv6 has nothing to turn off.
pub(crate) fn disable_ipv6(interface: &str) -> Result<(), NetworkError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6"));
    match write_sysctl(&path, "1") {
        Err(NetworkError::Sysctl { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

fn enable_forwarding() -> Result<(), NetworkError> {
    let path = Path::new(IP_FORWARD);
    let now = std::fs::read_to_string(path).map_err(|source| NetworkError::Sysctl {
        path: path.to_owned(),
        source,
    })?;
    if now.trim() != "1" {
        write_sysctl(path, "1")?;
        info!(
            "enabled IPv4 forwarding (net.ipv4.ip_forward was {}) for bridge networking; it stays on",
            now.trim()
        );
    }
    Ok(())
}

/// Run `nft -f` on `rules` (through a file in the runtime directory, so that it goes through
/// the host seam like the runtime binary does).
fn apply_nft(
    host: &dyn Host,
    run_dir: &Path,
    bridge: &str,
    rules: &str,
    action: &'static str,
) -> Result<(), NetworkError> {
    let table = format!("inet {}", table_name(bridge));
    let program = host.find_program("nft").ok_or(NetworkError::NftMissing)?;
    let file = run_dir.join(format!("nft-{bridge}.rules"));
    std::fs::write(&file, rules).map_err(|source| NetworkError::NftFile {
        table: table.clone(),
        path: file.clone(),
        source,
    })?;
    debug!(%table, action, "nft -f");
    let out = host.run(RuntimeCommand {
        program: program.clone(),
        args: vec!["-f".into(), file.clone().into()],
        detach_mount: None,
        stdio: None,
    });
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|source| NetworkError::NftExec {
        table: table.clone(),
        program,
        source,
    })?;
    if !out.success {
        let message = out.stderr.trim();
        return Err(NetworkError::Nft {
            action,
            table,
            message: if message.is_empty() {
                format!("exit code {}", out.code)
            } else {
                message.lines().take(3).collect::<Vec<_>>().join("; ")
            },
        });
    }
    Ok(())
}

/// Delete Wharf's veths still attached to the bridge `index` (a killed daemon's instances).
/// Returns how many were deleted.
pub(crate) fn remove_ports(
    rtnl: &mut Rtnl,
    bridge: &str,
    index: u32,
) -> (usize, Vec<NetworkError>) {
    let links = match rtnl.links() {
        Ok(links) => links,
        Err(e) => return (0, vec![netlink_err("list the ports of", bridge)(e)]),
    };
    let mut removed = 0;
    let mut errors = Vec::new();
    for link in links
        .iter()
        .filter(|l| l.master == Some(index) && is_veth_name(&l.name))
    {
        match rtnl.ack(netlink::del_link(&link.name)) {
            Ok(()) => {
                debug!(veth = %link.name, %bridge, "removed a leftover veth");
                removed += 1;
            }
            // Its namespace went away meanwhile, and the veth with it.
            Err(e) if e.errno == libc::ENODEV => {}
            Err(e) => errors.push(netlink_err("delete the leftover veth", &link.name)(e)),
        }
    }
    (removed, errors)
}

/// Create (or reuse) and configure the bridge, forwarding and the table. Returns the
/// bridge's interface index. On failure, whatever it did is undone.
pub(crate) fn set_up(
    host: &dyn Host,
    rtnl: &mut Rtnl,
    name: &str,
    subnet: Subnet,
    run_dir: &Path,
) -> Result<u32, NetworkError> {
    let links = rtnl
        .links()
        .map_err(netlink_err("list the links for", name))?;
    let existing = links.iter().find(|l| l.name == name).cloned();
    if let Some(link) = &existing {
        check_ours(link)?;
    }
    let addrs = rtnl
        .addrs()
        .map_err(netlink_err("list the addresses for", name))?;
    let routes = rtnl
        .routes()
        .map_err(netlink_err("list the routes for", name))?;
    check_overlap(subnet, name, &links, &addrs, &routes)?;

    let index = match &existing {
        Some(link) => {
            let (removed, errors) = remove_ports(rtnl, name, link.index);
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
            info!(
                bridge = name,
                leftover_veths = removed,
                "reusing the bridge of an earlier Wharf"
            );
            link.index
        }
        None => {
            rtnl.ack(netlink::new_bridge(name, random_mac()))
                .map_err(netlink_err("create the bridge", name))?;
            debug!(bridge = name, "created the bridge");
            match rtnl
                .ack(netlink::set_alias(name, BRIDGE_ALIAS))
                .and_then(|()| rtnl.link(name))
            {
                Ok(link) => link.index,
                Err(e) => {
                    let _ = rtnl.ack(netlink::del_link(name));
                    return Err(netlink_err("mark the bridge", name)(e));
                }
            }
        }
    };
    let configured = (|| -> Result<(), NetworkError> {
        disable_ipv6(name)?;
        let gateway = subnet.gateway();
        for a in addrs.iter().filter(|a| a.index == index) {
            if (a.addr, a.prefix_len) != (gateway, subnet.prefix_len) {
                rtnl.ack(netlink::del_addr(index, a.addr, a.prefix_len))
                    .map_err(netlink_err("remove an old address of", name))?;
            }
        }
        rtnl.ack(netlink::new_addr(index, gateway, subnet.prefix_len, true))
            .map_err(netlink_err("set the address of", name))?;
        rtnl.ack(netlink::set_up(name, true))
            .map_err(netlink_err("bring up", name))?;
        enable_forwarding()?;
        apply_nft(host, run_dir, name, &ruleset(name, subnet), "install")
    })();
    if let Err(e) = configured {
        for cleanup in tear_down(host, rtnl, name, run_dir) {
            warn!(bridge = name, error = %crate::error::display_chain(&cleanup), "undoing the bridge set-up failed");
        }
        return Err(e);
    }
    info!(bridge = name, %subnet, table = %format!("inet {}", table_name(name)), "bridge network ready");
    Ok(index)
}

/// Remove the bridge's leftover veths, the table and the bridge. Each step is tried; what
/// failed is returned. A bridge that is not there is fine.
pub(crate) fn tear_down(
    host: &dyn Host,
    rtnl: &mut Rtnl,
    name: &str,
    run_dir: &Path,
) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    let link = match rtnl.find_link(name) {
        Ok(link) => link,
        Err(e) => {
            errors.push(netlink_err("look up", name)(e));
            None
        }
    };
    if let Some(link) = &link {
        if let Err(e) = check_ours(link) {
            // Never remove someone else's interface (or its table).
            return vec![e];
        }
        errors.extend(remove_ports(rtnl, name, link.index).1);
    }
    match apply_nft(host, run_dir, name, &delete_ruleset(name), "remove") {
        // Without nft no table was ever installed.
        Ok(()) | Err(NetworkError::NftMissing) => {}
        Err(e) => errors.push(e),
    }
    if link.is_some() {
        match rtnl.ack(netlink::del_link(name)) {
            Ok(()) => debug!(bridge = name, "removed the bridge"),
            Err(e) if e.errno == libc::ENODEV => {}
            Err(e) => errors.push(netlink_err("delete the bridge", name)(e)),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CommandOutput;
    use crate::host::fake::FakeHost;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            master: None,
            kind: None,
            alias: None,
        }
    }

    #[test]
    fn names() {
        assert_eq!(veth_name(ip("10.250.0.2")), "wh0afa0002");
        assert!(veth_name(ip("255.255.255.255")).len() <= 15);
        assert!(is_veth_name("wh0afa0002"));
        assert!(!is_veth_name("wharf0"));
        assert!(!is_veth_name("wh0afa00020"));
        assert_eq!(table_name("wharf0"), "wharf-wharf0");
    }

    #[test]
    fn ruleset_text() {
        let rules = ruleset("wharf0", Subnet::new(ip("10.250.0.0"), 16).unwrap());
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table inet wharf-wharf0");
        assert_eq!(lines[1], "delete table inet wharf-wharf0");
        assert_eq!(lines[2], "table inet wharf-wharf0 {");
        for want in [
            "ip saddr 10.250.0.0/16 oifname != \"wharf0\" masquerade",
            "iifname \"wharf0\" oifname \"wharf0\" drop",
            "iifname \"wharf0\" ip daddr 169.254.0.0/16 drop",
            "iifname \"wharf0\" accept",
            "oifname \"wharf0\" ct state established,related accept",
            "oifname \"wharf0\" drop",
            "iifname \"wharf0\" ct state established,related accept",
            "iifname \"wharf0\" drop",
        ] {
            assert!(lines.contains(&want), "{want}: {rules}");
        }
        // In the forward chain the instance-to-instance drop comes before the accept.
        let pos = |s: &str| lines.iter().position(|l| *l == s).unwrap();
        let accept = pos("iifname \"wharf0\" accept");
        assert!(pos("iifname \"wharf0\" oifname \"wharf0\" drop") < accept);
        assert!(pos("iifname \"wharf0\" ip daddr 169.254.0.0/16 drop") < accept);
        assert_eq!(
            delete_ruleset("wharf0"),
            "table inet wharf-wharf0\ndelete table inet wharf-wharf0\n"
        );
    }

    #[test]
    fn overlap_with_addresses_and_routes() {
        let subnet = Subnet::new(ip("10.250.0.0"), 16).unwrap();
        let links = vec![
            link(1, "lo"),
            link(2, "eth0"),
            link(7, "wharf0"),
            link(8, "eth1"),
        ];
        let addrs = vec![
            Addr {
                index: 1,
                addr: ip("127.0.0.1"),
                prefix_len: 8,
            },
            Addr {
                index: 2,
                addr: ip("192.0.2.2"),
                prefix_len: 24,
            },
            // Our own bridge's address does not count.
            Addr {
                index: 7,
                addr: ip("10.250.0.1"),
                prefix_len: 16,
            },
        ];
        let route = |table, dst: &str, dst_len, oif| Route {
            table,
            dst: ip(dst),
            dst_len,
            oif,
        };
        let routes = vec![
            route(254, "0.0.0.0", 0, Some(2)),
            route(254, "192.0.2.0", 24, Some(2)),
            route(254, "10.250.0.0", 16, Some(7)),
            route(255, "10.250.0.1", 32, Some(7)),
        ];
        check_overlap(subnet, "wharf0", &links, &addrs, &routes).unwrap();

        let mut with_addr = addrs.clone();
        with_addr.push(Addr {
            index: 8,
            addr: ip("10.250.3.1"),
            prefix_len: 24,
        });
        let e = check_overlap(subnet, "wharf0", &links, &with_addr, &routes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bridge subnet 10.250.0.0/16 overlaps the address 10.250.3.1/24 of interface eth1; \
             choose another subnet with --bridge-subnet"
        );

        let mut with_route = routes.clone();
        with_route.push(route(254, "10.0.0.0", 8, Some(8)));
        let e = check_overlap(subnet, "wharf0", &links, &addrs, &with_route).unwrap_err();
        assert!(
            e.to_string()
                .contains("the route to 10.0.0.0/8 of interface eth1"),
            "{e}"
        );

        let mut blackhole = routes.clone();
        blackhole.push(route(254, "10.250.9.0", 24, None));
        let e = check_overlap(subnet, "wharf0", &links, &addrs, &blackhole).unwrap_err();
        assert!(e.to_string().contains("of interface (none)"), "{e}");

        // Before the bridge exists, nothing is "ours".
        check_overlap(subnet, "wharf0", &links[..2], &addrs[..2], &routes[..2]).unwrap();
    }

    #[test]
    fn only_our_bridge_is_ours() {
        let mut l = link(7, "wharf0");
        assert!(matches!(check_ours(&l), Err(NetworkError::NotOurs { .. })));
        l.kind = Some("bridge".into());
        assert!(check_ours(&l).is_err(), "a bridge without our alias");
        l.alias = Some(BRIDGE_ALIAS.into());
        check_ours(&l).unwrap();
        l.kind = Some("veth".into());
        assert!(check_ours(&l).is_err());
    }

    #[test]
    fn nft_goes_through_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let host = FakeHost::with(|s| {
            s.answers = [CommandOutput {
                success: false,
                code: 1,
                stderr: "Error: Could not process rule: No such file or directory\n".into(),
                ..Default::default()
            }]
            .into();
        });
        // No nft on the (fake) host.
        let e = apply_nft(&host, tmp.path(), "wharf0", "x", "install").unwrap_err();
        assert!(matches!(e, NetworkError::NftMissing), "{e}");
        host.state
            .lock()
            .unwrap()
            .programs
            .insert("nft".into(), "/usr/sbin/nft".into());
        let e = apply_nft(&host, tmp.path(), "wharf0", "x", "install").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nft failed to install table inet wharf-wharf0: Error: Could not process rule: No such file or directory"
        );
        let calls = host.calls();
        assert_eq!(
            calls,
            [format!(
                "/usr/sbin/nft -f {}",
                tmp.path().join("nft-wharf0.rules").display()
            )]
        );
        // The rules file does not stay behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        apply_nft(&host, tmp.path(), "wharf0", "x", "remove").unwrap();
    }
}
