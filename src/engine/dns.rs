//! Finding the server a dialled URI names: NAPTR, SRV and address records
//! (RFC 3263) through hickory's resolver, following the plan
//! [`crate::sip::locate`] makes.

use std::net::SocketAddr;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::sip::locate::{self, Naptr, Plan, Srv};
use crate::sip::{Peer, Transport};
use crate::{Error, Result};

/// A resolver asking `servers`, or the system's name servers (resolv.conf)
/// when there are none.
pub(crate) fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let builder = if servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| Error::InvalidArgument(format!("cannot read the system's DNS configuration: {e}")))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true));
        }
        TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), provider)
    };
    Ok(builder.build())
}

/// Where to send a request for a URI with a host name: the first target of
/// the plan that resolves, and the host name its TLS certificate must prove.
pub(crate) async fn locate(resolver: &TokioResolver, plan: Plan) -> Result<(Peer, String)> {
    let (host, srv_names, fallback) = match plan {
        Plan::Direct(peer) => return Ok((peer, peer.addr.ip().to_string())),
        Plan::Addresses { host, port, transport } => {
            let peer = address(resolver, &host, port, transport).await?;
            return Ok((peer, host));
        }
        Plan::Srv { host, transport } => {
            let srv_names = vec![(transport, locate::srv_name(&host, transport))];
            (host, srv_names, transport)
        }
        Plan::Naptr { host, secure } => {
            let mut srv_names = naptr(resolver, &host, secure).await;
            if srv_names.is_empty() {
                srv_names = locate::srv_fallback(secure).iter().map(|t| (*t, locate::srv_name(&host, *t))).collect();
            }
            (host, srv_names, if secure { Transport::Tls } else { Transport::Udp })
        }
    };
    for (transport, name) in srv_names {
        for (target, port) in srv(resolver, &name).await {
            if let Ok(peer) = address(resolver, &target, port, transport).await {
                // RFC 5922: the certificate names the URI's domain, not the SRV target.
                return Ok((peer, host));
            }
        }
    }
    let peer = address(resolver, &host, locate::default_port(fallback), fallback).await?;
    Ok((peer, host))
}

async fn address(resolver: &TokioResolver, host: &str, port: u16, transport: Transport) -> Result<Peer> {
    let found = resolver.lookup_ip(host).await.map_err(|e| Error::NotFound(format!("{host}: {e}")))?;
    let ip = found.iter().next().ok_or_else(|| Error::NotFound(format!("no address for {host}")))?;
    Ok(Peer { transport, addr: SocketAddr::new(ip, port) })
}

async fn naptr(resolver: &TokioResolver, host: &str, secure: bool) -> Vec<(Transport, String)> {
    let Ok(found) = resolver.lookup(host, RecordType::NAPTR).await else { return Vec::new() };
    let records = found
        .iter()
        .filter_map(|data| match data {
            RData::NAPTR(n) => Some(Naptr {
                order: n.order(),
                preference: n.preference(),
                flags: String::from_utf8_lossy(n.flags()).into_owned(),
                services: String::from_utf8_lossy(n.services()).into_owned(),
                replacement: n.replacement().to_utf8(),
            }),
            _ => None,
        })
        .collect();
    locate::naptr_targets(records, secure)
}

async fn srv(resolver: &TokioResolver, name: &str) -> Vec<(String, u16)> {
    let Ok(found) = resolver.srv_lookup(name).await else { return Vec::new() };
    let records = found
        .iter()
        .map(|s| Srv { priority: s.priority(), weight: s.weight(), port: s.port(), target: s.target().to_utf8() })
        .collect();
    locate::order_srv(records, |total| rand::random_range(0..=total))
}
