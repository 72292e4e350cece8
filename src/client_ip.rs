//! Who the client is: the TCP peer, or, when that peer is one of
//! `server.trusted_proxies`, the address the proxy says it forwarded for.
//!
//! Every per-IP decision (`limits.handshakes_per_ip`,
//! `limits.connections_per_ip`), the connection's log lines and the
//! session's recorded IP (which `ip_changed` compares) use this address.
//! Behind a proxy the peer is the proxy, so without this every client would
//! share one address; but a header is only as trustworthy as whoever wrote
//! it, so it is read only from a peer in the list, and the rest ignore it.
//!
//! The header is the one the proxy writes (`server.client_ip_header`:
//! `X-Forwarded-For` by default, or RFC 7239 `Forwarded`), never "whichever
//! is present": a proxy that appends to one passes the other through
//! untouched, as the client wrote it. Each proxy appends the address it
//! received the request from, so the list is read from the right: the
//! client is the right-most address that is not itself a trusted proxy
//! (the left-most when all are). An entry that cannot be read (`unknown`,
//! an obfuscated `_name`, garbage) before that point means nothing further
//! left can be believed: the peer is used, as it is when the header is
//! missing. Nothing here can panic on what a client sends.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use axum::http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which header a trusted proxy writes the client's address to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's
    /// `$proxy_add_x_forwarded_for`, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(net.to_bits().into(), ip.to_bits().into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The first `prefix` of `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

impl FromStr for IpBlock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(IpBlock { addr, prefix })
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `server.trusted_proxies`: the peers whose forwarding header is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpBlock>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|b| b.contains(ip))
    }

    /// The client's address: `peer`'s, unless `peer` is a trusted proxy and
    /// `header` names someone it forwarded for (see the module doc).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap, header: ClientIpHeader) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let name = match header {
            ClientIpHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ClientIpHeader::Forwarded => HeaderName::from_static("forwarded"),
        };
        // Every line of the header, in order, is one list.
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            hops.extend(value.split(','));
        }
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            let parsed = match header {
                ClientIpHeader::XForwardedFor => parse_node(hop),
                ClientIpHeader::Forwarded => forwarded_for(hop).and_then(parse_node),
            };
            let Some(ip) = parsed else {
                return peer;
            };
            if !self.contains(ip) {
                return ip;
            }
            leftmost = Some(ip);
        }
        leftmost.unwrap_or(peer)
    }
}

/// The `for=` of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })
}

/// One hop's address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, optionally quoted.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return v6
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|v6| IpAddr::V6(v6).to_canonical());
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    node.parse::<SocketAddr>()
        .ok()
        .filter(SocketAddr::is_ipv4)
        .map(|s| s.ip())
}

/// A comma-separated list, as in `EXAMWATCH__SERVER__TRUSTED_PROXIES`.
impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let entries = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => s.split(',').map(str::to_owned).collect(),
            OneOrMany::Many(v) => v,
        };
        entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.parse().map_err(serde::de::Error::custom))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

/// A connection's client: the address every per-IP rule uses, and the TCP
/// peer it came from (the same host unless a trusted proxy forwarded it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    pub peer: SocketAddr,
}

impl ClientAddr {
    /// Resolves the client of a request from `peer` with `headers`.
    pub fn resolve(
        server: &crate::config::ServerSettings,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Self {
        let ip = if server.trusted_proxies.is_empty() {
            peer.ip()
        } else {
            server
                .trusted_proxies
                .client_ip(peer.ip(), headers, server.client_ip_header)
        };
        ClientAddr { ip, peer }
    }

    /// Forwarded by a trusted proxy (the client is not the peer).
    pub fn forwarded(&self) -> bool {
        self.ip != self.peer.ip().to_canonical()
    }

    /// What a session records as its IP (and `ip_changed` compares): the
    /// peer with its port when direct, the forwarded address when not.
    pub fn recorded(&self) -> String {
        if self.forwarded() {
            self.ip.to_string()
        } else {
            self.peer.to_string()
        }
    }
}

/// For log lines: `1.2.3.4:5678`, or `203.0.113.7 via 10.0.0.2:5678`.
impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.forwarded() {
            write!(f, "{} via {}", self.ip, self.peer)
        } else {
            write!(f, "{}", self.peer)
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;
    const FWD: ClientIpHeader = ClientIpHeader::Forwarded;

    #[test]
    fn blocks_parse_and_match() {
        let b: IpBlock = "10.0.0.0/8".parse().unwrap();
        assert!(b.contains(ip("10.200.3.4")));
        assert!(!b.contains(ip("11.0.0.1")));
        assert!(
            b.contains(ip("::ffff:10.1.1.1")),
            "IPv4-mapped counts as IPv4"
        );
        let one: IpBlock = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: IpBlock = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: IpBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "10.0.0.0/x",
            "1.2.3/8",
        ] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_are_ignored_unless_the_peer_is_trusted() {
        let h = headers("x-forwarded-for", &["203.0.113.7"]);
        assert_eq!(
            proxies(&[]).client_ip(ip("10.0.0.2"), &h, XFF),
            ip("10.0.0.2")
        );
        let p = proxies(&["10.0.0.0/24"]);
        assert_eq!(p.client_ip(ip("192.0.2.1"), &h, XFF), ip("192.0.2.1"));
        assert_eq!(p.client_ip(ip("10.0.0.2"), &h, XFF), ip("203.0.113.7"));
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let p = proxies(&["10.0.0.0/24", "fd00::/8"]);
        let peer = ip("10.0.0.2");
        // The client forged the first entry; the proxies appended the rest.
        let h = headers("x-forwarded-for", &["1.1.1.1, 203.0.113.7, 10.0.0.5"]);
        assert_eq!(p.client_ip(peer, &h, XFF), ip("203.0.113.7"));
        // Several lines are one list, in order.
        let h = headers("x-forwarded-for", &["1.1.1.1", "203.0.113.7:5555, fd00::3"]);
        assert_eq!(p.client_ip(peer, &h, XFF), ip("203.0.113.7"));
        let h = headers("x-forwarded-for", &["[2001:db8::9]:443"]);
        assert_eq!(p.client_ip(peer, &h, XFF), ip("2001:db8::9"));
        // All trusted: the left-most.
        let h = headers("x-forwarded-for", &["10.0.0.7, 10.0.0.5"]);
        assert_eq!(p.client_ip(peer, &h, XFF), ip("10.0.0.7"));
        // No header: the peer.
        assert_eq!(p.client_ip(peer, &HeaderMap::new(), XFF), peer);
    }

    #[test]
    fn forwarded_is_read_only_when_configured() {
        let p = proxies(&["10.0.0.0/24"]);
        let peer = ip("10.0.0.2");
        let h = headers(
            "forwarded",
            &[r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#],
        );
        assert_eq!(p.client_ip(peer, &h, FWD), ip("2001:db8:cafe::17"));
        assert_eq!(
            p.client_ip(peer, &h, XFF),
            peer,
            "a Forwarded header is not read when the proxy writes X-Forwarded-For"
        );
        let h = headers(
            "forwarded",
            &["for=198.51.100.17;proto=https, for=10.0.0.9"],
        );
        assert_eq!(p.client_ip(peer, &h, FWD), ip("198.51.100.17"));
    }

    #[test]
    fn malformed_headers_fall_back_to_the_peer() {
        let p = proxies(&["10.0.0.0/24"]);
        let peer = ip("10.0.0.2");
        for bad in [
            "",
            "unknown",
            "not an address, 10.0.0.5",
            "203.0.113.7, garbage",
            "[2001:db8::1",
            "[::1]x",
            "1.2.3.4:99999",
            ",,,",
        ] {
            let h = headers("x-forwarded-for", &[bad]);
            assert_eq!(p.client_ip(peer, &h, XFF), peer, "{bad:?}");
        }
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "by=1.2.3.4",
            "for",
        ] {
            let h = headers("forwarded", &[bad]);
            assert_eq!(p.client_ip(peer, &h, FWD), peer, "{bad:?}");
        }
        // Not visible ASCII: the whole header is unreadable.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap(),
        );
        assert_eq!(p.client_ip(peer, &h, XFF), peer);
        // An unreadable entry to the left of the client does not matter.
        let h = headers("x-forwarded-for", &["garbage, 203.0.113.7"]);
        assert_eq!(p.client_ip(peer, &h, XFF), ip("203.0.113.7"));
    }

    #[test]
    fn the_setting_takes_a_list_or_a_comma_separated_string() {
        #[derive(Deserialize)]
        struct S {
            p: TrustedProxies,
        }
        let s: S = serde_json::from_str(r#"{"p": ["127.0.0.1", "10.0.0.0/8"]}"#).unwrap();
        assert_eq!(s.p, proxies(&["127.0.0.1", "10.0.0.0/8"]));
        let s: S = serde_json::from_str(r#"{"p": "127.0.0.1, fd00::/8"}"#).unwrap();
        assert_eq!(s.p, proxies(&["127.0.0.1", "fd00::/8"]));
        let s: S = serde_json::from_str(r#"{"p": ""}"#).unwrap();
        assert!(s.p.is_empty());
        assert!(serde_json::from_str::<S>(r#"{"p": ["10.0.0.0/40"]}"#).is_err());
        assert_eq!(
            serde_json::to_string(&proxies(&["127.0.0.1"])).unwrap(),
            r#"["127.0.0.1/32"]"#
        );
    }

    #[test]
    fn a_forwarded_client_is_logged_and_recorded_as_itself() {
        let direct = ClientAddr {
            ip: ip("127.0.0.1"),
            peer: "127.0.0.1:5000".parse().unwrap(),
        };
        assert!(!direct.forwarded());
        assert_eq!(direct.recorded(), "127.0.0.1:5000");
        assert_eq!(direct.to_string(), "127.0.0.1:5000");
        let via = ClientAddr {
            ip: ip("203.0.113.7"),
            peer: "10.0.0.2:5000".parse().unwrap(),
        };
        assert!(via.forwarded());
        assert_eq!(via.recorded(), "203.0.113.7");
        assert_eq!(via.to_string(), "203.0.113.7 via 10.0.0.2:5000");
    }
}
