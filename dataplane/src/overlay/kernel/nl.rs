//! One rtnetlink connection bound to one network namespace, and the few requests the
//! overlay needs, built from netlink-packet-route messages.
use std::{
    fmt, io,
    net::Ipv4Addr,
    os::fd::{FromRawFd, IntoRawFd, RawFd},
};

use futures::StreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::RouteMessage,
    rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
    AddressFamily, IpProtocol, RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
        NLM_F_REPLACE, NLM_F_REQUEST,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket},
    Handle,
};
use tokio::{runtime::Runtime, task::JoinHandle};

/// A failed netlink request: the kernel's errno (0 when the connection itself failed)
/// and what was being done.
#[derive(Debug)]
pub(crate) struct NlError {
    pub errno: i32,
    pub message: String,
}

impl NlError {
    fn closed() -> Self {
        NlError {
            errno: 0,
            message: "netlink connection closed".into(),
        }
    }

    fn errno(errno: i32) -> Self {
        NlError {
            errno,
            message: io::Error::from_raw_os_error(errno).to_string(),
        }
    }

    /// The object asked for is not there (deleting it is then a no-op).
    pub fn is_gone(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL
        )
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A netlink socket made in the namespace it is meant for (socket(2) binds it to the
/// calling thread's namespace for good). Plain, so it can leave the thread that made it.
pub(crate) fn socket() -> io::Result<Socket> {
    let s = Socket::new(NETLINK_ROUTE)?;
    s.set_non_blocking(true)?;
    Ok(s)
}

/// An rtnetlink connection driven by a task on the kernel's runtime.
pub(crate) struct Conn {
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Conn {
    /// Wraps a socket from [`socket`]; the connection's task runs on `rt`.
    pub fn new(rt: &Runtime, socket: Socket) -> Conn {
        let _enter = rt.enter();
        let fd: RawFd = socket.into_raw_fd();
        // SAFETY: `fd` is a netlink socket we own (just released by `into_raw_fd`).
        let socket = unsafe { TokioSocket::from_raw_fd(fd) };
        let (connection, handle, _unsolicited) = rtnetlink::from_socket(socket);
        let task = rt.spawn(connection);
        Conn { handle, task }
    }

    /// Ends the connection and waits until its socket is closed: a socket keeps the
    /// namespace it was made in alive.
    pub fn close(self, rt: &Runtime) {
        let Conn { handle, task } = self;
        drop(handle);
        task.abort();
        let _ = rt.block_on(task);
    }
}

/// Sends `msg` and waits for the kernel's acknowledgement.
pub(crate) async fn ack(h: &Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut h = h.clone();
    let mut responses = h.request(req).map_err(|_| NlError::closed())?;
    while let Some(m) = responses.next().await {
        if let NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                return Err(NlError::errno(-e.raw_code()));
            }
        }
    }
    Ok(())
}

/// Sends a dump request and collects every answer.
pub(crate) async fn dump(
    h: &Handle,
    msg: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, NlError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut h = h.clone();
    let mut responses = h.request(req).map_err(|_| NlError::closed())?;
    let mut out = Vec::new();
    while let Some(m) = responses.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NlError::errno(-e.raw_code()))
            }
            NetlinkPayload::Overrun(_) => return Err(NlError::errno(libc::ENOBUFS)),
            _ => {}
        }
    }
    Ok(out)
}

/// Sends a get request for one object and returns the answer.
async fn get_one(h: &Handle, msg: RouteNetlinkMessage) -> Result<RouteNetlinkMessage, NlError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST;
    let mut h = h.clone();
    let mut responses = h.request(req).map_err(|_| NlError::closed())?;
    let mut out = None;
    while let Some(m) = responses.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => out = Some(inner),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NlError::errno(-e.raw_code()))
            }
            _ => {}
        }
    }
    out.ok_or_else(|| NlError::errno(libc::ENODATA))
}

// ---- links ----

pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<LinkMessage, NlError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match get_one(h, RouteNetlinkMessage::GetLink(m)).await? {
        RouteNetlinkMessage::NewLink(l) => Ok(l),
        _ => Err(NlError::errno(libc::EPROTO)),
    }
}

pub(crate) async fn link_by_index(h: &Handle, index: u32) -> Result<LinkMessage, NlError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match get_one(h, RouteNetlinkMessage::GetLink(m)).await? {
        RouteNetlinkMessage::NewLink(l) => Ok(l),
        _ => Err(NlError::errno(libc::EPROTO)),
    }
}

pub(crate) async fn links(h: &Handle) -> Result<Vec<LinkMessage>, NlError> {
    let out = dump(h, RouteNetlinkMessage::GetLink(LinkMessage::default())).await?;
    Ok(out
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .collect())
}

/// Creates a link (fails if one by that name exists).
pub(crate) async fn create_link(h: &Handle, m: LinkMessage) -> Result<(), NlError> {
    ack(
        h,
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
}

/// Changes an existing link (by `m.header.index`).
pub(crate) async fn set_link(h: &Handle, m: LinkMessage) -> Result<(), NlError> {
    ack(h, RouteNetlinkMessage::SetLink(m), 0).await
}

/// Deletes a link by index; gone already is fine.
pub(crate) async fn delete_link(h: &Handle, index: u32) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match ack(h, RouteNetlinkMessage::DelLink(m), 0).await {
        Err(e) if e.is_gone() => Ok(()),
        r => r,
    }
}

/// Deletes a link by name; gone already is fine.
pub(crate) async fn delete_link_by_name(h: &Handle, name: &str) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match ack(h, RouteNetlinkMessage::DelLink(m), 0).await {
        Err(e) if e.is_gone() => Ok(()),
        r => r,
    }
}

/// A link message that sets (only) the up flag, plus whatever attributes follow.
pub(crate) fn up_message(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m
}

pub(crate) fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    link_info(l)?.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    })
}

pub(crate) fn link_info_data(l: &LinkMessage) -> Option<&InfoData> {
    link_info(l)?.iter().find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    })
}

fn link_info(l: &LinkMessage) -> Option<&Vec<LinkInfo>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

pub(crate) fn link_master(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(m) => Some(*m),
        _ => None,
    })
}

pub(crate) fn link_alias(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

pub(crate) fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

// ---- addresses and routes ----

pub(crate) async fn add_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NlError> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip.into()));
    m.attributes.push(AddressAttribute::Address(ip.into()));
    ack(
        h,
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
}

/// Every IPv4 address in the namespace: (link index, address, prefix length).
pub(crate) async fn ipv4_addresses(h: &Handle) -> Result<Vec<(u32, Ipv4Addr, u8)>, NlError> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    let out = dump(h, RouteNetlinkMessage::GetAddress(req)).await?;
    Ok(out
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.family == AddressFamily::Inet => {
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(std::net::IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })?;
                Some((a.header.index, ip, a.header.prefix_len))
            }
            _ => None,
        })
        .collect())
}

pub(crate) async fn add_route(h: &Handle, route: RouteMessage) -> Result<(), NlError> {
    ack(
        h,
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .await
}

/// Removes one IPv4 address from link `index`; gone already is fine.
pub(crate) async fn delete_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NlError> {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip.into()));
    m.attributes.push(AddressAttribute::Address(ip.into()));
    match ack(h, RouteNetlinkMessage::DelAddress(m), 0).await {
        Err(e) if e.is_gone() => Ok(()),
        r => r,
    }
}

/// Changes an existing link through RTM_NEWLINK (by `m.header.index`): the request that
/// carries a bridge port's settings (`IFLA_INFO_SLAVE_DATA`), which RTM_SETLINK ignores.
pub(crate) async fn change_link(h: &Handle, m: LinkMessage) -> Result<(), NlError> {
    ack(h, RouteNetlinkMessage::NewLink(m), 0).await
}

// ---- policy routing rules ----

/// An IPv4 routing rule that looks a table up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub priority: u32,
    /// Only traffic from this address (a /32); None: all traffic.
    pub from: Option<Ipv4Addr>,
    pub table: u32,
    /// Routes with a prefix this long or shorter are ignored (`suppress_prefixlength`).
    pub suppress_prefix_len: Option<u32>,
    /// Only UDP from this source port (`ipproto udp sport N`).
    pub udp_sport: Option<u16>,
}

/// The kernel's main routing table.
pub(crate) const MAIN_TABLE: u32 = 254;

impl Rule {
    /// The main table, but not its default route: traffic that only the default route
    /// would take goes on to the next rules.
    pub fn main_without_default(priority: u32) -> Rule {
        Rule {
            priority,
            from: None,
            table: MAIN_TABLE,
            suppress_prefix_len: Some(0),
            udp_sport: None,
        }
    }

    /// Traffic from `ip` looks up `table`.
    pub fn from_source(priority: u32, ip: Ipv4Addr, table: u32) -> Rule {
        Rule {
            priority,
            from: Some(ip),
            table,
            suppress_prefix_len: None,
            udp_sport: None,
        }
    }

    /// UDP from source port `port` looks up `table`.
    pub fn udp_from_port(priority: u32, port: u16, table: u32) -> Rule {
        Rule {
            priority,
            from: None,
            table,
            suppress_prefix_len: None,
            udp_sport: Some(port),
        }
    }

    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.action = RuleAction::ToTable;
        m.header.table = u8::try_from(self.table).unwrap_or(0);
        m.attributes.push(RuleAttribute::Priority(self.priority));
        m.attributes.push(RuleAttribute::Table(self.table));
        if let Some(ip) = self.from {
            m.header.src_len = 32;
            m.attributes.push(RuleAttribute::Source(ip.into()));
        }
        if let Some(len) = self.suppress_prefix_len {
            m.attributes.push(RuleAttribute::SuppressPrefixLen(len));
        }
        if let Some(port) = self.udp_sport {
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            m.attributes
                .push(RuleAttribute::SourcePortRange(RulePortRange {
                    start: port,
                    end: port,
                }));
        }
        m
    }

    /// The rule a kernel's rule message describes, if it is of a shape [`Rule`] has.
    fn from_message(r: &RuleMessage) -> Option<Rule> {
        if r.header.action != RuleAction::ToTable {
            return None;
        }
        let mut rule = Rule {
            priority: 0,
            from: None,
            table: u32::from(r.header.table),
            suppress_prefix_len: None,
            udp_sport: None,
        };
        let mut udp = false;
        let mut sport = None;
        for a in &r.attributes {
            match a {
                RuleAttribute::Priority(p) => rule.priority = *p,
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Source(std::net::IpAddr::V4(v)) => rule.from = Some(*v),
                RuleAttribute::SuppressPrefixLen(l) if *l != u32::MAX => {
                    rule.suppress_prefix_len = Some(*l)
                }
                RuleAttribute::IpProtocol(IpProtocol::Udp) => udp = true,
                RuleAttribute::SourcePortRange(p) if p.start == p.end => sport = Some(p.start),
                _ => {}
            }
        }
        rule.udp_sport = sport.filter(|_| udp);
        Some(rule)
    }
}

/// Every IPv4 rule of the namespace that [`Rule`] can describe.
pub(crate) async fn rules(h: &Handle) -> Result<Vec<Rule>, NlError> {
    let mut req = RuleMessage::default();
    req.header.family = AddressFamily::Inet;
    let out = dump(h, RouteNetlinkMessage::GetRule(req)).await?;
    Ok(out
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRule(r) => Rule::from_message(r),
            _ => None,
        })
        .collect())
}

/// Deletes `rule`; gone already is fine.
pub(crate) async fn delete_rule(h: &Handle, rule: Rule) -> Result<(), NlError> {
    match ack(h, RouteNetlinkMessage::DelRule(rule.message()), 0).await {
        Err(e) if e.is_gone() => Ok(()),
        r => r,
    }
}

/// Adds `rule`; the same rule already there is fine (the kernel refuses an exact
/// duplicate under NLM_F_EXCL rather than adding a second copy).
pub(crate) async fn add_rule(h: &Handle, rule: Rule) -> Result<(), NlError> {
    match ack(
        h,
        RouteNetlinkMessage::NewRule(rule.message()),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
    {
        Err(e) if e.errno == libc::EEXIST => Ok(()),
        r => r,
    }
}

// ---- neighbours and FDB ----

/// Every neighbour (`family` Inet) or FDB entry (`family` Bridge) in the namespace.
pub(crate) async fn neighbours(
    h: &Handle,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>, NlError> {
    let mut req = NeighbourMessage::default();
    req.header.family = family;
    let out = dump(h, RouteNetlinkMessage::GetNeighbour(req)).await?;
    Ok(out
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Some(n),
            _ => None,
        })
        .collect())
}

/// One IPv4 neighbour entry on `index`, if there is one.
pub(crate) async fn neighbour(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
) -> Result<Option<NeighbourMessage>, NlError> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Inet;
    req.header.ifindex = index;
    req.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match get_one(h, RouteNetlinkMessage::GetNeighbour(req)).await {
        Ok(RouteNetlinkMessage::NewNeighbour(n)) => Ok(Some(n)),
        Ok(_) => Err(NlError::errno(libc::EPROTO)),
        Err(e) if e.is_gone() => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn neigh_lladdr(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    })
}

/// The destination of a neighbour entry (IP) or of an FDB entry (remote VTEP), if it
/// is an IPv4 address.
pub(crate) fn neigh_ipv4_dst(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

pub(crate) fn neigh_has_dst(n: &NeighbourMessage) -> bool {
    n.attributes
        .iter()
        .any(|a| matches!(a, NeighbourAttribute::Destination(_)))
}

pub(crate) async fn neighbour_request(
    h: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), NlError> {
    ack(h, msg, flags).await
}
