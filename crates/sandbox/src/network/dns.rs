//! DNS for bridge-mode instances: the host's `/etc/resolv.conf`, bind-mounted read-only, when
//! an instance can reach its nameservers.
//!
//! A nameserver on a loopback address (systemd-resolved's 127.0.0.53, a local dnsmasq) is the
//! *host's* loopback, which an instance never reaches (its own loopback answers instead, and
//! the bridge drops traffic to the host's addresses): such a file would only make every lookup
//! time out. Then the image's own `/etc/resolv.conf` stays, and the log says so once.
//!
//! Decided once, when the bridge is set up; the file is bind-mounted, so later edits of the
//! same file are seen, but a file replaced by a rename is not (nor is the decision redone).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tracing::info;

/// The host's resolver configuration.
pub(crate) const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// What to do about DNS, from the text of the host's `resolv.conf`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Bind-mount it: every nameserver is reachable from an instance.
    Mount,
    /// Keep the image's file, because of this.
    Skip(String),
}

pub(crate) fn decide(text: &str) -> Decision {
    let servers: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter(|rest| rest.starts_with([' ', '\t']))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    if servers.is_empty() {
        return Decision::Skip("it names no nameserver".into());
    }
    for server in &servers {
        // An IPv6 address may carry a zone ("fe80::1%eth0").
        let addr = server.split('%').next().unwrap_or(server);
        match addr.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => {
                return Decision::Skip(format!(
                    "its nameserver {server} is a loopback address, which instances cannot reach"
                ));
            }
            Ok(IpAddr::V6(_)) => {
                return Decision::Skip(format!(
                    "its nameserver {server} is an IPv6 address, and instances have IPv4 only"
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Decision::Skip(format!("its nameserver {server:?} is not an address"));
            }
        }
    }
    Decision::Mount
}

/// The file to bind-mount into bridge-mode instances, if any (logged when none).
pub(crate) fn resolv_conf_for_instances() -> Option<PathBuf> {
    let path = Path::new(HOST_RESOLV_CONF);
    let decision = match std::fs::read_to_string(path) {
        Ok(text) => decide(&text),
        Err(e) => Decision::Skip(format!("it cannot be read ({e})")),
    };
    match decision {
        Decision::Mount => Some(path.to_owned()),
        Decision::Skip(why) => {
            info!(
                file = HOST_RESOLV_CONF,
                "DNS in bridge-mode instances uses the image's own /etc/resolv.conf: the host's is not mounted, {why}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_nameservers_are_mounted() {
        assert_eq!(decide("nameserver 10.255.255.53\n"), Decision::Mount);
        assert_eq!(
            decide(
                "# generated\nsearch example.org\nnameserver 192.0.2.1\nnameserver\t1.1.1.1\noptions ndots:2\n"
            ),
            Decision::Mount
        );
    }

    #[test]
    fn loopback_or_missing_nameservers_are_not() {
        let skip = |text: &str| match decide(text) {
            Decision::Skip(why) => why,
            Decision::Mount => panic!("mounted: {text:?}"),
        };
        assert!(
            skip("nameserver 127.0.0.53\noptions edns0\n").contains("127.0.0.53 is a loopback")
        );
        // One unreachable server is enough to make lookups slow: not mounted.
        assert!(skip("nameserver 192.0.2.1\nnameserver 127.0.0.1\n").contains("127.0.0.1"));
        assert!(skip("nameserver ::1\n").contains("loopback"));
        assert!(skip("nameserver fe80::1%eth0\n").contains("IPv6"));
        assert!(skip("search example.org\n").contains("no nameserver"));
        assert!(skip("").contains("no nameserver"));
        assert!(skip("nameserver dns.example\n").contains("not an address"));
        // "nameservers" is not the keyword.
        assert!(skip("nameservers 192.0.2.1\n").contains("no nameserver"));
    }
}
