//! Which addresses a port listens on inside an instance, from the kernel's socket tables of the
//! instance's network namespace (`/proc/<init>/net/tcp` and `tcp6` show the sockets of the
//! namespace the process is in, whichever process owns them).
//!
//! Wharf reaches instances through loopback inside their namespace, so a server bound to
//! `127.0.0.1` works here — but not on the clouds, which reach it from outside. Knowing the
//! address lets the pool warn about that mistake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The local addresses of sockets listening on `port` in one `/proc/.../net/tcp{,6}` table.
pub(crate) fn parse_listeners(table: &str, port: u16, v6: bool) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != TCP_LISTEN {
                return None;
            }
            let (addr, p) = local.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            if v6 { parse_v6(addr) } else { parse_v4(addr) }
        })
        .collect()
}

/// Eight hex digits: the address as a native-endian (little-endian here) u32.
fn parse_v4(hex: &str) -> Option<IpAddr> {
    let n = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(n.to_le_bytes())))
}

/// 32 hex digits: four native-endian u32 words.
fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:2328 0100007F:B2A2 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
";

    #[test]
    fn listening_sockets_on_the_port_only() {
        assert_eq!(
            parse_listeners(TCP, 9000, false),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            parse_listeners(TCP, 8080, false),
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        assert!(parse_listeners(TCP, 1, false).is_empty());
        assert_eq!(
            parse_listeners(TCP6, 9000, true),
            vec![
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
    }
}
