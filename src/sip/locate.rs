//! Locating the server a SIP URI names (RFC 3263 §4), as pure decisions:
//! which DNS records to ask for, and how to order what comes back. The
//! lookups themselves are the engine's (a resolver crate does DNS).

use std::net::{IpAddr, SocketAddr};

use super::message;
use super::{Peer, Transport};

/// The DNS work a URI needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A numeric host: nothing to look up.
    Direct(Peer),
    /// A host name with a port: its addresses only (§4.2).
    Addresses { host: String, port: u16, transport: Transport },
    /// A host name with a transport but no port: SRV for that transport,
    /// else its addresses at the transport's default port (§4.2).
    Srv { host: String, transport: Transport },
    /// A host name with neither: NAPTR, then SRV per transport we speak,
    /// then the addresses over UDP (TLS for `sips:`) at the default port (§4.1).
    Naptr { host: String, secure: bool },
}

/// What to look up for `uri`; `None` when it is not a SIP URI with a host.
pub fn plan(uri: &str) -> Option<Plan> {
    let parts = message::uri_parts(uri)?;
    let secure = super::is_sips(uri);
    // A sips: URI goes over TLS whatever its parameter says (§26.2).
    let named = if secure { Some(Transport::Tls) } else { Transport::of_parameter(uri) };
    let host = parts.host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") { Ok(IpAddr::from([127, 0, 0, 1])) } else { host.parse() };
    if let Ok(ip) = ip {
        let transport = named.unwrap_or(Transport::Udp);
        let port = parts.port.unwrap_or(default_port(transport));
        return Some(Plan::Direct(Peer { transport, addr: SocketAddr::new(ip, port) }));
    }
    let host = host.to_string();
    let explicit = Transport::of_parameter(uri).is_some();
    Some(match (parts.port, named) {
        (Some(port), transport) => Plan::Addresses { host, port, transport: transport.unwrap_or(Transport::Udp) },
        (None, Some(transport)) if explicit => Plan::Srv { host, transport },
        (None, _) => Plan::Naptr { host, secure },
    })
}

pub fn default_port(transport: Transport) -> u16 {
    if transport == Transport::Tls {
        5061
    } else {
        5060
    }
}

/// The SRV name for `host` over `transport` (RFC 3263 §4.1).
pub fn srv_name(host: &str, transport: Transport) -> String {
    match transport {
        Transport::Udp => format!("_sip._udp.{host}"),
        Transport::Tcp => format!("_sip._tcp.{host}"),
        Transport::Tls => format!("_sips._tcp.{host}"),
    }
}

/// The transports to try SRV for when NAPTR gave nothing (§4.1): TLS only
/// for `sips:`, else UDP, TCP and TLS in the order the RFC's example uses.
pub fn srv_fallback(secure: bool) -> &'static [Transport] {
    if secure {
        &[Transport::Tls]
    } else {
        &[Transport::Udp, Transport::Tcp, Transport::Tls]
    }
}

/// One NAPTR record, as far as SIP reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub replacement: String,
}

/// The SRV names to ask, in order, from a domain's NAPTR records: those
/// with flag "S" and a service we speak ("SIP+D2U", "SIP+D2T", "SIPS+D2T";
/// only the last for `sips:`), by order, then preference.
pub fn naptr_targets(mut records: Vec<Naptr>, secure: bool) -> Vec<(Transport, String)> {
    records.sort_by_key(|r| (r.order, r.preference));
    records
        .into_iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let transport = match r.services.to_ascii_uppercase().as_str() {
                "SIP+D2U" if !secure => Transport::Udp,
                "SIP+D2T" if !secure => Transport::Tcp,
                "SIPS+D2T" => Transport::Tls,
                _ => return None,
            };
            Some((transport, r.replacement.trim_end_matches('.').to_string()))
        })
        .collect()
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// SRV targets in the order to try them (RFC 2782): by priority, and within
/// a priority by weighted random choice, `random` giving numbers in
/// 0..=sum of the weights left. A target of "." means no service.
pub fn order_srv(mut records: Vec<Srv>, mut random: impl FnMut(u32) -> u32) -> Vec<(String, u16)> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let end = records.iter().position(|r| r.priority != priority).unwrap_or(records.len());
        let mut group: Vec<Srv> = records.drain(..end).collect();
        // Zero weights first, so they are picked only rarely (RFC 2782).
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| r.weight as u32).sum();
            let pick = random(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|r| {
                    running += r.weight as u32;
                    running >= pick
                })
                .unwrap_or(0);
            let chosen = group.remove(index);
            ordered.push((chosen.target.trim_end_matches('.').to_string(), chosen.port));
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_rfc_3263() {
        let direct = |t, a: &str| Some(Plan::Direct(Peer { transport: t, addr: a.parse().unwrap() }));
        assert_eq!(plan("sip:room@10.0.0.1"), direct(Transport::Udp, "10.0.0.1:5060"));
        assert_eq!(plan("sips:room@10.0.0.1"), direct(Transport::Tls, "10.0.0.1:5061"));
        assert_eq!(plan("sip:room@localhost:5070"), direct(Transport::Udp, "127.0.0.1:5070"));
        assert_eq!(plan("sip:room@[::1]:5070;transport=tcp"), direct(Transport::Tcp, "[::1]:5070"));
        assert_eq!(
            plan("sip:room@pbx.example.com:5070"),
            Some(Plan::Addresses { host: "pbx.example.com".into(), port: 5070, transport: Transport::Udp })
        );
        assert_eq!(
            plan("sip:room@pbx.example.com;transport=tcp"),
            Some(Plan::Srv { host: "pbx.example.com".into(), transport: Transport::Tcp })
        );
        assert_eq!(plan("sip:room@example.com"), Some(Plan::Naptr { host: "example.com".into(), secure: false }));
        assert_eq!(plan("sips:room@example.com"), Some(Plan::Naptr { host: "example.com".into(), secure: true }));
        assert_eq!(plan("mailto:x@y"), None);
        assert_eq!(srv_name("example.com", Transport::Tls), "_sips._tcp.example.com");
    }

    #[test]
    fn naptr_records_are_filtered_and_ordered() {
        let naptr = |order, preference, services: &str, replacement: &str| Naptr {
            order,
            preference,
            flags: "S".into(),
            services: services.into(),
            replacement: replacement.into(),
        };
        let records = vec![
            naptr(20, 10, "SIP+D2U", "_sip._udp.example.com."),
            naptr(10, 20, "SIP+D2T", "_sip._tcp.example.com."),
            naptr(10, 10, "SIPS+D2T", "_sips._tcp.example.com."),
            naptr(5, 10, "SIP+D2S", "_sip._sctp.example.com."),
            Naptr { flags: "U".into(), ..naptr(1, 1, "SIP+D2U", "x") },
        ];
        assert_eq!(
            naptr_targets(records.clone(), false),
            vec![
                (Transport::Tls, "_sips._tcp.example.com".to_string()),
                (Transport::Tcp, "_sip._tcp.example.com".to_string()),
                (Transport::Udp, "_sip._udp.example.com".to_string()),
            ]
        );
        assert_eq!(naptr_targets(records, true), vec![(Transport::Tls, "_sips._tcp.example.com".to_string())]);
    }

    #[test]
    fn srv_records_go_by_priority_then_weight() {
        let srv = |priority, weight, target: &str| Srv { priority, weight, port: 5060, target: target.into() };
        let records = vec![srv(20, 0, "backup."), srv(10, 10, "a."), srv(10, 90, "b."), srv(10, 0, ".")];
        let names = |order: Vec<(String, u16)>| order.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        // A pick of 5 falls in a's share (1-10), 50 in b's (11-100).
        assert_eq!(names(order_srv(records.clone(), |_| 5)), ["a", "b", "backup"]);
        assert_eq!(names(order_srv(records, |_| 50)), ["b", "a", "backup"]);
    }
}
