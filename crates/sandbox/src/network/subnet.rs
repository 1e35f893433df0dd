//! The bridge's IPv4 subnet and the addresses handed to instances.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Narrowest prefix accepted: a /30 still has the bridge's address and one instance's.
pub(crate) const MAX_PREFIX_LEN: u8 = 30;
/// Widest prefix accepted (a /8 is already 16 million instances).
pub(crate) const MIN_PREFIX_LEN: u8 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Subnet {
    pub base: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl Subnet {
    /// A network address and prefix in the accepted range; the reason otherwise.
    pub fn new(base: Ipv4Addr, prefix_len: u8) -> Result<Subnet, String> {
        if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&prefix_len) {
            return Err(format!(
                "the prefix length of {base}/{prefix_len} must be {MIN_PREFIX_LEN}-{MAX_PREFIX_LEN}"
            ));
        }
        let network = Ipv4Addr::from(u32::from(base) & mask(prefix_len));
        if network != base {
            return Err(format!(
                "{base}/{prefix_len} is not a network address (did you mean {network}/{prefix_len}?)"
            ));
        }
        Ok(Subnet { base, prefix_len })
    }

    /// The bridge's address: the first of the subnet, the instances' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    fn broadcast(&self) -> u32 {
        u32::from(self.base) | !mask(self.prefix_len)
    }

    /// Whether `addr/prefix_len` and this subnet share any address.
    pub fn overlaps(&self, addr: Ipv4Addr, prefix_len: u8) -> bool {
        let shorter = self.prefix_len.min(prefix_len.min(32));
        let m = mask(shorter);
        u32::from(self.base) & m == u32::from(addr) & m
    }

    #[cfg(test)]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.overlaps(addr, 32)
    }
}

/// Instance addresses: the subnet minus network, bridge and broadcast addresses. Handed out
/// round-robin from after the last one given, so that a released address is reused as late as
/// possible (the host's ARP entry for it may still name the old instance's MAC).
#[derive(Debug)]
pub(crate) struct Addresses {
    first: u32,
    last: u32,
    next: u32,
    in_use: BTreeSet<u32>,
}

impl Addresses {
    pub fn new(subnet: Subnet) -> Addresses {
        let first = u32::from(subnet.gateway()) + 1;
        Addresses {
            first,
            last: subnet.broadcast() - 1,
            next: first,
            in_use: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let count = self.last - self.first + 1;
        if self.in_use.len() as u64 >= u64::from(count) {
            return None;
        }
        let mut candidate = self.next;
        loop {
            if !self.in_use.contains(&candidate) {
                self.in_use.insert(candidate);
                self.next = if candidate == self.last {
                    self.first
                } else {
                    candidate + 1
                };
                return Some(Ipv4Addr::from(candidate));
            }
            candidate = if candidate == self.last {
                self.first
            } else {
                candidate + 1
            };
        }
    }

    pub fn release(&mut self, addr: Ipv4Addr) {
        self.in_use.remove(&u32::from(addr));
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn validation() {
        let s = Subnet::new(ip("10.250.0.0"), 16).unwrap();
        assert_eq!(s.gateway(), ip("10.250.0.1"));
        assert_eq!(s.to_string(), "10.250.0.0/16");
        let e = Subnet::new(ip("10.250.0.1"), 16).unwrap_err();
        assert!(e.contains("did you mean 10.250.0.0/16"), "{e}");
        assert!(
            Subnet::new(ip("10.0.0.0"), 31)
                .unwrap_err()
                .contains("8-30")
        );
        assert!(Subnet::new(ip("0.0.0.0"), 0).is_err());
        assert!(Subnet::new(ip("10.0.0.0"), 8).is_ok());
    }

    #[test]
    fn overlaps() {
        let s = Subnet::new(ip("10.250.0.0"), 16).unwrap();
        assert!(s.overlaps(ip("10.250.3.1"), 24), "inside");
        assert!(s.overlaps(ip("10.0.0.0"), 8), "around");
        assert!(s.overlaps(ip("10.250.0.1"), 32));
        assert!(!s.overlaps(ip("10.251.0.0"), 16));
        assert!(!s.overlaps(ip("192.0.2.2"), 24));
        assert!(
            s.overlaps(ip("0.0.0.0"), 0),
            "a default route covers everything"
        );
        assert!(s.contains(ip("10.250.255.254")));
        assert!(!s.contains(ip("10.249.255.255")));
    }

    #[test]
    fn addresses_round_robin_and_exhaustion() {
        // /29: .0 network, .1 bridge, .2-.6 instances, .7 broadcast.
        let mut a = Addresses::new(Subnet::new(ip("10.1.2.0"), 29).unwrap());
        let got: Vec<_> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(
            got,
            ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"].map(ip)
        );
        assert_eq!(a.allocate(), None, "exhausted");
        a.release(ip("10.1.2.3"));
        a.release(ip("10.1.2.5"));
        assert_eq!(a.allocate(), Some(ip("10.1.2.3")), "wraps to the free one");
        assert_eq!(a.allocate(), Some(ip("10.1.2.5")));
        assert_eq!(a.in_use(), 5);
        // Round robin: a released address is not the next one given.
        let mut b = Addresses::new(Subnet::new(ip("10.1.2.0"), 24).unwrap());
        let first = b.allocate().unwrap();
        b.release(first);
        assert_eq!(b.allocate(), Some(ip("10.1.2.3")));
    }
}
