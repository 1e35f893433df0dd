//! A small rtnetlink client over a raw `NETLINK_ROUTE` socket: just the messages bridge mode
//! needs (links, addresses, routes), built by hand.
//!
//! Why not a crate: the netlink crates that cover this (`rtnetlink`, `neli`) bring an async
//! framework or a large message model for what is here a dozen fixed messages, sent from one
//! dedicated thread. The encoding is plain (`nlmsghdr`, a family header, aligned attributes),
//! and the unit tests below check it byte for byte.
//!
//! A netlink socket belongs to the network namespace it was *created* in, whichever namespace
//! its thread moves to later: that is how the preparer configures a new namespace from the
//! host (see `prepare`). Every request asks for an ACK; a kernel error comes back as its errno,
//! with the kernel's extended-ACK message when it sends one (`NETLINK_EXT_ACK`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

// Message types (linux/rtnetlink.h).
pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
pub(crate) const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_GETROUTE: u16 = 26;

// linux/netlink.h.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
/// In an error message: extended-ACK attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// In an error message: the request is not echoed in full.
const NLM_F_CAPPED: u16 = 0x100;
const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: i32 = 270;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// linux/if_link.h, linux/veth.h.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;

// linux/if_addr.h, linux/rtnetlink.h.
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
pub(crate) const RT_TABLE_MAIN: u32 = 254;
pub(crate) const RT_TABLE_LOCAL: u32 = 255;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 1;

const NLMSG_HDRLEN: usize = 16;
/// Big enough for one recv of a dump part (the kernel sends at most 32 KiB per part).
const RECV_BUFFER: usize = 64 << 10;
/// A dump that a concurrent change interrupted (`NLM_F_DUMP_INTR`) is started again this often.
const DUMP_RETRIES: usize = 5;

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A kernel error: its errno, and the extended-ACK message when it sent one.
#[derive(Debug)]
pub struct NetlinkError {
    pub errno: i32,
    pub message: Option<String>,
}

impl NetlinkError {
    pub(crate) fn from_io(e: io::Error) -> NetlinkError {
        NetlinkError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: (e.raw_os_error().is_none()).then(|| e.to_string()),
        }
    }

    fn errno(errno: i32) -> NetlinkError {
        NetlinkError {
            errno,
            message: None,
        }
    }
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NetlinkError {}

/// One request being built: `nlmsghdr`, the family header, attributes (nests tracked).
#[derive(Debug)]
pub(crate) struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, header: &[u8]) -> Message {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align(buf.len()), 0);
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn kind(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    fn set_flag(&mut self, flag: u16) {
        let flags = u16::from_ne_bytes([self.buf[6], self.buf[7]]) | flag;
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Message {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    fn attr_u32(&mut self, ty: u16, value: u32) -> &mut Message {
        self.attr(ty, &value.to_ne_bytes())
    }

    /// A NUL-terminated string (interface names).
    fn attr_cstr(&mut self, ty: u16, value: &str) -> &mut Message {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(ty, &bytes)
    }

    fn nest(&mut self, ty: u16) -> &mut Message {
        self.nests.push(self.buf.len());
        self.attr(ty | NLA_F_NESTED, &[])
    }

    fn end(&mut self) -> &mut Message {
        let start = self.nests.pop().expect("end() without nest()");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The finished bytes, with the length and `seq` filled in.
    pub(crate) fn bytes(&mut self, seq: u32) -> &[u8] {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `struct ifaddrmsg`.
fn ifaddrmsg(prefix_len: u8, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = AF_INET;
    h[1] = prefix_len;
    h[3] = RT_SCOPE_UNIVERSE;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// `struct rtmsg`.
fn rtmsg(table: u8, protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
    [AF_INET, 0, 0, 0, table, protocol, scope, kind, 0, 0, 0, 0]
}

// ---- Requests. Pure: the unit tests check their bytes. ----

/// A bridge with a fixed MAC: a bridge without one takes the lowest MAC of its ports, so it
/// would change as instances come and go and break their ARP entries for the gateway.
pub(crate) fn new_bridge(name: &str, mac: [u8; 6]) -> Message {
    let mut m = Message::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(AF_UNSPEC, 0, 0, 0),
    );
    m.attr_cstr(IFLA_IFNAME, name).attr(IFLA_ADDRESS, &mac);
    m.nest(IFLA_LINKINFO).attr(IFLA_INFO_KIND, b"bridge").end();
    m
}

/// Set the alias (`ip link show` prints it) by name: Wharf's mark on its bridge.
pub(crate) fn set_alias(name: &str, alias: &str) -> Message {
    let mut m = Message::new(RTM_SETLINK, 0, &ifinfomsg(AF_UNSPEC, 0, 0, 0));
    // Not NUL-terminated: the kernel stores exactly these bytes.
    m.attr_cstr(IFLA_IFNAME, name)
        .attr(IFLA_IFALIAS, alias.as_bytes());
    m
}

/// Bring a link up (or down), found by name.
pub(crate) fn set_up(name: &str, up: bool) -> Message {
    let flags = if up { IFF_UP } else { 0 };
    let mut m = Message::new(RTM_SETLINK, 0, &ifinfomsg(AF_UNSPEC, 0, flags, IFF_UP));
    m.attr_cstr(IFLA_IFNAME, name);
    m
}

/// A veth pair: `name` on this socket's namespace, enslaved to `master`; its peer `peer` is
/// created directly in the namespace `peer_netns`.
pub(crate) fn new_veth(name: &str, master: u32, peer: &str, peer_netns: BorrowedFd<'_>) -> Message {
    let mut m = Message::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(AF_UNSPEC, 0, 0, 0),
    );
    m.attr_cstr(IFLA_IFNAME, name).attr_u32(IFLA_MASTER, master);
    m.nest(IFLA_LINKINFO).attr(IFLA_INFO_KIND, b"veth");
    m.nest(IFLA_INFO_DATA).nest(VETH_INFO_PEER);
    // The peer's attributes follow its own ifinfomsg, inside the nest.
    m.buf.extend_from_slice(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
    m.attr_cstr(IFLA_IFNAME, peer)
        .attr_u32(IFLA_NET_NS_FD, peer_netns.as_raw_fd() as u32);
    m.end().end().end();
    m
}

/// A bridge port (found by name) up, with port isolation on or off: isolated ports cannot
/// exchange frames with each other, only with the bridge itself.
pub(crate) fn set_bridge_port(name: &str, isolated: bool) -> Message {
    let mut m = Message::new(RTM_NEWLINK, 0, &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP));
    m.attr_cstr(IFLA_IFNAME, name);
    m.nest(IFLA_LINKINFO).attr(IFLA_INFO_SLAVE_KIND, b"bridge");
    m.nest(IFLA_INFO_SLAVE_DATA)
        .attr(IFLA_BRPORT_ISOLATED, &[u8::from(isolated)])
        .end()
        .end();
    m
}

/// Delete a link by name (a veth's peer goes with it).
pub(crate) fn del_link(name: &str) -> Message {
    let mut m = Message::new(RTM_DELLINK, 0, &ifinfomsg(AF_UNSPEC, 0, 0, 0));
    m.attr_cstr(IFLA_IFNAME, name);
    m
}

pub(crate) fn get_link(name: &str) -> Message {
    let mut m = Message::new(RTM_GETLINK, 0, &ifinfomsg(AF_UNSPEC, 0, 0, 0));
    m.attr_cstr(IFLA_IFNAME, name);
    m
}

pub(crate) fn dump_links() -> Message {
    Message::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(AF_UNSPEC, 0, 0, 0))
}

fn broadcast(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) | mask)
}

/// `addr/prefix_len` on the link `index`; `replace` makes it idempotent.
pub(crate) fn new_addr(index: u32, addr: Ipv4Addr, prefix_len: u8, replace: bool) -> Message {
    let flags = NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
    let mut m = Message::new(RTM_NEWADDR, flags, &ifaddrmsg(prefix_len, index));
    m.attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets())
        .attr(IFA_BROADCAST, &broadcast(addr, prefix_len).octets());
    m
}

pub(crate) fn del_addr(index: u32, addr: Ipv4Addr, prefix_len: u8) -> Message {
    let mut m = Message::new(RTM_DELADDR, 0, &ifaddrmsg(prefix_len, index));
    m.attr(IFA_LOCAL, &addr.octets());
    m
}

pub(crate) fn dump_addrs() -> Message {
    Message::new(RTM_GETADDR, NLM_F_DUMP, &ifaddrmsg(0, 0))
}

/// `default via gateway dev oif` in the main table.
pub(crate) fn new_default_route(gateway: Ipv4Addr, oif: u32) -> Message {
    let mut m = Message::new(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        &rtmsg(
            RT_TABLE_MAIN as u8,
            RTPROT_STATIC,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ),
    );
    m.attr(RTA_GATEWAY, &gateway.octets())
        .attr_u32(RTA_OIF, oif);
    m
}

pub(crate) fn dump_routes() -> Message {
    Message::new(RTM_GETROUTE, NLM_F_DUMP, &rtmsg(0, 0, 0, 0))
}

// ---- Replies. ----

/// The attributes of a message part: `(type without flags, value)`.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, value))
    })
}

fn string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

fn ipv4_of(value: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = value.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`: "bridge", "veth", …
    pub kind: Option<String>,
    pub alias: Option<String>,
}

pub(crate) fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        master: None,
        kind: None,
        alias: None,
    };
    for (ty, value) in attrs(payload.get(16..)?) {
        match ty {
            IFLA_IFNAME => link.name = string(value),
            IFLA_MASTER => link.master = u32_of(value),
            IFLA_IFALIAS => link.alias = Some(string(value)),
            IFLA_LINKINFO => {
                for (ty, value) in attrs(value) {
                    if ty == IFLA_INFO_KIND {
                        link.kind = Some(string(value));
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Addr {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// An IPv4 address (`None` for other families).
pub(crate) fn parse_addr(payload: &[u8]) -> Option<Addr> {
    if *payload.first()? != AF_INET {
        return None;
    }
    let prefix_len = *payload.get(1)?;
    let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let (mut local, mut address) = (None, None);
    for (ty, value) in attrs(payload.get(8..)?) {
        match ty {
            IFA_LOCAL => local = ipv4_of(value),
            IFA_ADDRESS => address = ipv4_of(value),
            _ => {}
        }
    }
    Some(Addr {
        index,
        addr: local.or(address)?,
        prefix_len,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub oif: Option<u32>,
}

/// An IPv4 route (`None` for other families).
pub(crate) fn parse_route(payload: &[u8]) -> Option<Route> {
    if *payload.first()? != AF_INET {
        return None;
    }
    let dst_len = *payload.get(1)?;
    let mut route = Route {
        table: u32::from(*payload.get(4)?),
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len,
        oif: None,
    };
    for (ty, value) in attrs(payload.get(12..)?) {
        match ty {
            RTA_DST => route.dst = ipv4_of(value)?,
            RTA_OIF => route.oif = u32_of(value),
            RTA_TABLE => route.table = u32_of(value)?,
            _ => {}
        }
    }
    Some(route)
}

/// `struct nlmsgerr` (and its extended-ACK message): `None` for an ACK (error 0).
fn parse_error(flags: u16, payload: &[u8]) -> Option<NetlinkError> {
    let errno = -i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    if errno == 0 {
        return None;
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request: its header only when capped, else all of it.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        if let Some(tlvs) = payload.get(4 + align(echoed)..) {
            message = attrs(tlvs)
                .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| string(v));
        }
    }
    Some(NetlinkError { errno, message })
}

/// One `NETLINK_ROUTE` socket, in the network namespace it was opened in.
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").field("fd", &self.fd).finish()
    }
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            // NETLINK_ROUTE is protocol 0, the default.
            None,
        )?;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a pointer to a c_int of the given size. Failure is
            // fine: old kernels just send plain errors.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok(Rtnl {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    fn send(&mut self, msg: &mut Message) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.bytes(seq);
        let sent = rustix::net::send(self.fd.as_fd(), bytes, SendFlags::empty())
            .map_err(|e| NetlinkError::from_io(e.into()))?;
        if sent != bytes.len() {
            return Err(NetlinkError::errno(libc::EMSGSIZE));
        }
        Ok(seq)
    }

    /// Receive message parts of `seq` and hand `(type, flags, payload)` to `f` until it says
    /// it is done (`Some`).
    fn receive<T>(
        &mut self,
        seq: u32,
        mut f: impl FnMut(u16, u16, &[u8]) -> Option<Result<T, NetlinkError>>,
    ) -> Result<T, NetlinkError> {
        loop {
            let (n, total) = loop {
                match rustix::net::recv(self.fd.as_fd(), &mut self.buf[..], RecvFlags::TRUNC) {
                    Ok((read, total)) => break (read, total),
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(NetlinkError::from_io(e.into())),
                }
            };
            if total > n {
                return Err(NetlinkError::errno(libc::EMSGSIZE));
            }
            let mut data = &self.buf[..n];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(NetlinkError::errno(libc::EBADMSG));
                }
                let ty = u16::from_ne_bytes([data[4], data[5]]);
                let flags = u16::from_ne_bytes([data[6], data[7]]);
                let got = u32::from_ne_bytes(data[8..12].try_into().unwrap());
                let payload = &data[NLMSG_HDRLEN..len];
                data = &data[align(len).min(data.len())..];
                // A late answer to an earlier request (never expected, but never confused).
                if got != seq {
                    continue;
                }
                if let Some(done) = f(ty, flags, payload) {
                    return done;
                }
            }
        }
    }

    /// Send `msg` and wait for its ACK.
    pub(crate) fn ack(&mut self, mut msg: Message) -> Result<(), NetlinkError> {
        msg.set_flag(NLM_F_ACK);
        let seq = self.send(&mut msg)?;
        self.receive(seq, |ty, flags, payload| match ty {
            NLMSG_ERROR => Some(match parse_error(flags, payload) {
                None => Ok(()),
                Some(e) => Err(e),
            }),
            _ => None,
        })
    }

    /// Send a GET for one object and return its payload.
    pub(crate) fn get(&mut self, mut msg: Message) -> Result<Vec<u8>, NetlinkError> {
        let seq = self.send(&mut msg)?;
        self.receive(seq, |ty, flags, payload| match ty {
            NLMSG_ERROR => Some(Err(
                parse_error(flags, payload).unwrap_or(NetlinkError::errno(libc::ENOENT))
            )),
            _ => Some(Ok(payload.to_vec())),
        })
    }

    /// Send a dump request and return every part's payload (of the reply type).
    pub(crate) fn dump(&mut self, msg: Message) -> Result<Vec<Vec<u8>>, NetlinkError> {
        // New* is the reply type of each Get* (GETLINK 18 → NEWLINK 16, and so on).
        let want = msg.kind() - 2;
        let mut msg = msg;
        for _ in 0..DUMP_RETRIES {
            let seq = self.send(&mut msg)?;
            let mut parts = Vec::new();
            let mut interrupted = false;
            self.receive(seq, |ty, flags, payload| {
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE => {
                        let err = payload
                            .get(..4)
                            .map(|b| -i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        Some(if err > 0 {
                            Err(NetlinkError::errno(err))
                        } else {
                            Ok(())
                        })
                    }
                    NLMSG_ERROR => parse_error(flags, payload).map(Err),
                    t if t == want => {
                        parts.push(payload.to_vec());
                        None
                    }
                    _ => None,
                }
            })?;
            if !interrupted {
                return Ok(parts);
            }
        }
        Err(NetlinkError::errno(libc::EINTR))
    }

    pub(crate) fn link(&mut self, name: &str) -> Result<Link, NetlinkError> {
        let payload = self.get(get_link(name))?;
        parse_link(&payload).ok_or(NetlinkError::errno(libc::EBADMSG))
    }

    /// The link called `name`, `None` when there is none.
    pub(crate) fn find_link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        match self.link(name) {
            Ok(link) => Ok(Some(link)),
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        Ok(self
            .dump(dump_links())?
            .iter()
            .filter_map(|p| parse_link(p))
            .collect())
    }

    pub(crate) fn addrs(&mut self) -> Result<Vec<Addr>, NetlinkError> {
        Ok(self
            .dump(dump_addrs())?
            .iter()
            .filter_map(|p| parse_addr(p))
            .collect())
    }

    pub(crate) fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        Ok(self
            .dump(dump_routes())?
            .iter()
            .filter_map(|p| parse_route(p))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Native-endian helpers for expected bytes (x86_64 and aarch64: little-endian).
    fn u16s(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn u32s(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        [
            &u32s(len)[..],
            &u16s(kind),
            &u16s(flags),
            &u32s(seq),
            &u32s(0),
        ]
        .concat()
    }

    #[test]
    fn del_link_bytes() {
        let mut m = del_link("wh0afa0002");
        let bytes = m.bytes(7).to_vec();
        // nlmsghdr (16) + ifinfomsg (16) + IFLA_IFNAME (4 + 11, padded to 16).
        let mut want = header(48, RTM_DELLINK, NLM_F_REQUEST, 7);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&u16s(15));
        want.extend_from_slice(&u16s(IFLA_IFNAME));
        want.extend_from_slice(b"wh0afa0002\0\0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn set_up_bytes() {
        let mut m = set_up("lo", true);
        let bytes = m.bytes(1).to_vec();
        let mut want = header(40, RTM_SETLINK, NLM_F_REQUEST, 1);
        want.extend_from_slice(&ifinfomsg(0, 0, 1, 1));
        want.extend_from_slice(&[7, 0, 3, 0, b'l', b'o', 0, 0]);
        assert_eq!(bytes, want);
        let mut down = set_up("lo", false);
        assert_eq!(&down.bytes(1)[24..28], &u32s(0), "flags");
        assert_eq!(&down.bytes(1)[28..32], &u32s(1), "change mask");
    }

    #[test]
    fn new_bridge_bytes() {
        let mut m = new_bridge("wharf0", [2, 1, 2, 3, 4, 5]);
        let bytes = m.bytes(3).to_vec();
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
        let mut want = header(0, RTM_NEWLINK, flags, 3);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[11, 0, 3, 0]);
        want.extend_from_slice(b"wharf0\0\0");
        want.extend_from_slice(&[10, 0, 1, 0, 2, 1, 2, 3, 4, 5, 0, 0]);
        // IFLA_LINKINFO (nested) { IFLA_INFO_KIND "bridge" }
        want.extend_from_slice(&u16s(4 + 12));
        want.extend_from_slice(&u16s(IFLA_LINKINFO | NLA_F_NESTED));
        want.extend_from_slice(&[10, 0, 1, 0]);
        want.extend_from_slice(b"bridge\0\0");
        let len = want.len() as u32;
        want[0..4].copy_from_slice(&u32s(len));
        assert_eq!(bytes, want);
    }

    #[test]
    fn new_veth_bytes() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let raw = fd.as_raw_fd() as u32;
        let mut m = new_veth("wh0a000002", 9, "eth0", fd.as_fd());
        let bytes = m.bytes(5).to_vec();
        let mut want = header(0, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, 5);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[15, 0, 3, 0]);
        want.extend_from_slice(b"wh0a000002\0\0");
        want.extend_from_slice(&[8, 0, 10, 0]);
        want.extend_from_slice(&u32s(9));
        // LINKINFO { KIND "veth", DATA { PEER { ifinfomsg, IFNAME "eth0", NET_NS_FD fd } } }
        let peer_len = 4 + 16 + 12 + 8;
        let data_len = 4 + peer_len;
        let info_len = 4 + 8 + data_len;
        want.extend_from_slice(&u16s(info_len as u16));
        want.extend_from_slice(&u16s(IFLA_LINKINFO | NLA_F_NESTED));
        want.extend_from_slice(&[8, 0, 1, 0]);
        want.extend_from_slice(b"veth");
        want.extend_from_slice(&u16s(data_len as u16));
        want.extend_from_slice(&u16s(IFLA_INFO_DATA | NLA_F_NESTED));
        want.extend_from_slice(&u16s(peer_len as u16));
        want.extend_from_slice(&u16s(VETH_INFO_PEER | NLA_F_NESTED));
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[9, 0, 3, 0]);
        want.extend_from_slice(b"eth0\0\0\0\0");
        want.extend_from_slice(&[8, 0, 28, 0]);
        want.extend_from_slice(&u32s(raw));
        let len = want.len() as u32;
        want[0..4].copy_from_slice(&u32s(len));
        assert_eq!(bytes, want);
    }

    #[test]
    fn bridge_port_bytes() {
        let mut m = set_bridge_port("wh0a000002", true);
        let bytes = m.bytes(2).to_vec();
        let mut want = header(0, RTM_NEWLINK, NLM_F_REQUEST, 2);
        want.extend_from_slice(&ifinfomsg(0, 0, IFF_UP, IFF_UP));
        want.extend_from_slice(&[15, 0, 3, 0]);
        want.extend_from_slice(b"wh0a000002\0\0");
        // LINKINFO { SLAVE_KIND "bridge", SLAVE_DATA { BRPORT_ISOLATED 1 } }
        want.extend_from_slice(&u16s(4 + 12 + 12));
        want.extend_from_slice(&u16s(IFLA_LINKINFO | NLA_F_NESTED));
        want.extend_from_slice(&[10, 0, 4, 0]);
        want.extend_from_slice(b"bridge\0\0");
        want.extend_from_slice(&u16s(12));
        want.extend_from_slice(&u16s(IFLA_INFO_SLAVE_DATA | NLA_F_NESTED));
        want.extend_from_slice(&[5, 0, 33, 0, 1, 0, 0, 0]);
        let len = want.len() as u32;
        want[0..4].copy_from_slice(&u32s(len));
        assert_eq!(bytes, want);
    }

    #[test]
    fn addr_and_route_bytes() {
        let mut m = new_addr(4, Ipv4Addr::new(10, 250, 0, 2), 16, false);
        let bytes = m.bytes(9).to_vec();
        let mut want = header(
            16 + 8 + 24,
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            9,
        );
        want.extend_from_slice(&[AF_INET, 16, 0, 0]);
        want.extend_from_slice(&u32s(4));
        want.extend_from_slice(&[8, 0, 2, 0, 10, 250, 0, 2]);
        want.extend_from_slice(&[8, 0, 1, 0, 10, 250, 0, 2]);
        want.extend_from_slice(&[8, 0, 4, 0, 10, 250, 255, 255]);
        assert_eq!(bytes, want);
        let mut replace = new_addr(4, Ipv4Addr::new(10, 250, 0, 1), 16, true);
        let flags = u16::from_ne_bytes([replace.bytes(1)[6], replace.bytes(1)[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE);

        let mut r = new_default_route(Ipv4Addr::new(10, 250, 0, 1), 2);
        let bytes = r.bytes(10).to_vec();
        let mut want = header(
            16 + 12 + 16,
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            10,
        );
        want.extend_from_slice(&[AF_INET, 0, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0]);
        want.extend_from_slice(&[8, 0, 5, 0, 10, 250, 0, 1]);
        want.extend_from_slice(&[8, 0, 4, 0, 2, 0, 0, 0]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn alias_is_not_nul_terminated() {
        let mut m = set_alias("br", "wharf bridge");
        let bytes = m.bytes(1).to_vec();
        let tail = &bytes[bytes.len() - 16..];
        assert_eq!(&tail[..4], &[16, 0, 20, 0]);
        assert_eq!(&tail[4..], b"wharf bridge");
    }

    #[test]
    fn parses_links_addresses_routes() {
        // A link payload: ifinfomsg, IFNAME, MASTER, IFALIAS, LINKINFO{KIND}.
        let mut m = Message::new(RTM_NEWLINK, 0, &ifinfomsg(0, 12, 0, 0));
        m.attr_cstr(IFLA_IFNAME, "wh0a000002")
            .attr_u32(IFLA_MASTER, 9)
            .attr(IFLA_IFALIAS, b"x");
        m.nest(IFLA_LINKINFO).attr(IFLA_INFO_KIND, b"veth").end();
        let link = parse_link(&m.bytes(0)[NLMSG_HDRLEN..]).unwrap();
        assert_eq!(
            link,
            Link {
                index: 12,
                name: "wh0a000002".into(),
                master: Some(9),
                kind: Some("veth".into()),
                alias: Some("x".into()),
            }
        );

        let mut a = new_addr(3, Ipv4Addr::new(192, 168, 1, 5), 24, false);
        let addr = parse_addr(&a.bytes(0)[NLMSG_HDRLEN..]).unwrap();
        assert_eq!(
            addr,
            Addr {
                index: 3,
                addr: Ipv4Addr::new(192, 168, 1, 5),
                prefix_len: 24
            }
        );

        let mut r = Message::new(
            RTM_NEWROUTE,
            0,
            &[AF_INET, 24, 0, 0, 254, 2, 253, 1, 0, 0, 0, 0],
        );
        r.attr(RTA_DST, &[10, 1, 2, 0]).attr_u32(RTA_OIF, 5);
        let route = parse_route(&r.bytes(0)[NLMSG_HDRLEN..]).unwrap();
        assert_eq!(
            route,
            Route {
                table: 254,
                dst: Ipv4Addr::new(10, 1, 2, 0),
                dst_len: 24,
                oif: Some(5)
            }
        );
        // IPv6 is not ours to look at.
        assert!(parse_route(&[10, 0, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn parses_errors_with_extended_ack() {
        // nlmsgerr { error -17, capped echo of the request header }, then MSG attribute.
        let mut payload = (-17i32).to_ne_bytes().to_vec();
        payload.extend_from_slice(&header(40, RTM_NEWLINK, 0, 1));
        payload.extend_from_slice(&[19, 0, 1, 0]);
        payload.extend_from_slice(b"Device exists\0\0\0");
        let e = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).unwrap();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.message.as_deref(), Some("Device exists"));
        assert!(
            e.to_string()
                .contains("File exists (os error 17): Device exists"),
            "{e}"
        );
        assert!(parse_error(0, &0i32.to_ne_bytes()).is_none(), "an ACK");
        let plain = parse_error(0, &(-19i32).to_ne_bytes()).unwrap();
        assert_eq!((plain.errno, plain.message), (libc::ENODEV, None));
    }
}
