//! The address guard: image URLs must not make the daemon reach loopback, private,
//! link-local, multicast, unspecified, IPv4-mapped or IPv6 unique-local addresses (unless
//! `fetch.allow_private_networks`).
//!
//! Host names are checked in a custom DNS resolver handed to reqwest, so the addresses
//! checked are exactly the ones connected to (a DNS answer that changes between a check and
//! the connection, "DNS rebinding", cannot slip through). IP literals in URLs never reach a
//! resolver and are checked by the fetcher before each hop with [`check_ip`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A host that is or resolves to a refused address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} resolves to refused address {addr} ({class})")]
pub struct BlockedAddress {
    /// The host as written in the URL.
    pub host: String,
    /// The refused address.
    pub addr: IpAddr,
    /// Why it is refused (`loopback`, `private`, ...).
    pub class: &'static str,
}

/// Why an IPv4 address is refused, if it is.
fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if o[0] >= 240 {
        Some("reserved or broadcast")
    } else {
        None
    }
}

/// Why an IPv6 address is refused, if it is.
fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xffc0) == 0xfec0 {
        Some("site-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique-local")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped")
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible")
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: refuse when the embedded IPv4 address would be refused.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        classify_v4(v4).map(|_| "NAT64 of a refused IPv4 address")
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in bits 16..48.
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        classify_v4(v4).map(|_| "6to4 of a refused IPv4 address")
    } else {
        None
    }
}

/// Why an address is refused (`None` when it is a public unicast address).
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Checks one address for `host` (an IP literal or a resolved name).
pub fn check_ip(host: &str, ip: IpAddr, allow_private_networks: bool) -> Result<(), BlockedAddress> {
    if allow_private_networks {
        return Ok(());
    }
    match classify(ip) {
        Some(class) => Err(BlockedAddress { host: host.to_string(), addr: ip, class }),
        None => Ok(()),
    }
}

/// A DNS resolver for reqwest that refuses hosts resolving to refused addresses. If any
/// address of a host is refused, the host is refused (no mixing of public and private
/// answers).
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Skip the check (for `fetch.allow_private_networks = true`).
    pub allow_private_networks: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private_networks;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                check_ip(&host, addr.ip(), allow)?;
            }
            let iter: Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn refused(s: &str) -> bool {
        classify(IpAddr::from_str(s).expect("ip")).is_some()
    }

    #[test]
    fn refuses_internal_addresses() {
        for ip in [
            "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
            "0.0.0.0", "0.1.2.3", "224.0.0.1", "255.255.255.255", "100.64.0.1", "198.18.0.1", "192.0.0.8", "::1",
            "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8",
            "::127.0.0.1", "64:ff9b::10.0.0.1", "2002:7f00:1::", "fec0::1",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "64:ff9b::8.8.8.8", "2002:808:808::"] {
            assert!(!refused(ip), "{ip} must be allowed");
        }
        assert!(check_ip("x", IpAddr::from_str("127.0.0.1").expect("ip"), true).is_ok());
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_and_allows_it_when_configured() {
        let name = Name::from_str("localhost").expect("name");
        let err = GuardedResolver { allow_private_networks: false }
            .resolve(name)
            .await
            .err()
            .expect("refused");
        let blocked = err.downcast_ref::<BlockedAddress>().expect("a BlockedAddress");
        assert_eq!(blocked.class, "loopback");
        let name = Name::from_str("localhost").expect("name");
        let addrs: Vec<SocketAddr> =
            GuardedResolver { allow_private_networks: true }.resolve(name).await.expect("resolves").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
